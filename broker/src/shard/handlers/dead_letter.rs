//! Dead letter (`protocol/src/dead_letter.rs`): redrives (ListRedrives asks
//! every shard: `coordination.rs`).

use cmq_protocol::*;

use super::Handled;
use crate::shard::Shard;

impl Shard {
    pub(in crate::shard) fn start_redrive(&mut self, now: u64, r: &StartRedrive) -> Handled {
        self.logging(|s| {
            s.engine
                .start_redrive(&mut s.log, now, &r.dead_letter_queue, &r.to, r.rate_per_second)
                .map(Response::StartRedrive)
        })
    }

    pub(in crate::shard) fn cancel_redrive(&mut self, now: u64, r: &CancelRedrive) -> Handled {
        self.logging(|s| s.engine.cancel_redrive(&mut s.log, now, r.id).map(Response::CancelRedrive))
    }
}
