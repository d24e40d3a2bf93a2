//! Golden bytes for every record type: the expected payloads are written
//! field by field from the layout table in the module documentation, not
//! produced by the codec, so a codec change that moves a byte fails here.
//! Logs already on disk and the bytes Raft peers exchange depend on these.

use super::*;
use crate::engine::codec::gold::Gold;
use cmq_protocol::FlushPolicy;

/// `rec` encodes to exactly `expected` with its first body at `offset`
/// (0 for records without one), carries type byte `rtype`, and `expected`
/// decodes back to it.
fn check(rtype: u8, rec: Record<Bytes>, expected: Gold, offset: u32) {
    assert_eq!(rec.rtype(), rtype);
    let mut scratch = Vec::new();
    let (payload, at) = rec.encode(&mut scratch, |parts| parts.concat()).expect("encodes");
    assert_eq!(payload, expected.0, "record type {rtype}: bytes differ from the table");
    assert_eq!(at, offset, "record type {rtype}: body offset");
    assert_eq!(rec.check_decodes_to(&expected.0, offset), Ok(()), "record type {rtype}");
}

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

#[test]
fn queue_records() {
    let attrs = QueueAttributes::defaults(FlushPolicy::Async);
    let rec = Record::QueueCreated(QueueCreated {
        uid: 7,
        time_ms: 1_000,
        create_seq: 3,
        attrs: attrs.clone(),
        name: "orders".into(),
    });
    check(1, rec, Gold::default().u32(7).u64(1_000).u64(3).attrs(&attrs).str("orders"), 0);
    let attrs = QueueAttributes::defaults(FlushPolicy::Sync);
    let rec = Record::QueueUpdated(QueueUpdated { uid: 7, time_ms: 2_000, attrs: attrs.clone() });
    check(2, rec, Gold::default().u32(7).u64(2_000).attrs(&attrs), 0);
    check(3, Record::QueueDeleted(QueueDeleted { uid: 7, time_ms: 3 }), Gold::default().u32(7).u64(3), 0);
    check(9, Record::Rewound(Rewound { uid: 7, time_ms: 5, start_ms: 4 }), Gold::default().u32(7).u64(5).u64(4), 0);
    check(10, Record::Purged(Purged { uid: 7, time_ms: 6 }), Gold::default().u32(7).u64(6), 0);
}

#[test]
fn enqueued_with_and_without_keys() {
    let rec = |keys: Vec<Bytes>| {
        Record::Enqueued(Enqueued {
            uid: 2,
            first_seq: 10,
            first_msg_id: 20,
            enqueue_ms: 30,
            visible_at_ms: 40,
            bodies: vec![b(b"ab"), b(b"")],
            keys,
        })
    };
    let header = Gold::default().u32(2).u64(10).u64(20).u64(30).u64(40).u16(2);
    let first_body = header.offset() + 4;
    let keyless = header.u32(2).raw(b"ab").u32(0);
    check(4, rec(Vec::new()), Gold(keyless.0.clone()), first_body);
    // All keys empty is logged as none.
    check(4, rec(vec![Bytes::new(), Bytes::new()]), Gold(keyless.0.clone()), first_body);
    let keyed = keyless.u16(2).u8(1).raw(b"k").u8(0);
    check(4, rec(vec![b(b"k"), Bytes::new()]), keyed, first_body);
    let empty = Record::Enqueued(Enqueued {
        uid: 2,
        first_seq: 1,
        first_msg_id: 1,
        enqueue_ms: 0,
        visible_at_ms: 0,
        bodies: Vec::new(),
        keys: Vec::new(),
    });
    // No body, so no body offset.
    check(4, empty, Gold::default().u32(2).u64(1).u64(1).u64(0).u64(0).u16(0), 0);
}

#[test]
fn receive_side_records() {
    let rec = Record::Received(Received { uid: 3, time_ms: 9, visible_at_ms: 39, seqs: vec![5, 6] });
    check(5, rec, Gold::default().u32(3).u64(9).u64(39).u16(2).u64(5).u64(6), 0);
    check(6, Record::Deleted(Deleted { uid: 3, seqs: vec![8] }), Gold::default().u32(3).u16(1).u64(8), 0);
    let rec = Record::VisibilityChanged(VisibilityChanged { uid: 3, seq: 8, visible_at_ms: 77 });
    check(7, rec, Gold::default().u32(3).u64(8).u64(77), 0);
}

