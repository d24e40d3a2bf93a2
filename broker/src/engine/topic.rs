//! One topic and its subscriptions: definitions and delivery counters.
//! Deliveries themselves are outbox entries (see `transfers.rs`): one per
//! (published message, matching subscription).

use cmq_protocol::{FilterType, NotifyContentFormat, NotifyStrategy, SubscriptionProtocol};

use crate::engine::dedup::DedupWindow;
use crate::engine::record::SubscriptionDef;

/// Subscriptions one topic may have.
pub const SUBSCRIPTIONS_PER_TOPIC_MAX: usize = 100;

#[derive(Debug, Clone)]
pub struct Subscription {
    pub sid: u32,
    pub def: SubscriptionDef,
    pub created_ms: u64,
    pub modified_ms: u64,
    /// Deliveries not yet confirmed.
    pub pending: u64,
    /// Since the broker started.
    pub delivered: u64,
    pub dropped: u64,
}

impl Subscription {
    pub fn protocol(&self) -> SubscriptionProtocol {
        SubscriptionProtocol::from_u8(self.def.protocol).unwrap_or(SubscriptionProtocol::Http)
    }
    pub fn strategy(&self) -> NotifyStrategy {
        NotifyStrategy::from_u8(self.def.strategy).unwrap_or_default()
    }
    pub fn format(&self) -> NotifyContentFormat {
        NotifyContentFormat::from_u8(self.def.format).unwrap_or_default()
    }
    pub fn is_queue(&self) -> bool {
        self.protocol() == SubscriptionProtocol::Queue
    }
}

#[derive(Debug, Clone)]
pub struct Topic {
    pub uid: u32,
    pub name: String,
    pub max_msg_size: u32,
    pub retention_s: u32,
    pub filter_type: FilterType,
    pub created_ms: u64,
    pub modified_ms: u64,
    pub create_seq: u64,
    pub subscriptions: Vec<Subscription>,
    /// Recent idempotency keys of publishes (`dedup.rs`).
    pub dedup: DedupWindow,
}

impl Topic {
    pub fn subscription(&self, name: &str) -> Option<&Subscription> {
        self.subscriptions.iter().find(|s| s.def.name == name)
    }

    pub fn subscription_by_sid(&mut self, sid: u32) -> Option<&mut Subscription> {
        self.subscriptions.iter_mut().find(|s| s.sid == sid)
    }

    pub fn pending(&self) -> u64 {
        self.subscriptions.iter().map(|s| s.pending).sum()
    }
}
