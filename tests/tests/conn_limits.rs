//! Connection limits and deadlines (issue 9 cases 1 and 2): what a
//! connection may make the broker hold before and after its handshake, the
//! broker-wide buffer budget, and the handshake, frame, output and idle
//! deadlines. Memory is asserted with generous margins (the configured
//! budget plus 256 MiB), never timings.
//!
//! The memory tests watch cmqd's RSS while they push and stop as soon as it
//! passes the bound, so a broker without the bound fails them quickly
//! instead of exhausting the machine. `CMQ_MEASURE=1` lets them run to the
//! end and prints the peak (how the figures were measured).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_client::Client;
use cmq_integration_tests::{name_on_shard, raise_fd_limit, request_frame, Broker, MemoryWatch, RawConn, Reply};
use cmq_protocol::frame::{self, FrameHeader};
use cmq_protocol::limits::{FRAME_BYTES_MAX, HANDSHAKE_FRAME_BYTES_MAX};
use cmq_protocol::*;

const MIB: u64 = 1024 * 1024;

/// The buffer budget the memory tests configure.
const BUDGET: u64 = 64 * MIB;

/// What cmqd's memory must stay under: the budget plus 256 MiB (the
/// broker's own baseline, the one frame per shard allowed past the budget,
/// allocator slack).
const MEMORY_BOUND: u64 = BUDGET + 256 * MIB;

/// How long a test waits for the broker to act on a deadline before failing.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A writer blocked this long on a broker that stopped reading gives up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A maximum-size frame is "mostly sent" when all but this much of it is.
const UNSENT_TAIL_BYTES: usize = 64 * 1024;

fn measuring() -> bool {
    std::env::var_os("CMQ_MEASURE").is_some()
}

/// How many connections fit under this process's file-descriptor limit
/// (cmqd, started after this, inherits it), up to `want`.
fn connection_count(want: usize) -> usize {
    let limit = raise_fd_limit(4 * want as u64 + 256) as usize;
    let n = want.min(limit.saturating_sub(128) / 2);
    if n < want {
        eprintln!("only {n} of {want} connections fit under the open-file limit of {limit}");
    }
    n
}

/// The header of a frame announcing `total` bytes (the largest legal frame
/// is FRAME_BYTES_MAX), opcode SendMessage.
fn big_frame_header(total: u32) -> Vec<u8> {
    let mut out = Vec::new();
    frame::begin(&mut out, Opcode::SendMessage as u16, 0, 7);
    out[..4].copy_from_slice(&(total - frame::LENGTH_PREFIX_BYTES as u32).to_le_bytes());
    out
}

/// Announces a maximum-size frame and sends all of it but a small tail,
/// stopping early when the broker closes the connection, stops reading for
/// WRITE_TIMEOUT, or `stop` is raised. Returns the bytes sent.
fn send_most_of_a_maximum_frame(stream: &mut TcpStream, chunk: &[u8], stop: &AtomicBool) -> usize {
    let header = big_frame_header(FRAME_BYTES_MAX);
    let goal = FRAME_BYTES_MAX as usize - UNSENT_TAIL_BYTES;
    stream.set_write_timeout(Some(WRITE_TIMEOUT)).expect("write timeout");
    if stream.write_all(&header).is_err() {
        return 0;
    }
    let mut sent = header.len();
    while sent < goal && !stop.load(Ordering::Relaxed) {
        let n = chunk.len().min(goal - sent);
        match stream.write(&chunk[..n]) {
            Ok(0) | Err(_) => break,
            Ok(k) => sent += k,
        }
    }
    sent
}

