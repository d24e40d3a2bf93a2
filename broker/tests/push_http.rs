//! The push pool against real sockets: a small HTTP/1.1 server on 127.0.0.1
//! whose answer to each request the test decides.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_broker::push::{
    build_task, next_retry_scaled, verify, NotifyContentFormat, NotifyStrategy, PushConfig, PushHandle, PushMessage,
    PushOutcome, PushPool, PushRequest, PushTask, RESPONSE_BODY_BYTES_MAX,
};
use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Poll, Token, Waker};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Longest any test waits for an event that should come.
const EVENT_WAIT: Duration = Duration::from_secs(10);

// ---- the test server ---------------------------------------------------------

#[derive(Debug, Clone)]
struct Req {
    /// Which accepted connection (0, 1, …) carried it.
    conn: usize,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What the server does with a request.
enum Reply {
    /// Writes these bytes and keeps reading the connection.
    Raw(Vec<u8>),
    /// Writes these bytes, then closes the connection.
    RawThenClose(Vec<u8>),
    /// Waits for a token on the server's release channel, then answers 200.
    HoldThen200,
    /// Never answers (the connection stays open until the server is dropped).
    Hang,
}

type Handler = dyn Fn(&Req) -> Reply + Send + Sync;

struct Server {
    addr: std::net::SocketAddr,
    requests: Receiver<Req>,
    /// Ids of connections the server has closed.
    closed: Receiver<usize>,
    release: Sender<()>,
    accepted: Arc<AtomicUsize>,
    max_open: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    fn start(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Server {
        Server::start_with(None, handler)
    }

    /// An https server presenting [`LEAF_PEM`] (issued by [`CA_PEM`]).
    fn start_tls(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Server {
        let cert = CertificateDer::from_pem_slice(LEAF_PEM.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(LEAF_KEY_PEM.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        Server::start_with(Some(Arc::new(config)), handler)
    }

    fn start_with(
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&Req) -> Reply + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let (req_tx, requests) = crossbeam_channel::unbounded();
        let (release, release_rx) = crossbeam_channel::unbounded::<()>();
        let (closed_tx, closed) = crossbeam_channel::unbounded();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let max_open = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let acceptor = {
            let (accepted, max_open, stop, streams) =
                (accepted.clone(), max_open.clone(), stop.clone(), streams.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let conn = accepted.fetch_add(1, Ordering::SeqCst);
                    let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
                    max_open.fetch_max(now_open, Ordering::SeqCst);
                    streams.lock().unwrap().push(stream.try_clone().unwrap());
                    let (handler, req_tx, release_rx, open, closed_tx, tls) = (
                        handler.clone(),
                        req_tx.clone(),
                        release_rx.clone(),
                        open.clone(),
                        closed_tx.clone(),
                        tls.clone(),
                    );
                    std::thread::spawn(move || {
                        match tls {
                            None => serve_conn(conn, &mut &stream, &*handler, &req_tx, &release_rx),
                            Some(cfg) => {
                                let tls = rustls::ServerConnection::new(cfg).unwrap();
                                let mut s = rustls::StreamOwned::new(tls, &stream);
                                serve_conn(conn, &mut s, &*handler, &req_tx, &release_rx);
                            }
                        }
                        // The test keeps clones of every stream: close explicitly.
                        let _ = stream.shutdown(Shutdown::Both);
                        open.fetch_sub(1, Ordering::SeqCst);
                        let _ = closed_tx.send(conn);
                    });
                }
            })
        };
        Server { addr, requests, closed, release, accepted, max_open, stop, streams, acceptor: Some(acceptor) }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn next_request(&self) -> Req {
        self.requests.recv_timeout(EVENT_WAIT).expect("the server got no request")
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in self.streams.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Unblock accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        // Held handlers wake up when the release channel closes.
    }
}

fn serve_conn<S: Read + Write>(conn: usize, s: &mut S, handler: &Handler, tx: &Sender<Req>, release: &Receiver<()>) {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(conn, s, &mut buf) else { return };
        let reply = handler(&req);
        let _ = tx.send(req);
        match reply {
            Reply::Raw(bytes) => {
                if s.write_all(&bytes).and_then(|()| s.flush()).is_err() {
                    return;
                }
            }
            Reply::RawThenClose(bytes) => {
                let _ = s.write_all(&bytes).and_then(|()| s.flush());
                return;
            }
            Reply::HoldThen200 => {
                if release.recv().is_err() || s.write_all(&ok200()).and_then(|()| s.flush()).is_err() {
                    return;
                }
            }
            Reply::Hang => {
                let mut sink = [0u8; 64];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
        }
    }
}

fn read_request<S: Read>(conn: usize, s: &mut S, buf: &mut Vec<u8>) -> Option<Req> {
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = r.parse(buf) {
            let headers: Vec<(String, String)> =
                r.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect();
            assert_eq!(r.method, Some("POST"));
            let path = r.path.unwrap_or("").to_string();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .expect("Content-Length");
            while buf.len() < n + len {
                let got = s.read(&mut chunk).ok().filter(|g| *g > 0)?;
                buf.extend_from_slice(&chunk[..got]);
            }
            let body = buf[n..n + len].to_vec();
            buf.drain(..n + len);
            return Some(Req { conn, path, headers, body });
        }
        let got = s.read(&mut chunk).ok().filter(|g| *g > 0)?;
        buf.extend_from_slice(&chunk[..got]);
    }
}

fn ok200() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
}

/// A test CA (EC P-256, valid 2000-2125) and a server certificate it issued
/// for 127.0.0.1 and localhost, made with `openssl ca`.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBajCCARCgAwIBAgICEAAwCgYIKoZIzj0EAwIwGzEZMBcGA1UEAwwQY21xIHB1
c2ggdGVzdCBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTI2MDEwMTAwMDAwMFowGzEZ
MBcGA1UEAwwQY21xIHB1c2ggdGVzdCBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABPo4hXr3ThhIiyE/eavtWBpapkDkGYXPesxQ8hRxASQRaRCmu3uipQhWwtFn
6I3oYKA/NJdDrybzbDqcGfSmJDGjQjBAMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0P
AQH/BAQDAgEGMB0GA1UdDgQWBBQxC6N9lOkMa/6DAiP1u/C2C9Qz0zAKBggqhkjO
PQQDAgNIADBFAiEA+s/YyJpoa4MSlYtZ1A+Vts6MAe8PxT2TbrNh28I8sgECIH3r
usrA7/k9LcrWREV3ZaTAs/ojRN3a+hWmPQEr0ev+
-----END CERTIFICATE-----
";

const LEAF_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBtDCCAVqgAwIBAgICEAEwCgYIKoZIzj0EAwIwGzEZMBcGA1UEAwwQY21xIHB1
c2ggdGVzdCBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTI2MDEwMTAwMDAwMFowFDES
MBAGA1UEAwwJMTI3LjAuMC4xMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEtjxx
QmedAdNGCX08ImFNvUEcJV/CXwybDfepXg7Trv8sHKRujrAZWwtN5ygpPWxzSKHq
wev8nanrAWynkZ2ZiaOBkjCBjzAMBgNVHRMBAf8EAjAAMA4GA1UdDwEB/wQEAwIH
gDATBgNVHSUEDDAKBggrBgEFBQcDATAaBgNVHREEEzARhwR/AAABgglsb2NhbGhv
c3QwHQYDVR0OBBYEFCpmkoORxgDLMTSv4puFKNXvFeMOMB8GA1UdIwQYMBaAFDEL
o32U6Qxr/oMCI/W78LYL1DPTMAoGCCqGSM49BAMCA0gAMEUCIQC/1rEQOABqUhtT
lCxE4z6D80YtL/0/GoIfffHwn7w7CAIgFiwc6+7+a4dmJWCJWTq1A/0b5KoZQqGj
FShG68kFxSg=
-----END CERTIFICATE-----
";

/// The server certificate's key: a test key, used nowhere else.
const LEAF_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQguSRVIdmpGEYTr/Q/
0POtSC6VSneBfj6M7w/eh0aWwIWhRANCAAS2PHFCZ50B00YJfTwiYU29QRwlX8Jf
DJsN96leDtOu/ywcpG6OsBlbC03nKCk9bHNIoerB6/ydqesBbKeRnZmJ
-----END PRIVATE KEY-----
";

// ---- the pool side -------------------------------------------------------------

/// A pool with one shard whose waker is registered in `poll`.
struct Harness {
    pool: Option<PushPool>,
    handle: PushHandle,
    poll: Poll,
    events: Events,
}

impl Harness {
    fn new(cfg: PushConfig) -> Harness {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let pool = PushPool::new(cfg, vec![waker]).expect("pool");
        let handle = pool.handle(0);
        Harness { pool: Some(pool), handle, poll, events: Events::with_capacity(8) }
    }

