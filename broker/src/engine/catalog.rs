//! A snapshot of a shard's queue definitions and counters, taken at a log
//! position. Replay loads it first and then skips the queue-management
//! records before that position, so the segments holding those records can
//! be deleted once no live message needs them either.
//!
//! ```text
//! magic b"cmq-cat\n" | version u32 = 1 | log_pos u64 | next_uid u32 | next_msg_counter u64
//! | next_transfer_id u64 | next_redrive u64 | next_sid u32
//! | count u32 | count × (uid u32, created_ms u64, create_seq u64, modified_ms u64, next_seq u64, attrs, name str16)
//! | count u32 | count × redrive (id u64, uid u32, rate u32, end_seq u64, total u64, moved u64,
//!                               failed u64, state u8, started_ms u64, finished_ms u64, to str16)
//! | count u32 | count × topic (uid u32, created_ms u64, create_seq u64, modified_ms u64,
//!                            max_msg_size u32, retention_s u32, filter_type u8, name str16,
//!                            count u16 × subscription (sid u32, created_ms u64, modified_ms u64, name str16,
//!                            protocol u8, endpoint str16, strategy u8, format u8, [filter tag str16],
//!                            [binding key str16], dead_letter_queue str16, secret 16 bytes))
//! | count u32 | count × dedup window (owner u8: 1 queue, 2 topic, uid u32,
//!                                   count u32 × (key digest u128, msg_id u64, time_ms u64))
//! | count u32 | count × key (name str16, secret_id str16, count u16 × secret_key str16, policy str16,
//!                          created_ms u64, modified_ms u64)          (shard 0 only)
//! | crc32c u32 of everything before it
//! ```
//!
//! Version 2 added the dedup windows and the keys; a version 1 catalog has
//! neither and is still read. The dedup windows (`dedup.rs`: each queue's
//! and topic's recent idempotency keys, oldest first) hold the keys of the
//! `Enqueued` and `Published` records before `log_pos`, so the segments
//! holding those records can go and a snapshot carries the windows to a
//! follower.

use bytes::Bytes;
use cmq_protocol::wire::{Reader, Wire, Writer};
use cmq_protocol::{QueueAttributes, RedriveState};

use crate::engine::dedup::{KeyDigest, Seen, IDEMPOTENCY_KEYS_PER_QUEUE_MAX};
use crate::engine::record::SubscriptionDef;

const MAGIC: &[u8; 8] = b"cmq-cat\n";
const VERSION: u32 = 2;

/// The oldest catalog version this build reads (1: no keys section).
const VERSION_MIN: u32 = 1;

use cmq_protocol::limits::NAME_CHARS_MAX;

/// Queues one catalog may hold (a shard's queue limit is far below this).
const CATALOG_QUEUES_MAX: u32 = 10_000_000;

// Every count and length the catalog encodes fits its field: u32 counts of
// queues and topics (bounded by the broker's limits), a u16 count of a
// topic's subscriptions, u16 lengths of names, URLs and tags (validated
// when created).
const _: () = assert!(crate::config::QUEUES_MAX <= CATALOG_QUEUES_MAX as usize);
const _: () = assert!(crate::config::TOPICS_MAX <= u32::MAX as usize);
const _: () = assert!(crate::engine::topic::SUBSCRIPTIONS_PER_TOPIC_MAX <= u16::MAX as usize);
const _: () = assert!(cmq_protocol::limits::URL_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(NAME_CHARS_MAX <= u16::MAX as usize);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogQueue {
    pub uid: u32,
    pub name: String,
    pub attrs: QueueAttributes,
    pub created_ms: u64,
    pub create_seq: u64,
    pub modified_ms: u64,
    pub next_seq: u64,
}

/// A redrive task's bookkeeping (its progress is not in any message record
/// once the records are compacted away).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRedrive {
    pub id: u64,
    pub uid: u32,
    pub rate: u32,
    pub end_seq: u64,
    pub total: u64,
    pub moved: u64,
    pub failed: u64,
    pub state: RedriveState,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogSubscription {
    pub sid: u32,
    pub created_ms: u64,
    pub modified_ms: u64,
    pub def: SubscriptionDef,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogTopic {
    pub uid: u32,
    pub name: String,
    pub created_ms: u64,
    pub create_seq: u64,
    pub modified_ms: u64,
    pub max_msg_size: u32,
    pub retention_s: u32,
    pub filter_type: u8,
    pub subscriptions: Vec<CatalogSubscription>,
}

/// Whose dedup window an entry list is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DedupOwner {
    Queue = 1,
    Topic = 2,
}

/// One queue's or topic's dedup window, oldest entry first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogDedup {
    pub owner: DedupOwner,
    pub uid: u32,
    pub entries: Vec<(KeyDigest, Seen)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    /// Every queue-management record before this log position is reflected here.
    pub log_pos: u64,
    pub next_uid: u32,
    pub next_msg_counter: u64,
    pub next_transfer_id: u64,
    pub next_redrive: u64,
    pub next_sid: u32,
    pub queues: Vec<CatalogQueue>,
    pub redrives: Vec<CatalogRedrive>,
    pub topics: Vec<CatalogTopic>,
    /// Windows that hold at least one key, by (owner, uid).
    pub dedup: Vec<CatalogDedup>,
    /// Authentication keys (shard 0), in name order.
    pub keys: Vec<crate::engine::keys::KeyDef>,
}

