//! The broker-wide limits on queues and topics (`--max-queues`,
//! `--max-topics`). Every shard creates resources, so the count is an
//! atomic in `Shared`: a create reserves a slot first and gives it back if
//! the engine refuses, so concurrent creates on different shards never pass
//! the limit together and no lock is taken.

use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Arc;

use cmq_protocol::{ErrorCode, Response};

use super::Handled;
use crate::engine::EngineError;
use crate::shard::{Shard, Shared};

/// What is being created.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Queue,
    Topic,
}

impl Kind {
    fn limit(self, shared: &Shared) -> Limit<'_> {
        match self {
            Kind::Queue => Limit {
                count: &shared.queue_count,
                max: shared.cfg.max_queues,
                kind: "queue",
                exists: ErrorCode::QUEUE_ALREADY_EXISTS,
                too_many: ErrorCode::TOO_MANY_QUEUES,
            },
            Kind::Topic => Limit {
                count: &shared.topic_count,
                max: shared.cfg.max_topics,
                kind: "topic",
                exists: ErrorCode::TOPIC_ALREADY_EXISTS,
                too_many: ErrorCode::TOO_MANY_TOPICS,
            },
        }
    }
}

impl Shard {
    /// Creates queue or topic `name` within its broker-wide limit;
    /// `create` gets the broker-wide creation sequence number.
    pub(super) fn create_within(
        &mut self,
        kind: Kind,
        name: &str,
        create: impl FnOnce(&mut Shard, u64) -> Result<Response, EngineError>,
    ) -> Handled {
        self.logging(|s| {
            let shared = Arc::clone(&s.shared);
            let exists = match kind {
                Kind::Queue => s.engine.queue_exists(name),
                Kind::Topic => s.engine.topic_exists(name),
            };
            kind.limit(&shared)
                .create(name, exists, || create(s, shared.next_create_seq.fetch_add(1, Ordering::SeqCst)))
        })
    }
}

/// One kind of resource under a broker-wide limit.
pub(super) struct Limit<'a> {
    pub count: &'a AtomicUsize,
    pub max: usize,
    /// "queue" or "topic", as error messages name it.
    pub kind: &'static str,
    pub exists: ErrorCode,
    pub too_many: ErrorCode,
}

impl Limit<'_> {
    /// Runs `create` in a reserved slot. At the limit, a name that already
    /// exists is refused as existing (what the client would hear below the
    /// limit too), any other as over the limit.
    pub fn create<T>(
        &self,
        name: &str,
        exists: bool,
        create: impl FnOnce() -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        if self.count.fetch_add(1, Ordering::SeqCst) >= self.max {
            self.count.fetch_sub(1, Ordering::SeqCst);
            if exists {
                return Err(EngineError::new(self.exists, format!("{} {name:?} already exists", self.kind)));
            }
            let msg = format!("the broker holds its limit of {} {}s", self.max, self.kind);
            return Err(EngineError::new(self.too_many, msg));
        }
        let created = create();
        if created.is_err() {
            self.count.fetch_sub(1, Ordering::SeqCst);
        }
        created
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(count: &AtomicUsize) -> Limit<'_> {
        Limit {
            count,
            max: 2,
            kind: "queue",
            exists: ErrorCode::QUEUE_ALREADY_EXISTS,
            too_many: ErrorCode::TOO_MANY_QUEUES,
        }
    }

    #[test]
    fn creates_up_to_the_limit_and_refuses_the_next() {
        let count = AtomicUsize::new(0);
        let limit = queues(&count);
        assert_eq!(limit.create("a", false, || Ok(1)).unwrap(), 1);
        assert_eq!(limit.create("b", false, || Ok(2)).unwrap(), 2);
        let e = limit.create("c", false, || Ok(3)).unwrap_err();
        assert_eq!(e.code, ErrorCode::TOO_MANY_QUEUES);
        assert!(e.message.contains("limit of 2 queues"), "{}", e.message);
        assert_eq!(count.load(Ordering::SeqCst), 2, "a refused create holds no slot");
    }

    #[test]
    fn at_the_limit_an_existing_name_is_refused_as_existing() {
        let count = AtomicUsize::new(2);
        let e = queues(&count).create("a", true, || Ok(())).unwrap_err();
        assert_eq!(e.code, ErrorCode::QUEUE_ALREADY_EXISTS);
    }

    #[test]
    fn a_create_the_engine_refuses_gives_its_slot_back() {
        let count = AtomicUsize::new(0);
        let refused: Result<(), _> =
            queues(&count).create("a", true, || Err(EngineError::new(ErrorCode::QUEUE_ALREADY_EXISTS, "exists")));
        assert!(refused.is_err());
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }
}
