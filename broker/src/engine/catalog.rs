//! A snapshot of a shard's queue definitions and counters, taken at a log
//! position. Replay loads it first and then skips the queue-management
//! records before that position, so the segments holding those records can
//! be deleted once no live message needs them either.
//!
//! ```text
//! magic b"cmq-cat\n" | version u32 = 3 | log_pos u64 | next_uid u32 | next_msg_counter u64
//! | next_transfer_id u64 | next_redrive u64 | next_sid u32
//! | count u32 | count × (uid u32, created_ms u64, create_seq u64, modified_ms u64, next_seq u64, attrs, name str16)
//! | count u32 | count × redrive (id u64, uid u32, rate u32, end_seq u64, total u64, moved u64,
//!                               failed u64, state u8, started_ms u64, finished_ms u64, to str16)
//! | count u32 | count × topic (uid u32, created_ms u64, create_seq u64, modified_ms u64,
//!                            max_msg_size u32, retention_s u32, filter_type u8, name str16,
//!                            count u16 × subscription (sid u32, created_ms u64, modified_ms u64, name str16,
//!                            protocol u8, endpoint str16, strategy u8, format u8, [filter tag str16],
//!                            [binding key str16], dead_letter_queue str16, secret 16 bytes))
//! | count u32 | count × dedup key (owner u8: 1 queue, 2 topic, uid u32,
//!                                key digest u128, msg_id u64, time_ms u64)   (the shard's order)
//! | count u32 | count × key (name str16, secret_id str16, count u16 × secret_key str16, policy str16,
//!                          created_ms u64, modified_ms u64)          (shard 0 only)
//! | crc32c u32 of everything before it
//! ```
//!
//! Version 2 added the dedup windows and the keys; a version 1 catalog has
//! neither and is still read. The dedup keys (`dedup.rs`: every queue's
//! and topic's recent idempotency keys, in the shard's order, oldest
//! first) are the keys of the `Enqueued` and `Published` records before
//! `log_pos`, so the segments holding those records can go and a snapshot
//! carries the windows to a follower in the order that decides which key
//! goes next. Version 3 made that one list in the shard's order; version 2
//! had one list per window (count u32 × (owner u8, uid u32, count u32 ×
//! (key u128, msg_id u64, time_ms u64)), each oldest first), read back by
//! merging them by time (the order within one millisecond across windows
//! is not recorded there: replicas that upgrade from version 2 catalogs
//! may evict same-millisecond keys in different orders until those expire).

use cmq_protocol::auth::KEYS_MAX;
use cmq_protocol::limits::NAME_CHARS_MAX;
use cmq_protocol::{DecodeError, QueueAttributes, RedriveState};

use crate::engine::codec::{get_list32, put_list32, LogReader, LogValue, Out, TooLong};
pub use crate::engine::dedup::DedupOwner;
use crate::engine::dedup::{KeyDigest, Seen, IDEMPOTENCY_KEYS_PER_SHARD_MAX};
use crate::engine::keys::KeyDef;
use crate::engine::record::SubscriptionDef;
use crate::log_struct;

const MAGIC: &[u8; 8] = b"cmq-cat\n";
const VERSION: u32 = 3;

/// The oldest catalog version this build reads (1: no keys section).
const VERSION_MIN: u32 = 1;

/// Queues one catalog may hold (a shard's queue limit is far below this).
const CATALOG_QUEUES_MAX: u32 = 10_000_000;

/// Subscriptions one topic in a catalog may hold: their count is a u16.
const CATALOG_SUBSCRIPTIONS_MAX: usize = u16::MAX as usize;

