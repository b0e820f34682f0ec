//! A real registry for tests: the CNCF distribution registry (Debian package
//! `docker-registry`) on a random 127.0.0.1 port, with its storage in a
//! temporary directory, stopped (by its PID) when dropped.
//!
//! A missing registry is an error that names the package to install, never a
//! skipped test.
//!
//! ```no_run
//! use ocidist_remotes::testkit::Registry;
//! let registry = Registry::start().expect("registry");
//! println!("push to {}/test/image:1", registry.host());
//! ```

mod certs;
mod proxy;
mod token;

pub use certs::{TestCertificates, write_self_signed_server};
pub use proxy::{Fault, FaultProxy};
pub use token::{ISSUER, SERVICE, TokenServer};

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a registry may take to answer `/v2/` after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What to install when the registry is missing.
pub const INSTALL_HINT: &str = "the CNCF distribution registry is not installed: run `apt-get install docker-registry` \
     (or put its `registry` binary on PATH)";

/// A running registry; stopped and its storage removed when dropped.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// Finds the registry binary: `docker-registry` (Debian's name) or `registry`.
pub fn find_binary() -> io::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["docker-registry", "registry"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, INSTALL_HINT))
}

impl Registry {
    /// Starts the registry found on PATH, with no authentication.
    pub fn start() -> io::Result<Registry> {
        Self::start_binary(&find_binary()?, "")
    }

    /// Starts the registry found on PATH serving HTTPS with the PEM
    /// certificate and key at `cert` and `key`.
    pub fn start_tls(cert: &Path, key: &Path) -> io::Result<Registry> {
        Self::start_with(&find_binary()?, "", &tls_config(cert, key))
    }

    /// Starts the registry found on PATH serving HTTPS with `certs`' server
    /// certificate, refusing clients that present no certificate signed by
    /// `certs`' CA (mutual TLS).
    pub fn start_tls_requiring_client_certs(certs: &TestCertificates) -> io::Result<Registry> {
        let tls = format!(
            "{}    clientcas:\n      - {}\n",
            tls_config(&certs.server_cert, &certs.server_key),
            certs.ca.display()
        );
        Self::start_with(&find_binary()?, "", &tls)
    }

    /// Starts the registry at `binary`, adding `extra_config` (YAML at the top
    /// level of the configuration, e.g. an `auth:` section) to the defaults.
    pub fn start_binary(binary: &Path, extra_config: &str) -> io::Result<Registry> {
        Self::start_with(binary, extra_config, "")
    }

    /// Starts the registry found on PATH with `extra_config` (as for
    /// [`start_binary`](Self::start_binary)), telling clients that its URLs
    /// are on `advertised` (its `http.host`: `Location` headers point there,
    /// as a registry behind a proxy or with upload storage elsewhere does).
    pub fn start_advertising(extra_config: &str, advertised: &str) -> io::Result<Registry> {
        Self::start_with(
            &find_binary()?,
            extra_config,
            &format!("  host: {advertised}\n"),
        )
    }

    /// `extra_http` is added inside the `http:` section (indented two spaces).
    fn start_with(binary: &Path, extra_config: &str, extra_http: &str) -> io::Result<Registry> {
        if !binary.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: {INSTALL_HINT}", binary.display()),
            ));
        }
        let dir = tempfile::tempdir()?;
        // The free port we pick can be taken before the registry binds it; try again then.
        let mut last_error = None;
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                config_yaml(dir.path(), addr, extra_config, extra_http),
            )?;
            let mut child = Command::new(binary)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(
                    dir.path().join("registry.log"),
                )?))
                .spawn()?;
            match wait_ready(&mut child, addr) {
                Ok(()) => return Ok(Registry { child, addr, dir }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(dir.path().join("registry.log"))
                        .unwrap_or_default();
                    last_error = Some(io::Error::new(
                        e.kind(),
                        format!("{e}; registry log:\n{log}"),
                    ));
                }
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// `127.0.0.1:PORT`, the registry part of references to it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory holding its configuration, storage and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process ID of the registry.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Our own child, by its PID: nothing else is touched.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_yaml(dir: &Path, addr: SocketAddr, extra: &str, extra_http: &str) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n{extra_http}\
         {extra}\n",
        storage = dir.join("storage").display(),
    )
}

/// Waits until `GET /v2/` answers (200, or 401 when auth is configured).
/// The `tls:` lines of the `http:` section for a certificate and key.
fn tls_config(cert: &Path, key: &Path) -> String {
    format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        cert.display(),
        key.display()
    )
}

fn wait_ready(child: &mut Child, addr: SocketAddr) -> io::Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "registry exited with {status} before serving"
            )));
        }
        // 400: a TLS registry answering our plain probe, which means it is up.
        if let Ok(code) = get_status(addr, "/v2/")
            && matches!(code, 200 | 400 | 401)
        {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("registry on {addr} not ready after {READY_TIMEOUT:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The HTTP status of a plain `GET path` on `addr`.
pub fn get_status(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {text:?}"),
            )
        })
}
