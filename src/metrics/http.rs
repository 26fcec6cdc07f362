//! The `/metrics` endpoint: a minimal HTTP/1.1 responder on a tokio
//! `TcpListener`, enough for Prometheus (and curl): `GET /metrics` (and
//! `HEAD`), one request per connection, `Connection: close`.
//!
//! Invariant: nothing a client does can stall the daemon or grow without
//! bound. The server is its own task (the daemon's loop never awaits it);
//! each connection is a task with a deadline for reading the request head
//! ([`READ_TIMEOUT`], at most [`MAX_REQUEST`] bytes) and one for writing
//! the answer ([`WRITE_TIMEOUT`]); at most [`MAX_CONNECTIONS`] are served at
//! once and further ones are closed at accept. A scrape encodes the
//! registry (microseconds; atomics only), so it never waits for a pass.
//!
//! A listen address that cannot be bound is reported and retried every
//! [`REBIND_EVERY`]: the endpoint is observability, the overlay is the job
//! (see docs/metrics.md, "When the address cannot be bound").

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, error, info, warn};

use super::Metrics;

/// The largest request head read (request line and headers): a scraper's
/// is a few hundred bytes.
pub const MAX_REQUEST: usize = 8 << 10;
/// A client has this long to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// And this long to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 8;
/// How often an address that could not be bound is tried again (the
/// first retries come sooner: [`REBIND_FIRST`], doubling).
pub const REBIND_EVERY: Duration = Duration::from_secs(10);
/// The first retry: soon, because the usual holder right after a reload
/// is the previous endpoint of this very process, whose task closes its
/// socket on the runtime's next turn.
pub const REBIND_FIRST: Duration = Duration::from_millis(250);

/// The OpenMetrics text format `prometheus-client` writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The running endpoint; dropping it stops the server (the listening
/// socket is closed, connections in flight finish on their own deadlines).
#[derive(Debug)]
pub struct Server {
    /// The configured address.
    listen: SocketAddr,
    /// The bound one (differs with port 0, in tests).
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bind `addr` now (so the caller can report a failure at once) and serve
/// `metrics` from a task on the current runtime. On a bind error the task
/// keeps trying ([`REBIND_FIRST`], doubling up to every [`REBIND_EVERY`]);
/// the error is returned for the caller to report (the server is running
/// either way). `replacing`: a previous endpoint of this process on the
/// same port was just dropped (a reload): "address in use" is then most
/// likely that one, about to close, and is no error yet.
pub fn start(
    addr: SocketAddr,
    metrics: &'static Metrics,
    replacing: bool,
) -> (Server, Option<std::io::Error>) {
    let (first, err) = match bind(addr) {
        Ok(l) => {
            info!("metrics: serving http://{addr}/metrics");
            (Some(l), None)
        }
        Err(e) if replacing && e.kind() == std::io::ErrorKind::AddrInUse => {
            info!(
                "metrics: {addr} still held by the previous endpoint; binding once it has closed"
            );
            (None, None)
        }
        Err(e) => {
            error!(
                "metrics: cannot listen on {addr}: {e}; converging without the endpoint, retrying (up to every {} s)",
                REBIND_EVERY.as_secs()
            );
            (None, Some(e))
        }
    };
    // the port actually bound (tests listen on port 0)
    let bound = first
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or(addr);
    let task = tokio::spawn(serve(addr, first, metrics));
    (
        Server {
            listen: addr,
            addr: bound,
            task,
        },
        err,
    )
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    // std's bind is synchronous (no resolver: `addr` is an IP address) and
    // sets SO_REUSEADDR, so a restart never waits for TIME_WAIT sockets.
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

async fn serve(addr: SocketAddr, mut listener: Option<TcpListener>, metrics: &'static Metrics) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut delay = REBIND_FIRST;
    loop {
        let Some(l) = listener.as_ref() else {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(REBIND_EVERY);
            match bind(addr) {
                Ok(l) => {
                    info!("metrics: serving http://{addr}/metrics (bound after retrying)");
                    listener = Some(l);
                }
                Err(e) => debug!("metrics: still cannot listen on {addr}: {e}"),
            }
            continue;
        };
        let (stream, peer) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("metrics: accept on {addr} failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("metrics: {MAX_CONNECTIONS} connections in flight, closing the one from {peer}");
            drop(stream);
            continue;
        };
        tokio::spawn(async move {
            if let Err(e) = connection(stream, metrics).await {
                debug!("metrics: connection from {peer}: {e}");
            }
            drop(slot);
        });
    }
}

/// What the request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    Bad,
    TooLarge,
}

/// Reads a request head: bytes until the empty line, within the limits.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Result<Vec<u8>, Request>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Err(Request::Bad));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if head_end(&buf).is_some() {
            return Ok(Ok(buf));
        }
        if buf.len() >= MAX_REQUEST {
            return Ok(Err(Request::TooLarge));
        }
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