#[test]
fn relocated() {
    let entry = RelocatedEntry {
        msg_id: 11,
        enqueue_ms: 12,
        visible_at_ms: 13,
        dequeue_count: 14,
        first_dequeue_rel: 15,
        state: 2,
        flags: 1,
    };
    let rec = Record::Relocated(Relocated { uid: 4, seq: 10, entry, body: b(b"body"), suffix: b(b"sfx") });
    let head = Gold::default().u32(4).u64(10).u64(11).u64(12).u64(13).u32(14).u32(15).u8(2).u8(1).u32(4).u32(7);
    let offset = head.offset();
    check(8, rec, head.raw(b"body").raw(b"sfx"), offset);
}

#[test]
fn transaction_records() {
    let rec = Record::HalfEnqueued(HalfEnqueued {
        uid: 5,
        seq: 1,
        msg_id: 2,
        enqueue_ms: 3,
        check_at_ms: 4,
        body: b(b"half"),
        suffix: b(b"grp"),
    });
    let head = Gold::default().u32(5).u64(1).u64(2).u64(3).u64(4).u32(4).u32(7);
    let offset = head.offset();
    check(11, rec, head.raw(b"half").raw(b"grp"), offset);
    let rec = Record::TxChecked(TxChecked { uid: 5, seq: 1, count: 3, next_ms: 99 });
    check(12, rec, Gold::default().u32(5).u64(1).u32(3).u64(99), 0);
    let rec = Record::TxEnded(TxEnded { uid: 5, seq: 1, commit: true, time_ms: 100 });
    check(13, rec, Gold::default().u32(5).u64(1).u8(1).u64(100), 0);
    let rec = Record::TxEnded(TxEnded { uid: 5, seq: 1, commit: false, time_ms: 100 });
    check(13, rec, Gold::default().u32(5).u64(1).u8(0).u64(100), 0);
}

#[test]
fn transfer_records() {
    let rec = Record::TransferOut(TransferOut {
        id: 1,
        kind: transfer_kind::DEAD_LETTER,
        redrive: 2,
        src_uid: 3,
        src_seq: 4,
        dequeue_count: 5,
        time_ms: 6,
        dst_queue: "dlq".into(),
        body: b(b"m"),
        suffix: b(b"origin"),
    });
    let head = Gold::default().u64(1).u8(1).u64(2).u32(3).u64(4).u32(5).u64(6).str("dlq").u32(1).u32(7);
    let offset = head.offset();
    check(14, rec, head.raw(b"m").raw(b"origin"), offset);
    let rec = Record::TransferIn(TransferIn {
        src_shard: 3,
        id: 1,
        uid: 9,
        seq: 8,
        msg_id: 7,
        enqueue_ms: 6,
        dequeue_count: 5,
        body: b(b"xy"),
        suffix: Bytes::new(),
    });
    let head = Gold::default().u16(3).u64(1).u32(9).u64(8).u64(7).u64(6).u32(5).u32(2).u32(2);
    let offset = head.offset();
    check(15, rec, head.raw(b"xy"), offset);
    check(
        16,
        Record::TransferDone(TransferDone { ids: vec![1, 2, 3] }),
        Gold::default().u16(3).u64(1).u64(2).u64(3),
        0,
    );
    let rec = Record::TransferReturned(TransferReturned { id: 1, uid: 2, seq: 3, msg_id: 4, enqueue_ms: 5 });
    check(17, rec, Gold::default().u64(1).u32(2).u64(3).u64(4).u64(5), 0);
}

#[test]
fn redrive_records() {
    let rec = Record::RedriveStarted(RedriveStarted {
        id: 1,
        uid: 2,
        rate: 3,
        end_seq: 4,
        total: 5,
        time_ms: 6,
        to: "q2".into(),
    });
    check(18, rec, Gold::default().u64(1).u32(2).u32(3).u64(4).u64(5).u64(6).str("q2"), 0);
    check(
        19,
        Record::RedriveEnded(RedriveEnded { id: 1, state: 2, time_ms: 3 }),
        Gold::default().u64(1).u8(2).u64(3),
        0,
    );
}

