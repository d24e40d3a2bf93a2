//! TLS on the client port and HTTPS on the HTTP port (`cmqd --tls-cert
//! --tls-key [--tls-client-ca]`), with a CA the tests make themselves:
//! the Rust client end to end (several shards, so connections are handed
//! between shards with their TLS sessions), mutual TLS, the refusals
//! between plaintext and TLS ends, authentication bound to the TLS
//! session (RFC 9266 tls-exporter), and HTTPS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cmq_client::{Client, ClientError, Credentials, TlsOptions};
use cmq_integration_tests::python::{Script, SDK_VENV};
use cmq_integration_tests::tls::TestPki;
use cmq_integration_tests::{AdminBroker, Broker};
use cmq_protocol::auth::{self, AUTH_NONCE_BYTES, CLIENT_MAC_LABEL, SERVER_MAC_LABEL};
use cmq_protocol::frame;
use cmq_protocol::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const T: Option<Duration> = Some(Duration::from_secs(10));

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn trusting(pki: &TestPki) -> TlsOptions {
    TlsOptions::new(Some(&pki.ca), None).expect("tls options")
}

/// Send, receive and delete on every shard's connection over TLS.
fn round_trip(c: &mut Client, queue: &str) {
    c.create_queue(queue, &Default::default()).expect("create");
    c.send(queue, &b"over tls"[..], 0).expect("send");
    let m = c.receive(queue, Some(0)).expect("receive").expect("a message");
    assert_eq!(&m.body[..], b"over tls");
    c.delete_message(queue, m.receipt_handle).expect("delete");
}

#[test]
fn the_rust_client_works_over_tls_on_every_shard() {
    let pki = TestPki::new();
    let b = Broker::start(&[&args(&pki.server_args())[..], &["--shards", "2"]].concat());
    let mut c = Client::connect_secure(b.addr, T, None, Some(trusting(&pki))).expect("TLS connect");
    // Queues on both shards: each shard's connection is handed over with its TLS session.
    for shard in 0..2 {
        round_trip(&mut c, &cmq_integration_tests::name_on_shard("q", shard, 2));
    }
    // Large frames cross many TLS records both ways.
    c.create_queue("big", &Default::default()).expect("create");
    let body = vec![7u8; 60 * 1024];
    c.send("big", body.clone(), 0).expect("send big");
    let m = c.receive("big", Some(0)).expect("receive").expect("a message");
    assert_eq!(m.body.len(), body.len());
    assert!(m.body.iter().all(|b| *b == 7));
    // The name in the certificate is checked: "localhost" is in it too.
    let by_name = format!("localhost:{}", b.addr.port());
    Client::connect_secure(by_name.as_str(), T, None, Some(trusting(&pki))).expect("by name");
}

#[test]
fn plaintext_and_tls_ends_refuse_each_other_clearly() {
    let pki = TestPki::new();
    let tls = Broker::start(&args(&pki.server_args()));
    let Err(e) = Client::connect_with_timeout(tls.addr, T) else { panic!("plaintext client refused") };
    assert_eq!(e.code(), Some(ErrorCode::TLS_REQUIRED), "{e}");
    assert!(e.to_string().contains("TLS"), "{e}");

    let plain = Broker::start(&[]);
    let Err(e) = Client::connect_secure(plain.addr, T, None, Some(trusting(&pki))) else {
        panic!("TLS client refused")
    };
    assert!(matches!(e, ClientError::Handshake { .. }), "{e:?}");
    assert!(e.to_string().contains("is its port plaintext"), "{e}");
    // Both brokers still serve their own kind.
    Client::connect_with_timeout(plain.addr, T).expect("plaintext to plaintext");
    Client::connect_secure(tls.addr, T, None, Some(trusting(&pki))).expect("TLS to TLS");
}