    fn pool(&self) -> &PushPool {
        self.pool.as_ref().unwrap()
    }

    /// Waits on the waker (not a sleep loop) until `n` outcomes arrived.
    fn outcomes(&mut self, n: usize) -> Vec<(u64, PushOutcome)> {
        let deadline = Instant::now() + EVENT_WAIT;
        let mut out = Vec::new();
        loop {
            self.handle.take_outcomes(&mut out);
            if out.len() >= n {
                assert_eq!(out.len(), n, "more outcomes than pushes: {out:?}");
                return out;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "only {} of {n} outcomes: {out:?}", out.len());
            self.poll.poll(&mut self.events, Some(left)).unwrap();
        }
    }

    fn push(&mut self, task: PushTask) -> PushOutcome {
        let id = task.id;
        self.handle.submit(task).expect("queue has room");
        let mut o = self.outcomes(1);
        let (got, outcome) = o.pop().unwrap();
        assert_eq!(got, id);
        outcome
    }
}

fn cfg() -> PushConfig {
    PushConfig::default()
}

fn task(id: u64, url: &str) -> PushTask {
    PushTask {
        id,
        url: url.to_string(),
        body: Bytes::from_static(b"hello"),
        content_type: "text/plain",
        headers: vec![],
        timeout: EVENT_WAIT,
    }
}

fn failed(o: &PushOutcome) -> (Option<u16>, &str, bool) {
    match o {
        PushOutcome::Failed { status, reason, retryable } => (*status, reason.as_str(), *retryable),
        PushOutcome::Delivered { status } => panic!("delivered ({status}), expected a failure"),
    }
}

// ---- tests ------------------------------------------------------------------------

#[test]
fn json_push_is_delivered_with_cmq_headers_and_a_valid_signature() {
    let server = Server::start(|_| Reply::Raw(ok200()));
    let mut h = Harness::new(cfg());
    let tags = vec!["a".to_string(), "b".to_string()];
    let msg = PushMessage {
        topic_owner: "owner",
        topic: "orders",
        subscription: "billing",
        msg_id: 77,
        body: Bytes::from_static("héllo \"world\"".as_bytes()),
        tags: &tags,
        routing_key: "order.created",
        publish_time_ms: 1_700_000_000_500,
    };
    let url = server.url("/hook?x=1");
    let req = PushRequest {
        id: 5,
        request_id: "0-5-1",
        url: &url,
        format: NotifyContentFormat::Json,
        secret: b"s3cret",
        timestamp_s: 1_700_000_001,
        timeout: EVENT_WAIT,
    };
    assert_eq!(h.push(build_task(&req, &msg)), PushOutcome::Delivered { status: 200 });

    let got = server.next_request();
    assert_eq!(got.path, "/hook?x=1");
    assert_eq!(got.header("Host"), Some(server.addr.to_string().as_str()));
    assert_eq!(got.header("Content-Type"), Some("text/plain"));
    assert_eq!(got.header("Connection"), Some("keep-alive"));
    assert_eq!(got.header("x-cmq-request-id"), Some("0-5-1"));
    assert_eq!(got.header("x-cmq-message-id"), Some("77"));
    assert_eq!(got.header("x-cmq-message-tag"), Some("a, b"));
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"TopicOwner": "owner", "topicName": "orders", "subscriptionName": "billing",
            "msgId": "77", "msgBody": "héllo \"world\"", "msgTag": ["a", "b"],
            "routingKey": "order.created", "publishTime": 1_700_000_000})
    );
    // The receiver's side: verify with the headers and body as received.
    let ts: u64 = got.header("X-CMQ-Timestamp").unwrap().parse().unwrap();
    let sig = got.header("X-CMQ-Signature").unwrap();
    assert!(verify(b"s3cret", ts, &got.body, sig));
    let mut tampered = got.body.clone();
    tampered[10] ^= 1;
    assert!(!verify(b"s3cret", ts, &tampered, sig), "a changed body fails");
    assert!(!verify(b"s3cret", ts + 1, &got.body, sig), "a changed timestamp fails");
    assert!(!verify(b"other", ts, &got.body, sig), "another secret fails");
}

