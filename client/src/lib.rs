//! Rust client for the cmq broker, and the `cmq` command-line tool.
//!
//! Two layers:
//!
//! * [`Client`]: blocking and convenient, one method per operation. It is
//!   shard-aware: it learns the broker's shard count in the handshake and
//!   keeps one connection per shard (opened on first use), sending each
//!   queue's requests straight to the shard that owns it. In a cluster it
//!   is leader-aware too: it connects from a list of seed addresses
//!   ([`ToSeeds`]: `"host:port,host:port,..."`), learns the cluster map
//!   from the handshake, sends each shard's requests to the node that
//!   leads it, and follows the leader when it moves ([`retry`] says what
//!   is sent again and for how long). Cluster operations:
//!   [`Client::cluster_status`], [`Client::transfer_leader`],
//!   [`Client::add_node`], [`Client::remove_node`].
//! * [`Connection`]: one socket, driven by hand for throughput. Submit many
//!   requests, flush them with one write, and read responses (in whatever
//!   order the broker finishes them) many frames per read. This is what the
//!   load generator uses.
//! * [`TransactionChecker`]: a connection registered as a producer group's
//!   transaction checker, answering the broker's checks with a callback.
//!
//! Topic, publish and subscription operations are `Client` methods too,
//! routed by the topic's name; [`SubscribeBuilder`] builds subscriptions.
//!
//! ```no_run
//! use cmq_client::{Client, QueueAttributesUpdate};
//!
//! # fn main() -> Result<(), cmq_client::ClientError> {
//! let mut client = Client::connect("127.0.0.1:7700")?;
//! client.create_queue("orders", &QueueAttributesUpdate { visibility_timeout: Some(60), ..Default::default() })?;
//! client.send("orders", "hello", 0)?;
//! if let Some(msg) = client.receive("orders", Some(5))? {
//!     println!("{}", String::from_utf8_lossy(&msg.body));
//!     client.delete_message("orders", msg.receipt_handle)?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Topics fan one publish out to every matching subscription, each
//! delivering into a queue or POSTing to an HTTP endpoint:
//!
//! ```no_run
//! use cmq_client::{Client, FilterType, Subscribe, SubscribeBuilder, TopicAttributesUpdate, NO_TAGS};
//!
//! # fn main() -> Result<(), cmq_client::ClientError> {
//! let mut client = Client::connect("127.0.0.1:7700")?;
//! let routing = TopicAttributesUpdate { filter_type: Some(FilterType::RoutingKey), ..Default::default() };
//! client.create_topic("events", &routing)?;
//! client.subscribe(&Subscribe::to_queue("events", "orders", "orders").with_binding_keys(&["order.*"]))?;
//! let hook = client.subscribe(&Subscribe::to_http("events", "audit", "https://example.com/hook"))?;
//! println!("pushes are signed with {}", hook.push_secret);
//! client.publish("events", "order 42 paid", NO_TAGS, "order.paid")?;
//! # Ok(())
//! # }
//! ```
//!
//! Pipelining through a `Client` (responses are matched by request id, so
//! tickets may be waited for in any order):
//!
//! ```no_run
//! use cmq_client::{Client, Request, SendMessage};
//!
//! # fn main() -> Result<(), cmq_client::ClientError> {
//! let mut client = Client::connect("127.0.0.1:7700")?;
//! let mut tickets = Vec::new();
//! for i in 0..64 {
//!     let body = format!("message {i}").into();
//!     tickets.push(client.submit(&Request::SendMessage(SendMessage { queue: "orders".into(), delay_seconds: 0, body, ..Default::default() }))?);
//! }
//! client.flush()?;
//! for t in tickets {
//!     client.wait(t)?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The broker may push frames nobody asked for (transaction checks, to
//! registered checkers). [`Connection::recv`] never returns them as replies:
//! it queues them for [`Connection::take_pushes`]; [`Connection::recv_event`]
//! returns replies and pushes in arrival order.
//!
//! Errors the broker reports arrive as [`ClientError::Server`] with the
//! protocol's [`ErrorCode`]; a receive that finds nothing is `Ok(None)`, not
//! an error. A request that changes state and lost its connection after it
//! was sent is [`ClientError::OutcomeUnknown`]: it may or may not have been
//! applied, and the client does not guess by sending it again. Sends and
//! publishes are the exception in a cluster: each message carries an
//! idempotency key ([`idempotency`]), so the client sends them again (to the
//! new leader) and the broker stores each message once.
//!
//! ```no_run
//! use cmq_client::Client;
//!
//! # fn main() -> Result<(), cmq_client::ClientError> {
//! let mut client = Client::connect("127.0.0.1:7701,127.0.0.1:7702,127.0.0.1:7703")?;
//! client.send("orders", "hello", 0)?; // to the leader of the shard that owns "orders"
//! let view = client.cluster_status()?;
//! for k in 0..view.shard_count() {
//!     if let Some(shard) = view.shard(k) {
//!         println!("shard {k}: led by node {} in term {}", shard.status.leader, shard.status.term);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod checker;
mod client;
mod connection;
pub mod credentials;
mod error;
mod id_hash;
pub mod idempotency;
pub mod tls;
#[macro_use]
mod ops;
mod cluster;
mod keys;
pub mod retry;
pub mod routes;
pub mod seeds;
mod topics;

