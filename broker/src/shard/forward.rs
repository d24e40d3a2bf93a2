//! Cross-shard messages between nodes.
//!
//! A message moves between queues of different shards (dead letters,
//! redrive, topic deliveries) with transfers: the source group's leader
//! sends them to the local shard that owns the destination, which applies
//! them if it leads its group. In a cluster it may not: then it relays them
//! over its peer link to the node that leads (shard `k`'s links reach
//! shard `k` of every node), and the verdicts come back the same way,
//! relayed by the receiving node's shard of that group to the source shard
//! through the mailbox. Losing any of these is safe: the source resends
//! unconfirmed transfers, the destination filters duplicates.
//!
//! Payload of a `Forward` peer frame (little-endian, protocol encodings):
//! ```text
//! to_shard u16 | kind u8 | body
//! 1 Transfers        [src_shard u16, id u64, kind u8, dst_queue str, body bytes, origin bytes,
//!                     dequeue_count u32, low_watermark u64]
//! 2 TransferResults  from u16, [id u64, code u16 (0: accepted)]
//! 3 TransferPrune    from u16, below u64
//! ```

use bytes::Bytes;
use cmq_protocol::limits::{MSG_BYTES_MAX, NAME_CHARS_MAX};
use cmq_protocol::wire::{Reader, Writer};
use cmq_protocol::{DecodeError, ErrorCode};

use super::mailbox::ShardMsg;
use super::Shard;
use crate::cluster::transport::DataKind;
use crate::engine::InTransfer;

/// Transfers or verdicts in one forwarded frame (a source sends at most a
/// bounded batch per turn; far more is a corrupt frame).
const FORWARD_ITEMS_MAX: usize = u16::MAX as usize;

/// Origins are small encodings next to a body.
const ORIGIN_BYTES_MAX: usize = 4096;

const KIND_TRANSFERS: u8 = 1;
const KIND_RESULTS: u8 = 2;
const KIND_PRUNE: u8 = 3;

/// Encodes `msg` for shard `to_shard` of another node; None for messages
/// that never cross nodes.
pub fn encode(to_shard: u16, msg: &ShardMsg) -> Option<Vec<u8>> {
    let mut w = Vec::new();
    w.put_u16(to_shard);
    match msg {
        ShardMsg::Transfers { ts, .. } => {
            w.put_u8(KIND_TRANSFERS);
            w.put_count(ts.len().min(FORWARD_ITEMS_MAX));
            for t in ts.iter().take(FORWARD_ITEMS_MAX) {
                w.put_u16(t.src_shard);
                w.put_u64(t.id);
                w.put_u8(t.kind);
                w.put_str(&t.dst_queue);
                w.put_bytes(&t.body);
                w.put_bytes(&t.origin);
                w.put_u32(t.dequeue_count);
                w.put_u64(t.low_watermark);
            }
        }
        ShardMsg::TransferResults { from, results, .. } => {
            w.put_u8(KIND_RESULTS);
            w.put_u16(*from);
            w.put_count(results.len().min(FORWARD_ITEMS_MAX));
            for (id, r) in results.iter().take(FORWARD_ITEMS_MAX) {
                w.put_u64(*id);
                w.put_u16(r.err().map_or(0, |c| c.0));
            }
        }
        ShardMsg::TransferPrune { from, below, .. } => {
            w.put_u8(KIND_PRUNE);
            w.put_u16(*from);
            w.put_u64(*below);
        }
        _ => return None,
    }
    Some(w)
}

/// Decodes a forwarded message from node `from_node`: (shard it is for, message).
pub fn decode(from_node: u64, payload: Bytes) -> Result<(u16, ShardMsg), DecodeError> {
    let mut r = Reader::new(payload);
    let to_shard = r.u16("to_shard")?;
    let msg = match r.u8("kind")? {
        KIND_TRANSFERS => {
            let n = r.count("transfers", FORWARD_ITEMS_MAX)?;
            let mut ts = Vec::with_capacity(n);
            for _ in 0..n {
                ts.push(InTransfer {
                    src_shard: r.u16("src_shard")?,
                    id: r.u64("id")?,
                    kind: r.u8("kind")?,
                    dst_queue: r.string("dst_queue", NAME_CHARS_MAX)?,
                    body: r.bytes("body", MSG_BYTES_MAX as usize)?,
                    origin: r.bytes("origin", ORIGIN_BYTES_MAX)?,
                    dequeue_count: r.u32("dequeue_count")?,
                    low_watermark: r.u64("low_watermark")?,
                });
            }
            ShardMsg::Transfers { from_node, ts }
        }
        KIND_RESULTS => {
            let from = r.u16("from")?;
            let n = r.count("results", FORWARD_ITEMS_MAX)?;
            let mut results = Vec::with_capacity(n);
            for _ in 0..n {
                let id = r.u64("id")?;
                let code = r.u16("code")?;
                results.push((id, if code == 0 { Ok(()) } else { Err(ErrorCode(code)) }));
            }
            ShardMsg::TransferResults { from, from_node, results }
        }
        KIND_PRUNE => ShardMsg::TransferPrune { from: r.u16("from")?, from_node, below: r.u64("below")? },
        _ => return Err(DecodeError::Invalid("forward kind")),
    };
    r.finish()?;
    Ok((to_shard, msg))
}

