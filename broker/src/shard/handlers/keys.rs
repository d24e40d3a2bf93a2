//! Keys and policies (`protocol/src/auth.rs`), kept by shard 0's engine
//! (authentication itself is `authn.rs`).

use cmq_protocol::*;

use super::Handled;
use crate::engine::EngineError;
use crate::shard::Shard;

fn no_random(e: impl std::fmt::Display) -> EngineError {
    EngineError::new(ErrorCode::INTERNAL, format!("no random key available: {e}"))
}

impl Shard {
    pub(in crate::shard) fn create_key(&mut self, now: u64, r: &CreateKey) -> Handled {
        self.logging(|s| {
            crate::auth::secrets::new_key_pair()
                .map_err(no_random)
                .and_then(|(sid, key)| s.engine.create_key(&mut s.log, now, r, sid, key))
                .map(Response::CreateKey)
        })
    }

    pub(in crate::shard) fn rotate_key(&mut self, now: u64, r: &RotateKey) -> Handled {
        self.logging(|s| {
            crate::auth::secrets::new_secret_key()
                .map_err(no_random)
                .and_then(|key| s.engine.rotate_key(&mut s.log, now, &r.name, key))
                .map(Response::RotateKey)
        })
    }

    pub(in crate::shard) fn delete_key(&mut self, now: u64, r: &DeleteKey) -> Handled {
        self.logging(|s| s.engine.delete_key(&mut s.log, now, r).map(|()| Response::DeleteKey(Empty {})))
    }

    pub(in crate::shard) fn set_policy(&mut self, now: u64, r: &SetPolicy) -> Handled {
        self.logging(|s| s.engine.set_policy(&mut s.log, now, r).map(|()| Response::SetPolicy(Empty {})))
    }

    pub(in crate::shard) fn get_policy(&mut self, r: &GetPolicy) -> Handled {
        self.logging(|s| s.engine.get_policy(&r.name).map(Response::GetPolicy))
    }
}
