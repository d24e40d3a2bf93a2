//! Queue administration (`protocol/src/queue_admin.rs`): create, delete,
//! and a queue's attributes.

use std::sync::atomic::Ordering;

use cmq_protocol::*;

use super::limit::Kind;
use super::Handled;
use crate::shard::Shard;

impl Shard {
    /// CreateQueue within the broker-wide queue limit, numbered in broker-wide creation order.
    pub(in crate::shard) fn create_queue(&mut self, now: u64, r: &CreateQueue) -> Handled {
        self.create_within(Kind::Queue, &r.queue, |s, seq| {
            let queue_id = s.engine.create_queue(&mut s.log, now, &r.queue, &r.attributes, seq)?;
            Ok(Response::CreateQueue(CreateQueueOk { queue_id }))
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
