//! Messages between shards, and how a shard wakes a sleeping peer.
//!
//! Every inbox is a bounded channel. A shard collects what it sends to each
//! peer during one loop turn and sends it as one message, so a busy pair of
//! shards pays one channel operation (and at most one wakeup) per turn, not
//! per request. Waking is skipped unless the peer said it is about to sleep:
//! waking an idle vCPU costs ~65 µs on our machines.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use cmq_protocol::Request;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::TcpStream;
use mio::Waker;

use cmq_protocol::{ErrorCode, RedriveInfo};

use crate::engine::{InTransfer, ListedQueue};

/// Messages one inbox holds before senders see it as full. A message is a
/// whole turn's batch, so this is generous; a full inbox answers BUSY.
pub const INBOX_MSGS_MAX: usize = 16 * 1024;

/// A connection on some shard: slab index plus a generation, so a late reply
/// for a closed connection is never written to the connection that reused its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub token: usize,
    pub gen: u32,
}

/// Where a response goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyTo {
    pub shard: u16,
    pub conn: ConnRef,
}

/// A request forwarded to the shard that owns its queue.
pub struct Forwarded {
    pub reply_to: ReplyTo,
    pub request_id: u64,
    pub request: Request,
}

/// Encoded response frames for connections of one shard.
#[derive(Default)]
pub struct ReplyBatch {
    pub buf: Vec<u8>,
    /// Connection and the byte range of `buf` holding its frames (usize:
    /// a batch is not limited to 4 GiB by a silent truncation).
    pub parts: Vec<(ConnRef, usize, usize)>,
}

/// A connection whose handshake asked for another shard.
pub struct Handover {
    pub stream: TcpStream,
    /// Bytes the client already sent after its handshake.
    pub pending: bytes::BytesMut,
    pub handshake_request_id: u64,
    pub version: u16,
    /// The key the connection authenticated with (None: anonymous).
    pub session: Option<Box<crate::auth::session::Session>>,
    /// Its TLS session (None: plaintext), which moves with the socket.
    pub tls: Option<Box<crate::tls::transport::TlsSession>>,
}

/// Destination verdicts on transfers, by transfer id.
pub type TransferVerdicts = Vec<(u64, Result<(), ErrorCode>)>;

/// A question one shard asks others while coordinating a request.
#[derive(Debug, Clone)]
pub enum Query {
    /// ListQueues, ListTopics: yours matching the filters, the first `take` in creation order.
    List { what: crate::engine::Listed, prefix: String, contains: String, take: usize, viewer: super::authn::Viewer },
    /// ListRedrives: your redrive tasks.
    Redrives,
    /// DeleteQueue: your queues whose dead-letter queue is `name`.
    DeadLetterSources { name: String },
    /// Create/SetQueueAttributes with a dead-letter queue: does `name` exist?
    QueueExists { name: String },
    /// ClusterStatus: your replica's state.
    ReplicaStatus,
    /// TransferLeader, AddNode, RemoveNode: if you lead your group, do it.
    Membership(Membership),
}

/// A change a group's leader carries out (see `replication.rs`).
#[derive(Debug, Clone)]
pub enum Membership {
    TransferLeader { to: u64 },
    AddNode { id: u64, peer_addr: std::net::SocketAddr },
    RemoveNode { id: u64 },
}

/// An answer to a [`Query`].
#[derive(Debug)]
pub enum Answer {
    Queues {
        total: u32,
        items: Vec<ListedQueue>,
    },
    Redrives(Vec<RedriveInfo>),
    Names(Vec<String>),
    Exists(bool),
    Status(u16, cmq_protocol::ShardStatus),
    /// A membership change: done (or not this shard's to do), or why not.
    Done(Result<(), (ErrorCode, String)>),
    /// GetStats: one shard's metrics.
    Stats(Box<crate::metrics::snapshot::ShardSnapshot>),
}

