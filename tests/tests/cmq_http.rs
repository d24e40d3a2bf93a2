//! The CMQ API 2.0 gateway over raw HTTP: the signature computed here from
//! the spec's algorithm (its test vectors, both hashes), timestamps and
//! replays, anonymous access, and abuse (oversized bodies, header floods,
//! slow clients, bad encodings, bad indexed lists, unknown actions and
//! methods), each answered as documented while the broker keeps serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine;
use cmq_integration_tests::{AdminBroker, Broker};
use hmac::{Hmac, KeyInit, Mac};

const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The spec's §3 string to sign: METHOD + HOST + PATH + "?" + sorted k=v
/// pairs (`_` in keys as `.`, values raw, `Signature` left out).
fn string_to_sign(method: &str, host: &str, params: &[(&str, String)]) -> String {
    let mut sorted: Vec<&(&str, String)> = params.iter().filter(|(k, _)| *k != "Signature").collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let pairs: Vec<String> = sorted.iter().map(|(k, v)| format!("{}={v}", k.replace('_', "."))).collect();
    format!("{method}{host}/v2/index.php?{}", pairs.join("&"))
}

fn hmac_b64(sha256: bool, key: &str, text: &str) -> String {
    let raw = if sha256 {
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("key");
        m.update(text.as_bytes());
        m.finalize().into_bytes().to_vec()
    } else {
        let mut m = Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).expect("key");
        m.update(text.as_bytes());
        m.finalize().into_bytes().to_vec()
    };
    base64::engine::general_purpose::STANDARD.encode(raw)
}

#[test]
fn spec_signature_vectors() {
    let params = |method: &str| {
        vec![
            ("Action", "SendMessage".to_owned()),
            ("Nonce", "12345".into()),
            ("RequestClient", "SDK_Python_1.3".into()),
            ("SecretId", "AKIDexample".into()),
            ("SignatureMethod", method.into()),
            ("Timestamp", "1700000000".into()),
            ("delaySeconds", "0".into()),
            ("msgBody", "hello world".into()),
            ("queueName", "q1".into()),
        ]
    };
    let text = string_to_sign("POST", "127.0.0.1:9876", &params("HmacSHA1"));
    assert_eq!(hmac_b64(false, "secretKeyExample", &text), "0gnPkJNbgnlEC3inLbCl1C+eQgY=");
    let text = string_to_sign("POST", "127.0.0.1:9876", &params("HmacSHA256"));
    assert_eq!(hmac_b64(true, "secretKeyExample", &text), "hiAGHO9myUo9YCBwmeYRQCU/pa9lZtwLmRRxCiz5rrQ=");
}

/// A key and the host it signs for.
struct Signer {
    id: String,
    key: String,
    host: String,
    sha256: bool,
}

impl Signer {
    /// The form body of a signed request: `params` plus the common ones.
    fn body(&self, method: &str, params: &[(&str, &str)], timestamp: u64, nonce: u64) -> String {
        let mut all: Vec<(&str, String)> = params.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        all.push(("SecretId", self.id.clone()));
        all.push(("Timestamp", timestamp.to_string()));
        all.push(("Nonce", nonce.to_string()));
        all.push(("SignatureMethod", if self.sha256 { "HmacSHA256" } else { "HmacSHA1" }.into()));
        let sig = hmac_b64(self.sha256, &self.key, &string_to_sign(method, &self.host, &all));
        all.push(("Signature", sig));
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &all {
            form.append_pair(k, v);
        }
        form.finish()
    }
}

fn now_secs() -> u64 {
    cmq_integration_tests::auth::unix_ms() / 1000
}

/// One raw HTTP exchange on a fresh connection: (status, body).
fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let _ = s.write_all(raw);
    read_reply(&mut s)
}

fn read_reply(s: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(r) = complete_reply(&buf) {
            return r;
        }
    }
    complete_reply(&buf).unwrap_or_else(|| panic!("no complete reply: {:?}", String::from_utf8_lossy(&buf)))
}

/// A whole response (headers and Content-Length body) at the start of `buf`.
fn complete_reply(buf: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().ok()))
        .flatten()?;
    (body.len() >= len).then(|| (status, body[..len].to_owned()))
}

