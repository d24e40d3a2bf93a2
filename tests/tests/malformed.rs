//! Malformed input: garbage bytes, oversized or impossible length prefixes,
//! unknown opcodes, response frames from a client, truncated frames followed
//! by a disconnect. Each gets a clear error or a closed connection, and
//! meanwhile clients on every shard of the same broker keep working.

use std::io::Write;

use cmq_integration_tests::{name_on_shard, raw_frame, request_frame, Broker, RawConn, Reply};
use cmq_protocol::frame::FLAG_RESPONSE;
use cmq_protocol::limits::FRAME_BYTES_MAX;
use cmq_protocol::*;
use rand::{Rng, SeedableRng};

/// Well-behaved clients, one served by each shard, each with a queue on the other shard.
struct Bystanders {
    conns: Vec<(RawConn, String)>,
}

impl Bystanders {
    fn new(broker: &Broker) -> Bystanders {
        let conns = (0..2u16)
            .map(|shard| {
                let mut c = RawConn::open_on_shard(broker.addr, shard);
                let q = name_on_shard("bystander", 1 - shard, 2);
                c.create_queue(&q);
                (c, q)
            })
            .collect();
        Bystanders { conns }
    }

    /// Every bystander can still send, receive and delete.
    #[track_caller]
    fn still_work(&mut self, after: &str) {
        for (c, q) in &mut self.conns {
            c.assert_round_trip(q, &format!("after {after}"));
        }
    }
}

/// Reads until the broker closes; asserts every reply was an error.
#[track_caller]
fn only_errors_then_closed(c: &mut RawConn, what: &str) -> Vec<Reply> {
    let replies = c.read_until_closed();
    assert!(replies.iter().all(|r| !r.is_ok()), "{what}: garbage was answered with success: {replies:?}");
    replies
}

#[test]
fn garbage_before_the_handshake() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut ok = Bystanders::new(&broker);

    // Someone speaks HTTP to us: "GET " as a length prefix is far over the limit.
    let mut c = RawConn::connect(broker.addr);
    c.write_raw(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let replies = only_errors_then_closed(&mut c, "http");
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].code(), ErrorCode::FRAME_TOO_LARGE);
    ok.still_work("an HTTP request");

    for seed in 0..8u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut junk = vec![0u8; 256];
        rng.fill(&mut junk[..]);
        let mut c = RawConn::connect(broker.addr);
        c.write_raw(&junk);
        c.shutdown_write();
        only_errors_then_closed(&mut c, &format!("seed {seed}"));
        ok.still_work(&format!("pre-handshake garbage, seed {seed}"));
    }
}

#[test]
fn garbage_after_the_handshake() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut ok = Bystanders::new(&broker);
    for seed in 0..16u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let len = rng.random_range(1..2048);
        let mut junk = vec![0u8; len];
        rng.fill(&mut junk[..]);
        // Half the time, make the length prefix plausible so the junk reaches the payload decoder.
        if seed % 2 == 0 && len >= 16 {
            junk[..4].copy_from_slice(&((len - 4) as u32).to_le_bytes());
            junk[6] &= !FLAG_RESPONSE;
        }
        let mut c = RawConn::open(broker.addr);
        c.write_raw(&junk);
        c.shutdown_write();
        only_errors_then_closed(&mut c, &format!("seed {seed}"));
        ok.still_work(&format!("post-handshake garbage, seed {seed}"));
    }
}

#[test]
fn well_delimited_garbage_payloads_get_errors_and_the_connection_survives() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut ok = Bystanders::new(&broker);
    let mut c = RawConn::open(broker.addr);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for (i, op) in Opcode::ALL.iter().filter(|op| **op != Opcode::Ping).enumerate() {
        let mut payload = vec![0u8; rng.random_range(0..40)];
        rng.fill(&mut payload[..]);
        let id = 1000 + i as u64;
        c.write_raw(&raw_frame(*op as u16, 0, id, &payload));
        let r = c.read_reply(id);
        // Random bytes could in principle decode; what matters is an answer and a live connection.
        if let Reply::Err(_, e) = &r {
            assert!(!e.message.is_empty(), "{op:?}: an error says what is wrong");
        }
    }
    c.ping().ok();
    ok.still_work("garbage payloads");
}