impl Catalog {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(64 + self.queues.len() * 96);
        w.extend_from_slice(MAGIC);
        w.put_u32(VERSION);
        w.put_u64(self.log_pos);
        w.put_u32(self.next_uid);
        w.put_u64(self.next_msg_counter);
        w.put_u64(self.next_transfer_id);
        w.put_u64(self.next_redrive);
        w.put_u32(self.next_sid);
        w.put_u32(self.queues.len() as u32);
        for q in &self.queues {
            w.put_u32(q.uid);
            w.put_u64(q.created_ms);
            w.put_u64(q.create_seq);
            w.put_u64(q.modified_ms);
            w.put_u64(q.next_seq);
            q.attrs.encode(&mut w);
            w.put_str(&q.name);
        }
        w.put_u32(self.redrives.len() as u32);
        for r in &self.redrives {
            w.put_u64(r.id);
            w.put_u32(r.uid);
            w.put_u32(r.rate);
            w.put_u64(r.end_seq);
            w.put_u64(r.total);
            w.put_u64(r.moved);
            w.put_u64(r.failed);
            r.state.encode(&mut w);
            w.put_u64(r.started_ms);
            w.put_u64(r.finished_ms);
            w.put_str(&r.to);
        }
        w.put_u32(self.topics.len() as u32);
        for t in &self.topics {
            w.put_u32(t.uid);
            w.put_u64(t.created_ms);
            w.put_u64(t.create_seq);
            w.put_u64(t.modified_ms);
            w.put_u32(t.max_msg_size);
            w.put_u32(t.retention_s);
            w.put_u8(t.filter_type);
            w.put_str(&t.name);
            w.put_count(t.subscriptions.len());
            for s in &t.subscriptions {
                w.put_u32(s.sid);
                w.put_u64(s.created_ms);
                w.put_u64(s.modified_ms);
                w.put_str(&s.def.name);
                w.put_u8(s.def.protocol);
                w.put_str(&s.def.endpoint);
                w.put_u8(s.def.strategy);
                w.put_u8(s.def.format);
                put_strs(&mut w, &s.def.filter_tags);
                put_strs(&mut w, &s.def.binding_keys);
                w.put_str(&s.def.dead_letter_queue);
                w.extend_from_slice(&s.def.secret);
            }
        }
        w.put_u32(self.dedup.len() as u32);
        for d in &self.dedup {
            w.put_u8(d.owner as u8);
            w.put_u32(d.uid);
            w.put_u32(d.entries.len() as u32);
            for (key, seen) in &d.entries {
                w.put_u128(*key);
                w.put_u64(seen.msg_id);
                w.put_u64(seen.time_ms);
            }
        }
        w.put_u32(self.keys.len() as u32);
        for k in &self.keys {
            w.put_str(&k.name);
            w.put_str(&k.secret_id);
            put_strs(&mut w, &k.secrets);
            w.put_str(&k.policy);
            w.put_u64(k.created_ms);
            w.put_u64(k.modified_ms);
        }
        let crc = crc32c::crc32c(&w);
        w.put_u32(crc);
        w
    }

    pub fn decode(data: &[u8]) -> Result<Catalog, String> {
        if data.len() < MAGIC.len() + 4 + 4 || &data[..MAGIC.len()] != MAGIC {
            return Err("not a catalog file (bad magic)".into());
        }
        let (body, crc) = data.split_at(data.len() - 4);
        let stored = u32::from_le_bytes(crc.try_into().unwrap_or_default());
        if crc32c::crc32c(body) != stored {
            return Err("catalog checksum mismatch".into());
        }
        let mut r = Reader::new(Bytes::copy_from_slice(&body[MAGIC.len()..]));
        let e = |e: cmq_protocol::DecodeError| e.to_string();
        let version = r.u32("version").map_err(e)?;
        if !(VERSION_MIN..=VERSION).contains(&version) {
            return Err(format!("catalog format version {version}, this build reads {VERSION_MIN} to {VERSION}"));
        }
        let log_pos = r.u64("log_pos").map_err(e)?;
        let next_uid = r.u32("next_uid").map_err(e)?;
        let next_msg_counter = r.u64("next_msg_counter").map_err(e)?;
        let next_transfer_id = r.u64("next_transfer_id").map_err(e)?;
        let next_redrive = r.u64("next_redrive").map_err(e)?;
        let next_sid = r.u32("next_sid").map_err(e)?;
        let count = r.u32("count").map_err(e)?;
        if count > CATALOG_QUEUES_MAX {
            return Err(format!("catalog claims {count} queues"));
        }
        let mut queues = Vec::with_capacity((count as usize).min(r.remaining() / 40));
        for _ in 0..count {
            queues.push(CatalogQueue {
                uid: r.u32("uid").map_err(e)?,
                created_ms: r.u64("created_ms").map_err(e)?,
                create_seq: r.u64("create_seq").map_err(e)?,
                modified_ms: r.u64("modified_ms").map_err(e)?,
                next_seq: r.u64("next_seq").map_err(e)?,
                attrs: QueueAttributes::decode(&mut r, "attrs").map_err(e)?,
                name: r.string("name", cmq_protocol::limits::NAME_CHARS_MAX).map_err(e)?,
            });
        }
        let count = r.u32("redrive count").map_err(e)?;
        if count > CATALOG_QUEUES_MAX {
            return Err(format!("catalog claims {count} redrives"));
        }
        let mut redrives = Vec::with_capacity((count as usize).min(r.remaining() / 60));
        for _ in 0..count {
            redrives.push(CatalogRedrive {
                id: r.u64("id").map_err(e)?,
                uid: r.u32("uid").map_err(e)?,
                rate: r.u32("rate").map_err(e)?,
                end_seq: r.u64("end_seq").map_err(e)?,
                total: r.u64("total").map_err(e)?,
                moved: r.u64("moved").map_err(e)?,
                failed: r.u64("failed").map_err(e)?,
                state: RedriveState::decode(&mut r, "state").map_err(e)?,
                started_ms: r.u64("started_ms").map_err(e)?,
                finished_ms: r.u64("finished_ms").map_err(e)?,
                to: r.string("to", cmq_protocol::limits::NAME_CHARS_MAX).map_err(e)?,
            });
        }
        let count = r.u32("topic count").map_err(e)?;
        if count > CATALOG_QUEUES_MAX {
            return Err(format!("catalog claims {count} topics"));
        }
        let mut topics = Vec::with_capacity((count as usize).min(r.remaining() / 40));
        for _ in 0..count {
            let uid = r.u32("uid").map_err(e)?;
            let created_ms = r.u64("created_ms").map_err(e)?;
            let create_seq = r.u64("create_seq").map_err(e)?;
            let modified_ms = r.u64("modified_ms").map_err(e)?;
            let max_msg_size = r.u32("max_msg_size").map_err(e)?;
            let retention_s = r.u32("retention_s").map_err(e)?;
            let filter_type = r.u8("filter_type").map_err(e)?;
            let name = r.string("name", NAME_CHARS_MAX).map_err(e)?;
            let n = r.count("subscriptions", usize::from(u16::MAX)).map_err(e)?;
            let mut subscriptions = Vec::with_capacity(n);
            for _ in 0..n {
                subscriptions.push(CatalogSubscription {
                    sid: r.u32("sid").map_err(e)?,
                    created_ms: r.u64("created_ms").map_err(e)?,
                    modified_ms: r.u64("modified_ms").map_err(e)?,
                    def: SubscriptionDef {
                        name: r.string("name", NAME_CHARS_MAX).map_err(e)?,
                        protocol: r.u8("protocol").map_err(e)?,
                        endpoint: r.string("endpoint", cmq_protocol::limits::URL_BYTES_MAX).map_err(e)?,
                        strategy: r.u8("strategy").map_err(e)?,
                        format: r.u8("format").map_err(e)?,
                        filter_tags: get_strs(&mut r).map_err(e)?,
                        binding_keys: get_strs(&mut r).map_err(e)?,
                        dead_letter_queue: r.string("dlq", NAME_CHARS_MAX).map_err(e)?,
                        secret: r.u128("secret").map_err(e)?.to_le_bytes(),
                    },
                });
            }
            topics.push(CatalogTopic {
                uid,
                name,
                created_ms,
                create_seq,
                modified_ms,
                max_msg_size,
                retention_s,
                filter_type,
                subscriptions,
            });
        }
        let (dedup, keys) = if version >= 2 {
            (decode_dedup(&mut r)?, decode_keys(&mut r).map_err(e)?)
        } else {
            (Vec::new(), Vec::new())
        };
        r.finish().map_err(e)?;
        Ok(Catalog {
            dedup,
            keys,
            log_pos,
            next_uid,
            next_msg_counter,
            next_transfer_id,
            next_redrive,
            next_sid,
            queues,
            redrives,
            topics,
        })
    }
}

