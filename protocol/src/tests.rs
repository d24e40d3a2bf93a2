//! Codec properties over every frame type: round trips, truncation, garbage.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use crate::frame::{self, FLAG_ERROR};
use crate::ops::{arb_request, arb_response};
use crate::wire::Wire;
use crate::*;

fn decode_one(bytes: &[u8]) -> (frame::FrameHeader, Bytes) {
    let mut buf = BytesMut::from(bytes);
    let total = frame::check(&buf).expect("valid frame").expect("complete frame");
    assert_eq!(total, bytes.len());
    frame::split(&mut buf, total)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_request_round_trips(req in arb_request(), id in any::<u64>()) {
        let mut out = Vec::new();
        req.encode_frame(id, &mut out);
        let (h, payload) = decode_one(&out);
        prop_assert_eq!(h.request_id, id);
        prop_assert!(!h.is_response());
        prop_assert_eq!(Request::decode(h.opcode, payload), Ok(req));
    }

    #[test]
    fn every_response_round_trips(resp in arb_response(), id in any::<u64>()) {
        let mut out = Vec::new();
        resp.encode_frame(id, &mut out);
        let (h, payload) = decode_one(&out);
        prop_assert!(h.is_response() && !h.is_error());
        prop_assert_eq!(Response::decode(h.opcode, payload), Ok(resp));
    }

    #[test]
    fn error_bodies_round_trip(body in any::<ErrorBody>(), op in any::<u16>(), id in any::<u64>()) {
        let mut out = Vec::new();
        body.encode_frame(op, id, &mut out);
        let (h, payload) = decode_one(&out);
        prop_assert_eq!(h.flags & FLAG_ERROR, FLAG_ERROR);
        prop_assert_eq!(h.opcode, op);
        prop_assert_eq!(ErrorBody::decode_payload(payload), Ok(body));
    }

    /// Cutting a payload anywhere is a decode error, never a panic and never
    /// a different valid message, with one exception by design: a cut just
    /// before a trailing idempotency key section is the same request
    /// without keys (a version 2 frame). Frames are length-delimited, so
    /// such a cut never comes from a short read.
    #[test]
    fn every_truncation_is_an_error(req in arb_request()) {
        let mut out = Vec::new();
        req.encode_frame(1, &mut out);
        let payload = Bytes::copy_from_slice(&out[frame::HEADER_BYTES..]);
        let keyless = without_keys(&req);
        for cut in 0..payload.len() {
            match Request::decode(req.opcode() as u16, payload.slice(..cut)) {
                Err(_) => {}
                Ok(got) => prop_assert!(keyless.as_ref() == Some(&got) && got != req, "cut {}", cut),
            }
        }
    }

    #[test]
    fn every_response_truncation_is_an_error(resp in arb_response()) {
        let mut out = Vec::new();
        resp.encode_frame(1, &mut out);
        let payload = Bytes::copy_from_slice(&out[frame::HEADER_BYTES..]);
        for cut in 0..payload.len() {
            prop_assert!(Response::decode(resp.opcode() as u16, payload.slice(..cut)).is_err(), "cut {}", cut);
        }
    }

    /// Arbitrary bytes through the whole decode path never panic.
    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), op in any::<u16>()) {
        let mut buf = BytesMut::from(&data[..]);
        if let Ok(Some(total)) = frame::check(&buf) {
            let (h, payload) = frame::split(&mut buf, total);
            let _ = Request::decode(h.opcode, payload.clone());
            let _ = Response::decode(h.opcode, payload.clone());
            let _ = ErrorBody::decode_payload(payload);
        }
        let _ = Request::decode(op, Bytes::from(data.clone()));
        let _ = Response::decode(op, Bytes::from(data));
    }

    /// Garbage behind a valid opcode exercises every payload decoder.
    #[test]
    fn garbage_payloads_for_every_opcode(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        for op in Opcode::ALL {
            let _ = Request::decode(*op as u16, Bytes::from(data.clone()));
            let _ = Response::decode(*op as u16, Bytes::from(data.clone()));
        }
    }
}

