//! The operation table: every opcode with its request and response payloads.
//!
//! One line per operation generates the `Opcode`, `Request` and `Response`
//! enums and their codecs, so adding an operation cannot forget a direction.

use bytes::Bytes;

use crate::auth::*;
use crate::cluster::*;
use crate::dead_letter::*;
use crate::error::{DecodeError, ErrorCode};
use crate::frame::{self, FLAG_ERROR, FLAG_RESPONSE};
use crate::handshake::{Handshake, HandshakeOk};
use crate::inspection::*;
use crate::limits::STRING_BYTES_MAX;
use crate::messages::*;
use crate::queue_admin::*;
use crate::stats::*;
use crate::topics::*;
use crate::transactions::*;
use crate::wire::{Reader, Wire};

macro_rules! ops {
    ($($(#[$doc:meta])* $code:literal $name:ident($req:ty) -> $resp:ty;)*) => {
        /// Operation codes (frame header `opcode`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Opcode {
            $($(#[$doc])* $name = $code,)*
        }

        impl Opcode {
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name),*];

            pub fn from_u16(v: u16) -> Option<Opcode> {
                match v {
                    $($code => Some(Opcode::$name),)*
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $(Opcode::$name => stringify!($name),)*
                }
            }
        }

        /// A decoded request payload.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Request {
            $($name($req),)*
        }

        /// A decoded successful response payload.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Response {
            $($name($resp),)*
        }

        impl Request {
            pub fn opcode(&self) -> Opcode {
                match self {
                    $(Request::$name(_) => Opcode::$name,)*
                }
            }

            fn encode_payload(&self, w: &mut Vec<u8>) {
                match self {
                    $(Request::$name(r) => r.encode(w),)*
                }
            }

            /// Decodes a request payload; the whole payload must be consumed.
            pub fn decode(opcode: u16, payload: Bytes) -> Result<Request, DecodeError> {
                let op = Opcode::from_u16(opcode).ok_or(DecodeError::UnknownOpcode(opcode))?;
                let mut r = Reader::new(payload);
                let req = match op {
                    $(Opcode::$name => Request::$name(<$req>::decode(&mut r, stringify!($name))?),)*
                };
                r.finish()?;
                Ok(req)
            }
        }

        #[cfg(test)]
        pub(crate) fn arb_request() -> proptest::strategy::BoxedStrategy<Request> {
            use proptest::prelude::*;
            proptest::strategy::Union::new(vec![
                $(any::<$req>().prop_map(Request::$name).boxed(),)*
            ]).boxed()
        }

        #[cfg(test)]
        pub(crate) fn arb_response() -> proptest::strategy::BoxedStrategy<Response> {
            use proptest::prelude::*;
            proptest::strategy::Union::new(vec![
                $(any::<$resp>().prop_map(Response::$name).boxed(),)*
            ]).boxed()
        }

        impl Response {
            pub fn opcode(&self) -> Opcode {
                match self {
                    $(Response::$name(_) => Opcode::$name,)*
                }
            }

            fn encode_payload(&self, w: &mut Vec<u8>) {
                match self {
                    $(Response::$name(r) => r.encode(w),)*
                }
            }

            /// Decodes a success payload for a request with `opcode`.
            pub fn decode(opcode: u16, payload: Bytes) -> Result<Response, DecodeError> {
                let op = Opcode::from_u16(opcode).ok_or(DecodeError::UnknownOpcode(opcode))?;
                let mut r = Reader::new(payload);
                let resp = match op {
                    $(Opcode::$name => Response::$name(<$resp>::decode(&mut r, stringify!($name))?),)*
                };
                r.finish()?;
                Ok(resp)
            }
        }
    };
}

