//! The only place the broker reads the wall clock. Each shard owns one, and
//! it never goes backwards: enqueue times stay ordered and leases never
//! stretch if the system clock is stepped back.

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct Clock {
    last_ms: u64,
}

impl Clock {
    /// Unix milliseconds, monotonic for this clock.
    pub fn now_ms(&mut self) -> u64 {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_ms = self.last_ms.max(wall);
        self.last_ms
    }
}
