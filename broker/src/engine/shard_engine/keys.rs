//! Key management (shard 0 only: requests route there). Every change logs
//! one `KeyPut` (the key's whole new state) or `KeyDeleted` record, synced
//! before it is answered; SecretKeys come from the caller (the shard draws
//! them from the OS CSPRNG), so the engine stays deterministic.

use cmq_protocol::auth::KEYS_MAX;
use cmq_protocol::names::validate_name;
use cmq_protocol::*;

use super::ShardEngine;
use crate::auth::policy::Policy;
use crate::engine::error::EngineError;
use crate::engine::keys::{KeyDef, KeyStore, KEY_SECRETS_MAX};
use crate::engine::record::{KeyDeleted, KeyPut, Record};
use crate::engine::record_log::{Durability, Log};

fn not_found(name: &str) -> EngineError {
    EngineError::new(ErrorCode::KEY_NOT_FOUND, format!("key {name:?} does not exist"))
}

impl ShardEngine {
    pub fn keys(&self) -> &KeyStore {
        &self.keys_store
    }

    fn key(&self, name: &str) -> Result<&KeyDef, EngineError> {
        self.keys_store.get(name).ok_or_else(|| not_found(name))
    }

    fn put_key(&mut self, log: &mut impl Log, now_ms: u64, key: KeyDef) -> Result<(), EngineError> {
        let rec = Record::KeyPut(KeyPut { time_ms: now_ms, key: key.clone() });
        self.log_record(log, &rec, Durability::Synced)?;
        self.keys_store.put(key);
        Ok(())
    }

    /// Creates key `name` with the given (fresh, random) SecretId and SecretKey.
    pub fn create_key(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        r: &CreateKey,
        secret_id: String,
        secret_key: String,
    ) -> Result<KeySecret, EngineError> {
        validate_name("keyName", &r.name).map_err(EngineError::invalid)?;
        Policy::parse(&r.policy).map_err(EngineError::invalid)?;
        if self.keys_store.get(&r.name).is_some() {
            return Err(EngineError::new(ErrorCode::KEY_ALREADY_EXISTS, format!("key {:?} already exists", r.name)));
        }
        if self.keys_store.len() >= KEYS_MAX {
            return Err(EngineError::invalid(format!("the broker holds its limit of {KEYS_MAX} keys")));
        }
        if self.keys_store.secret_id_taken(&secret_id) {
            // 190 random bits collided: the CSPRNG is broken; refuse rather than alias two keys.
            return Err(EngineError::new(ErrorCode::INTERNAL, "generated SecretId is taken; retry"));
        }
        let key = KeyDef {
            name: r.name.clone(),
            secret_id: secret_id.clone(),
            secrets: vec![secret_key.clone()],
            policy: r.policy.clone(),
            created_ms: now_ms,
            modified_ms: now_ms,
        };
        self.put_key(log, now_ms, key)?;
        Ok(KeySecret { name: r.name.clone(), secret_id, secret_key })
    }

    /// Adds `secret_key` to key `name`, valid alongside its current one.
    pub fn rotate_key(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        name: &str,
        secret_key: String,
    ) -> Result<KeySecret, EngineError> {
        let mut key = self.key(name)?.clone();
        if key.secrets.len() >= KEY_SECRETS_MAX {
            return Err(EngineError::invalid(format!(
                "key {name:?} is being rotated already: delete its old SecretKey first (key delete --old-secret)"
            )));
        }
        key.secrets.push(secret_key.clone());
        key.modified_ms = now_ms;
        let secret_id = key.secret_id.clone();
        self.put_key(log, now_ms, key)?;
        Ok(KeySecret { name: name.to_owned(), secret_id, secret_key })
    }

    /// Deletes key `name`, or (`old_secret_only`) the older SecretKey of a rotated key.
    pub fn delete_key(&mut self, log: &mut impl Log, now_ms: u64, r: &DeleteKey) -> Result<(), EngineError> {
        let mut key = self.key(&r.name)?.clone();
        if r.old_secret_only {
            if key.secrets.len() < 2 {
                return Err(EngineError::invalid(format!("key {:?} has one SecretKey: nothing to retire", r.name)));
            }
            key.secrets.remove(0);
            key.modified_ms = now_ms;
            return self.put_key(log, now_ms, key);
        }
        let rec = Record::KeyDeleted(KeyDeleted { time_ms: now_ms, name: r.name.clone() });
        self.log_record(log, &rec, Durability::Synced)?;
        self.keys_store.delete(&r.name);
        Ok(())
    }

    pub fn set_policy(&mut self, log: &mut impl Log, now_ms: u64, r: &SetPolicy) -> Result<(), EngineError> {
        Policy::parse(&r.policy).map_err(EngineError::invalid)?;
        let mut key = self.key(&r.name)?.clone();
        key.policy = r.policy.clone();
        key.modified_ms = now_ms;
        self.put_key(log, now_ms, key)
    }

    pub fn get_policy(&self, name: &str) -> Result<GetPolicyOk, EngineError> {
        Ok(GetPolicyOk { policy: self.key(name)?.policy.clone() })
    }

    /// Every key `visible` lets through, in name order (never a SecretKey).
    pub fn list_keys(&self, visible: impl Fn(&str) -> bool) -> ListKeysOk {
        let keys = self
            .keys_store
            .iter()
            .filter(|k| visible(&k.name))
            .map(|k| KeySummary {
                name: k.name.clone(),
                secret_id: k.secret_id.clone(),
                secrets: k.secrets.len() as u8,
                created_ms: k.created_ms,
                modified_ms: k.modified_ms,
            })
            .collect();
        ListKeysOk { keys }
    }
}