/// `req` with its idempotency keys taken off, if it can carry any.
fn without_keys(req: &Request) -> Option<Request> {
    let mut r = req.clone();
    match &mut r {
        Request::SendMessage(m) => m.idempotency_key = Bytes::new(),
        Request::BatchSendMessage(m) => m.idempotency_keys.clear(),
        Request::PublishMessage(m) => m.idempotency_key = Bytes::new(),
        Request::BatchPublishMessage(m) => m.idempotency_keys.clear(),
        _ => return None,
    }
    Some(r)
}

#[test]
fn golden_send_message_frame() {
    let req = Request::SendMessage(SendMessage {
        queue: "q1".into(),
        delay_seconds: 5,
        body: Bytes::from_static(b"hi"),
        ..Default::default()
    });
    let mut out = Vec::new();
    req.encode_frame(7, &mut out);
    #[rustfmt::skip]
    let expected = [
        26, 0, 0, 0,            // length: 12 header bytes + 14 payload bytes
        0x00, 0x02,             // opcode 0x0200 SendMessage
        0, 0,                   // flags, reserved
        7, 0, 0, 0, 0, 0, 0, 0, // request id
        2, 0, b'q', b'1',       // queue
        5, 0, 0, 0,             // delay_seconds
        2, 0, 0, 0, b'h', b'i', // body
    ];
    assert_eq!(out, expected);
}

#[test]
fn golden_keyed_send_message_frame() {
    let req = Request::SendMessage(SendMessage {
        queue: "q1".into(),
        delay_seconds: 5,
        body: Bytes::from_static(b"hi"),
        idempotency_key: Bytes::from_static(b"k1"),
    });
    let mut out = Vec::new();
    req.encode_frame(7, &mut out);
    #[rustfmt::skip]
    let expected = [
        29, 0, 0, 0,            // length: 12 header bytes + 17 payload bytes
        0x00, 0x02,             // opcode 0x0200 SendMessage
        0, 0,                   // flags, reserved
        7, 0, 0, 0, 0, 0, 0, 0, // request id
        2, 0, b'q', b'1',       // queue
        5, 0, 0, 0,             // delay_seconds
        2, 0, 0, 0, b'h', b'i', // body
        2, b'k', b'1',          // idempotency key (absent when empty)
    ];
    assert_eq!(out, expected);
}

#[test]
fn golden_keyed_batch_send_frame() {
    let req = Request::BatchSendMessage(BatchSendMessage {
        queue: "q".into(),
        delay_seconds: 0,
        bodies: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
        idempotency_keys: vec![Bytes::from_static(b"x"), Bytes::new()],
    });
    let mut out = Vec::new();
    req.encode_frame(1, &mut out);
    #[rustfmt::skip]
    let payload = [
        1, 0, b'q',                          // queue
        0, 0, 0, 0,                          // delay_seconds
        2, 0, 1, 0, 0, 0, b'a', 1, 0, 0, 0, b'b', // bodies
        2, 0, 1, b'x', 0,                    // keys: "x", none
    ];
    assert_eq!(&out[frame::HEADER_BYTES..], payload);
}