/// Reads until the broker closes `stream`; returns the error codes of the
/// frames it sent first (a final error frame can be lost to a reset when
/// the broker closed with our bytes unread, so none is also a close).
/// Panics if the connection stays open.
fn read_until_closed(stream: &mut TcpStream) -> Vec<ErrorCode> {
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).expect("read timeout");
    let mut buf = bytes::BytesMut::new();
    let mut codes = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Ok(Some(total)) = frame::check(&buf) {
            let (h, payload): (FrameHeader, Bytes) = frame::split(&mut buf, total);
            if h.is_error() {
                codes.push(ErrorBody::decode_payload(payload).expect("error body").code());
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return codes,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => return codes,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the broker did not close the connection within {EVENT_TIMEOUT:?}")
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// A normal client can still create a queue and move a message through it.
fn normal_client_works(broker: &Broker, queue: &str) {
    let mut c = Client::connect_with_timeout(broker.addr, Some(Duration::from_secs(30))).expect("client connects");
    c.create_queue(queue, &QueueAttributesUpdate::default()).expect("create queue");
    c.send(queue, "still serving", 0).expect("send");
    let m = c.receive(queue, Some(5)).expect("receive").expect("a message");
    assert_eq!(&m.body[..], b"still serving");
    c.delete_message(queue, m.receipt_handle).expect("delete");
}

fn wait_for_log(broker: &Broker, text: &str) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !broker.stderr().contains(text) {
        assert!(Instant::now() < deadline, "cmqd never logged {text:?}; its log:\n{}", broker.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_memory_bounded(what: &str, peak: u64, watch: &MemoryWatch) {
    eprintln!(
        "{what}: peak VmRSS {} MiB, peak RssAnon {} MiB (bound {} MiB)",
        watch.peak_rss() / MIB,
        watch.peak_anon() / MIB,
        MEMORY_BOUND / MIB
    );
    assert!(peak <= MEMORY_BOUND, "{what}: cmqd reached {} MiB, over the {} MiB bound", peak / MIB, MEMORY_BOUND / MIB);
}

// ---- case 1: memory before the handshake -----------------------------------------

/// The reproduction: 510 connections, no handshake, each announcing
/// a maximum-size frame and sending almost all of it, took cmqd to 8.2 GiB.
/// Before the handshake nothing larger than a handshake is buffered: each is
/// refused (FRAME_TOO_LARGE) from its length prefix and closed.
#[test]
fn maximum_size_frames_before_the_handshake_are_refused_without_buffering_them() {
    let n = connection_count(510);
    let budget = BUDGET.to_string();
    let broker = Broker::start(&["--shards", "2", "--buffer-budget-bytes", &budget]);
    let limit = if measuring() { u64::MAX } else { MEMORY_BOUND };
    let watch = MemoryWatch::start(broker.pid(), limit);
    let over = watch.over_flag();
    let chunk = vec![0u8; MIB as usize];
    let next = AtomicUsize::new(0);
    let conns = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || over.load(Ordering::Relaxed) {
                    return;
                }
                let mut stream = TcpStream::connect(broker.addr).expect("connect");
                send_most_of_a_maximum_frame(&mut stream, &chunk, &over);
                conns.lock().expect("lock").push(stream);
            });
        }
    });
    assert_memory_bounded("510 maximum-size frames before the handshake", watch.peak_rss(), &watch);
    let mut conns = conns.into_inner().expect("lock");
    assert_eq!(conns.len(), n);
    for c in &mut conns {
        let codes = read_until_closed(c);
        assert!(codes.iter().all(|c| *c == ErrorCode::FRAME_TOO_LARGE), "{codes:?}");
    }
    normal_client_works(&broker, "after-flood");
}

/// The limit is exact: a frame of HANDSHAKE_FRAME_BYTES_MAX before the
/// handshake is read (and, not being a Handshake, answered
/// HANDSHAKE_REQUIRED); one byte more is refused from the prefix alone. A
/// Handshake frame is held to the limit after the handshake too.
#[test]
fn the_pre_handshake_limit_is_exact_and_applies_to_handshake_frames_always() {
    let broker = Broker::start(&["--shards", "1"]);
    let at_limit = HANDSHAKE_FRAME_BYTES_MAX;
    let mut c = RawConn::connect(broker.addr);
    let mut bytes = big_frame_header(at_limit);
    bytes.resize(at_limit as usize, 0);
    c.write_raw(&bytes);
    let r = c.read().expect("an answer");
    r.expect_err(ErrorCode::HANDSHAKE_REQUIRED);

    for handshaken in [false, true] {
        let mut c = if handshaken { RawConn::open(broker.addr) } else { RawConn::connect(broker.addr) };
        let mut header = big_frame_header(at_limit + 1);
        header[4..6].copy_from_slice(&(Opcode::Handshake as u16).to_le_bytes());
        c.write_raw(&header);
        let e = c.read().expect("an error frame").expect_err(ErrorCode::FRAME_TOO_LARGE);
        assert!(e.message.contains(&at_limit.to_string()), "the message states the limit: {}", e.message);
        assert!(c.read().is_none(), "closed after the error");
    }
    // After the handshake, other frames may be as large as FRAME_BYTES_MAX.
    let mut c = RawConn::open(broker.addr);
    c.write_raw(&big_frame_header(at_limit + 1));
    c.write_raw(&vec![0u8; (at_limit + 1) as usize - frame::HEADER_BYTES]);
    let r = c.read().expect("an answer");
    assert!(!r.is_ok(), "a SendMessage of zeros does not decode: {r:?}");
    c.ping().ok();
}