impl Shard {
    /// A frame another node's shard of this group forwarded: for this
    /// shard, or relayed to the local shard it names.
    pub(super) fn forwarded_frame(&mut self, from: u64, bytes: Bytes, now: u64) {
        match decode(from, bytes) {
            Ok((to, msg)) if to == self.id => self.handle_transfer_msg(msg, now),
            Ok((to, msg)) if to < self.shard_count() => self.send_to(to, msg),
            Ok((to, _)) => log::warn!("shard {}: node {from} forwarded a message for shard {to}", self.id),
            Err(e) => log::warn!("shard {}: undecodable forwarded message from node {from}: {e}", self.id),
        }
    }

    /// Transfers, verdicts and prunes, from a local shard or another node.
    pub(super) fn handle_transfer_msg(&mut self, msg: ShardMsg, now: u64) {
        match msg {
            ShardMsg::Transfers { from_node, ts } => self.take_transfers(from_node, ts, now),
            ShardMsg::TransferResults { from, from_node, results } => {
                self.transfer_results(from, from_node, results, now)
            }
            ShardMsg::TransferPrune { from, below, .. } => self.engine.prune_inbound(from, below),
            _ => {}
        }
    }

    /// Transfers for this shard's queues: applied here if this replica may
    /// serve, else relayed to the node that leads the group (dropped when
    /// none is known: the source resends).
    fn take_transfers(&mut self, from_node: u64, ts: Vec<InTransfer>, now: u64) {
        if self.may_serve() {
            return self.receive_transfers(from_node, ts, now);
        }
        let Some(r) = self.repl.as_deref_mut() else { return };
        let leader = r.replica.leader_id();
        if leader == 0 || leader == r.node_id || from_node != 0 {
            // No leader known, or it came from another node already: one hop only.
            return;
        }
        let msg = ShardMsg::Transfers { from_node: 0, ts };
        if let Some(bytes) = encode(self.id, &msg) {
            let _ = r.links.send(leader, DataKind::Forward, &[&bytes]);
        }
    }

    /// Sends `msg` to shard `to` of node `node` (0: this node) over this
    /// shard's peer link; the receiving shard relays it locally.
    pub(super) fn send_to_node(&mut self, node: u64, to: u16, msg: ShardMsg) {
        let Some(r) = self.repl.as_deref_mut() else { return self.send_to(to, msg) };
        if node == 0 || node == r.node_id {
            return self.send_to(to, msg);
        }
        if let Some(bytes) = encode(to, &msg) {
            let _ = r.links.send(node, DataKind::Forward, &[&bytes]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(id: u64) -> InTransfer {
        InTransfer {
            src_shard: 2,
            id,
            kind: 1,
            dst_queue: "dlq".into(),
            body: Bytes::from_static(b"body"),
            origin: Bytes::from_static(b"o"),
            dequeue_count: 3,
            low_watermark: 7,
        }
    }

    #[test]
    fn forwarded_messages_round_trip_and_truncations_fail() {
        let msgs = [
            ShardMsg::Transfers { from_node: 0, ts: vec![transfer(1), transfer(2)] },
            ShardMsg::TransferResults {
                from: 3,
                from_node: 0,
                results: vec![(1, Ok(())), (2, Err(ErrorCode::QUEUE_NOT_FOUND))],
            },
            ShardMsg::TransferPrune { from: 3, from_node: 0, below: 9 },
        ];
        for m in &msgs {
            let bytes = encode(5, m).expect("crosses nodes");
            let (to, back) = decode(4, Bytes::from(bytes.clone())).expect("decodes");
            assert_eq!(to, 5);
            match (m, back) {
                (ShardMsg::Transfers { ts: a, .. }, ShardMsg::Transfers { from_node, ts: b }) => {
                    assert_eq!(from_node, 4);
                    assert_eq!(a.len(), b.len());
                    assert_eq!((b[1].id, b[1].dst_queue.as_str(), &b[1].body[..]), (2, "dlq", &b"body"[..]));
                }
                (ShardMsg::TransferResults { results: a, .. }, ShardMsg::TransferResults { from, results: b, .. }) => {
                    assert_eq!((from, a.clone()), (3, b));
                }
                (ShardMsg::TransferPrune { .. }, ShardMsg::TransferPrune { from, below, .. }) => {
                    assert_eq!((from, below), (3, 9))
                }
                _ => panic!("kind changed"),
            }
            for cut in 0..bytes.len() {
                assert!(decode(4, Bytes::copy_from_slice(&bytes[..cut])).is_err(), "cut at {cut}");
            }
        }
        assert!(encode(0, &ShardMsg::Shutdown).is_none());
    }
}
