//! A fault-injecting HTTP proxy in front of the real registry: a real registry
//! cannot misbehave on demand, so this one answers 429 or 503, cuts a response
//! short, flips a byte, or drips it slowly, for the requests a rule names.
//!
//! It speaks just enough HTTP/1.1: one request per connection (it forwards
//! with `Connection: close`), which every client handles.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What to do to a request a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status instead of forwarding (with `Retry-After:
    /// <seconds>` when given).
    Status {
        /// The HTTP status.
        status: u16,
        /// The `Retry-After` header, in seconds.
        retry_after: Option<u64>,
    },
    /// Answer with this status and body (a registry's JSON error, say)
    /// instead of forwarding; a `HEAD` gets the headers alone.
    Answer {
        /// The HTTP status.
        status: u16,
        /// The body.
        body: String,
    },
    /// Like [`Fault::Answer`], with this `Content-Type` (a schema 1
    /// manifest, a registry that says `text/plain`).
    AnswerAs {
        /// The HTTP status.
        status: u16,
        /// The `Content-Type` header.
        content_type: String,
        /// The body.
        body: String,
    },
    /// Forward, but close the connection after this many bytes of the body.
    CutAfter(u64),
    /// Forward, inverting the body byte at this offset.
    FlipByte(u64),
    /// Answer `307 Temporary Redirect` to this URL instead of forwarding.
    Redirect(String),
    /// Forward, with this response header set to `value` (replacing the
    /// registry's): a HEAD that claims a size, a digest header that lies.
    SetHeader {
        /// The header's name.
        name: String,
        /// Its value.
        value: String,
    },
    /// Forward, but answer with this status instead of the registry's (same
    /// headers and body): a registry that says 200 or 204 where the
    /// specification says 201 or 202.
    ReplaceStatus(u16),
    /// Forward the request, then close the connection without answering:
    /// the registry did the work, and its answer was lost on the way back.
    DropAnswer,
    /// Forward `after` bytes of the body, then send nothing more for `hold`
    /// with the connection open (a stalled server), then close it.
    Stall {
        /// Bytes of the body sent first.
        after: u64,
        /// How long the connection then stays silent.
        hold: Duration,
    },
    /// Read the request and answer nothing for `hold`, the connection open
    /// (a server that accepted and hung), then close it.
    Silent {
        /// How long nothing is answered.
        hold: Duration,
    },
    /// Forward without the request's `Range` header when it asks for bytes
    /// from this offset on, so the registry sends the whole blob with 200: a
    /// CDN that drops `Range` now and then. Requests for earlier bytes go
    /// through unchanged (each still uses up one of the rule's times).
    IgnoreRangeFrom(u64),
    /// Forward, sending the body `chunk` bytes at a time with `delay` between.
    Drip {
        /// Bytes per write.
        chunk: usize,
        /// Pause between writes.
        delay: Duration,
    },
}

#[derive(Debug)]
struct Rule {
    method: Option<String>,
    path_contains: String,
    remaining: usize,
    fault: Fault,
}

#[derive(Debug, Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    requests: AtomicUsize,
    faults_applied: AtomicUsize,
    tls_handshakes: AtomicUsize,
    log: Mutex<Vec<String>>,
    heads: Mutex<Vec<Vec<String>>>,
    stop: AtomicBool,
}

/// A running proxy; stopped when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a random 127.0.0.1 port in front of `upstream`.
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept_shared = shared.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = accept_shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, upstream, &shared);
                });
            }
        });
        Ok(FaultProxy {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// Applies `fault` to the next `times` requests whose path contains
    /// `path_contains` (and whose method is `method`, if given). Rules are
    /// tried in the order they were added.
    pub fn add(&self, method: Option<&str>, path_contains: &str, times: usize, fault: Fault) {
        self.shared
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Rule {
                method: method.map(str::to_string),
                path_contains: path_contains.to_string(),
                remaining: times,
                fault,
            });
    }

    /// `127.0.0.1:PORT`, to use in references instead of the registry's.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// How many requests the proxy has received.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every request's head as received, in order: the request line, then
    /// its header lines (`Name: value`), to check what a client sent.
    pub fn heads(&self) -> Vec<Vec<String>> {
        self.shared
            .heads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many TLS handshakes the proxy was sent; each is answered in plain
    /// HTTP, as a Go server answers one, and counted apart from requests.
    pub fn tls_handshakes(&self) -> usize {
        self.shared.tls_handshakes.load(Ordering::SeqCst)
    }

    /// How many requests a fault rule has been applied to.
    pub fn faults_applied(&self) -> usize {
        self.shared.faults_applied.load(Ordering::SeqCst)
    }

    /// Every request received so far, in order: `METHOD target`, followed by
    /// ` range=<value>` when the request had a `Range` header and
    /// ` authorization=<scheme>` when it had an `Authorization` header.
    pub fn log(&self) -> Vec<String> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn take_fault(shared: &Shared, method: &str, path: &str) -> Option<Fault> {
    let mut rules = shared.rules.lock().unwrap_or_else(|p| p.into_inner());
    let rule = rules.iter_mut().find(|r| {
        r.remaining > 0
            && path.contains(&r.path_contains)
            && r.method.as_deref().is_none_or(|m| m == method)
    })?;
    rule.remaining -= 1;
    shared.faults_applied.fetch_add(1, Ordering::SeqCst);
    Some(rule.fault.clone())
}

/// Reads an HTTP head (up to the blank line): its lines.
fn read_head(reader: &mut impl BufRead) -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return Ok(lines);
        }
        lines.push(line);
    }
}

