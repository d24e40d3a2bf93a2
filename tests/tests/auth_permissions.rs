//! CAM-style permissions: every operation maps to its action, allowed only
//! by a policy that names it; deny beats allow; wildcards stop at their
//! edges; lists show only what the caller may see.

use std::time::Duration;

use cmq_client::{Client, Credentials};
use cmq_integration_tests::{AdminBroker, RawConn};
use cmq_protocol::*;

fn policy(effect_actions_resources: &[(&str, &[&str], &[&str])]) -> String {
    let statements: Vec<serde_json::Value> = effect_actions_resources
        .iter()
        .map(|(effect, actions, resources)| serde_json::json!({"effect": effect, "action": actions, "resource": resources}))
        .collect();
    serde_json::json!({"version": "2.0", "statement": statements}).to_string()
}

fn admin(b: &AdminBroker) -> Client {
    let creds = Credentials::new(&b.secret_id, &b.secret_key);
    Client::connect_as(b.addr(), Some(Duration::from_secs(10)), Some(creds)).expect("admin connects")
}

/// Every operation a client sends that needs a permission, with the action
/// documented for it (docs/SECURITY.md). Fields are defaults: the broker
/// checks permission before it looks at them.
fn operations() -> Vec<(Request, &'static str)> {
    use Request as R;
    fn d<T: Default>() -> T {
        T::default()
    }
    vec![
        (R::CreateQueue(d()), "cmq:CreateQueue"),
        (R::DeleteQueue(d()), "cmq:DeleteQueue"),
        (R::GetQueueAttributes(d()), "cmq:GetQueueAttributes"),
        (R::SetQueueAttributes(d()), "cmq:SetQueueAttributes"),
        (R::SendMessage(d()), "cmq:SendMessage"),
        (R::BatchSendMessage(d()), "cmq:BatchSendMessage"),
        (R::ReceiveMessage(d()), "cmq:ReceiveMessage"),
        (R::BatchReceiveMessage(d()), "cmq:BatchReceiveMessage"),
        (R::DeleteMessage(d()), "cmq:DeleteMessage"),
        (R::BatchDeleteMessage(d()), "cmq:BatchDeleteMessage"),
        (R::ChangeMessageVisibility(d()), "cmq:ChangeMessageVisibility"),
        (R::RewindQueue(d()), "cmq:RewindQueue"),
        (R::PeekMessages(d()), "cmq:PeekMessages"),
        (R::QueryMessage(d()), "cmq:QueryMessage"),
        (R::PurgeQueue(d()), "cmq:PurgeQueue"),
        (R::SendTransactionMessage(d()), "cmq:SendTransactionMessage"),
        (R::EndTransaction(d()), "cmq:EndTransaction"),
        (R::RegisterChecker(d()), "cmq:RegisterChecker"),
        (R::StartRedrive(d()), "cmq:StartRedrive"),
        (R::CancelRedrive(d()), "cmq:CancelRedrive"),
        (R::CreateTopic(d()), "cmq:CreateTopic"),
        (R::DeleteTopic(d()), "cmq:DeleteTopic"),
        (R::GetTopicAttributes(d()), "cmq:GetTopicAttributes"),
        (R::SetTopicAttributes(d()), "cmq:SetTopicAttributes"),
        (R::PublishMessage(d()), "cmq:PublishMessage"),
        (R::BatchPublishMessage(d()), "cmq:BatchPublishMessage"),
        (R::Subscribe(d()), "cmq:Subscribe"),
        (R::Unsubscribe(d()), "cmq:Unsubscribe"),
        (R::ListSubscriptions(d()), "cmq:ListSubscriptionByTopic"),
        (R::GetSubscriptionAttributes(d()), "cmq:GetSubscriptionAttributes"),
        (R::SetSubscriptionAttributes(d()), "cmq:SetSubscriptionAttributes"),
        (R::ClearSubscriptionFilterTags(d()), "cmq:ClearSubscriptionFilterTags"),
        (R::ClusterStatus(d()), "cmq:ClusterStatus"),
        (R::TransferLeader(d()), "cmq:TransferLeader"),
        (R::AddNode(d()), "cmq:AddNode"),
        (R::RemoveNode(d()), "cmq:RemoveNode"),
        (R::GetStats(d()), "cmq:GetStats"),
        (R::CreateKey(d()), "cmq:CreateKey"),
        (R::DeleteKey(d()), "cmq:DeleteKey"),
        (R::RotateKey(d()), "cmq:RotateKey"),
        (R::SetPolicy(d()), "cmq:SetPolicy"),
        (R::GetPolicy(d()), "cmq:GetPolicy"),
    ]
}