#[test]
fn simplified_push_carries_the_raw_body() {
    let server = Server::start(|_| Reply::Raw(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()));
    let mut h = Harness::new(cfg());
    let msg = PushMessage {
        topic_owner: "o",
        topic: "t",
        subscription: "s",
        msg_id: 1,
        body: Bytes::from_static(b"\x00raw\xffbytes"),
        tags: &[],
        routing_key: "",
        publish_time_ms: 0,
    };
    let url = server.url("/");
    let req = PushRequest {
        id: 1,
        request_id: "0-1-1",
        url: &url,
        format: NotifyContentFormat::Simplified,
        secret: b"k",
        timestamp_s: 1,
        timeout: EVENT_WAIT,
    };
    assert_eq!(h.push(build_task(&req, &msg)), PushOutcome::Delivered { status: 204 });
    let got = server.next_request();
    assert_eq!(got.body, b"\x00raw\xffbytes");
    assert_eq!(got.header("x-cmq-message-tag"), None);
    assert!(verify(b"k", 1, &got.body, got.header("X-CMQ-Signature").unwrap()));
}

#[test]
fn non_2xx_answers_are_retryable_failures() {
    let server = Server::start(|r| {
        let status = r.path.trim_start_matches('/');
        Reply::Raw(format!("HTTP/1.1 {status} X\r\nContent-Length: 4\r\n\r\nnope").into_bytes())
    });
    let mut h = Harness::new(cfg());
    for (i, status) in [500u16, 503, 404, 400, 301, 429].into_iter().enumerate() {
        let o = h.push(task(i as u64, &server.url(&format!("/{status}"))));
        let (got, reason, retryable) = failed(&o);
        assert_eq!(got, Some(status));
        assert!(retryable, "CMQ retries every non-2xx answer ({status})");
        assert!(reason.contains(&status.to_string()), "{reason}");
    }
    // All on one kept-alive connection: error answers with a body do not cost a reconnect.
    assert_eq!(server.accepted(), 1);
}

