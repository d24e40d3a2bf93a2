//! Requests from inside the broker: the HTTP gateway (`crate::gateway`)
//! runs the same protocol `Request`s a connection sends, on the shard that
//! owns the queue, through the same code (prechecks, forwarding, the
//! engine, long polls) and the same durability: the answer frame is
//! staged like a reply for another shard's connection and handed over only
//! once the log records it depends on are as safe as a connection's reply
//! would need.
//!
//! Such a request's [`ReplyTo`] names the pseudo shard [`EXTERNAL_SHARD`]
//! and a token. The token's waiter lives in the broker-wide [`Registry`]
//! (any shard may end up answering: prechecks and forwarding move a
//! request between shards), so whichever shard answers hands the frame to
//! it. The waiter is a oneshot the HTTP thread awaits: a long poll parks
//! nothing but that future.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use cmq_protocol::{ErrorCode, Request};
use tokio::sync::oneshot;

pub use super::authn::Viewer;
use super::mailbox::{ConnRef, ReplyBatch, ReplyTo, ShardMsg};
use super::release::Need;
use super::Shard;

/// The pseudo shard id in the `ReplyTo` of an external request.
pub const EXTERNAL_SHARD: u16 = u16::MAX;

const _: () = assert!(EXTERNAL_SHARD as usize >= cmq_protocol::limits::SHARDS_MAX, "no real shard has this id");

/// A request for a shard, answered to the registry's waiter `token`.
pub struct ExternalRequest {
    pub token: u64,
    pub request: Request,
}

struct Waiter {
    /// Whom lists are filtered for.
    viewer: Viewer,
    answer: oneshot::Sender<Bytes>,
}

/// External requests awaiting their answer, broker-wide. Bounded by the
/// callers: the HTTP port registers one per request it serves, and a
/// request's guard removes it when the request ends (answered or not).
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, Waiter>>,
}

impl Registry {
    /// A new waiter: its token, and where its answer frame arrives.
    pub fn register(&self, viewer: Viewer) -> (u64, oneshot::Receiver<Bytes>) {
        let token = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (answer, rx) = oneshot::channel();
        self.lock().insert(token, Waiter { viewer, answer });
        (token, rx)
    }

    /// Forgets a waiter (its request ended or was never sent); true when
    /// it was still waiting (no answer had come).
    pub fn cancel(&self, token: u64) -> bool {
        self.lock().remove(&token).is_some()
    }

    /// Whether waiter `token` still waits for its answer.
    pub fn is_waiting(&self, token: u64) -> bool {
        self.lock().contains_key(&token)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn viewer(&self, token: u64) -> Viewer {
        self.lock().get(&token).and_then(|w| w.viewer.clone())
    }

    /// Hands `frame` to waiter `token` (if it still waits).
    pub fn answer(&self, token: u64, frame: Bytes) {
        if let Some(w) = self.lock().remove(&token) {
            let _ = w.answer.send(frame);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whom the answer to waiter `token` goes to (what `ShardMsg::ConnClosed`
/// names when the request is abandoned).
pub fn reply_to(token: u64) -> ReplyTo {
    ReplyTo { shard: EXTERNAL_SHARD, conn: ConnRef { token: token as usize, gen: 0 } }
}

impl Shard {
    /// Runs an external request as if a connection of this shard sent it.
    pub(super) fn take_external(&mut self, r: ExternalRequest, now: u64) {
        let to = reply_to(r.token);
        if self.drain.draining {
            let op = r.request.opcode() as u16;
            let msg = "server shutting down";
            return self.reply_err(to, op, r.token, ErrorCode::SHUTTING_DOWN, msg, super::reply::ReplyDep::Read);
        }
        if let Some(request) = self.precheck(to, r.token, r.request, now) {
            self.route_to_owner(to, r.token, request, now);
        }
    }

    /// Where answers to external requests are encoded this turn.
    pub(super) fn external_buf(&mut self) -> &mut Vec<u8> {
        &mut self.cross.external_out.buf
    }

    /// An answer encoded at `start..` of this turn's batch; it goes out with
    /// the turn's replies for peers, once `need` is met.
    pub(super) fn external_done(&mut self, to: ReplyTo, start: usize, need: Need) {
        let out = &mut self.cross.external_out;
        let end = out.buf.len();
        out.parts.push((to.conn, start, end));
        self.cross.remote_need = self.cross.remote_need.max(need);
    }

    /// This turn's answers, staged by `end_turn` with the peers' replies.
    pub(super) fn external_turn_msg(&mut self) -> Option<(u16, ShardMsg)> {
        if self.cross.external_out.parts.is_empty() {
            return None;
        }
        Some((EXTERNAL_SHARD, ShardMsg::Replies(std::mem::take(&mut self.cross.external_out))))
    }

    /// Answers whose needs are met: each frame to its waiter (gone waiters
    /// are skipped: their HTTP request ended).
    pub(super) fn deliver_external(&self, msg: ShardMsg) {
        let ShardMsg::Replies(ReplyBatch { buf, parts }) = msg else { return };
        let buf = Bytes::from(buf);
        for (conn, start, end) in parts {
            if start <= end && end <= buf.len() {
                self.shared.external.answer(conn.token as u64, buf.slice(start..end));
            }
        }
    }

    pub(super) fn external_viewer(&self, to: ReplyTo) -> Viewer {
        if !self.shared.cfg.auth.enforces() {
            return None;
        }
        self.shared.external.viewer(to.conn.token as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_answers_each_waiter_once_and_forgets_cancelled_ones() {
        let r = Registry::default();
        let (a, mut rx_a) = r.register(None);
        let (b, mut rx_b) = r.register(None);
        assert_ne!(a, b);
        assert_eq!(r.len(), 2);
        r.answer(a, Bytes::from_static(b"frame"));
        assert_eq!(rx_a.try_recv().expect("answered"), Bytes::from_static(b"frame"));
        r.answer(a, Bytes::from_static(b"again"));
        r.cancel(b);
        assert!(r.is_empty());
        assert!(rx_b.try_recv().is_err(), "cancelled: the sender is gone");
    }
}