#[test]
fn oversized_length_prefix_gets_frame_too_large_and_a_close() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut ok = Bystanders::new(&broker);
    for len in [FRAME_BYTES_MAX - 4 + 1, u32::MAX / 2, u32::MAX] {
        let mut c = RawConn::open(broker.addr);
        let mut header = raw_frame(Opcode::SendMessage as u16, 0, 3, &[]);
        header[..4].copy_from_slice(&len.to_le_bytes());
        c.write_raw(&header);
        let replies = only_errors_then_closed(&mut c, "oversized");
        assert_eq!(replies.len(), 1, "one error, then closed: {replies:?}");
        assert_eq!(replies[0].code(), ErrorCode::FRAME_TOO_LARGE);
        ok.still_work(&format!("a length prefix of {len}"));
    }
}

#[test]
fn length_prefix_shorter_than_a_header_gets_malformed_frame_and_a_close() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut ok = Bystanders::new(&broker);
    for len in [0u32, 1, 11] {
        let mut c = RawConn::open(broker.addr);
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 12]);
        c.write_raw(&bytes);
        let replies = only_errors_then_closed(&mut c, "short");
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(replies[0].code(), ErrorCode::MALFORMED_FRAME);
        ok.still_work(&format!("a length prefix of {len}"));
    }
}

#[test]
fn unknown_opcode_gets_an_error_and_the_connection_stays_usable() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut ok = Bystanders::new(&broker);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("uo");
    c.write_raw(&raw_frame(0x4242, 0, 77, &[1, 2, 3]));
    c.read_reply(77).expect_err(ErrorCode::UNKNOWN_OPCODE);
    c.assert_round_trip("uo", "unknown opcode");
    ok.still_work("an unknown opcode");
}

#[test]
fn response_frame_from_a_client_closes_the_connection() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut ok = Bystanders::new(&broker);
    let mut c = RawConn::open(broker.addr);
    c.write_raw(&raw_frame(Opcode::Ping as u16, FLAG_RESPONSE, 8, &[]));
    let replies = only_errors_then_closed(&mut c, "response frame");
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].code(), ErrorCode::MALFORMED_FRAME);
    ok.still_work("a response frame");
}

/// A frame cut off part way (in the header or in the payload), then the
/// client goes away. The broker answers nothing, closes, and frees the slot:
/// with `--max-connections 3` (two bystanders + one), ten abusers in a row
/// would be refused if any slot leaked.
#[test]
fn truncated_frame_then_disconnect() {
    let broker = Broker::start(&["--shards", "2", "--max-connections", "3"]);
    let mut ok = Bystanders::new(&broker);
    let frame = request_frame(
        5,
        &Request::SendMessage(SendMessage {
            queue: ok.conns[0].1.clone(),
            delay_seconds: 0,
            body: vec![7u8; 1000].into(),
            ..Default::default()
        }),
    );
    for (round, cut) in [3usize, 7, 15, 16, 17, 100, frame.len() - 1].into_iter().cycle().take(10).enumerate() {
        let mut c = RawConn::open(broker.addr);
        c.write_raw(&frame[..cut]);
        c.shutdown_write();
        let replies = c.read_until_closed();
        assert!(replies.is_empty(), "cut at {cut}: a partial frame was answered: {replies:?}");
        ok.still_work(&format!("round {round}: a frame cut at byte {cut}"));
    }
    // The half-frames were never executed.
    let (c, q) = &mut ok.conns[0];
    assert_eq!(c.queue_info(q).active_msg_num, 0);
}

#[test]
fn truncated_frame_then_abrupt_close() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut ok = Bystanders::new(&broker);
    for cut in [2usize, 20, 500] {
        let mut c = RawConn::open(broker.addr);
        // Claims the largest legal frame, sends a little of it, and vanishes.
        let mut header = raw_frame(Opcode::BatchSendMessage as u16, 0, 1, &vec![0u8; 600]);
        header[..4].copy_from_slice(&(FRAME_BYTES_MAX - 4).to_le_bytes());
        c.write_raw(&header[..cut]);
        drop(c);
        ok.still_work(&format!("a frame cut at byte {cut} and a dropped socket"));
    }
}

#[test]
fn a_frame_trickled_one_byte_at_a_time_is_answered() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let frame = request_frame(
        9,
        &Request::CreateQueue(CreateQueue { queue: "trickle".into(), attributes: Default::default() }),
    );
    for b in &frame {
        c.stream.write_all(std::slice::from_ref(b)).expect("write");
        c.stream.flush().expect("flush");
    }
    let Response::CreateQueue(_) = c.read_reply(9).ok() else { panic!("wrong response type") };
    c.assert_round_trip("trickle", "trickled frame");
}