fn content_length(head: &[String]) -> u64 {
    head.iter()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

fn serve(client: TcpStream, upstream: SocketAddr, shared: &Shared) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    // A TLS handshake (a client finding out whether we speak TLS) gets the
    // plain-HTTP answer a Go server gives one; it is no request.
    if reader.fill_buf()?.first() == Some(&TLS_HANDSHAKE_RECORD) {
        shared.tls_handshakes.fetch_add(1, Ordering::SeqCst);
        let mut client = client;
        client.write_all(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return client.shutdown(Shutdown::Both);
    }
    let head = read_head(&mut reader)?;
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let mut request_line = head.first().cloned().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let header = |name: &str| {
        head.iter()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let range = header("range").map_or(String::new(), |v| format!(" range={v}"));
    let authorization = header("authorization").map_or(String::new(), |v| {
        format!(" authorization={}", v.split(' ').next().unwrap_or_default())
    });
    shared
        .log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!("{method} {path}{range}{authorization}"));
    shared
        .heads
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(head.clone());
    let mut body = vec![0; content_length(&head) as usize];
    reader.read_exact(&mut body)?;
    let mut client = client;
    let fault = take_fault(shared, &method, &path);
    if let Some(Fault::Silent { hold }) = fault {
        std::thread::sleep(hold);
        return client.shutdown(Shutdown::Both);
    }
    if let Some(Fault::Status {
        status,
        retry_after,
    }) = fault
    {
        let retry = retry_after.map_or(String::new(), |s| format!("Retry-After: {s}\r\n"));
        write!(
            client,
            "HTTP/1.1 {status} Injected\r\nContent-Length: 0\r\nConnection: close\r\n{retry}\r\n"
        )?;
        return client.shutdown(Shutdown::Both);
    }
    let answer = match &fault {
        Some(Fault::Answer { status, body }) => Some((*status, "application/json", body)),
        Some(Fault::AnswerAs {
            status,
            content_type,
            body,
        }) => Some((*status, content_type.as_str(), body)),
        _ => None,
    };
    if let Some((status, content_type, body)) = answer {
        write!(
            client,
            "HTTP/1.1 {status} Injected\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        if method != "HEAD" {
            client.write_all(body.as_bytes())?;
        }
        return client.shutdown(Shutdown::Both);
    }
    if let Some(Fault::Redirect(location)) = &fault {
        write!(
            client,
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return client.shutdown(Shutdown::Both);
    }

    let mut server = TcpStream::connect(upstream)?;
    request_line.push_str("\r\n");
    server.write_all(request_line.as_bytes())?;
    let range_start = header("range").and_then(|v| {
        v.strip_prefix("bytes=")?
            .split('-')
            .next()?
            .parse::<u64>()
            .ok()
    });
    let drop_range = matches!(
        (&fault, range_start),
        (Some(Fault::IgnoreRangeFrom(from)), Some(start)) if start >= *from
    );
    for line in head.iter().skip(1) {
        let lower = line.to_ascii_lowercase();
        if drop_range && lower.starts_with("range:") {
            continue;
        }
        if !lower.starts_with("connection:") {
            write!(server, "{line}\r\n")?;
        }
    }
    server.write_all(b"Connection: close\r\n\r\n")?;
    server.write_all(&body)?;

    let mut upstream_reader = BufReader::new(server);
    let mut response_head = read_head(&mut upstream_reader)?;
    if let Some(Fault::DropAnswer) = &fault {
        return client.shutdown(Shutdown::Both);
    }
    if let (Some(Fault::ReplaceStatus(status)), Some(status_line)) =
        (&fault, response_head.first_mut())
    {
        *status_line = format!("HTTP/1.1 {status} Replaced");
    }
    if let Some(Fault::SetHeader { name, value }) = &fault {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        response_head.retain(|line| !line.to_ascii_lowercase().starts_with(&prefix));
        response_head.push(format!("{name}: {value}"));
    }
    for line in &response_head {
        write!(client, "{line}\r\n")?;
    }
    client.write_all(b"\r\n")?;
    let mut offset = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = upstream_reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &mut buf[..n];
        match &fault {
            Some(Fault::CutAfter(limit) | Fault::Stall { after: limit, .. })
                if offset + n as u64 > *limit =>
            {
                let keep = (*limit - offset) as usize;
                client.write_all(&chunk[..keep])?;
                if let Some(Fault::Stall { hold, .. }) = &fault {
                    client.flush()?;
                    std::thread::sleep(*hold);
                }
                return client.shutdown(Shutdown::Both);
            }
            Some(Fault::FlipByte(at)) if (offset..offset + n as u64).contains(at) => {
                chunk[(*at - offset) as usize] ^= 0xff;
                client.write_all(chunk)?;
            }
            Some(Fault::Drip { chunk: size, delay }) => {
                for piece in chunk.chunks((*size).max(1)) {
                    client.write_all(piece)?;
                    client.flush()?;
                    std::thread::sleep(*delay);
                }
            }
            _ => client.write_all(chunk)?,
        }
        offset += n as u64;
    }
    client.shutdown(Shutdown::Both)
}