#[test]
fn idempotency_keys_are_bounded_and_canonical() {
    use crate::limits::IDEMPOTENCY_KEY_BYTES_MAX;
    let send = |key: Vec<u8>| {
        let mut out = Vec::new();
        SendMessage { queue: "q".into(), body: Bytes::from_static(b"b"), ..Default::default() }.encode(&mut out);
        out.push(key.len() as u8);
        out.extend_from_slice(&key);
        Request::decode(Opcode::SendMessage as u16, Bytes::from(out))
    };
    let Ok(Request::SendMessage(ok)) = send(vec![7; IDEMPOTENCY_KEY_BYTES_MAX]) else {
        panic!("a key at the limit decodes")
    };
    assert_eq!(ok.idempotency_key.len(), IDEMPOTENCY_KEY_BYTES_MAX);
    let err = send(vec![7; IDEMPOTENCY_KEY_BYTES_MAX + 1]).expect_err("one byte over the limit");
    assert_eq!(err.code(), ErrorCode::INVALID_PARAMETER);
    assert_eq!(err, DecodeError::TooLong { field: "idempotency_key", got: 65, max: 64 });
    // A present empty key would be a second way to say "no key".
    assert_eq!(send(Vec::new()), Err(DecodeError::Invalid("idempotency_key")));
    // An empty present key list likewise; more keys than a batch holds is refused.
    let mut out = Vec::new();
    BatchSendMessage { queue: "q".into(), bodies: vec![Bytes::from_static(b"b")], ..Default::default() }
        .encode(&mut out);
    let mut empty = out.clone();
    empty.extend_from_slice(&[0, 0]);
    assert_eq!(
        Request::decode(Opcode::BatchSendMessage as u16, Bytes::from(empty)),
        Err(DecodeError::Invalid("idempotency_keys"))
    );
    out.extend_from_slice(&[17, 0]);
    out.extend_from_slice(&[0; 17]);
    let err = Request::decode(Opcode::BatchSendMessage as u16, Bytes::from(out)).expect_err("17 keys");
    assert_eq!(err.code(), ErrorCode::INVALID_PARAMETER);
}

#[test]
fn golden_handshake_frame() {
    let req = Request::Handshake(Handshake {
        version_min: 1,
        version_max: 1,
        client: "c".into(),
        auth_method: String::new(),
        auth_payload: Bytes::new(),
        shard_hint: Some(1),
    });
    let mut out = Vec::new();
    req.encode_frame(1, &mut out);
    #[rustfmt::skip]
    let expected = [
        28, 0, 0, 0, 0x01, 0x00, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
        1, 0, 1, 0,             // versions 1..=1
        1, 0, b'c',             // client
        0, 0,                   // auth_method ""
        0, 0, 0, 0,             // auth_payload (empty)
        1, 1, 0,                // shard_hint Some(1)
    ];
    assert_eq!(out, expected);
}

#[test]
fn golden_error_frame() {
    let mut out = Vec::new();
    ErrorBody::new(ErrorCode::QUEUE_NOT_FOUND, "q").encode_frame(0x0200, 3, &mut out);
    #[rustfmt::skip]
    let expected = [
        17, 0, 0, 0, 0x00, 0x02, 0x03, 0, 3, 0, 0, 0, 0, 0, 0, 0,
        0x58, 0x11,             // 4440
        1, 0, b'q',
    ];
    assert_eq!(out, expected);
}

#[test]
fn oversized_batch_is_refused_before_allocation() {
    let mut w = Vec::new();
    use crate::wire::Writer;
    w.put_str("q");
    w.put_u32(0);
    w.put_u16(17); // 17 bodies claimed
    let err = Request::decode(Opcode::BatchSendMessage as u16, Bytes::from(w)).expect_err("17 > 16");
    assert_eq!(err.code(), ErrorCode::BATCH_TOO_LARGE);
}

#[test]
fn oversized_body_is_message_too_large() {
    let mut w = Vec::new();
    use crate::wire::Writer;
    w.put_str("q");
    w.put_u32(0);
    w.put_u32(limits::MSG_BYTES_MAX + 1);
    let err = Request::decode(Opcode::SendMessage as u16, Bytes::from(w)).expect_err("too big");
    assert_eq!(err.code(), ErrorCode::MESSAGE_TOO_LARGE);
}

#[test]
fn unknown_opcode_is_reported() {
    let err = Request::decode(0x7fff, Bytes::new()).expect_err("unknown");
    assert_eq!(err, DecodeError::UnknownOpcode(0x7fff));
    assert_eq!(err.code(), ErrorCode::UNKNOWN_OPCODE);
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut out = Vec::new();
    Request::Ping(Ping {}).encode_frame(1, &mut out);
    out.push(0);
    frame::end(&mut out, 0);
    let (h, payload) = decode_one(&out);
    assert_eq!(Request::decode(h.opcode, payload), Err(DecodeError::TrailingBytes(1)));
}
