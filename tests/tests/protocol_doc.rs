//! The header-level promises PROTOCOL.md §1 and §3 make to a client author,
//! checked byte by byte over real TCP: which opcode, request id and flags
//! each error frame carries, and what the broker does with request id 0,
//! reused ids, reserved flag bits, a second handshake and an auth method.

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::{Bytes, BytesMut};
use cmq_integration_tests::raw::READ_TIMEOUT;
use cmq_integration_tests::{raw_frame, request_frame, Broker};
use cmq_protocol::frame::{self, FrameHeader};
use cmq_protocol::*;

/// A connection that hands back whole frames, headers included.
struct Wire {
    stream: TcpStream,
    buf: BytesMut,
}

impl Wire {
    fn connect(broker: &Broker) -> Wire {
        let stream = TcpStream::connect(broker.addr).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
        Wire { stream, buf: BytesMut::new() }
    }

    fn handshaken(broker: &Broker) -> Wire {
        let mut w = Wire::connect(broker);
        w.send(&request_frame(1, &Request::Handshake(Handshake::new("protocol-doc"))));
        let (h, _) = w.frame().expect("handshake answer");
        assert_eq!(h.flags, 1, "a success response has flags 1");
        w
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next frame; None once the broker closed the connection.
    fn frame(&mut self) -> Option<(FrameHeader, Bytes)> {
        loop {
            if let Some(total) = frame::check(&self.buf).expect("broker frames are valid") {
                return Some(frame::split(&mut self.buf, total));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read from cmqd: {e}"),
            }
        }
    }

    /// The next frame, which must be an error: its header and code.
    fn error(&mut self) -> (FrameHeader, ErrorCode) {
        let (h, payload) = self.frame().expect("an error frame before the close");
        assert_eq!(h.flags, 3, "an error response has flags 3 (RESPONSE | ERROR): {h:?}");
        (h, ErrorBody::decode_payload(payload).expect("error body").code())
    }

    /// The next frame is error `want` answering (`opcode`, `request_id`).
    fn expect_error(&mut self, want: ErrorCode, opcode: u16, request_id: u64) {
        let (h, code) = self.error();
        assert_eq!(code, want);
        assert_eq!((h.opcode, h.request_id), (opcode, request_id), "{want:?}");
    }

    fn assert_closed(&mut self) {
        assert!(self.frame().is_none(), "the broker closed the connection");
    }
}

fn ping(id: u64) -> Vec<u8> {
    request_frame(id, &Request::Ping(Ping {}))
}

#[test]
fn handshake_required_answers_the_first_frame_with_its_opcode_and_id() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut w = Wire::connect(&broker);
    w.send(&request_frame(42, &Request::ListQueues(ListQueues::default())));
    w.expect_error(ErrorCode::HANDSHAKE_REQUIRED, Opcode::ListQueues as u16, 42);
    w.assert_closed();
}

#[test]
fn failed_handshakes_carry_the_handshake_opcode() {
    let broker = Broker::start(&["--shards", "1"]);
    let future = Handshake { version_min: 90, version_max: 91, ..Handshake::new("future") };
    let with_auth = Handshake { auth_method: "PLAIN".into(), ..Handshake::new("auth") };
    let cases = [
        (request_frame(7, &Request::Handshake(future)), ErrorCode::UNSUPPORTED_VERSION),
        (request_frame(7, &Request::Handshake(with_auth)), ErrorCode::AUTH_FAILED),
        (raw_frame(Opcode::Handshake as u16, 0, 7, &[1, 0]), ErrorCode::MALFORMED_FRAME),
    ];
    for (frame, want) in cases {
        let mut w = Wire::connect(&broker);
        w.send(&frame);
        w.expect_error(want, Opcode::Handshake as u16, 7);
        w.assert_closed();
    }
}

#[test]
fn failed_authentication_carries_the_opcode_it_answers() {
    let broker = Broker::start(&["--shards", "1"]);
    let replayed = Authenticate {
        secret_id: "AKIDx".into(),
        client_nonce: Bytes::from(vec![2; 32]),
        timestamp_ms: 1,
        mac: Bytes::from(vec![3; 32]),
    };
    // The second AuthChallenge first: a failure puts the address in its
    // backoff, which refuses AuthChallenge (not Authenticate) for a while.
    let mut w = Wire::connect(&broker);
    w.send(&request_frame(5, &Request::AuthChallenge(AuthChallenge {})));
    let (h, _) = w.frame().expect("a server nonce");
    assert_eq!((h.flags, h.opcode, h.request_id), (1, Opcode::AuthChallenge as u16, 5));
    w.send(&request_frame(6, &Request::AuthChallenge(AuthChallenge {})));
    w.expect_error(ErrorCode::AUTH_FAILED, Opcode::AuthChallenge as u16, 6);
    w.assert_closed();
    let mut w = Wire::connect(&broker);
    w.send(&request_frame(8, &Request::Authenticate(replayed)));
    w.expect_error(ErrorCode::AUTH_FAILED, Opcode::Authenticate as u16, 8);
    w.assert_closed();
}