// Every count and length the catalog encodes fits its field: u32 counts of
// queues and topics (bounded by the broker's limits), a u16 count of a
// topic's subscriptions, u16 lengths of names, URLs and tags (validated
// when created).
const _: () = assert!(crate::config::QUEUES_MAX <= CATALOG_QUEUES_MAX as usize);
const _: () = assert!(crate::config::TOPICS_MAX <= u32::MAX as usize);
const _: () = assert!(crate::engine::topic::SUBSCRIPTIONS_PER_TOPIC_MAX <= CATALOG_SUBSCRIPTIONS_MAX);
const _: () = assert!(cmq_protocol::limits::URL_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(NAME_CHARS_MAX <= u16::MAX as usize);

log_struct! {
    pub struct CatalogQueue {
        pub uid: u32,
        pub created_ms: u64,
        pub create_seq: u64,
        pub modified_ms: u64,
        pub next_seq: u64,
        pub attrs: QueueAttributes,
        pub name: String = str(NAME_CHARS_MAX),
    }
}

log_struct! {
    /// A redrive task's bookkeeping (its progress is not in any message record
    /// once the records are compacted away).
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
        pub to: String = str(NAME_CHARS_MAX),
    }
}

log_struct! {
    pub struct CatalogSubscription {
        pub sid: u32,
        pub created_ms: u64,
        pub modified_ms: u64,
        pub def: SubscriptionDef,
    }
}

log_struct! {
    pub struct CatalogTopic {
        pub uid: u32,
        pub created_ms: u64,
        pub create_seq: u64,
        pub modified_ms: u64,
        pub max_msg_size: u32,
        pub retention_s: u32,
        pub filter_type: u8,
        pub name: String = str(NAME_CHARS_MAX),
        pub subscriptions: Vec<CatalogSubscription> = list(CATALOG_SUBSCRIPTIONS_MAX),
    }
}

/// One byte: 1 a queue, 2 a topic.
impl LogValue for DedupOwner {
    const MIN_BYTES: usize = 1;
    fn put<'r>(&'r self, out: &mut Out<'_, 'r>, _: &'static str) -> Result<(), TooLong> {
        out.put_u8(*self as u8);
        Ok(())
    }
    fn get(r: &mut LogReader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        match r.u8(field)? {
            1 => Ok(DedupOwner::Queue),
            2 => Ok(DedupOwner::Topic),
            _ => Err(DecodeError::Invalid(field)),
        }
    }
}

/// A key's entry in a dedup window: the message id it was answered with
/// and when.
impl LogValue for Seen {
    const MIN_BYTES: usize = 16;
    fn put<'r>(&'r self, out: &mut Out<'_, 'r>, field: &'static str) -> Result<(), TooLong> {
        self.msg_id.put(out, field)?;
        self.time_ms.put(out, field)
    }
    fn get(r: &mut LogReader<'_>, _: &'static str) -> Result<Self, DecodeError> {
        Ok(Seen { msg_id: r.u64("msg_id")?, time_ms: r.u64("time_ms")? })
    }
}

log_struct! {
    /// One key of a queue's or topic's dedup window.
    pub struct CatalogDedup {
        pub owner: DedupOwner,
        pub uid: u32,
        pub key: KeyDigest,
        pub seen: Seen,
    }
}

/// A version 2 catalog's keys per window (the limit of that time).
const V2_KEYS_PER_WINDOW_MAX: usize = 65_536;

log_struct! {
    /// One queue's or topic's dedup window in a version 2 catalog, oldest first.
    pub struct CatalogDedupV2 {
        pub owner: DedupOwner,
        pub uid: u32,
        pub entries: Vec<(KeyDigest, Seen)> = list32(V2_KEYS_PER_WINDOW_MAX),
    }
}

/// A version 2 catalog's windows as one list: merged by time, each
/// window's keys in their order (a stable sort).
fn merge_v2_windows(windows: Vec<CatalogDedupV2>) -> Vec<CatalogDedup> {
    let mut keys: Vec<CatalogDedup> = windows
        .into_iter()
        .flat_map(|w| {
            w.entries.into_iter().map(move |(key, seen)| CatalogDedup { owner: w.owner, uid: w.uid, key, seen })
        })
        .collect();
    keys.sort_by_key(|k| k.seen.time_ms);
    keys
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
    /// The dedup windows' keys, in the shard's order, oldest first.
    pub dedup: Vec<CatalogDedup>,
    /// Authentication keys (shard 0), in name order.
    pub keys: Vec<KeyDef>,
}

