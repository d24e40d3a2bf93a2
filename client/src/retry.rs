//! When [`crate::Client::call`] sends a request again, and how long it keeps
//! trying.
//!
//! A request is sent again only when doing so cannot apply it twice:
//!
//! * it was never sent (no node accepted the connection);
//! * the broker answered `NOT_LEADER` (the node that refused does not lead
//!   the shard and ran nothing), `SHUTTING_DOWN` (the node takes no new
//!   requests), `BUSY` (a full inbox, or a membership change still in
//!   progress: nothing ran) or `IDLE_TIMEOUT` (the node closed the
//!   connection without reading the request);
//! * its connection was lost after it was sent, and the request is safe to
//!   repeat ([`safe_to_repeat`]): reads, receives, deletes, and sends and
//!   publishes whose every message carries an idempotency key
//!   ([`keyed_send`]; the client's own always do), which the broker stores
//!   once however often they arrive within its dedup window. Otherwise the
//!   caller gets [`crate::ClientError::OutcomeUnknown`]: a keyless send, a
//!   queue creation, a purge repeated after a lost answer could be applied
//!   twice.
//!
//! Against a single node (one seed, a map of one), a node that cannot be
//! reached, lost the connection or is shutting down is reported at once:
//! there is nowhere else to go, and the caller knows best when to try again.
//! A keyed send lost that way, or one whose answer timed out, is
//! [`crate::ClientError::OutcomeUnknown`]: the caller may repeat it with the
//! same key ([`crate::SendOptions::idempotency_key`]) to learn its id.
//!
//! A read that timed out is not repeated: the node is slow or stopped, and
//! the caller's timeout says how long it was willing to wait. The shard's
//! leader is forgotten, so the next call asks the cluster again.
//!
//! Going to a leader another node named happens at once; anything else
//! (no leader known during an election, a node that refused the
//! connection) waits a backoff first and asks the cluster for a fresh map.

use std::time::Duration;

use cmq_protocol::Request;

/// Attempts one `call` makes at most, the first included. With the
/// backoff below, this outlasts [`RETRY_DEADLINE_DEFAULT`]: the deadline is
/// what normally ends a failing call; the count bounds a call whose every
/// attempt fails at once without backing off (leaders that name each other).
pub const RETRY_ATTEMPTS_MAX: u32 = 32;

/// How long one `call` keeps retrying, from its first attempt, unless
/// changed with [`crate::Client::set_retry_deadline`]. Electing a new
/// leader takes 10 to 20 Raft ticks of silence (0.5-1 s at the default
/// 50 ms tick) plus a round trip; this leaves room for two elections on a
/// loaded machine. An attempt already sent is not cut short by it.
pub const RETRY_DEADLINE_DEFAULT: Duration = Duration::from_secs(10);

/// The first backoff; each further one doubles, up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(20);

/// The longest single backoff: a leader elected meanwhile is found within
/// this much of its election.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// The `n`-th backoff of a call (0-based).
pub fn backoff(n: u32) -> Duration {
    BACKOFF_MIN.saturating_mul(1u32 << n.min(16)).min(BACKOFF_MAX)
}

/// Whether `req` may be sent again after its connection was lost with the
/// answer outstanding, when it may already have been applied.
///
/// * Reads change nothing.
/// * A receive may have leased a message nobody will see: it becomes
///   visible again when its visibility timeout ends (at-least-once), as
///   for a consumer that crashed.
/// * Deletes and visibility changes name one delivery by its receipt
///   handle: repeating one cannot touch another message. A repeated delete
///   whose first attempt was applied is answered RECEIPT_HANDLE_INVALID
///   (the handle is spent); the error then says an earlier attempt may
///   have deleted the message.
/// * Setting attributes to given values, transferring leadership, adding a
///   node that is already a member or removing one that is not: the same
///   outcome however often applied.
///
/// * Sends and publishes whose every message carries an idempotency key
///   ([`keyed_send`]).
///
/// Everything else (keyless sends and publishes, creating or deleting
/// queues, topics and subscriptions, purges, rewinds, redrives,
/// transactions) is not.
pub fn safe_to_repeat(req: &Request) -> bool {
    keyed_send(req) || is_idempotent_op(req)
}