#[test]
fn topic_records() {
    let rec = Record::TopicCreated(TopicCreated {
        uid: 1,
        time_ms: 2,
        create_seq: 3,
        max_msg_size: 4,
        retention_s: 5,
        filter_type: 2,
        name: "news".into(),
    });
    check(20, rec, Gold::default().u32(1).u64(2).u64(3).u32(4).u32(5).u8(2).str("news"), 0);
    let rec = Record::TopicUpdated(TopicUpdated { uid: 1, time_ms: 2, max_msg_size: 9 });
    check(21, rec, Gold::default().u32(1).u64(2).u32(9), 0);
    check(22, Record::TopicDeleted(TopicDeleted { uid: 1, time_ms: 2 }), Gold::default().u32(1).u64(2), 0);
}

#[test]
fn subscription_records() {
    let def = SubscriptionDef {
        name: "s".into(),
        protocol: 2,
        endpoint: "http://h/".into(),
        strategy: 1,
        format: 2,
        filter_tags: vec!["a".into(), "bc".into()],
        binding_keys: vec!["k.*".into()],
        dead_letter_queue: "dl".into(),
        secret: [9; 16],
    };
    let rec = Record::Subscribed(Subscribed { uid: 1, sid: 2, time_ms: 3, def });
    let expected = Gold::default()
        .u32(1)
        .u32(2)
        .u64(3)
        .str("s")
        .u8(2)
        .str("http://h/")
        .u8(1)
        .u8(2)
        .u16(2)
        .str("a")
        .str("bc")
        .u16(1)
        .str("k.*")
        .str("dl")
        .raw(&[9; 16]);
    check(23, rec, expected, 0);
    let rec = Record::SubscriptionUpdated(SubscriptionUpdated {
        uid: 1,
        sid: 2,
        time_ms: 3,
        strategy: 2,
        format: 1,
        filter_tags: Vec::new(),
        binding_keys: vec!["x".into()],
    });
    check(24, rec, Gold::default().u32(1).u32(2).u64(3).u8(2).u8(1).u16(0).u16(1).str("x"), 0);
    check(
        25,
        Record::Unsubscribed(Unsubscribed { uid: 1, sid: 2, time_ms: 3 }),
        Gold::default().u32(1).u32(2).u64(3),
        0,
    );
}

#[test]
fn published_with_and_without_keys() {
    let rec = |keys: Vec<Bytes>| {
        Record::Published(Published {
            uid: 1,
            first_msg_id: 2,
            first_transfer: 3,
            time_ms: 4,
            tags: vec!["t".into()],
            routing_key: "a.b".into(),
            targets: vec![7, 8],
            bodies: vec![b(b"p"), b(b"qr")],
            keys,
        })
    };
    let header = Gold::default().u32(1).u64(2).u64(3).u64(4).u16(1).str("t").str("a.b").u16(2).u32(7).u32(8).u16(2);
    let first_body = header.offset() + 4;
    let keyless = header.u32(1).raw(b"p").u32(2).raw(b"qr");
    check(26, rec(Vec::new()), Gold(keyless.0.clone()), first_body);
    let keyed = keyless.u16(2).u8(0).u8(2).raw(b"kk");
    check(26, rec(vec![Bytes::new(), b(b"kk")]), keyed, first_body);
}

#[test]
fn push_records() {
    let rec = Record::PushRetry(PushRetry { entries: vec![(1, 2, 3), (4, 5, 6)] });
    check(27, rec, Gold::default().u16(2).u64(1).u32(2).u64(3).u64(4).u32(5).u64(6), 0);
    check(28, Record::PushGaveUp(PushGaveUp { id: 1, time_ms: 2 }), Gold::default().u64(1).u64(2), 0);
}

#[test]
fn key_records() {
    let key = crate::engine::keys::KeyDef {
        name: "admin".into(),
        secret_id: "AKIDx".into(),
        secrets: vec!["s1".into(), "s2".into()],
        policy: "{}".into(),
        created_ms: 5,
        modified_ms: 6,
    };
    let expected = Gold::default().u64(4).str("admin").str("AKIDx").u16(2).str("s1").str("s2").str("{}").u64(5).u64(6);
    check(40, Record::KeyPut(KeyPut { time_ms: 4, key }), expected, 0);
    check(
        41,
        Record::KeyDeleted(KeyDeleted { time_ms: 4, name: "admin".into() }),
        Gold::default().u64(4).str("admin"),
        0,
    );
}
