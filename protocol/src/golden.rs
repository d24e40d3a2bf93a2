//! Golden bytes for every opcode's request and response, written from
//! PROTOCOL.md's tables (§1 frame header, §2 primitives, §4 handshake, §5
//! operations and compound types) with a byte builder that shares nothing
//! with the codec. Each case checks both directions: the encoder writes
//! exactly these bytes, and the decoder reads them back to the same value.
//! A final check fails if an opcode has no golden request or response.

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::*;

/// The request id every golden frame carries.
const ID: u64 = 0x0102_0304_0506_0708;

/// A payload as PROTOCOL.md §2 spells it, built by hand.
#[derive(Default)]
struct P(Vec<u8>);

impl P {
    fn raw(mut self, v: &[u8]) -> P {
        self.0.extend_from_slice(v);
        self
    }
    fn u8(self, v: u8) -> P {
        self.raw(&[v])
    }
    fn u16(self, v: u16) -> P {
        self.raw(&v.to_le_bytes())
    }
    fn u32(self, v: u32) -> P {
        self.raw(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> P {
        self.raw(&v.to_le_bytes())
    }
    fn u128(self, v: u128) -> P {
        self.raw(&v.to_le_bytes())
    }
    /// `str`: u16 byte length, then UTF-8.
    fn str(self, v: &str) -> P {
        self.u16(v.len() as u16).raw(v.as_bytes())
    }
    /// `bytes`: u32 byte length, then the bytes.
    fn bytes(self, v: &[u8]) -> P {
        self.u32(v.len() as u32).raw(v)
    }
    /// `list<T>`: u16 item count (the items follow).
    fn count(self, n: u16) -> P {
        self.u16(n)
    }
    /// `option<T>`: tag 0 absent.
    fn none(self) -> P {
        self.u8(0)
    }
    /// `option<T>`: tag 1 present (the value follows).
    fn some(self) -> P {
        self.u8(1)
    }
    /// `StrList`: u16 count, then the strings.
    fn strs(self, v: &[&str]) -> P {
        v.iter().fold(self.count(v.len() as u16), |p, s| p.str(s))
    }
}

/// §1: length (12 + payload), opcode, flags, reserved 0, request id, payload.
fn frame(opcode: u16, flags: u8, request_id: u64, payload: &[u8]) -> Vec<u8> {
    P::default().u32(12 + payload.len() as u32).u16(opcode).u8(flags).u8(0).u64(request_id).raw(payload).0
}

/// A request or a success response, as the golden checks see it.
trait Frame: PartialEq + std::fmt::Debug + Sized {
    /// The header flags §1 gives it: 0 for a request, 1 for a response.
    const FLAGS: u8;
    fn op(&self) -> Opcode;
    fn encode_frame(&self, out: &mut Vec<u8>);
    fn decode(opcode: u16, payload: Bytes) -> Result<Self, DecodeError>;
}

impl Frame for Request {
    const FLAGS: u8 = 0;
    fn op(&self) -> Opcode {
        self.opcode()
    }
    fn encode_frame(&self, out: &mut Vec<u8>) {
        Request::encode_frame(self, ID, out)
    }
    fn decode(opcode: u16, payload: Bytes) -> Result<Self, DecodeError> {
        Request::decode(opcode, payload)
    }
}

impl Frame for Response {
    const FLAGS: u8 = 1;
    fn op(&self) -> Opcode {
        self.opcode()
    }
    fn encode_frame(&self, out: &mut Vec<u8>) {
        Response::encode_frame(self, ID, out)
    }
    fn decode(opcode: u16, payload: Bytes) -> Result<Self, DecodeError> {
        Response::decode(opcode, payload)
    }
}

/// The opcodes checked so far, requests (flags 0) and responses (flags 1).
#[derive(Default)]
struct Golden {
    seen: [BTreeSet<u16>; 2],
}

impl Golden {
    /// The encoder writes exactly the frame of `payload`, and the payload decodes to `value`.
    fn check<F: Frame>(&mut self, opcode: u16, value: F, payload: P) {
        let what = format!("{} (flags {})", value.op().name(), F::FLAGS);
        assert_eq!(value.op() as u16, opcode, "{what}: opcode");
        let mut out = Vec::new();
        value.encode_frame(&mut out);
        assert_eq!(out, frame(opcode, F::FLAGS, ID, &payload.0), "{what}: bytes");
        assert_eq!(F::decode(opcode, Bytes::from(payload.0)), Ok(value), "{what}: decodes");
        self.seen[usize::from(F::FLAGS)].insert(opcode);
    }

    fn request(&mut self, opcode: u16, req: Request, payload: P) {
        self.check(opcode, req, payload)
    }

    fn response(&mut self, opcode: u16, resp: Response, payload: P) {
        self.check(opcode, resp, payload)
    }

    /// A request and an empty success response.
    fn empty_answer(&mut self, opcode: u16, req: Request, payload: P) {
        self.request(opcode, req, payload);
        self.response(opcode, Response::decode(opcode, Bytes::new()).expect("an empty answer"), P::default());
    }
}

fn origin() -> (MessageOrigin, P) {
    let o = MessageOrigin { source_queue: "s".into(), original_msg_id: 7, first_enqueue_time_ms: 8 };
    (o, P::default().str("s").u64(7).u64(8))
}

fn queue_attributes(p: P) -> (QueueAttributes, P) {
    let a = QueueAttributes {
        max_msg_heap_num: 1,
        polling_wait_seconds: 2,
        visibility_timeout: 3,
        max_msg_size: 4,
        msg_retention_seconds: 5,
        rewind_seconds: 6,
        flush_policy: FlushPolicy::Async,
        dead_letter_queue: "d".into(),
        max_receive_count: 7,
        max_time_to_live: 8,
        first_query_interval: 9,
        max_query_count: 10,
        transaction_default: TxDefault::Commit,
    };
    let p = p.u64(1).u32(2).u32(3).u32(4).u32(5).u32(6).u8(2).str("d").u32(7).u32(8).u32(9).u32(10).u8(2);
    (a, p)
}

fn queue_attributes_update(p: P) -> (QueueAttributesUpdate, P) {
    let u = QueueAttributesUpdate {
        max_msg_heap_num: Some(1),
        polling_wait_seconds: None,
        visibility_timeout: Some(3),
        max_msg_size: None,
        msg_retention_seconds: None,
        rewind_seconds: None,
        flush_policy: Some(FlushPolicy::Sync),
        dead_letter_queue: Some(String::new()),
        max_receive_count: None,
        max_time_to_live: None,
        first_query_interval: None,
        max_query_count: Some(10),
        transaction_default: Some(TxDefault::Rollback),
    };
    let p = p.some().u64(1).none().some().u32(3).none().none().none().some().u8(1).some().str("");
    let p = p.none().none().none().some().u32(10).some().u8(1);
    (u, p)
}

fn queue_info() -> (QueueInfo, P) {
    let (attributes, p) = queue_attributes(P::default().u64(11).str("q"));
    let info = QueueInfo {
        queue_id: 11,
        queue: "q".into(),
        attributes,
        create_time_ms: 12,
        last_modify_time_ms: 13,
        active_msg_num: 14,
        inactive_msg_num: 15,
        delay_msg_num: 16,
        rewind_msg_num: 17,
        min_msg_time_ms: 18,
        shard: 19,
    };
    (info, p.u64(12).u64(13).u64(14).u64(15).u64(16).u64(17).u64(18).u16(19))
}

fn received(body: &'static [u8], with_origin: bool) -> (ReceivedMessage, P) {
    let p = P::default().u64(1).u128(2).u64(3).u64(4).u64(5).u32(6).bytes(body);
    let (origin, p) = if with_origin {
        let (o, op) = origin();
        (Some(o), p.some().raw(&op.0))
    } else {
        (None, p.none())
    };
    let m = ReceivedMessage {
        msg_id: 1,
        receipt_handle: ReceiptHandle(2),
        enqueue_time_ms: 3,
        first_dequeue_time_ms: 4,
        next_visible_time_ms: 5,
        dequeue_count: 6,
        body: Bytes::from_static(body),
        origin,
    };
    (m, p)
}

fn redrive_info() -> (RedriveInfo, P) {
    let r = RedriveInfo {
        id: 1,
        dead_letter_queue: "d".into(),
        to: String::new(),
        rate_per_second: 2,
        state: RedriveState::Done,
        moved: 3,
        remaining: 4,
        failed: 5,
        started_ms: 6,
        finished_ms: 7,
        note: "n".into(),
    };
    let p = P::default().u64(1).str("d").str("").u32(2).u8(2).u64(3).u64(4).u64(5).u64(6).u64(7).str("n");
    (r, p)
}

fn topic_info() -> (TopicInfo, P) {
    let t = TopicInfo {
        topic_id: 1,
        topic: "t".into(),
        max_msg_size: 2,
        msg_retention_seconds: 3,
        filter_type: FilterType::Tag,
        create_time_ms: 4,
        last_modify_time_ms: 5,
        msg_count: 6,
        subscription_count: 7,
        shard: 8,
    };
    (t, P::default().u64(1).str("t").u32(2).u32(3).u8(1).u64(4).u64(5).u64(6).u32(7).u16(8))
}

fn subscription_info() -> (SubscriptionInfo, P) {
    let s = SubscriptionInfo {
        subscription_id: 1,
        topic: "t".into(),
        subscription: "s".into(),
        protocol: SubscriptionProtocol::Https,
        endpoint: "u".into(),
        notify_strategy: NotifyStrategy::BackoffRetry,
        notify_content_format: NotifyContentFormat::Json,
        filter_tags: StrList(vec![]),
        binding_keys: StrList(vec!["k.#".into()]),
        dead_letter_queue: String::new(),
        push_secret: "x".into(),
        create_time_ms: 2,
        last_modify_time_ms: 3,
        msg_count: 4,
        delivered: 5,
        dropped: 6,
    };
    let p = P::default().u64(1).str("t").str("s").u8(3).str("u").u8(1).u8(1).strs(&[]).strs(&["k.#"]).str("");
    (s, p.str("x").u64(2).u64(3).u64(4).u64(5).u64(6))
}

fn cluster_map(p: P) -> (ClusterMap, P) {
    let map = ClusterMap {
        node_id: 1,
        nodes: vec![ClusterNode { id: 2, client_addr: "c".into(), peer_addr: "p".into() }],
        leaders: vec![ShardLeader { leader: 2, term: 3 }],
    };
    (map, p.u64(1).count(1).u64(2).str("c").str("p").count(1).u64(2).u64(3))
}

fn stats() -> (GetStatsOk, P) {
    let shard = ShardStats {
        shard: 2,
        leader: 3,
        turns: 4,
        longest_turn_us: 5,
        connections: 6,
        inbox_depth: 7,
        answers: 8,
        errors: 9,
        wal_bytes: 10,
        wal_records: 11,
        fsyncs: 12,
        wal_disk_bytes: 13,
        send_us: vec![1],
        receive_us: vec![],
        delete_us: vec![2, 3],
        fsync_us: vec![],
    };
    let queue = QueueStats {
        queue: "q".into(),
        active: 1,
        inactive: 2,
        delayed: 3,
        oldest_ms: 4,
        sent: 5,
        received: 6,
        deleted: 7,
        dead_lettered: 8,
    };
    let ok = GetStatsOk { node_id: 1, shards: vec![shard], queues: vec![queue], other_queues: 9 };
    let p = P::default().u64(1).count(1).u16(2);
    let p = (3..=13).fold(p, |p, v| p.u64(v));
    let p = p.count(1).u64(1).count(0).count(2).u64(2).u64(3).count(0);
    let p = (1..=8).fold(p.count(1).str("q"), |p, v| p.u64(v));
    (ok, p.u64(9))
}

fn handshake(g: &mut Golden) {
    let hs = Handshake {
        version_min: 2,
        version_max: 3,
        client: "c".into(),
        auth_method: String::new(),
        auth_payload: Bytes::new(),
        shard_hint: Some(1),
    };
    g.request(0x0001, Request::Handshake(hs), P::default().u16(2).u16(3).str("c").str("").bytes(b"").some().u16(1));
    let (cluster, p) = cluster_map(P::default().u16(2).str("s").u16(4).u16(1).u32(5));
    let ok = HandshakeOk { version: 2, server: "s".into(), shard_count: 4, shard_id: 1, frame_bytes_max: 5, cluster };
    g.response(0x0001, Response::Handshake(ok), p);
    g.empty_answer(0x0002, Request::Ping(Ping {}), P::default());
}

fn queue_admin(g: &mut Golden) {
    let (attributes, p) = queue_attributes_update(P::default().str("q"));
    g.request(0x0100, Request::CreateQueue(CreateQueue { queue: "q".into(), attributes }), p);
    g.response(0x0100, Response::CreateQueue(CreateQueueOk { queue_id: 9 }), P::default().u64(9));
    g.empty_answer(0x0101, Request::DeleteQueue(DeleteQueue { queue: "q".into() }), P::default().str("q"));
    let list = ListQueues { prefix: "p".into(), contains: "c".into(), offset: 1, limit: 2 };
    g.request(0x0102, Request::ListQueues(list), P::default().str("p").str("c").u32(1).u32(2));
    let ok = ListQueuesOk { total: 3, queues: vec![QueueSummary { queue_id: 4, queue: "q".into() }] };
    g.response(0x0102, Response::ListQueues(ok), P::default().u32(3).count(1).u64(4).str("q"));
    g.request(0x0103, Request::GetQueueAttributes(GetQueueAttributes { queue: "q".into() }), P::default().str("q"));
    let (info, p) = queue_info();
    g.response(0x0103, Response::GetQueueAttributes(info.clone()), p);
    let (attributes, p) = queue_attributes_update(P::default().str("q"));
    g.request(0x0104, Request::SetQueueAttributes(SetQueueAttributes { queue: "q".into(), attributes }), p);
    let (_, p) = queue_info();
    g.response(0x0104, Response::SetQueueAttributes(info), p);
}

/// Sends and publishes without idempotency keys (version 2's layout, still
/// valid in version 3); the keyed layouts have golden tests of their own.
fn messages(g: &mut Golden) {
    let send =
        SendMessage { queue: "q".into(), delay_seconds: 5, body: Bytes::from_static(b"hi"), ..Default::default() };
    g.request(0x0200, Request::SendMessage(send), P::default().str("q").u32(5).bytes(b"hi"));
    g.response(0x0200, Response::SendMessage(SendMessageOk { msg_id: 9 }), P::default().u64(9));
    let bodies = vec![Bytes::from_static(b"a"), Bytes::from_static(b"bc")];
    let batch = BatchSendMessage { queue: "q".into(), delay_seconds: 0, bodies, ..Default::default() };
    g.request(0x0201, Request::BatchSendMessage(batch), P::default().str("q").u32(0).count(2).bytes(b"a").bytes(b"bc"));
    let ok = BatchSendMessageOk { msg_ids: vec![1, 2] };
    g.response(0x0201, Response::BatchSendMessage(ok), P::default().count(2).u64(1).u64(2));
    let recv = ReceiveMessage { queue: "q".into(), polling_wait_seconds: Some(3) };
    g.request(0x0202, Request::ReceiveMessage(recv), P::default().str("q").some().u32(3));
    let (m, p) = received(b"b", true);
    g.response(0x0202, Response::ReceiveMessage(m), p);
    let recv = BatchReceiveMessage { queue: "q".into(), max_messages: 16, polling_wait_seconds: None };
    g.request(0x0203, Request::BatchReceiveMessage(recv), P::default().str("q").u16(16).none());
    let (m, p) = received(b"", false);
    let ok = BatchReceiveMessageOk { messages: vec![m] };
    g.response(0x0203, Response::BatchReceiveMessage(ok), P::default().count(1).raw(&p.0));
    let del = DeleteMessage { queue: "q".into(), receipt_handle: ReceiptHandle(u128::MAX - 1) };
    g.empty_answer(0x0204, Request::DeleteMessage(del), P::default().str("q").u128(u128::MAX - 1));
    let del = BatchDeleteMessage { queue: "q".into(), receipt_handles: vec![ReceiptHandle(1), ReceiptHandle(2)] };
    g.request(0x0205, Request::BatchDeleteMessage(del), P::default().str("q").count(2).u128(1).u128(2));
    let results = vec![ItemResult { code: 0, message: String::new() }, ItemResult { code: 4430, message: "x".into() }];
    let p = P::default().count(2).u16(0).str("").u16(4430).str("x");
    g.response(0x0205, Response::BatchDeleteMessage(BatchDeleteMessageOk { results }), p);
    let cmv = ChangeMessageVisibility { queue: "q".into(), receipt_handle: ReceiptHandle(3), visibility_timeout: 4 };
    g.request(0x0206, Request::ChangeMessageVisibility(cmv), P::default().str("q").u128(3).u32(4));
    let ok = ChangeMessageVisibilityOk { receipt_handle: ReceiptHandle(5), next_visible_time_ms: 6 };
    g.response(0x0206, Response::ChangeMessageVisibility(ok), P::default().u128(5).u64(6));
}

fn inspection(g: &mut Golden) {
    let rewind = RewindQueue { queue: "q".into(), start_consume_time_ms: 7 };
    g.request(0x0207, Request::RewindQueue(rewind), P::default().str("q").u64(7));
    g.response(0x0207, Response::RewindQueue(RewindQueueOk { rewound: 8 }), P::default().u64(8));
    let peek = PeekMessages { queue: "q".into(), cursor: 1, max: 100, include_body: true };
    g.request(0x0208, Request::PeekMessages(peek), P::default().str("q").u64(1).u16(100).u8(1));
    let (o, op) = origin();
    let peeked = PeekedMessage {
        msg_id: 1,
        state: MessageState::InFlight,
        enqueue_time_ms: 2,
        first_dequeue_time_ms: 3,
        dequeue_count: 4,
        next_visible_time_ms: 5,
        body_len: 1,
        body: Bytes::from_static(b"x"),
        origin: Some(o),
    };
    let p = P::default().count(1).u64(1).u8(3).u64(2).u64(3).u32(4).u64(5).u32(1).bytes(b"x").some().raw(&op.0);
    g.response(0x0208, Response::PeekMessages(PeekMessagesOk { messages: vec![peeked], next_cursor: 9 }), p.u64(9));
    g.request(
        0x0209,
        Request::QueryMessage(QueryMessage { queue: "q".into(), msg_id: 3 }),
        P::default().str("q").u64(3),
    );
    let status = MessageStatus {
        msg_id: 1,
        state: MessageState::Gone,
        enqueue_time_ms: 2,
        first_dequeue_time_ms: 3,
        dequeue_count: 4,
        next_visible_time_ms: 5,
        state_time_ms: 6,
        detail: "d".into(),
        origin: None,
    };
    let p = P::default().u64(1).u8(8).u64(2).u64(3).u32(4).u64(5).u64(6).str("d").none();
    g.response(0x0209, Response::QueryMessage(status), p);
    g.request(0x020A, Request::PurgeQueue(PurgeQueue { queue: "q".into() }), P::default().str("q"));
    g.response(0x020A, Response::PurgeQueue(PurgeQueueOk { purged: 2 }), P::default().u64(2));
}

fn transactions(g: &mut Golden) {
    let send = SendTransactionMessage { queue: "q".into(), producer_group: "g".into(), body: Bytes::from_static(b"b") };
    g.request(0x0210, Request::SendTransactionMessage(send), P::default().str("q").str("g").bytes(b"b"));
    g.response(0x0210, Response::SendTransactionMessage(SendMessageOk { msg_id: 4 }), P::default().u64(4));
    let end = EndTransaction { queue: "q".into(), msg_id: 4, commit: true };
    g.empty_answer(0x0211, Request::EndTransaction(end), P::default().str("q").u64(4).u8(1));
    let reg = RegisterChecker { producer_group: "g".into() };
    g.empty_answer(0x0212, Request::RegisterChecker(reg), P::default().str("g"));
    // TransactionCheck is a push: flags 4 (PUSH), request id 0.
    let check = TransactionCheck {
        queue: "q".into(),
        msg_id: 1,
        producer_group: "g".into(),
        check_count: 2,
        enqueue_time_ms: 3,
        body: Bytes::from_static(b"b"),
    };
    let p = P::default().str("q").u64(1).str("g").u32(2).u64(3).bytes(b"b");
    let mut out = Vec::new();
    Request::TransactionCheck(check.clone()).encode_push(&mut out);
    assert_eq!(out, frame(0x0213, 4, 0, &p.0), "TransactionCheck push bytes");
    g.empty_answer(0x0213, Request::TransactionCheck(check), p);
}

fn redrive(g: &mut Golden) {
    let start = StartRedrive { dead_letter_queue: "d".into(), to: "q".into(), rate_per_second: 5 };
    g.request(0x0300, Request::StartRedrive(start), P::default().str("d").str("q").u32(5));
    let (info, p) = redrive_info();
    g.response(0x0300, Response::StartRedrive(info.clone()), p);
    g.request(0x0301, Request::ListRedrives(ListRedrives {}), P::default());
    let (_, p) = redrive_info();
    let ok = ListRedrivesOk { redrives: vec![info.clone()] };
    g.response(0x0301, Response::ListRedrives(ok), P::default().count(1).raw(&p.0));
    g.request(0x0302, Request::CancelRedrive(CancelRedrive { id: 1 << 48 }), P::default().u64(1 << 48));
    let (_, p) = redrive_info();
    g.response(0x0302, Response::CancelRedrive(info), p);
}

fn topics(g: &mut Golden) {
    let attributes = TopicAttributesUpdate {
        max_msg_size: Some(1024),
        msg_retention_seconds: None,
        filter_type: Some(FilterType::RoutingKey),
    };
    let create = CreateTopic { topic: "t".into(), attributes };
    g.request(0x0400, Request::CreateTopic(create), P::default().str("t").some().u32(1024).none().some().u8(2));
    g.response(0x0400, Response::CreateTopic(CreateTopicOk { topic_id: 3 }), P::default().u64(3));
    g.empty_answer(0x0401, Request::DeleteTopic(DeleteTopic { topic: "t".into() }), P::default().str("t"));
    let list = ListTopics { prefix: "".into(), contains: "c".into(), offset: 0, limit: 1000 };
    g.request(0x0402, Request::ListTopics(list), P::default().str("").str("c").u32(0).u32(1000));
    let ok = ListTopicsOk { total: 1, topics: vec![TopicSummary { topic_id: 2, topic: "t".into() }] };
    g.response(0x0402, Response::ListTopics(ok), P::default().u32(1).count(1).u64(2).str("t"));
    g.request(0x0403, Request::GetTopicAttributes(GetTopicAttributes { topic: "t".into() }), P::default().str("t"));
    let (info, p) = topic_info();
    g.response(0x0403, Response::GetTopicAttributes(info.clone()), p);
    let set = SetTopicAttributes { topic: "t".into(), max_msg_size: None };
    g.request(0x0404, Request::SetTopicAttributes(set), P::default().str("t").none());
    let (_, p) = topic_info();
    g.response(0x0404, Response::SetTopicAttributes(info), p);
    let publish = PublishMessage {
        topic: "t".into(),
        body: Bytes::from_static(b"b"),
        tags: StrList(vec!["a".into(), "b".into()]),
        routing_key: "r.k".into(),
        ..Default::default()
    };
    g.request(0x0410, Request::PublishMessage(publish), P::default().str("t").bytes(b"b").strs(&["a", "b"]).str("r.k"));
    g.response(0x0410, Response::PublishMessage(PublishMessageOk { msg_id: 5 }), P::default().u64(5));
    let batch = BatchPublishMessage {
        topic: "t".into(),
        bodies: vec![Bytes::from_static(b"x")],
        tags: StrList(vec![]),
        routing_key: String::new(),
        ..Default::default()
    };
    g.request(
        0x0411,
        Request::BatchPublishMessage(batch),
        P::default().str("t").count(1).bytes(b"x").strs(&[]).str(""),
    );
    let ok = BatchPublishMessageOk { msg_ids: vec![6] };
    g.response(0x0411, Response::BatchPublishMessage(ok), P::default().count(1).u64(6));
}

fn subscriptions(g: &mut Golden) {
    let sub = Subscribe {
        topic: "t".into(),
        subscription: "s".into(),
        protocol: SubscriptionProtocol::Http,
        endpoint: "u".into(),
        notify_strategy: NotifyStrategy::ExponentialDecayRetry,
        notify_content_format: NotifyContentFormat::Simplified,
        filter_tags: StrList(vec!["a".into()]),
        binding_keys: StrList(vec![]),
        dead_letter_queue: "d".into(),
    };
    let p = P::default().str("t").str("s").u8(2).str("u").u8(2).u8(2).strs(&["a"]).strs(&[]).str("d");
    g.request(0x0420, Request::Subscribe(sub), p);
    let ok = SubscribeOk { subscription_id: 1, push_secret: "ab".into() };
    g.response(0x0420, Response::Subscribe(ok), P::default().u64(1).str("ab"));
    let unsub = Unsubscribe { topic: "t".into(), subscription: "s".into() };
    g.empty_answer(0x0421, Request::Unsubscribe(unsub), P::default().str("t").str("s"));
    let list = ListSubscriptions { topic: "t".into(), contains: "".into(), offset: 1, limit: 2 };
    g.request(0x0422, Request::ListSubscriptions(list), P::default().str("t").str("").u32(1).u32(2));
    let summary = SubscriptionSummary {
        subscription_id: 1,
        subscription: "s".into(),
        protocol: SubscriptionProtocol::Queue,
        endpoint: "q".into(),
    };
    let ok = ListSubscriptionsOk { total: 1, subscriptions: vec![summary] };
    g.response(0x0422, Response::ListSubscriptions(ok), P::default().u32(1).count(1).u64(1).str("s").u8(1).str("q"));
    let get = GetSubscriptionAttributes { topic: "t".into(), subscription: "s".into() };
    g.request(0x0423, Request::GetSubscriptionAttributes(get), P::default().str("t").str("s"));
    let (info, p) = subscription_info();
    g.response(0x0423, Response::GetSubscriptionAttributes(info.clone()), p);
    let set = SetSubscriptionAttributes {
        topic: "t".into(),
        subscription: "s".into(),
        notify_strategy: Some(NotifyStrategy::BackoffRetry),
        notify_content_format: None,
        filter_tags: Some(StrList(vec!["a".into()])),
        binding_keys: None,
    };
    let p = P::default().str("t").str("s").some().u8(1).none().some().strs(&["a"]).none();
    g.request(0x0424, Request::SetSubscriptionAttributes(set), p);
    let (_, p) = subscription_info();
    g.response(0x0424, Response::SetSubscriptionAttributes(info), p);
    let clear = ClearSubscriptionFilterTags { topic: "t".into(), subscription: "s".into() };
    g.empty_answer(0x0425, Request::ClearSubscriptionFilterTags(clear), P::default().str("t").str("s"));
}

fn cluster(g: &mut Golden) {
    g.request(0x0500, Request::GetClusterMap(GetClusterMap {}), P::default());
    let (map, p) = cluster_map(P::default());
    g.response(0x0500, Response::GetClusterMap(map.clone()), p);
    g.request(0x0501, Request::ClusterStatus(ClusterStatus {}), P::default());
    let shard = ShardStatus {
        leader: 2,
        term: 3,
        commit: 4,
        applied: 5,
        last_index: 6,
        voters: vec![2],
        followers: vec![FollowerProgress { node: 3, matched: 4 }],
        digest: 7,
    };
    let (_, p) = cluster_map(P::default());
    let p = p.count(1).u64(2).u64(3).u64(4).u64(5).u64(6).count(1).u64(2).count(1).u64(3).u64(4).u64(7);
    g.response(0x0501, Response::ClusterStatus(ClusterStatusOk { map, shards: vec![shard] }), p);
    let transfer = TransferLeader { shard: Some(3), to: 2 };
    g.empty_answer(0x0502, Request::TransferLeader(transfer), P::default().some().u16(3).u64(2));
    let add = AddNode { id: 4, peer_addr: "p:1".into() };
    g.empty_answer(0x0503, Request::AddNode(add), P::default().u64(4).str("p:1"));
    g.empty_answer(0x0504, Request::RemoveNode(RemoveNode { id: 4 }), P::default().u64(4));
    g.request(0x0600, Request::GetStats(GetStats { top_queues: 10 }), P::default().u16(10));
    let (ok, p) = stats();
    g.response(0x0600, Response::GetStats(ok), p);
}

fn auth(g: &mut Golden) {
    g.request(0x0003, Request::AuthChallenge(AuthChallenge {}), P::default());
    let ok = AuthChallengeOk { server_nonce: Bytes::from(vec![1; 32]) };
    g.response(0x0003, Response::AuthChallenge(ok), P::default().bytes(&[1; 32]));
    let auth = Authenticate {
        secret_id: "AKIDx".into(),
        client_nonce: Bytes::from(vec![2; 32]),
        timestamp_ms: 7,
        mac: Bytes::from(vec![3; 32]),
    };
    let p = P::default().str("AKIDx").bytes(&[2; 32]).u64(7).bytes(&[3; 32]);
    g.request(0x0004, Request::Authenticate(auth), p);
    let ok = AuthenticateOk { key_name: "k".into(), server_mac: Bytes::from(vec![4; 32]) };
    g.response(0x0004, Response::Authenticate(ok), P::default().str("k").bytes(&[4; 32]));
}

fn key_secret() -> (KeySecret, P) {
    let secret = KeySecret { name: "k".into(), secret_id: "AKIDx".into(), secret_key: "sk".into() };
    (secret, P::default().str("k").str("AKIDx").str("sk"))
}

fn keys(g: &mut Golden) {
    let create = CreateKey { name: "k".into(), policy: "{}".into() };
    g.request(0x0700, Request::CreateKey(create), P::default().str("k").str("{}"));
    let (secret, p) = key_secret();
    g.response(0x0700, Response::CreateKey(secret), p);
    g.request(0x0701, Request::ListKeys(ListKeys {}), P::default());
    let summary = KeySummary { name: "k".into(), secret_id: "AKIDx".into(), secrets: 2, created_ms: 5, modified_ms: 6 };
    let p = P::default().count(1).str("k").str("AKIDx").u8(2).u64(5).u64(6);
    g.response(0x0701, Response::ListKeys(ListKeysOk { keys: vec![summary] }), p);
    let delete = DeleteKey { name: "k".into(), old_secret_only: true };
    g.empty_answer(0x0702, Request::DeleteKey(delete), P::default().str("k").u8(1));
    g.request(0x0703, Request::RotateKey(RotateKey { name: "k".into() }), P::default().str("k"));
    let (secret, p) = key_secret();
    g.response(0x0703, Response::RotateKey(secret), p);
    let set = SetPolicy { name: "k".into(), policy: "{}".into() };
    g.empty_answer(0x0704, Request::SetPolicy(set), P::default().str("k").str("{}"));
    g.request(0x0705, Request::GetPolicy(GetPolicy { name: "k".into() }), P::default().str("k"));
    g.response(0x0705, Response::GetPolicy(GetPolicyOk { policy: "{}".into() }), P::default().str("{}"));
    g.request(0x0706, Request::WhoAmI(WhoAmI {}), P::default());
    let ok = WhoAmIOk { key_name: "k".into(), secret_id: "AKIDx".into(), auth_mode: "required".into() };
    g.response(0x0706, Response::WhoAmI(ok), P::default().str("k").str("AKIDx").str("required"));
}

#[test]
fn every_opcode_matches_protocol_md_byte_for_byte() {
    let mut g = Golden::default();
    handshake(&mut g);
    auth(&mut g);
    queue_admin(&mut g);
    messages(&mut g);
    inspection(&mut g);
    transactions(&mut g);
    redrive(&mut g);
    topics(&mut g);
    subscriptions(&mut g);
    cluster(&mut g);
    keys(&mut g);
    let all: BTreeSet<u16> = Opcode::ALL.iter().map(|o| *o as u16).collect();
    assert_eq!(g.seen[0], all, "every opcode has a golden request");
    assert_eq!(g.seen[1], all, "every opcode has a golden response");
}

#[test]
fn error_response_has_flags_3_and_the_request_opcode() {
    let mut out = Vec::new();
    ErrorBody::new(ErrorCode::QUEUE_NOT_FOUND, "q").encode_frame(0x0200, ID, &mut out);
    assert_eq!(out, frame(0x0200, 3, ID, &P::default().u16(4440).str("q").0));
}