/// For every operation: refused with ACCESS_DENIED by a key allowed
/// everything but it, and not refused by a key allowed only it. One probe
/// connection stays open throughout: each policy change reaches it.
#[test]
fn every_operation_needs_its_own_action() {
    let b = AdminBroker::start(&[]);
    let mut a = admin(&b);
    let probe = a.create_key("probe", "").expect("create probe");
    let mut conn = RawConn::open_as(b.addr(), &probe.secret_id, &probe.secret_key);
    for (req, action) in operations() {
        a.set_policy("probe", &policy(&[("allow", &["cmq:*"], &["*"]), ("deny", &[action], &["*"])])).expect("set");
        let r = conn.call(req.clone());
        assert_eq!(r.code(), ErrorCode::ACCESS_DENIED, "{action} denied: {r:?}");
        if let cmq_integration_tests::Reply::Err(_, e) = &r {
            assert!(e.message.contains(action) && e.message.contains("probe"), "the message names both: {}", e.message);
        }
        a.set_policy("probe", &policy(&[("allow", &[action], &["*"])])).expect("set");
        let r = conn.call(req);
        assert_ne!(r.code(), ErrorCode::ACCESS_DENIED, "{action} allowed: {r:?}");
    }
    // Operations that need no permission work with the empty policy.
    a.set_policy("probe", "").expect("empty policy");
    assert!(conn.ping().is_ok());
    assert!(conn.call(Request::GetClusterMap(GetClusterMap {})).is_ok());
    match conn.call(Request::WhoAmI(WhoAmI {})).ok() {
        Response::WhoAmI(me) => assert_eq!(me.key_name, "probe"),
        other => panic!("{other:?}"),
    }
    assert_eq!(conn.call(Request::SendMessage(Default::default())).code(), ErrorCode::ACCESS_DENIED);
}

#[test]
fn deny_beats_allow_and_wildcards_stop_at_their_edges() {
    let b = AdminBroker::start(&["--shards", "2"]);
    let mut a = admin(&b);
    for q in ["orders", "orders-1", "orders-keep", "other"] {
        a.create_queue(q, &Default::default()).expect("create");
    }
    let doc = policy(&[
        ("allow", &["cmq:*Message", "cmq:PurgeQueue"], &["queue/orders-*"]),
        ("deny", &["cmq:PurgeQueue"], &["queue/orders-keep"]),
    ]);
    let k = a.create_key("app", &doc).expect("create app");
    let mut c =
        Client::connect_as(b.addr(), Some(Duration::from_secs(10)), Some(Credentials::new(k.secret_id, k.secret_key)))
            .expect("app connects");
    c.send("orders-1", "x", 0).expect("orders-* covers orders-1");
    c.send("orders-keep", "x", 0).expect("deny names only purge");
    c.purge_queue("orders-1").expect("purge allowed");
    let code = |r: Result<u64, cmq_client::ClientError>| r.expect_err("refused").code();
    assert_eq!(code(c.purge_queue("orders-keep")), Some(ErrorCode::ACCESS_DENIED), "deny beats allow");
    assert_eq!(code(c.send("orders", "x", 0)), Some(ErrorCode::ACCESS_DENIED), "orders-* does not cover orders");
    assert_eq!(code(c.send("other", "x", 0)), Some(ErrorCode::ACCESS_DENIED));
    assert_eq!(code(c.create_queue("orders-2", &Default::default())), Some(ErrorCode::ACCESS_DENIED));
    c.send("orders-1", "y", 0).expect("send after the purge");
    assert!(c.receive("orders-1", Some(0)).expect("ReceiveMessage matches *Message").is_some());
}