#[test]
fn a_non_empty_auth_method_is_refused_not_ignored() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut w = Wire::connect(&broker);
    let hs =
        Handshake { auth_method: "token".into(), auth_payload: Bytes::from_static(b"s3cret"), ..Handshake::new("a") };
    w.send(&request_frame(1, &Request::Handshake(hs)));
    let (_, payload) = w.frame().expect("an answer");
    let body = ErrorBody::decode_payload(payload).expect("an error body");
    assert_eq!(body.code(), ErrorCode::AUTH_FAILED);
    assert!(body.message.contains("\"token\""), "the message names the method: {:?}", body.message);
    assert!(!body.message.contains("s3cret"), "never echoes credentials");
    w.assert_closed();
}

#[test]
fn a_second_handshake_is_refused_and_the_connection_stays_usable() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut w = Wire::handshaken(&broker);
    w.send(&request_frame(9, &Request::Handshake(Handshake::new("again"))));
    w.expect_error(ErrorCode::INVALID_PARAMETER, Opcode::Handshake as u16, 9);
    w.send(&ping(10));
    let (h, _) = w.frame().expect("the ping is answered");
    assert_eq!((h.flags, h.request_id), (1, 10));
}

#[test]
fn a_client_frame_flagged_response_is_answered_with_its_opcode_then_closed() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut w = Wire::handshaken(&broker);
    w.send(&raw_frame(Opcode::Ping as u16, frame::FLAG_RESPONSE, 5, &[]));
    w.expect_error(ErrorCode::MALFORMED_FRAME, Opcode::Ping as u16, 5);
    w.assert_closed();
}

#[test]
fn connection_errors_carry_opcode_0_and_request_id_0() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut w = Wire::handshaken(&broker);
    // A length prefix of 11 cannot hold a header.
    w.send(&11u32.to_le_bytes());
    w.expect_error(ErrorCode::MALFORMED_FRAME, 0, 0);
    w.assert_closed();
}

#[test]
fn request_id_0_reused_ids_and_reserved_bits_are_served() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut w = Wire::handshaken(&broker);
    // Reserved flag bits 3-7 and the reserved byte set: ignored.
    let mut odd = ping(0);
    odd[6] = 0xf8;
    odd[7] = 0xff;
    w.send(&odd);
    let (h, _) = w.frame().expect("answered");
    assert_eq!((h.opcode, h.flags, h.request_id), (Opcode::Ping as u16, 1, 0));
    // The same id twice in flight: both run, both answered with it.
    let mut two = ping(77);
    two.extend_from_slice(&ping(77));
    w.send(&two);
    for _ in 0..2 {
        let (h, _) = w.frame().expect("both answered");
        assert_eq!((h.flags, h.request_id), (1, 77));
    }
}

#[test]
fn an_unknown_opcode_error_carries_the_request_opcode() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut w = Wire::handshaken(&broker);
    w.send(&raw_frame(0x7777, 0, 3, b""));
    w.expect_error(ErrorCode::UNKNOWN_OPCODE, 0x7777, 3);
}

/// §1's list of which decode failure gets which code; the connection stays open after each.
#[test]
fn decode_failures_get_the_documented_codes() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut w = Wire::handshaken(&broker);
    let peek = |include_body: u8| {
        let mut p = vec![1, 0, b'q'];
        p.extend_from_slice(&0u64.to_le_bytes());
        p.extend_from_slice(&1u16.to_le_bytes());
        p.push(include_body);
        p
    };
    let check = request_frame(0, &Request::TransactionCheck(TransactionCheck::default()));
    let cases: [(u16, Vec<u8>, ErrorCode); 5] = [
        (Opcode::PeekMessages as u16, peek(2), ErrorCode::INVALID_PARAMETER),
        (Opcode::DeleteQueue as u16, vec![2, 0, 0xff, 0xfe], ErrorCode::INVALID_PARAMETER),
        (Opcode::PeekMessages as u16, [peek(1), vec![0]].concat(), ErrorCode::MALFORMED_FRAME),
        (Opcode::DeleteQueue as u16, vec![9, 0, b'q'], ErrorCode::MALFORMED_FRAME),
        (Opcode::TransactionCheck as u16, check[frame::HEADER_BYTES..].to_vec(), ErrorCode::UNKNOWN_OPCODE),
    ];
    for (i, (opcode, payload, want)) in cases.into_iter().enumerate() {
        let id = 100 + i as u64;
        w.send(&raw_frame(opcode, 0, id, &payload));
        w.expect_error(want, opcode, id);
    }
    w.send(&ping(200));
    let (h, _) = w.frame().expect("still open");
    assert_eq!((h.flags, h.request_id), (1, 200));
}