/// The dedup section; every count and length is checked against its limit
/// and the bytes left before anything is allocated.
fn decode_dedup(r: &mut Reader) -> Result<Vec<CatalogDedup>, String> {
    let e = |e: cmq_protocol::DecodeError| e.to_string();
    let count = r.u32("dedup count").map_err(e)?;
    if u64::from(count) > 2 * u64::from(CATALOG_QUEUES_MAX) {
        return Err(format!("catalog claims {count} dedup windows"));
    }
    let mut windows = Vec::with_capacity((count as usize).min(r.remaining() / 9));
    for _ in 0..count {
        let owner = match r.u8("dedup owner").map_err(e)? {
            1 => DedupOwner::Queue,
            2 => DedupOwner::Topic,
            o => return Err(format!("dedup window owner {o} is neither a queue (1) nor a topic (2)")),
        };
        let uid = r.u32("uid").map_err(e)?;
        let n = r.u32("dedup entries").map_err(e)? as usize;
        if n > IDEMPOTENCY_KEYS_PER_QUEUE_MAX {
            return Err(format!("a dedup window of {n} keys passes the limit {IDEMPOTENCY_KEYS_PER_QUEUE_MAX}"));
        }
        let mut entries = Vec::with_capacity(n.min(r.remaining() / 32));
        for _ in 0..n {
            let key = r.u128("key digest").map_err(e)?;
            let msg_id = r.u64("msg_id").map_err(e)?;
            let time_ms = r.u64("time_ms").map_err(e)?;
            entries.push((key, Seen { msg_id, time_ms }));
        }
        windows.push(CatalogDedup { owner, uid, entries });
    }
    Ok(windows)
}