/// The request line of a head: `METHOD TARGET HTTP/1.x`.
fn parse(head: &[u8]) -> Request {
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .unwrap_or_default()
        .strip_suffix(b"\r")
        .unwrap_or_else(|| head.split(|b| *b == b'\n').next().unwrap_or_default());
    let Ok(line) = std::str::from_utf8(line) else {
        return Request::Bad;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    let path = target.split('?').next().unwrap_or_default();
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::MethodNotAllowed,
    };
    if path == "/metrics" {
        Request::Metrics { head_only }
    } else {
        Request::NotFound
    }
}

async fn connection(mut stream: TcpStream, metrics: &'static Metrics) -> std::io::Result<()> {
    let request = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no complete request in time",
            ));
        }
        Ok(head) => match head? {
            Ok(head) => parse(&head),
            Err(r) => r,
        },
    };
    let response = respond(&request, metrics);
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "answer not taken in time"))?
}

fn respond(request: &Request, metrics: &Metrics) -> Vec<u8> {
    let (status, extra, content_type, body, head_only) = match request {
        Request::Metrics { head_only } => {
            metrics.scraped();
            match metrics.encode() {
                Ok(text) => ("200 OK", "", CONTENT_TYPE, text, *head_only),
                Err(_) => (
                    "500 Internal Server Error",
                    "",
                    "text/plain; charset=utf-8",
                    "cannot encode the metrics\n".to_string(),
                    *head_only,
                ),
            }
        }
        Request::NotFound => (
            "404 Not Found",
            "",
            "text/plain; charset=utf-8",
            "netconverge serves its metrics at /metrics\n".to_string(),
            false,
        ),
        Request::MethodNotAllowed => (
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_string(),
            false,
        ),
        Request::Bad => (
            "400 Bad Request",
            "",
            "text/plain; charset=utf-8",
            "bad request\n".to_string(),
            false,
        ),
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            "",
            "text/plain; charset=utf-8",
            format!("request head over {MAX_REQUEST} bytes\n"),
            false,
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    #[test]
    fn request_lines() {
        let p = |s: &str| parse(s.as_bytes());
        assert_eq!(
            p("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics { head_only: false }
        );
        assert_eq!(
            p("HEAD /metrics?x=1 HTTP/1.0\n\n"),
            Request::Metrics { head_only: true }
        );
        assert_eq!(p("GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            p("POST /metrics HTTP/1.1\r\n\r\n"),
            Request::MethodNotAllowed
        );
        assert_eq!(p("GET /metrics\r\n\r\n"), Request::Bad);
        assert_eq!(p("GET /metrics SPDY/3\r\n\r\n"), Request::Bad);
        assert_eq!(p("\u{0}\u{1}"), Request::Bad);
    }

    #[test]
    fn answers_carry_length_type_and_close() {
        let m = Metrics::new();
        let ok = String::from_utf8(respond(&Request::Metrics { head_only: false }, &m)).unwrap();
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
        assert!(head.contains("application/openmetrics-text"), "{head}");
        assert!(head.ends_with("Connection: close"), "{head}");
        assert!(body.ends_with("# EOF\n"));
        let head_only = respond(&Request::Metrics { head_only: true }, &m);
        assert!(head_only.ends_with(b"\r\n\r\n"));
        let nope = String::from_utf8(respond(&Request::MethodNotAllowed, &m)).unwrap();
        assert!(nope.contains("Allow: GET, HEAD\r\n"), "{nope}");
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(request).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn a_silent_client_holds_back_no_one_and_limits_hold() {
        static M: OnceLock<Metrics> = OnceLock::new();
        let m = M.get_or_init(Metrics::new);
        let (server, err) = start("127.0.0.1:0".parse().unwrap(), m, false);
        assert!(err.is_none(), "{err:?}");
        let addr = server.addr();
        // connected, sending nothing: its task waits for READ_TIMEOUT alone
        let _silent = TcpStream::connect(addr).await.unwrap();
        let ok = tokio::time::timeout(
            READ_TIMEOUT / 2,
            exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
        .await
        .expect("a scrape waited for a silent client");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("# EOF\n"), "{ok}");
        assert!(ok.contains("netconverge_scrapes_total 1\n"), "{ok}");
        // a head that never ends is cut at MAX_REQUEST
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST + 100, b'a');
        let too_large = exchange(addr, &big).await;
        assert!(too_large.starts_with("HTTP/1.1 431 "), "{too_large}");
        let missing = exchange(addr, b"GET /nothing HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        // the port is taken now: a second server reports it, and serves
        // nothing until it can bind
        let (_second, err) = start(addr, m, false);
        assert_eq!(err.map(|e| e.kind()), Some(std::io::ErrorKind::AddrInUse));
    }
}