// ---- case 1: memory after the handshake: the budget -------------------------------

/// After the handshake a connection may send frames up to FRAME_BYTES_MAX,
/// but its buffer grows only with what arrives and only within the
/// broker-wide budget; past it the broker stops reading those connections,
/// and a partial frame that does not complete in time closes its connection.
#[test]
fn partial_frames_after_the_handshake_stay_within_the_budget_and_time_out() {
    let n = connection_count(100);
    let budget = BUDGET.to_string();
    let broker = Broker::start(&["--shards", "2", "--buffer-budget-bytes", &budget, "--frame-timeout-ms", "2000"]);
    let limit = if measuring() { u64::MAX } else { MEMORY_BOUND };
    let watch = MemoryWatch::start(broker.pid(), limit);
    let over = watch.over_flag();
    let chunk = vec![0u8; MIB as usize];
    let started = AtomicUsize::new(0);
    let conns = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..n {
            s.spawn(|| {
                let mut c = RawConn::open(broker.addr);
                started.fetch_add(1, Ordering::Relaxed);
                send_most_of_a_maximum_frame(&mut c.stream, &chunk, &over);
                conns.lock().expect("lock").push(c.stream);
            });
        }
        // While they stall, small requests from a normal client are served.
        while started.load(Ordering::Relaxed) < n && !over.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !over.load(Ordering::Relaxed) {
            normal_client_works(&broker, "during-stall");
        }
    });
    assert_memory_bounded("100 handshaken connections with maximum-size partial frames", watch.peak_rss(), &watch);
    for c in &mut conns.into_inner().expect("lock") {
        let codes = read_until_closed(c);
        assert!(codes.iter().all(|c| *c == ErrorCode::FRAME_TIMEOUT), "{codes:?}");
    }
    wait_for_log(&broker, "a request frame did not arrive whole within 2000 ms");
    wait_for_log(&broker, "connection buffer budget");
    normal_client_works(&broker, "after-stall");
}

/// A frame larger than the whole budget still gets through (one frame per
/// shard may finish past the budget), and large frames from a normal client
/// work under a small budget.
#[test]
fn large_requests_still_work_under_a_small_budget() {
    let min_budget = (2 * u64::from(FRAME_BYTES_MAX)).to_string();
    let broker = Broker::start(&["--shards", "2", "--buffer-budget-bytes", &min_budget]);
    let mut c = Client::connect_with_timeout(broker.addr, Some(Duration::from_secs(30))).expect("connect");
    let attrs = QueueAttributesUpdate { max_msg_size: Some(MSG_BYTES_MAX_FOR_TEST), ..Default::default() };
    c.create_queue("big", &attrs).expect("create");
    let bodies: Vec<Bytes> = (0..16u8).map(|i| Bytes::from(vec![i; MSG_BYTES_MAX_FOR_TEST as usize])).collect();
    for _ in 0..4 {
        c.send_batch("big", &bodies, 0).expect("a 16 MiB batch");
    }
    for _ in 0..4 {
        let got = c.receive_batch("big", 16, Some(5)).expect("receive");
        assert_eq!(got.len(), 16);
        assert!(got.iter().all(|m| m.body.len() == MSG_BYTES_MAX_FOR_TEST as usize));
        let handles: Vec<_> = got.iter().map(|m| m.receipt_handle).collect();
        c.delete_batch("big", &handles).expect("delete");
    }
}

const MSG_BYTES_MAX_FOR_TEST: u32 = cmq_protocol::limits::MSG_BYTES_MAX;

// ---- case 1: output a client does not read ------------------------------------------