#[test]
fn lists_show_only_what_the_caller_may_see() {
    let b = AdminBroker::start(&["--shards", "2"]);
    let mut a = admin(&b);
    for q in ["a-1", "b-1", "a-2", "b-2", "a-3"] {
        a.create_queue(q, &Default::default()).expect("create queue");
    }
    for t in ["ta-1", "tb-1"] {
        a.create_topic(t, &Default::default()).expect("create topic");
    }
    let doc = policy(&[(
        "allow",
        &["cmq:ListQueue", "cmq:ListTopic", "cmq:ListKeys"],
        &["queue/a-*", "topic/tb-*", "key/viewer"],
    )]);
    let k = a.create_key("viewer", &doc).expect("create");
    let mut v =
        Client::connect_as(b.addr(), Some(Duration::from_secs(10)), Some(Credentials::new(k.secret_id, k.secret_key)))
            .expect("viewer connects");
    let page = v.list_queues("", "", 0, 2).expect("list");
    assert_eq!(page.total, 3, "the total counts only visible queues");
    let names: Vec<&str> = page.queues.iter().map(|q| q.queue.as_str()).collect();
    assert_eq!(names, ["a-1", "a-2"], "pages are cut from the visible queues, in creation order");
    let page = v.list_queues("", "", 2, 2).expect("list");
    assert_eq!(page.queues.iter().map(|q| q.queue.as_str()).collect::<Vec<_>>(), ["a-3"]);
    let topics = v.list_topics("", "", 0, 0).expect("topics");
    assert_eq!(topics.topics.iter().map(|t| t.topic.as_str()).collect::<Vec<_>>(), ["tb-1"]);
    let keys = v.list_keys().expect("keys");
    assert_eq!(keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["viewer"], "not the admin key");
    assert_eq!(a.list_queues("", "", 0, 0).expect("admin").total, 5, "the admin sees everything");
    assert_eq!(a.list_keys().expect("admin keys").len(), 2);
}

/// A subscription's push secret is shown by GetSubscriptionAttributes (and
/// SetSubscriptionAttributes) only to keys allowed cmq:GetSubscriptionSecret
/// on its topic, whichever shard owns the topic.
#[test]
fn push_secrets_need_their_own_action() {
    let b = AdminBroker::start(&["--shards", "2"]);
    let mut a = admin(&b);
    let topics = ["events-a", "events-b", "events-c", "events-d"];
    for t in topics {
        a.create_topic(t, &Default::default()).expect("topic");
        let sub = Subscribe {
            topic: t.into(),
            subscription: "hook".into(),
            protocol: SubscriptionProtocol::Http,
            endpoint: "http://127.0.0.1:9/hook".into(),
            ..Default::default()
        };
        assert!(!a.subscribe(&sub).expect("subscribe").push_secret.is_empty());
    }
    let reader = policy(&[("allow", &["cmq:GetSubscriptionAttributes"], &["topic/*"])]);
    let k = a.create_key("reader", &reader).expect("key");
    let creds = Credentials::new(&k.secret_id, &k.secret_key);
    let mut r = Client::connect_as(b.addr(), Some(Duration::from_secs(10)), Some(creds)).expect("reader connects");
    for t in topics {
        let info = r.subscription_info(t, "hook").expect("info");
        assert_eq!(info.push_secret, "", "{t}: no secret without cmq:GetSubscriptionSecret");
        assert!(!a.subscription_info(t, "hook").expect("admin").push_secret.is_empty(), "{t}: admin sees it");
    }
    let with_secret = policy(&[(
        "allow",
        &["cmq:GetSubscriptionAttributes", "cmq:GetSubscriptionSecret"],
        &["topic/events-a", "topic/events-b"],
    )]);
    a.set_policy("reader", &with_secret).expect("policy");
    for t in &topics[..2] {
        assert!(!r.subscription_info(t, "hook").expect("info").push_secret.is_empty(), "{t}: allowed now");
    }
}