#[test]
fn a_silent_endpoint_times_out() {
    let server = Server::start(|_| Reply::Hang);
    let mut h = Harness::new(cfg());
    let mut t = task(1, &server.url("/"));
    t.timeout = Duration::from_millis(300);
    let start = Instant::now();
    let o = h.push(t);
    let took = start.elapsed();
    let (status, reason, retryable) = failed(&o);
    assert_eq!(status, None);
    assert!(retryable);
    assert!(reason.contains("timed out"), "{reason}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");

    // A TLS handshake that never gets an answer is bounded by the same budget.
    let mut t = task(2, &format!("https://127.0.0.1:{}/", server.addr.port()));
    t.timeout = Duration::from_millis(300);
    let o = h.push(t);
    let (_, reason, retryable) = failed(&o);
    assert!(retryable && reason.contains("TLS handshake") && reason.contains("timed out"), "{reason}");
}

#[test]
fn refused_connections_and_bad_urls() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut h = Harness::new(cfg());
    let o = h.push(task(1, &format!("http://127.0.0.1:{port}/")));
    let (_, reason, retryable) = failed(&o);
    assert!(retryable, "{reason}");
    assert!(reason.contains("connecting"), "{reason}");

    let o = h.push(task(3, "ftp://x/"));
    let (_, reason, retryable) = failed(&o);
    assert!(!retryable && reason.contains("invalid endpoint URL"), "{reason}");
    let mut bad = task(4, &format!("http://127.0.0.1:{port}/"));
    bad.headers.push(("X-Evil".into(), "a\r\nHost: b".into()));
    let o = h.push(bad);
    let (_, reason, retryable) = failed(&o);
    assert!(!retryable && reason.contains("control character"), "{reason}");
}