/// A client with long polls in flight that never reads its answers: as
/// messages arrive the broker answers them, but stops at the per-connection
/// output bound (or sheds it to stay within the budget) and closes the
/// connection instead of holding 512 MiB of answers for it. Asserted on
/// anonymous memory: the answers' bodies are read from mapped log segments,
/// whose page-cache pages count in VmRSS but belong to the kernel.
#[test]
fn a_client_that_does_not_read_cannot_make_memory_grow_past_the_bound() {
    const POLLS: usize = 32;
    let budget = BUDGET.to_string();
    let broker = Broker::start(&["--shards", "1", "--buffer-budget-bytes", &budget, "--flush", "async"]);
    let watch = MemoryWatch::start(broker.pid(), u64::MAX);
    let mut admin = Client::connect_with_timeout(broker.addr, Some(Duration::from_secs(30))).expect("connect");
    let attrs = QueueAttributesUpdate { max_msg_size: Some(MSG_BYTES_MAX_FOR_TEST), ..Default::default() };
    admin.create_queue("unread", &attrs).expect("create");
    let mut stalled = RawConn::open(broker.addr);
    for _ in 0..POLLS {
        let poll = BatchReceiveMessage { queue: "unread".into(), max_messages: 16, polling_wait_seconds: Some(30) };
        stalled.send(&Request::BatchReceiveMessage(poll));
    }
    // Its first answer proves every long poll before it is registered.
    stalled.barrier("unread");
    let bodies: Vec<Bytes> = (0..16u8).map(|i| Bytes::from(vec![i; MSG_BYTES_MAX_FOR_TEST as usize])).collect();
    for i in 0..POLLS {
        admin.send_batch("unread", &bodies, 0).unwrap_or_else(|e| panic!("send {i}: {e}"));
        if watch.peak_anon() > MEMORY_BOUND && !measuring() {
            break;
        }
    }
    // Fails here (timeout) if the broker keeps the connection and its answers.
    let answers = stalled.read_until_closed();
    eprintln!("the stalled reader got {} answers before its connection was closed", answers.len());
    assert!(answers.len() < POLLS, "{} of {POLLS} answers were held for a client not reading", answers.len());
    assert_memory_bounded("a reader that does not read 512 MiB of answers", watch.peak_anon(), &watch);
    wait_for_log(&broker, "as a slow consumer");
    normal_client_works(&broker, "after-unread");
}

/// Requests forwarded to another shard are answered there in bounded
/// steps. 100 pipelined PeekMessages of 8 MiB each, sent in one write on a
/// connection served by shard 0 for a queue on shard 1 and never read, used
/// to make shard 1 build 800 MiB of answers in one turn (and shard 0 then
/// hold them all); now shard 1 answers a few per turn and shard 0 closes the
/// connection once it holds more than its output bound.
#[test]
fn forwarded_requests_cannot_make_the_owner_build_unbounded_answers() {
    const PEEKS: usize = 100;
    let budget = BUDGET.to_string();
    let broker = Broker::start(&["--shards", "2", "--buffer-budget-bytes", &budget]);
    let watch = MemoryWatch::start(broker.pid(), u64::MAX);
    let queue = name_on_shard("forwarded", 1, 2);
    let mut admin = RawConn::open_on_shard(broker.addr, 1);
    let attrs = QueueAttributesUpdate { max_msg_size: Some(MSG_BYTES_MAX_FOR_TEST), ..Default::default() };
    admin.create_queue_attrs(&queue, attrs);
    let body = Bytes::from(vec![7u8; MSG_BYTES_MAX_FOR_TEST as usize]);
    admin.batch_send_ok(&queue, 0, vec![body; 8]);
    let mut stalled = RawConn::open_on_shard(broker.addr, 0);
    let peek = Request::PeekMessages(PeekMessages { queue: queue.clone(), cursor: 0, max: 8, include_body: true });
    let frames: Vec<u8> = (0..PEEKS as u64).flat_map(|id| request_frame(100 + id, &peek)).collect();
    stalled.write_raw(&frames);
    wait_for_log(&broker, "as a slow consumer");
    let answers = stalled.read_until_closed();
    assert!(answers.len() < PEEKS, "{} answers", answers.len());
    assert_memory_bounded("100 forwarded 8 MiB answers nobody reads", watch.peak_anon(), &watch);
    admin.ping().ok();
    normal_client_works(&broker, "after-forwarded");
}

/// Output the client could take but does not (its socket stays full) for
/// the frame deadline closes the connection, even below the output bound.
#[test]
fn output_that_makes_no_progress_closes_the_connection_at_the_frame_deadline() {
    let broker = Broker::start(&["--shards", "1", "--frame-timeout-ms", "1000"]);
    let mut admin = RawConn::open(broker.addr);
    let attrs = QueueAttributesUpdate { max_msg_size: Some(MSG_BYTES_MAX_FOR_TEST), ..Default::default() };
    admin.create_queue_attrs("peeked", attrs);
    let body = Bytes::from(vec![7u8; MSG_BYTES_MAX_FOR_TEST as usize]);
    admin.batch_send_ok("peeked", 0, vec![body; 8]);
    let mut stalled = RawConn::open(broker.addr);
    for _ in 0..12 {
        stalled.send(&Request::PeekMessages(PeekMessages {
            queue: "peeked".into(),
            cursor: 0,
            max: 8,
            include_body: true,
        }));
    }
    wait_for_log(&broker, "unsent output made no progress for 1000 ms");
    let answers = stalled.read_until_closed();
    assert!(answers.len() < 12, "{} answers", answers.len());
    admin.ping().ok();
}