pub enum ShardMsg {
    Requests(Vec<Forwarded>),
    Replies(ReplyBatch),
    /// Frames the broker sends on its own (transaction checks) to connections of the receiving shard.
    Push(ReplyBatch),
    Handover(Box<Handover>),
    /// Scatter: answer `query` for gather `gather` on shard `from`.
    Query {
        from: u16,
        gather: u64,
        query: Query,
    },
    /// Gather.
    Answer {
        gather: u64,
        answer: Answer,
    },
    /// Messages moving into queues owned by the receiving shard.
    /// `from_node`: the node whose source shard sent them when they came
    /// from another node (its verdicts go back there); 0 from this node.
    Transfers {
        from_node: u64,
        ts: Vec<InTransfer>,
    },
    /// The destination's verdicts on transfers from the receiving shard
    /// (`from_node`: as for `Transfers`).
    TransferResults {
        from: u16,
        from_node: u64,
        results: Vec<(u64, Result<(), ErrorCode>)>,
    },
    /// Shard `from` has no transfer pending below `below`.
    TransferPrune {
        from: u16,
        from_node: u64,
        below: u64,
    },
    /// To shard `to` of node `node`, over this shard's peer link (staged
    /// with the turn's other messages: it waits for the log like them).
    Remote {
        node: u64,
        to: u16,
        msg: Box<ShardMsg>,
    },
    /// An authenticated connection from the same shard of another node.
    PeerConn(Box<crate::cluster::acceptor::AuthenticatedStream>),
    /// A connection answers transaction checks for `group`.
    CheckerRegistered {
        group: String,
        reply_to: ReplyTo,
    },
    /// A connection went away; forget long polls and checker registrations that would answer it.
    ConnClosed {
        reply_to: ReplyTo,
    },
    /// Stop accepting work, finish what is in flight, exit.
    Shutdown,
    /// The HTTP thread asks for this shard's metrics (`metrics::snapshot`).
    Stats(crate::metrics::snapshot::StatsRequest),
    /// Requests from inside the broker (the HTTP gateway; `external.rs`),
    /// those of one HTTP runtime turn together (`http/lane.rs`).
    External(Vec<super::external::ExternalRequest>),
    /// Testing only (`--fault-http-hooks`): block the event loop this long.
    Stall {
        ms: u64,
    },
}

/// The sending side of one shard's inbox.
#[derive(Clone)]
pub struct ShardHandle {
    tx: Sender<ShardMsg>,
    waker: Arc<Waker>,
    sleeping: Arc<AtomicBool>,
}

impl ShardHandle {
    /// Wakes this shard's event loop (for threads that produce work for it).
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub fn new(tx: Sender<ShardMsg>, waker: Arc<Waker>, sleeping: Arc<AtomicBool>) -> ShardHandle {
        ShardHandle { tx, waker, sleeping }
    }

    /// Sends without blocking; gives the message back if the inbox is full
    /// or the shard has exited.
    pub fn send(&self, msg: ShardMsg) -> Result<(), ShardMsg> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                // Pairs with the fence in `Inbox::about_to_sleep`: either the
                // peer sees our message before sleeping, or we see its flag.
                fence(Ordering::SeqCst);
                if self.sleeping.swap(false, Ordering::SeqCst) {
                    let _ = self.waker.wake();
                }
                Ok(())
            }
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(m),
        }
    }

    /// Wakes the shard unconditionally (shutdown).
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }
}

/// The receiving side of a shard's inbox.
pub struct Inbox {
    pub rx: Receiver<ShardMsg>,
    sleeping: Arc<AtomicBool>,
}

impl Inbox {
    pub fn new(rx: Receiver<ShardMsg>, sleeping: Arc<AtomicBool>) -> Inbox {
        Inbox { rx, sleeping }
    }

    /// Announces that the shard will block in poll. Returns false if a
    /// message is already waiting, in which case the shard must not block.
    pub fn about_to_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !self.rx.is_empty() {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

/// Creates the channel halves for one shard.
pub fn channel(waker: Arc<Waker>) -> (ShardHandle, Inbox) {
    let (tx, rx) = crossbeam_channel::bounded(INBOX_MSGS_MAX);
    let sleeping = Arc::new(AtomicBool::new(false));
    (ShardHandle::new(tx, waker, sleeping.clone()), Inbox::new(rx, sleeping))
}