#[test]
fn keep_alive_connection_is_reused() {
    let server = Server::start(|_| Reply::Raw(ok200()));
    let mut h = Harness::new(cfg());
    for id in 0..3 {
        assert!(h.push(task(id, &server.url("/"))).is_delivered());
    }
    let conns: Vec<usize> = (0..3).map(|_| server.next_request().conn).collect();
    assert_eq!(conns, vec![0, 0, 0], "all three pushes on the first connection");
    assert_eq!(server.accepted(), 1);
    assert_eq!(h.pool().stats().connects.load(Ordering::Relaxed), 1);
    assert_eq!(h.pool().stats().reuses.load(Ordering::Relaxed), 2);
}

#[test]
fn a_connection_the_server_closed_while_idle_is_replaced() {
    // The server answers and closes without saying so (as a keep-alive timeout does).
    let server = Server::start(|_| Reply::RawThenClose(ok200()));
    let mut h = Harness::new(cfg());
    assert!(h.push(task(1, &server.url("/"))).is_delivered());
    assert_eq!(server.closed.recv_timeout(EVENT_WAIT), Ok(0));
    assert!(h.push(task(2, &server.url("/"))).is_delivered());
    assert_eq!((server.next_request().conn, server.next_request().conn), (0, 1));
}

#[test]
fn a_kept_connection_closed_before_answering_is_retried_once_on_a_fresh_one() {
    // Connection 0 answers its first request, then closes on the second
    // without a word (the race between reuse and a server's idle timeout).
    let seen = AtomicUsize::new(0);
    let server = Server::start(move |r| {
        if r.conn == 0 && seen.fetch_add(1, Ordering::SeqCst) == 1 {
            Reply::RawThenClose(Vec::new())
        } else {
            Reply::Raw(ok200())
        }
    });
    let mut h = Harness::new(cfg());
    assert!(h.push(task(1, &server.url("/"))).is_delivered());
    assert_eq!(h.push(task(2, &server.url("/"))), PushOutcome::Delivered { status: 200 });
    let conns: Vec<usize> = (0..3).map(|_| server.next_request().conn).collect();
    assert_eq!(conns, vec![0, 0, 1]);
    assert_eq!(h.pool().stats().stale_retries.load(Ordering::Relaxed), 1);

    // A fresh connection that closes is a failure, not retried.
    let mut h = Harness::new(cfg());
    let closing = Server::start(|_| Reply::RawThenClose(Vec::new()));
    let o = h.push(task(3, &closing.url("/")));
    let (_, reason, retryable) = failed(&o);
    assert!(retryable && reason.contains("closed before any response"), "{reason}");
    assert_eq!(closing.accepted(), 1);
}

