//! Authentication keys and their policies: state of shard 0's engine, so
//! they are logged, replayed, caught in catalogs and replicated with shard
//! 0's group like any queue definition. SecretKeys are stored (the broker
//! must compute the same MAC as the client) but never printed: `KeyDef`'s
//! `Debug` shows a checksum in their place.

use std::collections::BTreeMap;

use cmq_protocol::auth::KEYS_MAX;

/// One key. `secrets` holds one SecretKey, or two during a rotation (oldest first).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyDef {
    pub name: String,
    pub secret_id: String,
    pub secrets: Vec<String>,
    pub policy: String,
    pub created_ms: u64,
    pub modified_ms: u64,
}

/// SecretKeys one key may hold at once (the current one and its successor).
pub const KEY_SECRETS_MAX: usize = 2;

const _: () = assert!(KEYS_MAX <= u16::MAX as usize);

impl std::fmt::Debug for KeyDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fingerprint: Vec<u32> = self.secrets.iter().map(|s| crc32c::crc32c(s.as_bytes())).collect();
        f.debug_struct("KeyDef")
            .field("name", &self.name)
            .field("secret_id", &self.secret_id)
            .field("secrets_crc32c", &fingerprint)
            .field("policy", &self.policy)
            .field("created_ms", &self.created_ms)
            .field("modified_ms", &self.modified_ms)
            .finish()
    }
}

/// Every key, by name (a BTreeMap: listings and catalogs come out in one order).
#[derive(Debug, Default, Clone)]
pub struct KeyStore {
    keys: BTreeMap<String, KeyDef>,
    /// Grows with every change applied (shard 0 republishes the table when it moves).
    version: u64,
}

impl KeyStore {
    pub fn get(&self, name: &str) -> Option<&KeyDef> {
        self.keys.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &KeyDef> {
        self.keys.values()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn secret_id_taken(&self, secret_id: &str) -> bool {
        self.keys.values().any(|k| k.secret_id == secret_id)
    }

    /// A store that replaces one at `version`: its own version starts past it.
    pub fn start_after(&mut self, version: u64) {
        self.version = self.version.max(version + 1);
    }

    /// Applies `KeyPut`: the key's whole new state.
    pub fn put(&mut self, key: KeyDef) {
        self.keys.insert(key.name.clone(), key);
        self.version += 1;
    }

    /// Applies `KeyDeleted`.
    pub fn delete(&mut self, name: &str) {
        self.keys.remove(name);
        self.version += 1;
    }
}