impl Catalog {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(64 + self.queues.len() * 96);
        let mut out = Out::new(&mut w);
        // Every count and length is within its field's width by the
        // broker's limits (the assertions above): this cannot fail.
        if let Err(TooLong(field)) = self.put(&mut out) {
            unreachable!("catalog field {field} is past its width, which the broker's limits rule out");
        }
        let crc = crc32c::crc32c(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        w
    }

    fn put<'r>(&'r self, out: &mut Out<'_, 'r>) -> Result<(), TooLong> {
        out.buf().extend_from_slice(MAGIC);
        VERSION.put(out, "version")?;
        self.log_pos.put(out, "log_pos")?;
        self.next_uid.put(out, "next_uid")?;
        self.next_msg_counter.put(out, "next_msg_counter")?;
        self.next_transfer_id.put(out, "next_transfer_id")?;
        self.next_redrive.put(out, "next_redrive")?;
        self.next_sid.put(out, "next_sid")?;
        put_list32(out, &self.queues, "queues")?;
        put_list32(out, &self.redrives, "redrives")?;
        put_list32(out, &self.topics, "topics")?;
        put_list32(out, &self.dedup, "dedup keys")?;
        put_list32(out, &self.keys, "keys")
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
        let mut r = LogReader::over(&body[MAGIC.len()..]);
        let version = r.u32("version").map_err(|e| e.to_string())?;
        if !(VERSION_MIN..=VERSION).contains(&version) {
            return Err(format!("catalog format version {version}, this build reads {VERSION_MIN} to {VERSION}"));
        }
        Catalog::get(&mut r, version).map_err(|e| format!("catalog: {e}"))
    }

    /// Everything after the version.
    fn get(r: &mut LogReader<'_>, version: u32) -> Result<Catalog, DecodeError> {
        let queues_max = CATALOG_QUEUES_MAX as usize;
        let mut c = Catalog {
            log_pos: r.u64("log_pos")?,
            next_uid: r.u32("next_uid")?,
            next_msg_counter: r.u64("next_msg_counter")?,
            next_transfer_id: r.u64("next_transfer_id")?,
            next_redrive: r.u64("next_redrive")?,
            next_sid: r.u32("next_sid")?,
            queues: get_list32(r, "queues", queues_max)?,
            redrives: get_list32(r, "redrives", queues_max)?,
            topics: get_list32(r, "topics", queues_max)?,
            dedup: Vec::new(),
            keys: Vec::new(),
        };
        // Version 1 ends here: no dedup windows, no keys.
        if version == 2 {
            c.dedup = merge_v2_windows(get_list32(r, "dedup windows", 2 * queues_max)?);
        } else if version >= 3 {
            c.dedup = get_list32(r, "dedup keys", IDEMPOTENCY_KEYS_PER_SHARD_MAX)?;
        }
        if version >= 2 {
            c.keys = get_list32(r, "keys", KEYS_MAX)?;
        }
        r.finish()?;
        Ok(c)
    }
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
            dedup: vec![
                CatalogDedup {
                    owner: DedupOwner::Queue,
                    uid: 3,
                    key: crate::engine::dedup::digest(b"k1"),
                    seen: Seen { msg_id: 40, time_ms: 9 },
                },
                CatalogDedup {
                    owner: DedupOwner::Topic,
                    uid: 5,
                    key: u128::MAX,
                    seen: Seen { msg_id: 41, time_ms: 10 },
                },
            ],
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
        v1.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(Catalog::decode(&v1), Ok(c));
    }
}
