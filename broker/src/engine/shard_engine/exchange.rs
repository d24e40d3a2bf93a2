//! Messages crossing the shard's edge: those leaving its queues for queues
//! on other shards or for HTTP endpoints, and the transfers it received.

use crate::engine::transfers::{Inbound, Outbox};

pub(super) struct Exchange {
    /// Messages leaving this shard's queues for other queues.
    pub(super) outbox: Outbox,
    /// Transfers this shard received (duplicate filter).
    pub(super) inbound: Inbound,
    /// The push pool was full: due pushes wait until then (or an outcome).
    pub(super) pushes_paused_until: u64,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange { outbox: Outbox::starting_at(1), inbound: Inbound::default(), pushes_paused_until: 0 }
    }
}