#[test]
fn an_untrusted_or_misnamed_certificate_is_refused() {
    let pki = TestPki::new();
    let b = Broker::start(&args(&pki.server_args()));
    let other = TlsOptions::new(Some(&pki.other_ca), None).expect("options");
    let Err(e) = Client::connect_secure(b.addr, T, None, Some(other)) else { panic!("untrusted") };
    assert!(e.to_string().contains("certificate"), "{e}");
    let misnamed = trusting(&pki).with_server_name("elsewhere.test").expect("name");
    let Err(e) = Client::connect_secure(b.addr, T, None, Some(misnamed)) else { panic!("wrong name") };
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[test]
fn mutual_tls_admits_only_certificates_from_the_client_ca() {
    let pki = TestPki::new();
    let b = Broker::start(&args(&pki.mtls_server_args()));
    let with = |cert: &std::path::Path, key: &std::path::Path| {
        TlsOptions::new(Some(&pki.ca), Some((cert, key))).expect("options")
    };
    let mut c = Client::connect_secure(b.addr, T, None, Some(with(&pki.client_cert, &pki.client_key)))
        .expect("a certificate from the client CA");
    round_trip(&mut c, "mtls");
    // TLS 1.3 clients learn of a refused certificate on their first read.
    let no_cert = Client::connect_secure(b.addr, T, None, Some(trusting(&pki)));
    assert!(no_cert.is_err(), "no client certificate");
    let stranger = Client::connect_secure(b.addr, T, None, Some(with(&pki.stranger_cert, &pki.stranger_key)));
    assert!(stranger.is_err(), "a certificate from another CA");
}

/// A TLS session of the test's own, to tamper with what the client sends.
struct TlsRaw {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: BytesMut,
}

impl TlsRaw {
    fn connect(addr: SocketAddr, pki: &TestPki, alpn: Option<&[u8]>) -> TlsRaw {
        TlsRaw::connect_from(addr, [127, 0, 0, 1], pki, alpn)
    }

    /// From a loopback source address of its own: one test's refused
    /// attempts put only that address in the broker's failure backoff.
    fn connect_from(addr: SocketAddr, source: [u8; 4], pki: &TestPki, alpn: Option<&[u8]>) -> TlsRaw {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&pki.ca).expect("ca") {
            roots.add(c.expect("pem")).expect("add");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.into_iter().map(|a| a.to_vec()).collect();
        let name = ServerName::try_from("localhost").expect("name");
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.bind(&SocketAddr::from((source, 0)).into()).expect("bind source");
        socket.connect(&addr.into()).expect("connect");
        let tcp: TcpStream = socket.into();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).expect("TLS handshake");
        }
        TlsRaw { s, buf: BytesMut::new() }
    }

    fn binding(&self) -> [u8; 32] {
        self.s.conn.export_keying_material([0u8; 32], auth::TLS_EXPORTER_LABEL, None).expect("exporter")
    }

    /// One request and its answer (Err: the error frame's code).
    fn call(&mut self, req: Request) -> Result<Response, ErrorCode> {
        let mut out = Vec::new();
        req.encode_frame(1, &mut out);
        self.s.write_all(&out).expect("write");
        loop {
            if let Some(total) = frame::check(&self.buf).expect("valid frame") {
                let (h, payload): (_, Bytes) = frame::split(&mut self.buf, total);
                if h.is_error() {
                    return Err(ErrorBody::decode_payload(payload).expect("error").code());
                }
                return Ok(Response::decode(h.opcode, payload).expect("response"));
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("read");
            assert!(n > 0, "closed before answering");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Challenge and Authenticate with the MAC over `binding`; the broker's answer.
    fn authenticate(&mut self, id: &str, key: &str, binding: &[u8]) -> (Result<Response, ErrorCode>, Vec<u8>) {
        let nonce = match self.call(Request::AuthChallenge(AuthChallenge {})) {
            Ok(Response::AuthChallenge(c)) => c.server_nonce,
            other => panic!("challenge answered {other:?}"),
        };
        let client_nonce = [9u8; AUTH_NONCE_BYTES];
        let ts = cmq_integration_tests::auth::unix_ms();
        let t = auth::transcript(&nonce, &client_nonce, id, ts, binding);
        let mac = auth::mac(key.as_bytes(), CLIENT_MAC_LABEL, &t);
        let req = Authenticate {
            secret_id: id.to_owned(),
            client_nonce: Bytes::copy_from_slice(&client_nonce),
            timestamp_ms: ts,
            mac: Bytes::copy_from_slice(&mac),
        };
        (self.call(Request::Authenticate(req)), t)
    }
}

#[test]
fn authentication_over_tls_is_bound_to_the_tls_session() {
    let pki = TestPki::new();
    let b = AdminBroker::start(&args(&pki.server_args()));
    let (id, key) = (b.secret_id.clone(), b.secret_key.clone());

    // The Rust client binds its MAC to the session, and checks the broker's.
    let creds = Credentials::new(&id, &key);
    let mut c = Client::connect_secure(b.addr(), T, Some(creds), Some(trusting(&pki))).expect("authenticated over TLS");
    round_trip(&mut c, "bound");

    // The right binding: accepted, and the broker's proof covers it too.
    let mut good = TlsRaw::connect(b.addr(), &pki, None);
    let binding = good.binding();
    let (answer, t) = good.authenticate(&id, &key, &binding);
    match answer {
        Ok(Response::Authenticate(ok)) => {
            assert!(auth::verify(key.as_bytes(), SERVER_MAC_LABEL, &t, &ok.server_mac), "server proof")
        }
        other => panic!("right binding refused: {other:?}"),
    }
    // No binding (as over plaintext), or another session's: refused.
    let mut none = TlsRaw::connect_from(b.addr(), [127, 0, 0, 51], &pki, None);
    assert_eq!(none.authenticate(&id, &key, b"").0.err(), Some(ErrorCode::AUTH_FAILED));
    let mut relayed = TlsRaw::connect_from(b.addr(), [127, 0, 0, 52], &pki, None);
    assert_eq!(relayed.authenticate(&id, &key, &binding).0.err(), Some(ErrorCode::AUTH_FAILED));
}

#[test]
fn the_http_port_serves_https_with_the_same_certificate() {
    let pki = TestPki::new();
    let b = Broker::start(&args(&pki.server_args()));
    let http = b.http_addr.expect("HTTP port");
    let mut s = TlsRaw::connect(http, &pki, Some(b"http/1.1"));
    s.s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("request");
    let mut reply = Vec::new();
    let _ = s.s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // The console's session cookie is marked Secure over HTTPS.
    let mut s = TlsRaw::connect(http, &pki, Some(b"http/1.1"));
    s.s.write_all(b"GET /api/v1/session HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("request");
    let mut reply = Vec::new();
    let _ = s.s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    let cookie = reply.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap_or("");
    assert!(cookie.contains("cmq_session=") && cookie.ends_with("; Secure"), "{reply}");
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let mut plain = TcpStream::connect(http).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "plain HTTP must not be served");
}

/// `$CMQ_LOADGEN_BIN`, else `cmq-loadgen` next to cmqd (`cargo build --bins` builds both).
fn loadgen_path() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("CMQ_LOADGEN_BIN") {
        return p.into();
    }
    cmq_integration_tests::broker::cmqd_path().with_file_name("cmq-loadgen")
}

#[test]
fn the_load_generator_runs_authenticated_over_tls_and_loses_nothing() {
    let pki = TestPki::new();
    let b = AdminBroker::start(&[&args(&pki.server_args())[..], &["--shards", "2"]].concat());
    let dir = tempfile::tempdir().expect("tmp");
    let report = dir.path().join("report.json");
    let out = std::process::Command::new(loadgen_path())
        .args(["--server", &b.addr().to_string(), "--tls", "--ca-file"])
        .arg(&pki.ca)
        .arg("--credentials")
        .arg(&b.creds_file)
        .args(["--mode", "cycle", "--messages", "5000", "--producers", "2", "--consumers", "2", "--verify"])
        .arg("--json")
        .arg(&report)
        .output()
        .expect("run cmq-loadgen");
    let why = format!("{:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{why}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    // --verify: every acknowledged send was received, none twice.
    assert_eq!(r["acked_total"].as_f64(), Some(5000.0), "{why}");
    assert_eq!(r["lost"].as_f64(), Some(0.0), "{why}");
    assert_eq!(r["duplicated"].as_f64(), Some(0.0), "{why}");
    // Without --tls the same run is refused at once, with the reason.
    let out = std::process::Command::new(loadgen_path())
        .args(["--server", &b.addr().to_string(), "--messages", "10"])
        .output()
        .expect("run cmq-loadgen");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The real CMQ Python SDK (`make sdk-venv`) against the gateway over HTTPS:
/// every queue action of tests/cmq_sdk/queues.py, trusting the test CA
/// through `SSL_CERT_FILE` (the SDK uses Python's default TLS context).
#[test]
fn the_python_cmq_sdk_works_over_https() {
    let pki = TestPki::new();
    let b = AdminBroker::start(&args(&pki.server_args()));
    let creds = Credentials::new(&b.secret_id, &b.secret_key);
    let mut admin = Client::connect_secure(b.addr(), T, Some(creds), Some(trusting(&pki))).expect("admin over TLS");
    let policy = r#"{"version":"2.0","statement":[
        {"effect":"allow","action":["cmq:*"],"resource":["*"]},
        {"effect":"deny","action":["cmq:SendMessage"],"resource":["*"]}]}"#;
    let limited = admin.create_key("nosend", policy).expect("key");
    for q in ["mixin", "mixout"] {
        admin.create_queue(q, &Default::default()).expect("queue");
    }
    admin.send("mixin", &b"from-binary"[..], 0).expect("send");
    let endpoint = format!("https://{}", b.broker.http_addr.expect("HTTP port"));
    let cwd = tempfile::tempdir().expect("tmp"); // the SDK writes its log file into the working directory
    Script::new(SDK_VENV, "tests/cmq_sdk/queues.py")
        .args([endpoint.as_str(), &b.secret_id, &b.secret_key, &limited.secret_id, &limited.secret_key])
        .env("SSL_CERT_FILE", &pki.ca)
        .current_dir(cwd.path())
        .run(0);
    let m = admin.receive("mixout", Some(0)).expect("receive").expect("the SDK's message");
    assert_eq!(&m.body[..], b"from-http");
}

/// PROTOCOL.md §4 "TLS": over `--max-connections` a TLS port answers with a
/// TLS alert, not the plaintext frame a TLS client would read as garbage;
/// the client says the broker refused it at its limit; a connection closed
/// frees a place.
#[test]
fn a_tls_port_at_its_connection_limit_refuses_in_tls() {
    let pki = TestPki::new();
    let b = Broker::start(&[&args(&pki.server_args())[..], &["--shards", "1", "--max-connections", "1"]].concat());
    let mut first = Client::connect_secure(b.addr, T, None, Some(trusting(&pki))).expect("the one place");
    let Err(e) = Client::connect_secure(b.addr, T, None, Some(trusting(&pki))) else { panic!("over the limit") };
    assert!(matches!(e, ClientError::Handshake { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("connection limit") && !text.contains("plaintext"), "{text}");
    // A raw socket sees exactly the alert record, then the end of the stream.
    let mut raw = TcpStream::connect(b.addr).expect("connect");
    raw.set_read_timeout(T).expect("timeout");
    let mut got = Vec::new();
    raw.read_to_end(&mut got).expect("read to the end");
    assert_eq!(got, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50], "a fatal internal_error alert");
    round_trip(&mut first, "still-served");
    drop(first);
    cmq_integration_tests::poll_until(Duration::from_secs(10), "the place is free again", || {
        Client::connect_secure(b.addr, T, None, Some(trusting(&pki))).map_err(|e| e.to_string())
    });
}

/// What the broker charges a TLS session to the buffer budget
/// (`tls::transport::TLS_SESSION_BYTES_MAX`, docs/SECURITY.md): 240 KiB.
const TLS_SESSION_CHARGE: f64 = 240.0 * 1024.0;

/// `cmq_connection_buffer_bytes` summed over the shards, scraped over HTTPS.
fn buffer_bytes(b: &Broker, pki: &TestPki) -> f64 {
    let mut s = TlsRaw::connect(b.http_addr.expect("HTTP port"), pki, Some(b"http/1.1"));
    s.s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("request");
    let mut reply = Vec::new();
    let _ = s.s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    let lines = reply.lines().filter(|l| l.starts_with("cmq_connection_buffer_bytes{"));
    lines.map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).expect("a value")).sum()
}

