//! Queue administration (`protocol/src/queue_admin.rs`): create, delete,
//! and a queue's attributes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cmq_protocol::*;

use super::limit::Limit;
use super::Handled;
use crate::shard::Shard;

impl Shard {
    /// CreateQueue within the broker-wide queue limit, numbered in broker-wide creation order.
    pub(in crate::shard) fn create_queue(&mut self, now: u64, r: &CreateQueue) -> Handled {
        self.logging(|s| {
            let shared = Arc::clone(&s.shared);
            let limit = Limit {
                count: &shared.queue_count,
                max: shared.cfg.max_queues,
                kind: "queue",
                exists: ErrorCode::QUEUE_ALREADY_EXISTS,
                too_many: ErrorCode::TOO_MANY_QUEUES,
            };
            let exists = s.engine.queue_exists(&r.queue);
            let created = limit.create(&r.queue, exists, || {
                let seq = shared.next_create_seq.fetch_add(1, Ordering::SeqCst);
                s.engine.create_queue(&mut s.log, now, &r.queue, &r.attributes, seq)
            });
            created.map(|queue_id| Response::CreateQueue(CreateQueueOk { queue_id }))
        })
    }

    /// DeleteQueue; the long polls that waited on the queue end after it is answered.
    pub(in crate::shard) fn delete_queue(&mut self, now: u64, r: &DeleteQueue) -> Handled {
        let mut ids = Vec::new();
        let handled = self.logging(|s| {
            ids = s.engine.delete_queue(&mut s.log, now, &r.queue)?;
            s.shared.queue_count.fetch_sub(1, Ordering::SeqCst);
            Ok(Response::DeleteQueue(Empty {}))
        });
        match handled {
            Handled::Reply(Ok(_), dep) => {
                Handled::QueueDeleted { dep, orphans: ids, message: format!("queue {:?} was deleted", r.queue) }
            }
            other => other,
        }
    }

    pub(in crate::shard) fn get_queue_attributes(&mut self, now: u64, r: &GetQueueAttributes) -> Handled {
        self.logging(|s| s.engine.queue_info(now, &r.queue).map(Response::GetQueueAttributes))
    }

    pub(in crate::shard) fn set_queue_attributes(&mut self, now: u64, r: &SetQueueAttributes) -> Handled {
        self.logging(|s| {
            s.engine.set_queue_attributes(&mut s.log, now, &r.queue, &r.attributes).map(Response::SetQueueAttributes)
        })
    }
}
