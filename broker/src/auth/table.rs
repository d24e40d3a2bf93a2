//! The keys every shard authenticates against, published by shard 0 (whose
//! log holds them) and read by every shard.
//!
//! Shard 0 builds a new immutable [`KeyTable`] whenever a key record is
//! applied (live, at replay, or from its Raft group) and swaps it in under a
//! lock, then bumps `version`. A connection caches its key and decisions
//! with the version they were made at; comparing one atomic per request is
//! all the hot path pays until something changes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::policy::Policy;
use crate::engine::keys::KeyDef;

/// One key as the authenticator needs it.
pub struct Principal {
    pub name: String,
    pub secret_id: String,
    /// One SecretKey, or two during a rotation (oldest first).
    pub secrets: Vec<Vec<u8>>,
    pub policy: Policy,
    pub created_ms: u64,
    pub modified_ms: u64,
}

impl std::fmt::Debug for Principal {
    // Never prints a SecretKey.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal").field("name", &self.name).field("secret_id", &self.secret_id).finish()
    }
}

/// Every key, by SecretId.
#[derive(Default, Debug)]
pub struct KeyTable {
    pub by_id: BTreeMap<String, Arc<Principal>>,
}

impl KeyTable {
    /// The table for these key definitions. A stored policy that no longer
    /// parses (it was checked when set) allows nothing.
    pub fn build<'a>(keys: impl Iterator<Item = &'a KeyDef>) -> KeyTable {
        let by_id = keys
            .map(|k| {
                let policy = Policy::parse(&k.policy).unwrap_or_else(|e| {
                    log::error!("key {:?}: stored policy does not parse ({e}); it allows nothing", k.name);
                    Policy::default()
                });
                let secrets = k.secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
                let p = Principal {
                    name: k.name.clone(),
                    secret_id: k.secret_id.clone(),
                    secrets,
                    policy,
                    created_ms: k.created_ms,
                    modified_ms: k.modified_ms,
                };
                (k.secret_id.clone(), Arc::new(p))
            })
            .collect();
        KeyTable { by_id }
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The published table and its version.
#[derive(Default)]
pub struct AuthShared {
    version: AtomicU64,
    table: RwLock<Arc<KeyTable>>,
}

impl AuthShared {
    /// The version of the current table (one relaxed load: the hot path).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The current table.
    pub fn table(&self) -> Arc<KeyTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the table (shard 0 only) and announces it.
    pub fn publish(&self, table: KeyTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}