// ---- case 2: handshake deadline -----------------------------------------------------

/// The reproduction: with --max-connections 200, 200 sockets that
/// send nothing kept every real client out (TOO_MANY_CONNECTIONS) for as
/// long as they stayed open. Now each is closed at the handshake deadline
/// with HANDSHAKE_TIMEOUT, and a real client gets in.
#[test]
fn silent_connections_are_closed_at_the_handshake_deadline_and_let_clients_in() {
    let broker = Broker::start(&["--shards", "2", "--max-connections", "200", "--handshake-timeout-ms", "3000"]);
    let mut silent: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(broker.addr).expect("connect")).collect();
    let connect = || Client::connect_with_timeout(broker.addr, Some(Duration::from_secs(30)));
    let is_full = |e: &cmq_client::ClientError| e.code() == Some(ErrorCode::TOO_MANY_CONNECTIONS);
    // Once a client is refused, the silent sockets hold every slot.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        match connect() {
            Err(e) if is_full(&e) => break,
            Err(e) => panic!("connect: {e}"),
            Ok(_) => {
                assert!(Instant::now() < deadline, "never saw the broker full");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let mut refused = 1;
    let client = loop {
        match connect() {
            Ok(c) => break c,
            Err(e) if is_full(&e) => {
                refused += 1;
                assert!(Instant::now() < deadline, "still refused after {EVENT_TIMEOUT:?}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("connect: {e}"),
        }
    };
    eprintln!("a real client got in after {refused} refusals");
    drop(client);
    // Each silent socket was closed: at the deadline, or refused at once if
    // a probe above was accepted before it.
    let mut timed_out = 0;
    for s in &mut silent {
        match read_until_closed(s)[..] {
            [ErrorCode::HANDSHAKE_TIMEOUT] => timed_out += 1,
            [ErrorCode::TOO_MANY_CONNECTIONS] => {}
            ref other => panic!("{other:?}"),
        }
    }
    assert!(timed_out >= 190, "only {timed_out} of 200 silent connections were closed by the deadline");
    normal_client_works(&broker, "after-silence");
}

/// A handshake that starts but never completes is closed at the deadline too.
#[test]
fn a_partial_handshake_is_closed_at_the_handshake_deadline() {
    let broker = Broker::start(&["--shards", "1", "--handshake-timeout-ms", "1000"]);
    let mut c = RawConn::connect(broker.addr);
    let mut hello = Vec::new();
    Request::Handshake(Handshake::new("slow")).encode_frame(1, &mut hello);
    c.write_raw(&hello[..hello.len() - 1]);
    let e = c.read().expect("an error frame").expect_err(ErrorCode::HANDSHAKE_TIMEOUT);
    assert!(e.message.contains("1000 ms"), "{}", e.message);
    assert!(c.read().is_none());
}

// ---- case 2: idle deadline ----------------------------------------------------------

/// A handshaken connection with nothing in flight and nothing unsent is
/// closed after the idle deadline (IDLE_TIMEOUT); a long poll in flight is
/// not idle; and the Rust client replaces an idle-closed connection before
/// its next request, so the caller never sees the close.
#[test]
fn idle_connections_are_closed_and_the_client_reconnects_transparently() {
    let broker = Broker::start(&["--shards", "1", "--idle-timeout-ms", "1000"]);
    let mut client = Client::connect_with_timeout(broker.addr, Some(Duration::from_secs(30))).expect("connect");
    client.create_queue("idle", &QueueAttributesUpdate::default()).expect("create");
    // A 3-second long poll outlives the 1-second idle deadline: it ends with
    // its own NO_MESSAGE, not with a closed connection.
    assert!(client.receive("idle", Some(3)).expect("the poll ends normally").is_none());
    // Now idle: the broker closes it (the only connection, so the one log line).
    wait_for_log(&broker, "idle for 1000 ms");
    client.send("idle", "after the idle close", 0).expect("the next request reconnects transparently");
    let m = client.receive("idle", Some(5)).expect("receive").expect("message");
    assert_eq!(&m.body[..], b"after the idle close");

    // What a raw connection sees: the code, then the close.
    let mut raw = RawConn::open(broker.addr);
    let r: Reply = raw.read().expect("an error frame before the close");
    let e = r.expect_err(ErrorCode::IDLE_TIMEOUT);
    assert!(e.message.contains("1000 ms"), "{}", e.message);
    assert!(raw.read().is_none());
}