/// What rustls may hold for a connection counts against
/// `--buffer-budget-bytes` from the first byte to the close, so TLS
/// connections cannot hold memory the budget does not see.
#[test]
fn tls_sessions_are_charged_to_the_buffer_budget() {
    const CONNS: usize = 16;
    let pki = TestPki::new();
    let b = Broker::start(&[&args(&pki.server_args())[..], &["--shards", "2"]].concat());
    let before = buffer_bytes(&b, &pki);
    let conns: Vec<TlsRaw> = (0..CONNS).map(|_| TlsRaw::connect(b.addr, &pki, None)).collect();
    let charged = CONNS as f64 * TLS_SESSION_CHARGE;
    cmq_integration_tests::poll_until(Duration::from_secs(10), "the sessions are charged", || {
        let now = buffer_bytes(&b, &pki);
        (now >= before + charged).then_some(()).ok_or(format!("{now} bytes charged, {before} before"))
    });
    drop(conns);
    cmq_integration_tests::poll_until(Duration::from_secs(10), "the charges are returned", || {
        let now = buffer_bytes(&b, &pki);
        (now < before + TLS_SESSION_CHARGE).then_some(()).ok_or(format!("{now} bytes charged, {before} before"))
    });
}

/// A connection's base read buffer (`shard::conn::READ_CHUNK_BYTES`).
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A TLS session over the client port (no cmq handshake), or the client's error.
fn tls_session(
    addr: SocketAddr,
    pki: &TestPki,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, ClientError> {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(T).expect("timeout");
    trusting(pki).handshake(&addr.to_string(), tcp)
}

/// The charge is taken before the session is made: at the smallest budget
/// no more TLS connections are admitted than it has room for; the next is
/// refused with the TLS alert (the client names the budget), and a closed
/// one makes room again.
#[test]
fn a_tls_connection_the_budget_has_no_room_for_is_refused() {
    let budget = 2 * u64::from(cmq_protocol::limits::FRAME_BYTES_MAX);
    let fit = (budget as f64 / TLS_SESSION_CHARGE) as usize;
    let pki = TestPki::new();
    let flags = ["--shards", "1", "--buffer-budget-bytes", &budget.to_string()].map(str::to_owned);
    let b = Broker::start(&args(&[pki.server_args(), flags.to_vec()].concat()));
    let mut open = Vec::new();
    let refused = loop {
        match tls_session(b.addr, &pki) {
            Ok(s) => open.push(s),
            Err(e) => break e,
        }
        assert!(open.len() <= fit, "{} TLS sessions admitted; a {budget}-byte budget has room for {fit}", open.len());
    };
    assert!(open.len() >= fit / 2, "only {} of {fit} TLS sessions admitted", open.len());
    let text = refused.to_string();
    assert!(text.contains("--buffer-budget-bytes") && !text.contains("plaintext"), "{text}");
    // Within the budget, but for the one read chunk each connection's
    // buffer holds (charged as it is used, never refused: ARCHITECTURE.md).
    let (charged, chunks) = (buffer_bytes(&b, &pki), (open.len() * READ_CHUNK_BYTES) as f64);
    assert!(charged >= open.len() as f64 * TLS_SESSION_CHARGE, "{charged} bytes charged for {}", open.len());
    assert!(charged <= budget as f64 + chunks, "{charged} bytes charged, {budget} budget, {} open", open.len());
    open.truncate(open.len() - 4);
    cmq_integration_tests::poll_until(Duration::from_secs(10), "room for a TLS session again", || {
        tls_session(b.addr, &pki).map_err(|e| e.to_string())
    });
}