pub use checker::{
    CheckOutcome, CheckerStats, CheckerStopper, CheckerThread, TransactionChecker, CHECKER_HEARTBEAT_DEFAULT,
};
pub use client::{Client, Ticket};
pub use cluster::{ClusterView, FollowerLag, NodeStatus, ShardView, CHANGE_POLL, CHANGE_RESEND_AFTER};
pub use connection::{Closer, Connection, ConnectionStats, Event, Push, Reply, CLIENT_NAME};
pub use credentials::Credentials;
pub use error::ClientError;
pub use id_hash::{id_map, IdHasher, IdMap};
pub use ops::{IdempotencyKey, SendOptions};
/// The TLS library the client uses (its sessions appear in [`TlsOptions::handshake`]).
pub use rustls;
pub use seeds::ToSeeds;
pub use tls::TlsOptions;
pub use topics::{str_list, SubscribeBuilder, NO_TAGS};

/// The wire protocol this client speaks, for building requests by hand.
pub use cmq_protocol as protocol;
pub use cmq_protocol::{
    AddNode, ClusterMap, ClusterNode, ClusterStatus, ClusterStatusOk, FollowerProgress, GetClusterMap, RemoveNode,
    ShardLeader, ShardStatus, TransferLeader,
};
pub use cmq_protocol::{
    BatchDeleteMessage, BatchReceiveMessage, BatchSendMessage, CancelRedrive, ChangeMessageVisibility,
    ChangeMessageVisibilityOk, CreateQueue, DeleteMessage, DeleteQueue, EndTransaction, ErrorCode, FlushPolicy,
    GetQueueAttributes, HandshakeOk, ItemResult, ListQueues, ListQueuesOk, ListRedrives, MessageOrigin, MessageState,
    MessageStatus, PeekMessages, PeekMessagesOk, PeekedMessage, Ping, PurgeQueue, QueryMessage, QueueAttributes,
    QueueAttributesUpdate, QueueInfo, QueueSummary, ReceiptHandle, ReceiveMessage, ReceivedMessage, RedriveInfo,
    RedriveState, RegisterChecker, Request, Response, RewindQueue, Route, SendMessage, SendTransactionMessage,
    SetQueueAttributes, StartRedrive, TransactionCheck, TxDefault,
};
pub use cmq_protocol::{
    BatchPublishMessage, ClearSubscriptionFilterTags, CreateTopic, DeleteTopic, FilterType, GetSubscriptionAttributes,
    GetTopicAttributes, ListSubscriptions, ListSubscriptionsOk, ListTopics, ListTopicsOk, NotifyContentFormat,
    NotifyStrategy, PublishMessage, SetSubscriptionAttributes, SetTopicAttributes, StrList, Subscribe, SubscribeOk,
    SubscriptionInfo, SubscriptionProtocol, SubscriptionSummary, TopicAttributesUpdate, TopicInfo, TopicSummary,
    Unsubscribe,
};
