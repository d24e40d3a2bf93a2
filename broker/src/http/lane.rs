//! The gateway's requests gathered per shard: every request that arrives
//! for a shard during one turn of the HTTP runtime goes to it as one inbox
//! message, so the shard is woken and its inbox touched once per turn, not
//! once per request (the shards batch what they send each other per loop
//! turn the same way: `shard/mailbox.rs`). Under load the answers to one
//! shard turn wake many connections at once, and their next requests arrive
//! together: docs/BENCHMARKS.md, "CMQ API gateway".
//!
//! The request that finds its lane empty is the lane's flusher: it yields
//! to the runtime once (the tasks ready now run first and add theirs) and
//! then sends what the lane holds. A flusher dropped before it flushed (its
//! HTTP client went away) flushes in its drop, so nothing is left behind.
//!
//! A lane holds at most one request per HTTP request being served, so it is
//! bounded by `HTTP_CONNECTIONS_MAX` (HTTP/1.1: one request at a time per
//! connection) plus the console's requests.

use std::sync::Mutex;

use cmq_protocol::{ErrorBody, ErrorCode};

use crate::shard::external::{ExternalRequest, Registry};
use crate::shard::mailbox::{ShardHandle, ShardMsg};

/// The BUSY answer of each request in a batch the shard's inbox refused.
pub const INBOX_FULL_MESSAGE: &str = "shard inbox full; retry";

/// Requests for one shard not sent yet.
#[derive(Default)]
pub struct Lane {
    pending: Mutex<Vec<ExternalRequest>>,
}

impl Lane {
    /// Adds `r`; true when the lane was empty (the caller must see it flushed).
    pub fn push(&self, r: ExternalRequest) -> bool {
        let mut pending = self.lock();
        pending.push(r);
        pending.len() == 1
    }

    /// Takes waiter `token`'s request back if it was not sent yet.
    pub fn withdraw(&self, token: u64) -> bool {
        let mut pending = self.lock();
        let before = pending.len();
        pending.retain(|r| r.token != token);
        pending.len() != before
    }

    /// Sends what is pending to `shard` as one message. If its inbox is
    /// full (or the shard has exited), each request is answered BUSY.
    pub fn flush(&self, shard: &ShardHandle, registry: &Registry) {
        let batch = std::mem::take(&mut *self.lock());
        if batch.is_empty() {
            return;
        }
        let Err(ShardMsg::External(refused)) = shard.send(ShardMsg::External(batch)) else { return };
        for r in refused {
            let mut frame = Vec::new();
            ErrorBody::new(ErrorCode::BUSY, INBOX_FULL_MESSAGE).encode_frame(
                r.request.opcode() as u16,
                r.token,
                &mut frame,
            );
            registry.answer(r.token, frame.into());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ExternalRequest>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Flushes its lane when dropped: after the flusher's yield, or when its
/// request's future is dropped during the yield.
pub struct FlushOnDrop<'a> {
    pub lane: &'a Lane,
    pub shard: &'a ShardHandle,
    pub registry: &'a Registry,
}

impl Drop for FlushOnDrop<'_> {
    fn drop(&mut self) {
        self.lane.flush(self.shard, self.registry);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cmq_protocol::frame::FLAG_ERROR;
    use cmq_protocol::{DeleteQueue, Request};

    use super::*;
    use crate::shard::mailbox;

    fn shard() -> (mio::Poll, ShardHandle, mailbox::Inbox) {
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        let (handle, inbox) = mailbox::channel(waker);
        (poll, handle, inbox)
    }

    fn request(token: u64) -> ExternalRequest {
        ExternalRequest { token, request: Request::DeleteQueue(DeleteQueue { queue: "q".into() }) }
    }

    #[test]
    fn a_turns_requests_reach_the_shard_as_one_message() {
        let (_poll, handle, inbox) = shard();
        let (registry, lane) = (Registry::default(), Lane::default());
        assert!(lane.push(request(1)), "the first one flushes");
        assert!(!lane.push(request(2)));
        assert!(!lane.push(request(3)));
        assert!(lane.withdraw(2), "not sent yet: taken back");
        assert!(!lane.withdraw(2));
        lane.flush(&handle, &registry);
        match inbox.rx.try_recv() {
            Ok(ShardMsg::External(batch)) => assert_eq!(batch.iter().map(|r| r.token).collect::<Vec<_>>(), [1, 3]),
            _ => panic!("one batch expected"),
        }
        assert!(inbox.rx.try_recv().is_err(), "one message for the turn");
        lane.flush(&handle, &registry);
        assert!(inbox.rx.try_recv().is_err(), "an empty lane sends nothing");
        assert!(!lane.withdraw(1), "sent: the shard must be told instead");
        assert!(lane.push(request(4)), "empty again: the next one flushes");
    }

    #[test]
    fn a_refused_batch_is_answered_busy() {
        let (_poll, handle, inbox) = shard();
        drop(inbox);
        let (registry, lane) = (Registry::default(), Lane::default());
        let (a, mut rx_a) = registry.register(None);
        let (b, mut rx_b) = registry.register(None);
        lane.push(request(a));
        lane.push(request(b));
        lane.flush(&handle, &registry);
        for rx in [&mut rx_a, &mut rx_b] {
            let frame = rx.try_recv().expect("answered");
            assert_ne!(frame[6] & FLAG_ERROR, 0);
            let e = ErrorBody::decode_payload(frame.slice(cmq_protocol::frame::HEADER_BYTES..)).expect("error body");
            assert_eq!((e.code(), e.message.as_str()), (ErrorCode::BUSY, INBOX_FULL_MESSAGE));
        }
        assert!(registry.is_empty());
    }
}
