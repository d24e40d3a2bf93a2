//! Every operation's action name (CMQ's API action names, `cmq:` prefixed)
//! and the resource it acts on (docs/SECURITY.md has the table).
//!
//! Resources are `queue/NAME`, `topic/NAME`, `key/NAME`, `group/NAME` (a
//! transaction producer group) and `broker` (cluster and statistics
//! operations, and redrive cancellation, whose queue is known only to the
//! shard that runs it). Operations that need no permission (Ping, the
//! handshake and authentication, WhoAmI, GetClusterMap) have no action;
//! list operations have one per listed item and answer with what the
//! caller may see.

use cmq_protocol::Request;

/// Action names, indexed by [`Action`]. At most 64 (a per-resource bit set caches decisions).
pub const ACTIONS: &[&str] = &[
    "cmq:CreateQueue",
    "cmq:DeleteQueue",
    "cmq:ListQueue",
    "cmq:GetQueueAttributes",
    "cmq:SetQueueAttributes",
    "cmq:SendMessage",
    "cmq:BatchSendMessage",
    "cmq:ReceiveMessage",
    "cmq:BatchReceiveMessage",
    "cmq:DeleteMessage",
    "cmq:BatchDeleteMessage",
    "cmq:ChangeMessageVisibility",
    "cmq:RewindQueue",
    "cmq:PeekMessages",
    "cmq:QueryMessage",
    "cmq:PurgeQueue",
    "cmq:SendTransactionMessage",
    "cmq:EndTransaction",
    "cmq:RegisterChecker",
    "cmq:StartRedrive",
    "cmq:ListRedrives",
    "cmq:CancelRedrive",
    "cmq:CreateTopic",
    "cmq:DeleteTopic",
    "cmq:ListTopic",
    "cmq:GetTopicAttributes",
    "cmq:SetTopicAttributes",
    "cmq:PublishMessage",
    "cmq:BatchPublishMessage",
    "cmq:Subscribe",
    "cmq:Unsubscribe",
    "cmq:ListSubscriptionByTopic",
    "cmq:GetSubscriptionAttributes",
    "cmq:SetSubscriptionAttributes",
    "cmq:ClearSubscriptionFilterTags",
    "cmq:ClusterStatus",
    "cmq:TransferLeader",
    "cmq:AddNode",
    "cmq:RemoveNode",
    "cmq:GetStats",
    "cmq:CreateKey",
    "cmq:ListKeys",
    "cmq:DeleteKey",
    "cmq:RotateKey",
    "cmq:SetPolicy",
    "cmq:GetPolicy",
    "cmq:GetSubscriptionSecret",
];

const _: () = assert!(ACTIONS.len() <= 64);

/// An index into [`ACTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action(pub u8);

impl Action {
    pub fn name(self) -> &'static str {
        ACTIONS[usize::from(self.0)]
    }

    fn named(name: &str) -> Action {
        // Called with the literals below only; a typo fails every test that checks it.
        Action(ACTIONS.iter().position(|a| &a[4..] == name).expect("a known action") as u8)
    }

    pub const LIST_QUEUE: Action = Action(2);
    pub const LIST_REDRIVES: Action = Action(20);
    pub const LIST_TOPIC: Action = Action(24);
    pub const LIST_KEYS: Action = Action(41);
    /// Seeing a subscription's push secret in GetSubscriptionAttributes and
    /// SetSubscriptionAttributes answers (Subscribe's answer always has it:
    /// the subscriber needs it to verify pushes).
    pub const GET_SUBSCRIPTION_SECRET: Action = Action(46);
}

