//! Certificates for TLS tests, from a CA generated on the spot.

use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// PEM files written by [`TestCertificates::write`]: a CA, a server
/// certificate for `localhost` and `127.0.0.1`, and a client certificate,
/// both signed by the CA.
#[derive(Debug, Clone)]
pub struct TestCertificates {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server's certificate.
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// A client certificate (for registries that require one).
    pub client_cert: PathBuf,
    /// Its private key.
    pub client_key: PathBuf,
}

impl TestCertificates {
    /// Generates the certificates and writes them into `dir` as `ca.pem`,
    /// `server.pem`, `server.key`, `client.pem` and `client.key`.
    pub fn write(dir: &Path) -> io::Result<TestCertificates> {
        let generated = generate().map_err(io::Error::other)?;
        let out = TestCertificates {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        let [ca, server_cert, server_key, client_cert, client_key] = generated;
        std::fs::write(&out.ca, ca)?;
        std::fs::write(&out.server_cert, server_cert)?;
        std::fs::write(&out.server_key, server_key)?;
        std::fs::write(&out.client_cert, client_cert)?;
        std::fs::write(&out.client_key, client_key)?;
        Ok(out)
    }

    /// Copies the CA and the client certificate into `dir` (created if
    /// missing) in Docker's `certs.d` layout: `ca.crt`, `client.cert`,
    /// `client.key`.
    pub fn write_docker_certs_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::copy(&self.ca, dir.join("ca.crt"))?;
        std::fs::copy(&self.client_cert, dir.join("client.cert"))?;
        std::fs::copy(&self.client_key, dir.join("client.key"))?;
        Ok(())
    }
}

/// Writes a self-signed server certificate that is also a CA's (basic
/// constraints `CA:TRUE`), as `openssl req -x509` makes one and Docker's
/// guide to a registry of one's own has users make, for `names` (DNS names
/// or IP addresses), into `dir` as `self-signed.pem` and `self-signed.key`;
/// returns their paths.
pub fn write_self_signed_server(dir: &Path, names: &[&str]) -> io::Result<(PathBuf, PathBuf)> {
    let generate = || -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("registry"),
        );
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (cert, key) = generate().map_err(io::Error::other)?;
    let paths = (dir.join("self-signed.pem"), dir.join("self-signed.key"));
    std::fs::write(&paths.0, cert)?;
    std::fs::write(&paths.1, key)?;
    Ok(paths)
}

/// The PEM texts, in the order of [`TestCertificates`]' fields.
fn generate() -> Result<[String; 5], rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own, as real CAs have: a TLS server lists the CAs it
    // accepts client certificates from by name.
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("ocidist test CA {}-{unique}", std::process::id()),
    );
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let server_cert = params.signed_by(&server_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["ocidist-test-client".to_string()])?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = params.signed_by(&client_key, &issuer)?;

    Ok([
        ca_cert.pem(),
        server_cert.pem(),
        server_key.serialize_pem(),
        client_cert.pem(),
        client_key.serialize_pem(),
    ])
}