fn post(addr: SocketAddr, host: &str, body: &str) -> (u16, serde_json::Value) {
    let raw = format!("POST /v2/index.php HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let (status, text) = exchange(addr, raw.as_bytes());
    assert_eq!(status, 200, "{text}");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

fn code(v: &serde_json::Value) -> i64 {
    v["code"].as_i64().unwrap_or_else(|| panic!("no code: {v}"))
}

fn keyed() -> (AdminBroker, SocketAddr, Signer) {
    let b = AdminBroker::start(&[]);
    let http = b.broker.http_addr.expect("HTTP port");
    let signer = Signer { id: b.secret_id.clone(), key: b.secret_key.clone(), host: http.to_string(), sha256: false };
    (b, http, signer)
}

#[test]
fn signed_requests_timestamps_and_replays() {
    let (_b, http, mut s) = keyed();
    let host = s.host.clone();
    let t = now_secs();
    let (_, v) = post(http, &host, &s.body("POST", &[("Action", "CreateQueue"), ("queueName", "hq")], t, 1));
    assert_eq!(code(&v), 0, "{v}");
    assert!(v["requestId"].is_string() && v["queueId"].is_string() && v["message"] == "", "{v}");
    s.sha256 = true;
    let send = s.body("POST", &[("Action", "sendmessage"), ("queueName", "hq"), ("msgBody", "a b&c=d")], t, 2);
    let (_, v) = post(http, &host, &send);
    assert_eq!(code(&v), 0, "{v}");
    let (_, v) = post(http, &host, &send);
    assert_eq!(code(&v), 4100, "the same (SecretId, Nonce, Timestamp) again is a replay: {v}");
    for stale in [t - 301, t + 301] {
        let (_, v) = post(http, &host, &s.body("POST", &[("Action", "ListQueue")], stale, 3));
        assert_eq!(code(&v), 4100, "timestamp {stale} vs {t}: {v}");
    }
    let (_, v) = post(http, &host, &s.body("POST", &[("Action", "ListQueue")], t - 290, 3));
    assert_eq!(code(&v), 0, "within 300 s: {v}");
    // GET: the same pairs in the query string, GET signed.
    let query = s.body("GET", &[("Action", "ReceiveMessage"), ("queueName", "hq"), ("pollingWaitSeconds", "0")], t, 4);
    let raw = format!("GET /v2/index.php?{query} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let (status, text) = exchange(http, raw.as_bytes());
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!((status, code(&v), v["msgBody"].as_str()), (200, 0, Some("a b&c=d")), "{v}");
    // Signed for another host.
    let other = Signer { host: "elsewhere:1".into(), ..s };
    let (_, v) = post(http, &host, &other.body("POST", &[("Action", "ListQueue")], t, 5));
    assert_eq!(code(&v), 4100, "{v}");
    let (_, v) = post(http, &host, &format!("Action=ListQueue&Timestamp={t}&Nonce=6&Signature=x"));
    assert_eq!((code(&v), v["message"].as_str().unwrap_or("").starts_with("(10390)")), (4000, true), "{v}");
}

/// Without keys on loopback (`--auth auto`) the binary protocol serves
/// anonymous clients; so does the gateway, whatever the signature.
#[test]
fn anonymous_access_where_the_binary_protocol_allows_it() {
    let b = Broker::start(&[]);
    let http = b.http_addr.expect("HTTP port");
    let t = now_secs();
    let body = format!("Action=CreateQueue&queueName=anon&SecretId=AKIDany&Timestamp={t}&Nonce=1&Signature=anything");
    let (_, v) = post(http, &http.to_string(), &body);
    assert_eq!(code(&v), 0, "{v}");
}

#[test]
fn abuse_gets_documented_answers_and_others_are_still_served() {
    let (_b, http, s) = keyed();
    let host = s.host.clone();
    let t = now_secs();
    let mut nonce = 100;
    let mut call = |params: &[(&str, &str)]| {
        nonce += 1;
        post(http, &host, &s.body("POST", params, t, nonce)).1
    };
    assert_eq!(code(&call(&[("Action", "CreateQueue"), ("queueName", "abq")])), 0);

    // A keep-alive connection that then sits idle longer than a head may take.
    let mut idle = TcpStream::connect(http).expect("connect");
    idle.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let request = |body: String| {
        format!("POST /v2/index.php HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    };
    idle.write_all(request(s.body("POST", &[("Action", "ListQueue")], t, 1)).as_bytes()).expect("send");
    assert_eq!(read_reply(&mut idle).0, 200);
    // A client whose request head never completes.
    let mut partial = TcpStream::connect(http).expect("connect");
    partial.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    partial.write_all(b"POST /v2/index.php HTTP/1.1\r\nHost: x\r\n").expect("send");
    // A slow client: its body never completes. Others are served meanwhile.
    let mut slow = TcpStream::connect(http).expect("connect");
    slow.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    slow.write_all(b"POST /v2/index.php HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nAction=").expect("send");
    let started = Instant::now();

    let msg = |v: &serde_json::Value| v["message"].as_str().unwrap_or("").to_owned();
    let v = call(&[("Action", "NoSuchAction")]);
    assert_eq!((code(&v), msg(&v).starts_with("(10280)")), (4000, true), "{v}");
    let v = call(&[("Action", "SendMessage"), ("queueName", "abq")]);
    assert_eq!(code(&v), 4000, "missing msgBody: {v}");
    let v = call(&[("Action", "BatchSendMessage"), ("queueName", "abq"), ("msgBody.1", "a"), ("msgBody.3", "c")]);
    assert_eq!((code(&v), msg(&v).starts_with("(10380)")), (4000, true), "not consecutive: {v}");
    let v = call(&[("Action", "BatchSendMessage"), ("queueName", "abq"), ("msgBody.1", "a"), ("msgBody_1", "b")]);
    assert_eq!((code(&v), msg(&v).starts_with("(10330)")), (4000, true), "index twice: {v}");
    let seventeen: Vec<String> = (1..=17).map(|i| format!("msgBody.{i}")).collect();
    let mut batch: Vec<(&str, &str)> = vec![("Action", "BatchSendMessage"), ("queueName", "abq")];
    batch.extend(seventeen.iter().map(|k| (k.as_str(), "x")));
    let v = call(&batch);
    assert_eq!((code(&v), msg(&v).starts_with("(10370)")), (4000, true), "17 items: {v}");
    batch.pop();
    assert_eq!(code(&call(&batch)), 0, "16 items");

    let (_, v) = post(http, &host, "Action=ListQueue&msgBody=%zz");
    assert_eq!((code(&v), msg(&v).starts_with("(10000)")), (4000, true), "bad percent-encoding: {v}");
    let (_, v) = post(http, &host, "Action=ListQueue&Action=ListQueue");
    assert_eq!(code(&v), 4000, "a repeated parameter: {v}");
    let many: Vec<String> = (0..129).map(|i| format!("p{i}=1")).collect();
    let (_, v) = post(http, &host, &many.join("&"));
    assert_eq!(code(&v), 4000, "129 parameters: {v}");

    let (status, text) = exchange(http, format!("PUT /v2/index.php HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    assert!(status == 200 && text.contains("\"code\":4000") && text.contains("(10410)"), "{status} {text}");
    let (status, _) = exchange(http, b"POST /v2/other.php HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, 404);

    // Over the body limit: refused from Content-Length before reading, or
    // after BODY_BYTES_MAX bytes of a chunked body.
    let limit = 4 * 1024 * 1024;
    let raw = format!("POST /v2/index.php HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", limit + 1);
    assert_eq!(exchange(http, raw.as_bytes()).0, 413);
    let at_limit = format!("Action=ListQueue&pad={}", "p".repeat(limit - "Action=ListQueue&pad=".len()));
    let (_, v) = post(http, &host, &at_limit);
    assert_eq!(code(&v), 4000, "a body of exactly the limit is read (and lacks SecretId): {v}");
    let chunk = vec![b'a'; limit + 1];
    let mut raw =
        format!("POST /v2/index.php HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", chunk.len())
            .into_bytes();
    raw.extend_from_slice(&chunk);
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(exchange(http, &raw).0, 413);
    // A header flood: over the 16 KiB head the HTTP port buffers.
    let flood: String = (0..400).map(|i| format!("X-Flood-{i}: {}\r\n", "v".repeat(40))).collect();
    let raw = format!("POST /v2/index.php HTTP/1.1\r\nHost: x\r\n{flood}Content-Length: 0\r\n\r\n");
    assert_eq!(exchange(http, raw.as_bytes()).0, 431);

    // The slow client gets 408 once its body is overdue.
    let (status, _) = read_reply(&mut slow);
    assert_eq!(status, 408);
    assert!(started.elapsed() >= Duration::from_secs(8), "{:?}", started.elapsed());
    assert_eq!(code(&call(&[("Action", "ListQueue")])), 0, "still serving");
    // The partial head is dropped (10 s after its first byte); the idle
    // keep-alive connection still serves its next request.
    let mut rest = Vec::new();
    let _ = partial.read_to_end(&mut rest);
    assert!(rest.is_empty() && started.elapsed() >= Duration::from_secs(9), "{rest:?} {:?}", started.elapsed());
    idle.write_all(request(s.body("POST", &[("Action", "ListQueue")], t, 2)).as_bytes()).expect("send");
    assert_eq!(read_reply(&mut idle).0, 200, "an idle keep-alive connection outlives the head timeout");
}

/// An HTTP answer waits for what the binary answer waits for: sends
/// acknowledged over HTTP to a sync queue survive kill -9.
#[test]
fn acknowledged_http_sends_survive_a_crash() {
    let (mut b, http, s) = keyed();
    let t = now_secs();
    let (_, v) = post(http, &s.host, &s.body("POST", &[("Action", "CreateQueue"), ("queueName", "dq")], t, 1));
    assert_eq!(code(&v), 0, "{v}");
    let bodies: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    for (i, body) in bodies.iter().enumerate() {
        let params = [("Action", "SendMessage"), ("queueName", "dq"), ("msgBody", body.as_str())];
        let (_, v) = post(http, &s.host, &s.body("POST", &params, t, 10 + i as u64));
        assert_eq!(code(&v), 0, "{v}");
    }
    b.broker.kill9();
    b.broker.restart();
    let http = b.broker.http_addr.expect("HTTP port");
    let s = Signer { host: http.to_string(), ..s };
    let mut got = Vec::new();
    for nonce in [100, 101] {
        let params =
            [("Action", "BatchReceiveMessage"), ("queueName", "dq"), ("numOfMsg", "16"), ("pollingWaitSeconds", "0")];
        let (_, v) = post(http, &s.host, &s.body("POST", &params, now_secs(), nonce));
        assert_eq!(code(&v), 0, "{v}");
        got.extend(
            v["msgInfoList"].as_array().expect("list").iter().map(|m| m["msgBody"].as_str().expect("body").to_owned()),
        );
    }
    got.sort_by_key(|b| b[1..].parse::<u32>().unwrap_or(u32::MAX));
    assert_eq!(got, bodies);
}

/// ListQueue over HTTP shows what the key may see, as over the binary
/// protocol (the shard filters for the HTTP caller's key).
#[test]
fn lists_are_filtered_for_the_callers_key() {
    use cmq_client::{Client, Credentials};
    use cmq_protocol::{CreateKey, Request, Response};
    let (b, http, admin) = keyed();
    let t = now_secs();
    for (i, q) in ["a1", "a2", "b1"].iter().enumerate() {
        let (_, v) =
            post(http, &admin.host, &admin.body("POST", &[("Action", "CreateQueue"), ("queueName", q)], t, i as u64));
        assert_eq!(code(&v), 0, "{v}");
    }
    let creds = Credentials::new(&b.secret_id, &b.secret_key);
    let mut client = Client::connect_as(b.addr(), Some(READ_TIMEOUT), Some(creds)).expect("admin");
    let policy =
        r#"{"version":"2.0","statement":[{"effect":"allow","action":["cmq:ListQueue"],"resource":["queue/a*"]}]}"#;
    let key = CreateKey { name: "lister".into(), policy: policy.into() };
    let Ok(Response::CreateKey(k)) = client.call(&Request::CreateKey(key)) else { panic!("CreateKey") };
    let lister = Signer { id: k.secret_id, key: k.secret_key, host: admin.host.clone(), sha256: true };
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["queueList"]
            .as_array()
            .expect("list")
            .iter()
            .map(|q| q["queueName"].as_str().expect("name").to_owned())
            .collect()
    };
    let (_, v) = post(http, &admin.host, &lister.body("POST", &[("Action", "ListQueue")], t, 1));
    assert_eq!(
        (code(&v), v["totalCount"].as_u64(), names(&v)),
        (0, Some(2), vec!["a1".to_owned(), "a2".into()]),
        "{v}"
    );
    let (_, v) = post(http, &admin.host, &admin.body("POST", &[("Action", "ListQueue")], t, 9));
    assert_eq!((v["totalCount"].as_u64(), names(&v).len()), (Some(3), 3), "{v}");
    let (_, v) =
        post(http, &admin.host, &lister.body("POST", &[("Action", "GetQueueAttributes"), ("queueName", "a1")], t, 2));
    assert_eq!(code(&v), 4101, "{v}");
}

/// One raw HTTP exchange on a fresh connection from `source` (any
/// 127.0.0.0/8 address on Linux loopback): (status, body).
fn exchange_from(addr: SocketAddr, source: std::net::IpAddr, raw: &[u8]) -> (u16, String) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&SocketAddr::new(source, 0).into()).expect("bind source");
    socket.connect(&addr.into()).expect("connect");
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let _ = s.write_all(raw);
    read_reply(&mut s)
}

fn post_from(addr: SocketAddr, source: std::net::IpAddr, body: &str) -> serde_json::Value {
    let raw = format!("POST /v2/index.php HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let (status, text) = exchange_from(addr, source, raw.as_bytes());
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Whether a 4100 is the backoff's refusal (unchecked) rather than a checked failure.
fn held_off(v: &serde_json::Value) -> bool {
    code(v) == 4100 && v["message"].as_str().is_some_and(|m| m.contains("too many failed attempts"))
}

/// docs/CMQ_API.md, docs/SECURITY.md: wrong signatures slow their address
/// down (200 ms doubling); attempts during the wait are refused unchecked;
/// other addresses are not slowed; the binary port shares the table; a
/// good request after the wait succeeds and clears it.
#[test]
fn wrong_signatures_are_slowed_down_per_address() {
    const FIRST_WAIT_MS: u128 = 200; // BACKOFF_FIRST_MS
    let (b, http, s) = keyed();
    let guesser: std::net::IpAddr = "127.0.0.2".parse().expect("ip");
    let wrong = Signer { id: s.id.clone(), key: "not-the-key".into(), host: s.host.clone(), sha256: false };
    let mut nonce = 100;
    let mut next = |signer: &Signer| {
        nonce += 1;
        signer.body("POST", &[("Action", "ListQueue")], now_secs(), nonce)
    };
    // Guess for 1.5 s as fast as one connection a request allows.
    let (mut checked, mut refused) = (Vec::new(), 0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        let sent = Instant::now();
        let v = post_from(http, guesser, &next(&wrong));
        if held_off(&v) {
            refused += 1;
        } else {
            assert!(code(&v) == 4100 && v["message"].as_str().is_some_and(|m| m.contains("signature")), "{v}");
            checked.push((sent, Instant::now()));
        }
    }
    // Checks at >= 0, 200, 600, 1400 ms: at most four in 1.5 s, each at least its wait after the last.
    assert!((2..=4).contains(&checked.len()), "{} checked, {refused} refused", checked.len());
    assert!(refused >= 3 * checked.len(), "mostly refused unchecked: {} checked, {refused} refused", checked.len());
    for (i, pair) in checked.windows(2).enumerate() {
        let gap = pair[1].1.duration_since(pair[0].0).as_millis();
        assert!(gap + 2 >= FIRST_WAIT_MS << i, "check {} came {gap} ms after the one before", i + 1);
    }
    // Another address is served at once.
    assert_eq!(code(&post(http, &s.host, &next(&s)).1), 0, "127.0.0.1 is not slowed down");
    // During the wait a fresh checked failure starts (1.6 s or more), the
    // binary port refuses the guesser too: one table for every port.
    cmq_integration_tests::poll_until(Duration::from_secs(12), "a checked guess", || {
        let v = post_from(http, guesser, &next(&wrong));
        if held_off(&v) {
            return Err(v.to_string());
        }
        Ok(())
    });
    let mut raw = cmq_integration_tests::RawConn::connect_from(b.addr(), guesser);
    let r = raw.call(cmq_protocol::Request::AuthChallenge(cmq_protocol::AuthChallenge {}));
    assert_eq!(r.code(), cmq_protocol::ErrorCode::AUTH_FAILED, "the binary port shares the backoff: {r:?}");
    // The right key gets in once the wait is over, and clears it.
    cmq_integration_tests::poll_until(Duration::from_secs(12), "the wait ends", || {
        let v = post_from(http, guesser, &next(&s));
        if held_off(&v) {
            return Err(v.to_string());
        }
        assert_eq!(code(&v), 0, "{v}");
        Ok(())
    });
    let v = post_from(http, guesser, &next(&wrong));
    assert!(code(&v) == 4100 && !held_off(&v), "a success cleared the backoff: the next guess is checked: {v}");
}
