//! A tiny HTTP/1.1 server for HTTP push tests: listens on 127.0.0.1:0,
//! serves each connection on its own thread (keep-alive: many requests per
//! connection, until the peer closes or asks `Connection: close`), answers
//! with the status a test-supplied function picks, and hands every request
//! to the test through a channel (before answering it), so tests wait for
//! pushes as events instead of sleeping.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest request body the sink accepts (pushes are at most 1 MiB plus JSON overhead).
const BODY_BYTES_MAX: usize = 4 << 20;

/// One request the sink received (and answered with `status`).
#[derive(Clone)]
pub struct HttpRequest {
    pub method: String,
    /// Path and query, as on the request line.
    pub target: String,
    pub version: String,
    /// In arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the whole request had been read.
    pub at: Instant,
    /// Which accepted connection carried it (0, 1, …).
    pub conn: usize,
    /// The status the sink answered with.
    pub status: u16,
}

impl HttpRequest {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// How many headers are called `name` (case-insensitive).
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count()
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl std::fmt::Debug for HttpRequest {
    /// Compact: the body as (lossy) text, so failure messages stay readable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("request", &format_args!("{} {} {}", self.method, self.target, self.version))
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("conn", &self.conn)
            .field("status", &self.status)
            .finish()
    }
}

type Responder = Box<dyn FnMut(&HttpRequest) -> u16 + Send>;

/// The server. Dropping it stops accepting; open connections end when the
/// peer closes them (or the test process exits).
pub struct HttpSink {
    pub addr: SocketAddr,
    rx: Receiver<HttpRequest>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl HttpSink {
    /// Starts a server whose answer to each request is `respond(&request)`
    /// (called one request at a time, in arrival order across connections).
    pub fn start(respond: impl FnMut(&HttpRequest) -> u16 + Send + 'static) -> HttpSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test HTTP server");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = mpsc::channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let respond: Arc<Mutex<Responder>> = Arc::new(Mutex::new(Box::new(respond)));
        let (conns, stop2) = (connections.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let conn = conns.fetch_add(1, Ordering::SeqCst);
                let (tx, respond) = (tx.clone(), respond.clone());
                std::thread::spawn(move || serve(stream, conn, &tx, &respond));
            }
        });
        HttpSink { addr, rx, connections, stop }
    }

    /// A server that answers every request with `status`.
    pub fn always(status: u16) -> HttpSink {
        HttpSink::start(move |_| status)
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next request, or `None` if none arrives `within`.
    pub fn try_next(&self, within: Duration) -> Option<HttpRequest> {
        match self.rx.recv_timeout(within) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("the test HTTP server stopped"),
        }
    }

    /// The next request; panics saying `what` was awaited if none
    /// arrives `within`.
    #[track_caller]
    pub fn next(&self, within: Duration, what: &str) -> HttpRequest {
        self.try_next(within).unwrap_or_else(|| panic!("no HTTP request within {within:?}: waiting for {what}"))
    }

    /// Requests received so far that the test has not taken yet.
    pub fn drain(&self) -> Vec<HttpRequest> {
        self.rx.try_iter().collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// A URL on 127.0.0.1 where nothing listens (connections are refused): a
/// port the OS just handed out and that was closed again.
pub fn refused_url(path: &str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("local addr");
    drop(l);
    format!("http://{addr}{path}")
}

fn serve(stream: TcpStream, conn: usize, tx: &Sender<HttpRequest>, respond: &Mutex<Responder>) {
    let _ = stream.set_nodelay(true);
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut r = BufReader::new(stream);
    while let Some(mut req) = read_request(&mut r, conn) {
        let close = req.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || req.version.eq_ignore_ascii_case("HTTP/1.0");
        req.status = {
            let mut f = respond.lock().unwrap_or_else(|p| p.into_inner());
            f(&req)
        };
        let reply = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n{}\r\nok",
            req.status,
            reason(req.status),
            if close { "Connection: close\r\n" } else { "" }
        );
        // Handed over before it is answered, so the broker cannot act on an
        // answer (give up, count a delivery) before the test has the request.
        let _ = tx.send(req);
        if out.write_all(reply.as_bytes()).and_then(|()| out.flush()).is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Reads one request (request line, headers, a Content-Length body);
/// `None` at end of input or on anything malformed (the connection is then closed).
fn read_request(r: &mut BufReader<TcpStream>, conn: usize) -> Option<HttpRequest> {
    let mut line = String::new();
    // Tolerate blank lines between requests (RFC 9112 §2.2).
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let (method, target, version) = (parts.next()?.to_owned(), parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut req =
        HttpRequest { method, target, version, headers, body: Vec::new(), at: Instant::now(), conn, status: 0 };
    if req.header("transfer-encoding").is_some() {
        // Pushes carry Content-Length (docs/HTTP_PUSH.md); anything else is refused by closing.
        return None;
    }
    let len: usize = req.header("content-length").map_or(Some(0), |v| v.parse().ok())?;
    if len > BODY_BYTES_MAX {
        return None;
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    req.body = body;
    req.at = Instant::now();
    Some(req)
}