/// What an action is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    Queue(&'a str),
    Topic(&'a str),
    Key(&'a str),
    Group(&'a str),
    Broker,
}

impl Resource<'_> {
    /// The resource as policies name it.
    pub fn path(&self) -> String {
        match self {
            Resource::Queue(n) => format!("queue/{n}"),
            Resource::Topic(n) => format!("topic/{n}"),
            Resource::Key(n) => format!("key/{n}"),
            Resource::Group(n) => format!("group/{n}"),
            Resource::Broker => "broker".to_owned(),
        }
    }
}

/// What a request needs: nothing, one permission, or (lists) a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    Nothing,
    Permission(Action, Resource<'a>),
    /// Answered with the items the caller holds this action on.
    Filtered(Action),
}

/// The permission `request` needs.
pub fn need(request: &Request) -> Need<'_> {
    use Request as R;
    use Resource::*;
    let p = |name: &str, r| Need::Permission(Action::named(name), r);
    match request {
        R::Handshake(_) | R::Ping(_) | R::AuthChallenge(_) | R::Authenticate(_) | R::WhoAmI(_) => Need::Nothing,
        R::GetClusterMap(_) | R::TransactionCheck(_) => Need::Nothing,
        R::ListQueues(_) => Need::Filtered(Action::LIST_QUEUE),
        R::ListTopics(_) => Need::Filtered(Action::LIST_TOPIC),
        R::ListRedrives(_) => Need::Filtered(Action::LIST_REDRIVES),
        R::ListKeys(_) => Need::Filtered(Action::LIST_KEYS),
        R::CreateQueue(r) => p("CreateQueue", Queue(&r.queue)),
        R::DeleteQueue(r) => p("DeleteQueue", Queue(&r.queue)),
        R::GetQueueAttributes(r) => p("GetQueueAttributes", Queue(&r.queue)),
        R::SetQueueAttributes(r) => p("SetQueueAttributes", Queue(&r.queue)),
        R::SendMessage(r) => p("SendMessage", Queue(&r.queue)),
        R::BatchSendMessage(r) => p("BatchSendMessage", Queue(&r.queue)),
        R::ReceiveMessage(r) => p("ReceiveMessage", Queue(&r.queue)),
        R::BatchReceiveMessage(r) => p("BatchReceiveMessage", Queue(&r.queue)),
        R::DeleteMessage(r) => p("DeleteMessage", Queue(&r.queue)),
        R::BatchDeleteMessage(r) => p("BatchDeleteMessage", Queue(&r.queue)),
        R::ChangeMessageVisibility(r) => p("ChangeMessageVisibility", Queue(&r.queue)),
        R::RewindQueue(r) => p("RewindQueue", Queue(&r.queue)),
        R::PeekMessages(r) => p("PeekMessages", Queue(&r.queue)),
        R::QueryMessage(r) => p("QueryMessage", Queue(&r.queue)),
        R::PurgeQueue(r) => p("PurgeQueue", Queue(&r.queue)),
        R::SendTransactionMessage(r) => p("SendTransactionMessage", Queue(&r.queue)),
        R::EndTransaction(r) => p("EndTransaction", Queue(&r.queue)),
        R::RegisterChecker(r) => p("RegisterChecker", Group(&r.producer_group)),
        R::StartRedrive(r) => p("StartRedrive", Queue(&r.dead_letter_queue)),
        R::CancelRedrive(_) => p("CancelRedrive", Broker),
        R::CreateTopic(r) => p("CreateTopic", Topic(&r.topic)),
        R::DeleteTopic(r) => p("DeleteTopic", Topic(&r.topic)),
        R::GetTopicAttributes(r) => p("GetTopicAttributes", Topic(&r.topic)),
        R::SetTopicAttributes(r) => p("SetTopicAttributes", Topic(&r.topic)),
        R::PublishMessage(r) => p("PublishMessage", Topic(&r.topic)),
        R::BatchPublishMessage(r) => p("BatchPublishMessage", Topic(&r.topic)),
        R::Subscribe(r) => p("Subscribe", Topic(&r.topic)),
        R::Unsubscribe(r) => p("Unsubscribe", Topic(&r.topic)),
        R::ListSubscriptions(r) => p("ListSubscriptionByTopic", Topic(&r.topic)),
        R::GetSubscriptionAttributes(r) => p("GetSubscriptionAttributes", Topic(&r.topic)),
        R::SetSubscriptionAttributes(r) => p("SetSubscriptionAttributes", Topic(&r.topic)),
        R::ClearSubscriptionFilterTags(r) => p("ClearSubscriptionFilterTags", Topic(&r.topic)),
        R::ClusterStatus(_) => p("ClusterStatus", Broker),
        R::TransferLeader(_) => p("TransferLeader", Broker),
        R::AddNode(_) => p("AddNode", Broker),
        R::RemoveNode(_) => p("RemoveNode", Broker),
        R::GetStats(_) => p("GetStats", Broker),
        R::CreateKey(r) => p("CreateKey", Key(&r.name)),
        R::DeleteKey(r) => p("DeleteKey", Key(&r.name)),
        R::RotateKey(r) => p("RotateKey", Key(&r.name)),
        R::SetPolicy(r) => p("SetPolicy", Key(&r.name)),
        R::GetPolicy(r) => p("GetPolicy", Key(&r.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmq_protocol::Opcode;

    #[test]
    fn list_constants_name_their_actions() {
        assert_eq!(Action::LIST_QUEUE.name(), "cmq:ListQueue");
        assert_eq!(Action::LIST_REDRIVES.name(), "cmq:ListRedrives");
        assert_eq!(Action::LIST_TOPIC.name(), "cmq:ListTopic");
        assert_eq!(Action::LIST_KEYS.name(), "cmq:ListKeys");
        assert_eq!(Action::GET_SUBSCRIPTION_SECRET.name(), "cmq:GetSubscriptionSecret");
    }

    /// Every client operation maps to an action whose name is the
    /// operation's (CMQ's name where CMQ's differs), and none panics.
    #[test]
    fn every_opcode_has_a_need() {
        for op in Opcode::ALL {
            let req = Request::decode(*op as u16, default_payload(*op)).expect("default decodes");
            match need(&req) {
                Need::Permission(a, _) => assert!(a.name().starts_with("cmq:"), "{op:?}"),
                Need::Filtered(a) => assert!(a.name().contains("List"), "{op:?}"),
                Need::Nothing => {}
            }
        }
    }

    fn default_payload(op: Opcode) -> bytes::Bytes {
        // The all-zero payload of the right shape: encode a default request of this opcode.
        let mut out = Vec::new();
        default_request(op).encode_frame(0, &mut out);
        bytes::Bytes::from(out).slice(cmq_protocol::frame::HEADER_BYTES..)
    }

    fn default_request(op: Opcode) -> Request {
        // Round trip through an empty-fields payload: every wire_struct has Default.
        macro_rules! d {
            ($($v:ident),*) => {
                match op { $(Opcode::$v => Request::$v(Default::default()),)* }
            };
        }
        d!(
            Handshake,
            Ping,
            AuthChallenge,
            Authenticate,
            CreateQueue,
            DeleteQueue,
            ListQueues,
            GetQueueAttributes,
            SetQueueAttributes,
            SendMessage,
            BatchSendMessage,
            ReceiveMessage,
            BatchReceiveMessage,
            DeleteMessage,
            BatchDeleteMessage,
            ChangeMessageVisibility,
            RewindQueue,
            PeekMessages,
            QueryMessage,
            PurgeQueue,
            SendTransactionMessage,
            EndTransaction,
            RegisterChecker,
            TransactionCheck,
            StartRedrive,
            ListRedrives,
            CancelRedrive,
            CreateTopic,
            DeleteTopic,
            ListTopics,
            GetTopicAttributes,
            SetTopicAttributes,
            PublishMessage,
            BatchPublishMessage,
            Subscribe,
            Unsubscribe,
            ListSubscriptions,
            GetSubscriptionAttributes,
            SetSubscriptionAttributes,
            ClearSubscriptionFilterTags,
            GetClusterMap,
            ClusterStatus,
            TransferLeader,
            AddNode,
            RemoveNode,
            GetStats,
            CreateKey,
            ListKeys,
            DeleteKey,
            RotateKey,
            SetPolicy,
            GetPolicy,
            WhoAmI
        )
    }
}