ops! {
    /// Must be the first frame on a connection.
    0x0001 Handshake(Handshake) -> HandshakeOk;
    0x0002 Ping(Ping) -> Empty;
    /// Before the handshake: a fresh server nonce (PROTOCOL.md, "Authentication").
    0x0003 AuthChallenge(AuthChallenge) -> AuthChallengeOk;
    /// Before the handshake, after AuthChallenge: proves the SecretKey, gets the server's proof.
    0x0004 Authenticate(Authenticate) -> AuthenticateOk;
    0x0100 CreateQueue(CreateQueue) -> CreateQueueOk;
    0x0101 DeleteQueue(DeleteQueue) -> Empty;
    0x0102 ListQueues(ListQueues) -> ListQueuesOk;
    0x0103 GetQueueAttributes(GetQueueAttributes) -> QueueInfo;
    0x0104 SetQueueAttributes(SetQueueAttributes) -> QueueInfo;
    0x0200 SendMessage(SendMessage) -> SendMessageOk;
    0x0201 BatchSendMessage(BatchSendMessage) -> BatchSendMessageOk;
    0x0202 ReceiveMessage(ReceiveMessage) -> ReceivedMessage;
    0x0203 BatchReceiveMessage(BatchReceiveMessage) -> BatchReceiveMessageOk;
    0x0204 DeleteMessage(DeleteMessage) -> Empty;
    0x0205 BatchDeleteMessage(BatchDeleteMessage) -> BatchDeleteMessageOk;
    0x0206 ChangeMessageVisibility(ChangeMessageVisibility) -> ChangeMessageVisibilityOk;
    0x0207 RewindQueue(RewindQueue) -> RewindQueueOk;
    0x0208 PeekMessages(PeekMessages) -> PeekMessagesOk;
    0x0209 QueryMessage(QueryMessage) -> MessageStatus;
    0x020A PurgeQueue(PurgeQueue) -> PurgeQueueOk;
    0x0210 SendTransactionMessage(SendTransactionMessage) -> SendMessageOk;
    0x0211 EndTransaction(EndTransaction) -> Empty;
    0x0212 RegisterChecker(RegisterChecker) -> Empty;
    /// Pushed by the broker (FLAG_PUSH); never sent by clients. The "response" type is unused.
    0x0213 TransactionCheck(TransactionCheck) -> Empty;
    0x0300 StartRedrive(StartRedrive) -> RedriveInfo;
    0x0301 ListRedrives(ListRedrives) -> ListRedrivesOk;
    0x0302 CancelRedrive(CancelRedrive) -> RedriveInfo;
    0x0400 CreateTopic(CreateTopic) -> CreateTopicOk;
    0x0401 DeleteTopic(DeleteTopic) -> Empty;
    0x0402 ListTopics(ListTopics) -> ListTopicsOk;
    0x0403 GetTopicAttributes(GetTopicAttributes) -> TopicInfo;
    0x0404 SetTopicAttributes(SetTopicAttributes) -> TopicInfo;
    0x0410 PublishMessage(PublishMessage) -> PublishMessageOk;
    0x0411 BatchPublishMessage(BatchPublishMessage) -> BatchPublishMessageOk;
    0x0420 Subscribe(Subscribe) -> SubscribeOk;
    0x0421 Unsubscribe(Unsubscribe) -> Empty;
    0x0422 ListSubscriptions(ListSubscriptions) -> ListSubscriptionsOk;
    0x0423 GetSubscriptionAttributes(GetSubscriptionAttributes) -> SubscriptionInfo;
    0x0424 SetSubscriptionAttributes(SetSubscriptionAttributes) -> SubscriptionInfo;
    0x0425 ClearSubscriptionFilterTags(ClearSubscriptionFilterTags) -> Empty;
    0x0500 GetClusterMap(GetClusterMap) -> ClusterMap;
    0x0501 ClusterStatus(ClusterStatus) -> ClusterStatusOk;
    0x0502 TransferLeader(TransferLeader) -> Empty;
    0x0503 AddNode(AddNode) -> Empty;
    0x0504 RemoveNode(RemoveNode) -> Empty;
    /// The broker's metrics (`cmq top`, `cmq stats`).
    0x0600 GetStats(GetStats) -> GetStatsOk;
    /// Key management (run by shard 0, whose log holds the keys).
    0x0700 CreateKey(CreateKey) -> KeySecret;
    0x0701 ListKeys(ListKeys) -> ListKeysOk;
    0x0702 DeleteKey(DeleteKey) -> Empty;
    0x0703 RotateKey(RotateKey) -> KeySecret;
    0x0704 SetPolicy(SetPolicy) -> Empty;
    0x0705 GetPolicy(GetPolicy) -> GetPolicyOk;
    0x0706 WhoAmI(WhoAmI) -> WhoAmIOk;
}

crate::wire_struct! {
    /// The payload of a frame with the ERROR flag.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ErrorBody {
        pub code: u16,
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub message: String = string(STRING_BYTES_MAX),
    }
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody { code: code.0, message: message.into() }
    }

    pub fn code(&self) -> ErrorCode {
        ErrorCode(self.code)
    }

    /// Appends an error response frame to `out`.
    pub fn encode_frame(&self, opcode: u16, request_id: u64, out: &mut Vec<u8>) {
        let start = frame::begin(out, opcode, FLAG_RESPONSE | FLAG_ERROR, request_id);
        self.encode(out);
        frame::end(out, start);
    }

    pub fn decode_payload(payload: Bytes) -> Result<ErrorBody, DecodeError> {
        let mut r = Reader::new(payload);
        let body = ErrorBody::decode(&mut r, "error")?;
        r.finish()?;
        Ok(body)
    }
}