#[test]
fn chunked_and_content_length_answers() {
    let server = Server::start(|r| {
        match r.path.as_str() {
        "/chunked" => Reply::Raw(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n"
                .to_vec(),
        ),
        "/length" => Reply::Raw(b"HTTP/1.1 201 Created\r\ncontent-length: 11\r\n\r\nhello world".to_vec()),
        "/empty" => Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()),
        _ => Reply::Raw(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()),
    }
    });
    let mut h = Harness::new(cfg());
    assert_eq!(h.push(task(1, &server.url("/chunked"))), PushOutcome::Delivered { status: 200 });
    assert_eq!(h.push(task(2, &server.url("/length"))), PushOutcome::Delivered { status: 201 });
    assert_eq!(h.push(task(3, &server.url("/chunked"))), PushOutcome::Delivered { status: 200 });
    assert_eq!(h.push(task(4, &server.url("/empty"))), PushOutcome::Delivered { status: 200 });
    // Both framings were read to their end: one connection served all four.
    assert_eq!(server.accepted(), 1);
}

#[test]
fn a_long_answer_body_is_not_read_and_costs_the_connection() {
    let big = RESPONSE_BODY_BYTES_MAX + 1;
    let server = Server::start(move |_| {
        let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {big}\r\n\r\n").into_bytes();
        r.resize(r.len() + big, b'x');
        Reply::Raw(r)
    });
    let mut h = Harness::new(cfg());
    assert!(h.push(task(1, &server.url("/"))).is_delivered());
    assert!(h.push(task(2, &server.url("/"))).is_delivered());
    assert_eq!(server.accepted(), 2);
}