/// The keys section (shard 0's authentication keys).
fn decode_keys(r: &mut Reader) -> Result<Vec<crate::engine::keys::KeyDef>, cmq_protocol::DecodeError> {
    use cmq_protocol::auth::{KEYS_MAX, POLICY_BYTES_MAX, SECRET_ID_BYTES_MAX};
    let count = r.u32("key count")? as usize;
    if count > KEYS_MAX {
        return Err(cmq_protocol::DecodeError::TooMany { field: "keys", got: count, max: KEYS_MAX });
    }
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        keys.push(crate::engine::keys::KeyDef {
            name: r.string("key name", NAME_CHARS_MAX)?,
            secret_id: r.string("secret id", SECRET_ID_BYTES_MAX)?,
            secrets: get_strs(r)?,
            policy: r.string("policy", POLICY_BYTES_MAX)?,
            created_ms: r.u64("created_ms")?,
            modified_ms: r.u64("modified_ms")?,
        });
    }
    Ok(keys)
}

fn put_strs(w: &mut Vec<u8>, v: &[String]) {
    w.put_count(v.len());
    for s in v {
        w.put_str(s);
    }
}

fn get_strs(r: &mut Reader) -> Result<Vec<String>, cmq_protocol::DecodeError> {
    let n = r.count("strings", usize::from(u16::MAX))?;
    (0..n).map(|_| r.string("string", NAME_CHARS_MAX)).collect()
}