/// Where a request must be executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// On the shard that owns this queue or topic (`names::shard_for`).
    Queue(&'a str),
    /// On this shard (ids that carry their shard, like redrive ids).
    Shard(u16),
    /// On any shard (the broker fans out itself when it needs to).
    Any,
}

/// Bits of a redrive id below the shard number.
pub const REDRIVE_ID_SHARD_SHIFT: u32 = 48;

impl Request {
    /// Where this request runs: clients use it to pick the connection of the
    /// owning shard, the broker to forward.
    pub fn route(&self) -> Route<'_> {
        match self {
            Request::Handshake(_)
            | Request::Ping(_)
            | Request::ListQueues(_)
            | Request::ListRedrives(_)
            | Request::ListTopics(_)
            | Request::RegisterChecker(_)
            | Request::TransactionCheck(_)
            | Request::GetClusterMap(_)
            | Request::ClusterStatus(_)
            | Request::TransferLeader(_)
            | Request::AddNode(_)
            | Request::RemoveNode(_)
            | Request::GetStats(_)
            | Request::AuthChallenge(_)
            | Request::Authenticate(_)
            | Request::WhoAmI(_) => Route::Any,
            // Keys live in shard 0's log (so they replicate with its group).
            Request::CreateKey(_)
            | Request::ListKeys(_)
            | Request::DeleteKey(_)
            | Request::RotateKey(_)
            | Request::SetPolicy(_)
            | Request::GetPolicy(_) => Route::Shard(0),
            Request::CancelRedrive(r) => Route::Shard((r.id >> REDRIVE_ID_SHARD_SHIFT) as u16),
            Request::CreateQueue(r) => Route::Queue(&r.queue),
            Request::DeleteQueue(r) => Route::Queue(&r.queue),
            Request::GetQueueAttributes(r) => Route::Queue(&r.queue),
            Request::SetQueueAttributes(r) => Route::Queue(&r.queue),
            Request::SendMessage(r) => Route::Queue(&r.queue),
            Request::BatchSendMessage(r) => Route::Queue(&r.queue),
            Request::ReceiveMessage(r) => Route::Queue(&r.queue),
            Request::BatchReceiveMessage(r) => Route::Queue(&r.queue),
            Request::DeleteMessage(r) => Route::Queue(&r.queue),
            Request::BatchDeleteMessage(r) => Route::Queue(&r.queue),
            Request::ChangeMessageVisibility(r) => Route::Queue(&r.queue),
            Request::RewindQueue(r) => Route::Queue(&r.queue),
            Request::PeekMessages(r) => Route::Queue(&r.queue),
            Request::QueryMessage(r) => Route::Queue(&r.queue),
            Request::PurgeQueue(r) => Route::Queue(&r.queue),
            Request::SendTransactionMessage(r) => Route::Queue(&r.queue),
            Request::EndTransaction(r) => Route::Queue(&r.queue),
            Request::StartRedrive(r) => Route::Queue(&r.dead_letter_queue),
            Request::CreateTopic(r) => Route::Queue(&r.topic),
            Request::DeleteTopic(r) => Route::Queue(&r.topic),
            Request::GetTopicAttributes(r) => Route::Queue(&r.topic),
            Request::SetTopicAttributes(r) => Route::Queue(&r.topic),
            Request::PublishMessage(r) => Route::Queue(&r.topic),
            Request::BatchPublishMessage(r) => Route::Queue(&r.topic),
            Request::Subscribe(r) => Route::Queue(&r.topic),
            Request::Unsubscribe(r) => Route::Queue(&r.topic),
            Request::ListSubscriptions(r) => Route::Queue(&r.topic),
            Request::GetSubscriptionAttributes(r) => Route::Queue(&r.topic),
            Request::SetSubscriptionAttributes(r) => Route::Queue(&r.topic),
            Request::ClearSubscriptionFilterTags(r) => Route::Queue(&r.topic),
        }
    }

    /// Appends this request as a push frame (broker to client, request id 0).
    pub fn encode_push(&self, out: &mut Vec<u8>) {
        let start = frame::begin(out, self.opcode() as u16, frame::FLAG_PUSH, 0);
        self.encode_payload(out);
        frame::end(out, start);
    }

    /// Appends this request as a complete frame to `out`.
    pub fn encode_frame(&self, request_id: u64, out: &mut Vec<u8>) {
        let start = frame::begin(out, self.opcode() as u16, 0, request_id);
        self.encode_payload(out);
        frame::end(out, start);
    }
}

impl Response {
    /// Appends this response as a complete frame to `out`.
    pub fn encode_frame(&self, request_id: u64, out: &mut Vec<u8>) {
        let start = frame::begin(out, self.opcode() as u16, FLAG_RESPONSE, request_id);
        self.encode_payload(out);
        frame::end(out, start);
    }
}