#[test]
fn garbage_answers_fail_without_harm() {
    let server = Server::start(|r| match r.path.as_str() {
        "/garbage" => Reply::RawThenClose(b"garbage\r\n\r\n".to_vec()),
        "/binary" => Reply::RawThenClose(vec![0, 159, 146, 150, 255, 13, 10, 13, 10]),
        "/bad-length" => Reply::RawThenClose(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n".to_vec()),
        "/cut" => Reply::RawThenClose(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec()),
        "/silent-close" => Reply::RawThenClose(Vec::new()),
        _ => Reply::Raw(ok200()),
    });
    let mut h = Harness::new(cfg());
    for (i, path) in ["/garbage", "/binary", "/bad-length", "/cut", "/silent-close"].into_iter().enumerate() {
        let o = h.push(task(i as u64, &server.url(path)));
        let (status, reason, retryable) = failed(&o);
        assert_eq!(status, None, "{path}");
        assert!(retryable, "{path}: {reason}");
    }
    assert!(h.push(task(9, &server.url("/fine"))).is_delivered(), "the pool still works");
}

#[test]
fn per_endpoint_concurrency_is_bounded_and_other_endpoints_keep_flowing() {
    let slow = Server::start(|_| Reply::HoldThen200);
    let fast = Server::start(|_| Reply::Raw(ok200()));
    let mut h = Harness::new(PushConfig { workers: 4, endpoint_concurrency: 2, ..cfg() });
    for id in 0..6 {
        h.handle.submit(task(id, &slow.url("/"))).unwrap();
    }
    // Two requests arrive and are held; a third must not start.
    let held: Vec<Req> = (0..2).map(|_| slow.next_request()).collect();
    assert_ne!(held[0].conn, held[1].conn);
    assert!(
        slow.requests.recv_timeout(Duration::from_millis(300)).is_err(),
        "a third request started while two were in flight"
    );
    // The slow endpoint holds 2 workers; the other 2 serve another endpoint.
    h.handle.submit(task(100, &fast.url("/"))).unwrap();
    assert_eq!(h.outcomes(1), vec![(100, PushOutcome::Delivered { status: 200 })]);
    // Let the slow endpoint go, one answer at a time.
    for _ in 0..6 {
        slow.release.send(()).unwrap();
    }
    let mut done = h.outcomes(6);
    done.sort_by_key(|(id, _)| *id);
    assert!(done.iter().all(|(_, o)| o.is_delivered()), "{done:?}");
    assert_eq!(done.iter().map(|(id, _)| *id).collect::<Vec<_>>(), (0..6).collect::<Vec<_>>());
    assert!(slow.max_open.load(Ordering::SeqCst) <= 2, "{} connections", slow.max_open.load(Ordering::SeqCst));
    assert_eq!(slow.accepted(), 2, "the two connections carried all six pushes");
}

#[test]
fn the_queue_is_bounded_per_shard() {
    let server = Server::start(|_| Reply::HoldThen200);
    let mut h = Harness::new(PushConfig { workers: 1, queue_len: 3, ..cfg() });
    assert_eq!(h.handle.room(), 3);
    for id in 0..3 {
        h.handle.submit(task(id, &server.url("/"))).unwrap();
    }
    let refused = h.handle.submit(task(3, &server.url("/"))).expect_err("queue full");
    assert_eq!(refused.id, 3, "the task comes back");
    assert_eq!((h.handle.outstanding(), h.handle.room()), (3, 0), "no room: the shard builds no task");
    // Finished but not yet taken still counts: room comes back with take_outcomes.
    server.next_request();
    server.release.send(()).unwrap();
    let first = h.outcomes(1);
    assert_eq!(first[0].0, 0);
    assert_eq!(h.handle.room(), 1);
    h.handle.submit(refused).expect("room again");
    for _ in 0..3 {
        server.release.send(()).unwrap();
    }
    let rest = h.outcomes(3);
    assert!(rest.iter().all(|(_, o)| o.is_delivered()));
    assert_eq!(h.handle.outstanding(), 0);
}

#[test]
fn outcomes_go_to_the_submitting_shard() {
    let server = Server::start(|_| Reply::Raw(ok200()));
    let polls: Vec<Poll> = (0..2).map(|_| Poll::new().unwrap()).collect();
    let wakers = polls.iter().map(|p| Arc::new(Waker::new(p.registry(), Token(7)).unwrap())).collect();
    let pool = PushPool::new(cfg(), wakers).unwrap();
    let (a, b) = (pool.handle(0), pool.handle(1));
    b.submit(task(42, &server.url("/"))).unwrap();
    let mut polls = polls;
    let mut events = Events::with_capacity(4);
    polls[1].poll(&mut events, Some(EVENT_WAIT)).unwrap();
    assert!(events.iter().any(|e| e.token() == Token(7)), "shard 1 was woken");
    let mut out = Vec::new();
    b.take_outcomes(&mut out);
    assert_eq!(out, vec![(42, PushOutcome::Delivered { status: 200 })]);
    a.take_outcomes(&mut out);
    assert_eq!(out.len(), 1, "nothing for shard 0");
    polls[0].poll(&mut events, Some(Duration::ZERO)).unwrap();
    assert!(events.is_empty(), "shard 0 was not woken");
    pool.shutdown();
}

#[test]
fn shutdown_cuts_in_flight_pushes_short_and_joins() {
    let server = Server::start(|_| Reply::Hang);
    let mut h = Harness::new(PushConfig { workers: 3, ..cfg() });
    let mut t = task(1, &server.url("/"));
    t.timeout = Duration::from_secs(60);
    h.handle.submit(t).unwrap();
    server.next_request();
    let start = Instant::now();
    h.pool.take().unwrap().shutdown();
    assert!(start.elapsed() < Duration::from_secs(5), "shutdown took {:?}", start.elapsed());
    // The cut-short push reported a retryable failure before its worker exited.
    let mut out = Vec::new();
    h.handle.take_outcomes(&mut out);
    assert_eq!(out.len(), 1);
    assert!(failed(&out[0].1).2);
    // After shutdown, submit gives tasks back.
    assert!(h.handle.submit(task(2, &server.url("/"))).is_err());
}

/// What the topic engine will do: retry a failing endpoint on the
/// strategy's schedule (scaled to milliseconds), then give up.
#[test]
fn retry_schedules_against_a_failing_endpoint() {
    let server = Server::start(|_| Reply::Raw(b"HTTP/1.1 500 Internal\r\nContent-Length: 0\r\n\r\n".to_vec()));
    let mut h = Harness::new(cfg());
    for (strategy, attempts) in [(NotifyStrategy::BackoffRetry, 4), (NotifyStrategy::ExponentialDecayRetry, 177)] {
        let scale = if strategy == NotifyStrategy::BackoffRetry { 0.001 } else { 0.00001 };
        let delivery = 1000 + attempts as u64;
        let mut failures = 0u32;
        let start = Instant::now();
        let mut waited = Duration::ZERO;
        loop {
            let o = h.push(task(delivery, &server.url("/")));
            assert!(failed(&o).2);
            failures += 1;
            let Some(wait) = next_retry_scaled(strategy, failures, delivery, scale) else { break };
            waited += wait;
            // The engine's timer: the wait is the schedule itself.
            std::thread::sleep(wait);
        }
        assert_eq!(failures, attempts, "{strategy:?}: first attempt plus retries");
        if strategy == NotifyStrategy::BackoffRetry {
            assert!(waited >= Duration::from_millis(30) && waited <= Duration::from_millis(60), "{waited:?}");
        } else {
            // 86,015 s of waiting, scaled by 1e-5.
            assert_eq!(waited, Duration::from_micros(860_150));
        }
        assert!(start.elapsed() >= waited);
    }
    assert_eq!(server.accepted(), 1, "every retry reused the connection");
}

#[test]
fn https_push_to_a_receiver_behind_a_private_ca() {
    let server = Server::start_tls(|_| Reply::Raw(ok200()));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, CA_PEM).unwrap();
    let mut h = Harness::new(PushConfig { tls_ca_file: Some(ca.to_str().unwrap().to_string()), ..cfg() });
    let url = format!("https://127.0.0.1:{}/secure", server.addr.port());
    for id in 0..3 {
        assert_eq!(h.push(task(id, &url)), PushOutcome::Delivered { status: 200 });
    }
    let got = server.next_request();
    assert_eq!((got.path.as_str(), got.body.as_slice()), ("/secure", &b"hello"[..]));
    assert_eq!(server.accepted(), 1, "one TLS connection, kept alive");
}

