//! Golden bytes for the catalog: the expected file is written field by
//! field from the layout in the module documentation, not produced by the
//! codec, so catalogs already on disk (and snapshots sent to followers)
//! keep reading.

use super::*;
use crate::engine::codec::gold::Gold;
use cmq_protocol::FlushPolicy;

/// The catalog's bytes end with a crc32c of everything before it.
fn sealed(gold: Gold) -> Vec<u8> {
    let crc = crc32c::crc32c(&gold.0);
    gold.u32(crc).0
}

fn catalog() -> Catalog {
    Catalog {
        log_pos: 0x0102_0304,
        next_uid: 7,
        next_msg_counter: 8,
        next_transfer_id: 9,
        next_redrive: 10,
        next_sid: 11,
        queues: vec![CatalogQueue {
            uid: 3,
            name: "q".into(),
            attrs: QueueAttributes::defaults(FlushPolicy::Sync),
            created_ms: 1,
            create_seq: 2,
            modified_ms: 3,
            next_seq: 4,
        }],
        redrives: vec![CatalogRedrive {
            id: 1,
            uid: 3,
            rate: 5,
            end_seq: 6,
            total: 7,
            moved: 8,
            failed: 9,
            state: RedriveState::Done,
            started_ms: 10,
            finished_ms: 11,
            to: "r".into(),
        }],
        topics: vec![CatalogTopic {
            uid: 4,
            name: "t".into(),
            created_ms: 1,
            create_seq: 2,
            modified_ms: 3,
            max_msg_size: 4,
            retention_s: 5,
            filter_type: 1,
            subscriptions: vec![CatalogSubscription {
                sid: 6,
                created_ms: 7,
                modified_ms: 8,
                def: SubscriptionDef {
                    name: "s".into(),
                    protocol: 1,
                    endpoint: "e".into(),
                    strategy: 2,
                    format: 1,
                    filter_tags: vec!["f".into()],
                    binding_keys: Vec::new(),
                    dead_letter_queue: "d".into(),
                    secret: [3; 16],
                },
            }],
        }],
        dedup: vec![
            CatalogDedup { owner: DedupOwner::Topic, uid: 4, key: 5, seen: Seen { msg_id: 6, time_ms: 7 } },
            CatalogDedup { owner: DedupOwner::Queue, uid: 3, key: 8, seen: Seen { msg_id: 9, time_ms: 7 } },
        ],
        keys: vec![crate::engine::keys::KeyDef {
            name: "k".into(),
            secret_id: "AKID".into(),
            secrets: vec!["x".into()],
            policy: "p".into(),
            created_ms: 1,
            modified_ms: 2,
        }],
    }
}

/// The bytes before the dedup section, for a catalog of `version`.
fn up_to_dedup(version: u32) -> Gold {
    Gold::default()
        .raw(b"cmq-cat\n")
        .u32(version)
        .u64(0x0102_0304)
        .u32(7)
        .u64(8)
        .u64(9)
        .u64(10)
        .u32(11)
        // queues
        .u32(1)
        .u32(3)
        .u64(1)
        .u64(2)
        .u64(3)
        .u64(4)
        .attrs(&QueueAttributes::defaults(FlushPolicy::Sync))
        .str("q")
        // redrives
        .u32(1)
        .u64(1)
        .u32(3)
        .u32(5)
        .u64(6)
        .u64(7)
        .u64(8)
        .u64(9)
        .u8(2)
        .u64(10)
        .u64(11)
        .str("r")
        // topics and their subscriptions
        .u32(1)
        .u32(4)
        .u64(1)
        .u64(2)
        .u64(3)
        .u32(4)
        .u32(5)
        .u8(1)
        .str("t")
        .u16(1)
        .u32(6)
        .u64(7)
        .u64(8)
        .str("s")
        .u8(1)
        .str("e")
        .u8(2)
        .u8(1)
        .u16(1)
        .str("f")
        .u16(0)
        .str("d")
        .raw(&[3; 16])
}

/// The keys section.
fn keys(gold: Gold) -> Gold {
    gold.u32(1).str("k").str("AKID").u16(1).str("x").str("p").u64(1).u64(2)
}

#[test]
fn catalog_bytes_match_the_table() {
    // dedup keys, in the shard's order
    let dedup = up_to_dedup(3).u32(2).u8(2).u32(4).u128(5).u64(6).u64(7).u8(1).u32(3).u128(8).u64(9).u64(7);
    let expected = sealed(keys(dedup));
    assert_eq!(catalog().encode(), expected);
    assert_eq!(Catalog::decode(&expected), Ok(catalog()));
}

/// Version 2 held one list per window; its keys are read back merged by
/// time, each window's in their order.
#[test]
fn a_version_2_catalogs_windows_are_merged_by_time() {
    let windows = up_to_dedup(2)
        .u32(2)
        // queue 3: keys 8 (at 7) and 10 (at 12)
        .u8(1)
        .u32(3)
        .u32(2)
        .u128(8)
        .u64(9)
        .u64(7)
        .u128(10)
        .u64(11)
        .u64(12)
        // topic 4: key 5 (at 7) and 13 (at 8)
        .u8(2)
        .u32(4)
        .u32(2)
        .u128(5)
        .u64(6)
        .u64(7)
        .u128(13)
        .u64(14)
        .u64(8);
    let c = Catalog::decode(&sealed(keys(windows))).expect("a version 2 catalog reads");
    let order: Vec<(DedupOwner, u128, u64)> = c.dedup.iter().map(|d| (d.owner, d.key, d.seen.time_ms)).collect();
    assert_eq!(
        order,
        [(DedupOwner::Queue, 8, 7), (DedupOwner::Topic, 5, 7), (DedupOwner::Topic, 13, 8), (DedupOwner::Queue, 10, 12)]
    );
}