/// Whether `req` is a send or publish each of whose messages carries an
/// idempotency key: repeated, it is stored once (within the broker's dedup
/// window) and answered with the first attempt's ids.
pub fn keyed_send(req: &Request) -> bool {
    let all_keyed = |keys: &[bytes::Bytes], n: usize| keys.len() == n && keys.iter().all(|k| !k.is_empty());
    match req {
        Request::SendMessage(r) => !r.idempotency_key.is_empty(),
        Request::PublishMessage(r) => !r.idempotency_key.is_empty(),
        Request::BatchSendMessage(r) => all_keyed(&r.idempotency_keys, r.bodies.len()),
        Request::BatchPublishMessage(r) => all_keyed(&r.idempotency_keys, r.bodies.len()),
        _ => false,
    }
}

fn is_idempotent_op(req: &Request) -> bool {
    matches!(
        req,
        Request::Ping(_)
            | Request::ListQueues(_)
            | Request::GetQueueAttributes(_)
            | Request::PeekMessages(_)
            | Request::QueryMessage(_)
            | Request::ListRedrives(_)
            | Request::ListTopics(_)
            | Request::GetTopicAttributes(_)
            | Request::ListSubscriptions(_)
            | Request::GetSubscriptionAttributes(_)
            | Request::GetClusterMap(_)
            | Request::ClusterStatus(_)
            | Request::ReceiveMessage(_)
            | Request::BatchReceiveMessage(_)
            | Request::DeleteMessage(_)
            | Request::BatchDeleteMessage(_)
            | Request::ChangeMessageVisibility(_)
            | Request::SetQueueAttributes(_)
            | Request::SetTopicAttributes(_)
            | Request::SetSubscriptionAttributes(_)
            | Request::ClearSubscriptionFilterTags(_)
            | Request::TransferLeader(_)
            | Request::AddNode(_)
            | Request::RemoveNode(_)
            | Request::ListKeys(_)
            | Request::GetPolicy(_)
            | Request::SetPolicy(_)
            | Request::WhoAmI(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cmq_protocol::{BatchSendMessage, DeleteMessage, Ping, PurgeQueue, SendMessage};

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(0), BACKOFF_MIN);
        assert_eq!(backoff(1), BACKOFF_MIN * 2);
        assert_eq!(backoff(40), BACKOFF_MAX);
        let total: Duration = (0..RETRY_ATTEMPTS_MAX).map(backoff).sum();
        assert!(total > RETRY_DEADLINE_DEFAULT, "the deadline, not the count, ends a backing-off call");
    }

    #[test]
    fn keyed_sends_are_safe_to_repeat_only_when_every_message_is_keyed() {
        let key = Bytes::from_static(b"k");
        let send = |k: &Bytes| {
            Request::SendMessage(SendMessage { queue: "q".into(), idempotency_key: k.clone(), ..Default::default() })
        };
        assert!(safe_to_repeat(&send(&key)));
        assert!(!safe_to_repeat(&send(&Bytes::new())));
        let batch = |keys: Vec<Bytes>| {
            Request::BatchSendMessage(BatchSendMessage {
                queue: "q".into(),
                bodies: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
                idempotency_keys: keys,
                ..Default::default()
            })
        };
        assert!(safe_to_repeat(&batch(vec![key.clone(), key.clone()])));
        assert!(!safe_to_repeat(&batch(vec![key.clone(), Bytes::new()])), "one message without a key");
        assert!(!safe_to_repeat(&batch(Vec::new())));
    }

    #[test]
    fn sends_and_purges_are_never_repeated_blind() {
        let send = Request::SendMessage(SendMessage {
            queue: "q".into(),
            delay_seconds: 0,
            body: Bytes::new(),
            ..Default::default()
        });
        assert!(!safe_to_repeat(&send));
        assert!(!safe_to_repeat(&Request::PurgeQueue(PurgeQueue { queue: "q".into() })));
        assert!(safe_to_repeat(&Request::Ping(Ping {})));
        let delete = Request::DeleteMessage(DeleteMessage { queue: "q".into(), receipt_handle: Default::default() });
        assert!(safe_to_repeat(&delete));
    }
}