#[test]
fn https_with_an_untrusted_certificate_fails_and_may_be_retried() {
    let server = Server::start_tls(|_| Reply::Raw(ok200()));
    let mut h = Harness::new(cfg());
    let o = h.push(task(1, &format!("https://127.0.0.1:{}/", server.addr.port())));
    let (status, reason, retryable) = failed(&o);
    assert_eq!(status, None);
    assert!(retryable);
    assert!(reason.contains("TLS handshake") && reason.contains("certificate"), "{reason}");
}

#[test]
fn a_bad_ca_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").unwrap();
    for path in [empty, dir.path().join("missing.pem")] {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let cfg = PushConfig { tls_ca_file: Some(path.to_str().unwrap().to_string()), ..cfg() };
        let err = PushPool::new(cfg, vec![waker]).err().expect("refused");
        assert!(err.to_string().contains("tls_ca_file"), "{err}");
    }
}

/// Pushes per second to one fast local receiver (4 workers, 4 connections).
/// A measurement, not a check: `cargo test --release --test push_http -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput_against_a_local_receiver() {
    const PUSHES: u64 = 50_000;
    let server = Server::start(|_| Reply::Raw(ok200()));
    let mut h = Harness::new(cfg());
    let url = server.url("/");
    let body = Bytes::from(vec![b'x'; 256]);
    let start = Instant::now();
    let (mut next, mut done) = (0u64, 0u64);
    let mut out = Vec::new();
    while done < PUSHES {
        while next < PUSHES {
            let t = PushTask { id: next, url: url.clone(), body: body.clone(), ..task(next, &url) };
            if h.handle.submit(t).is_err() {
                break;
            }
            next += 1;
        }
        h.handle.take_outcomes(&mut out);
        if out.is_empty() {
            h.poll.poll(&mut h.events, Some(EVENT_WAIT)).unwrap();
        }
        assert!(out.iter().all(|(_, o)| o.is_delivered()));
        done += out.len() as u64;
        out.clear();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{PUSHES} pushes of 256 B in {secs:.2} s: {:.0}/s over {} connections",
        PUSHES as f64 / secs,
        server.accepted()
    );
}