#[cfg(test)]
mod golden_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use cmq_protocol::FlushPolicy;

    fn sample() -> Catalog {
        Catalog {
            keys: vec![crate::engine::keys::KeyDef {
                name: "admin".into(),
                secret_id: "AKIDabc".into(),
                secrets: vec!["old".into(), "new".into()],
                policy: crate::auth::policy::ADMIN_POLICY.into(),
                created_ms: 1,
                modified_ms: 2,
            }],
            log_pos: 1 << 30,
            next_uid: 7,
            next_msg_counter: 12345,
            next_transfer_id: 99,
            next_redrive: 4,
            next_sid: 3,
            redrives: vec![CatalogRedrive {
                id: 3,
                uid: 3,
                rate: 100,
                end_seq: 50,
                total: 40,
                moved: 12,
                failed: 1,
                state: RedriveState::Running,
                started_ms: 5,
                finished_ms: 0,
                to: String::new(),
            }],
            topics: vec![CatalogTopic {
                uid: 5,
                name: "news".into(),
                created_ms: 3,
                create_seq: 10,
                modified_ms: 4,
                max_msg_size: 4096,
                retention_s: 600,
                filter_type: 2,
                subscriptions: vec![CatalogSubscription {
                    sid: 2,
                    created_ms: 6,
                    modified_ms: 7,
                    def: SubscriptionDef {
                        name: "s".into(),
                        protocol: 2,
                        endpoint: "http://127.0.0.1:1/x".into(),
                        strategy: 1,
                        format: 1,
                        filter_tags: vec![],
                        binding_keys: vec!["order.*".into()],
                        dead_letter_queue: String::new(),
                        secret: [7; 16],
                    },
                }],
            }],
            dedup: vec![CatalogDedup {
                owner: DedupOwner::Queue,
                uid: 3,
                entries: vec![
                    (crate::engine::dedup::digest(b"k1"), Seen { msg_id: 40, time_ms: 9 }),
                    (u128::MAX, Seen { msg_id: 41, time_ms: 10 }),
                ],
            }],
            queues: vec![CatalogQueue {
                uid: 3,
                name: "orders".into(),
                attrs: QueueAttributes::defaults(FlushPolicy::Async),
                created_ms: 1,
                create_seq: 9,
                modified_ms: 2,
                next_seq: 99,
            }],
        }
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let c = sample();
        let bytes = c.encode();
        assert_eq!(Catalog::decode(&bytes), Ok(c));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(Catalog::decode(&bad).is_err(), "flip at {i} not detected");
        }
        for cut in 0..bytes.len() {
            assert!(Catalog::decode(&bytes[..cut]).is_err());
        }
    }

    /// A catalog written before dedup windows existed (version 1: the same
    /// bytes without the dedup section) is still read, with no windows.
    #[test]
    fn a_version_1_catalog_reads_without_windows() {
        let c = Catalog { dedup: Vec::new(), keys: Vec::new(), ..sample() };
        let v2 = c.encode();
        // Drop the trailing (empty) dedup and key counts and the checksum, then restamp.
        let mut v1 = v2[..v2.len() - 12].to_vec();
        v1[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32c::crc32c(&v1);
        v1.put_u32(crc);
        assert_eq!(Catalog::decode(&v1), Ok(c));
    }
}
