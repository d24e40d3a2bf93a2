//! Inspection (`protocol/src/inspection.rs`): rewind, peek, query, purge.

use cmq_protocol::*;

use super::Handled;
use crate::shard::Shard;

impl Shard {
    pub(in crate::shard) fn rewind_queue(&mut self, now: u64, r: &RewindQueue) -> Handled {
        self.logging(|s| {
            s.engine
                .rewind(&mut s.log, now, &r.queue, r.start_consume_time_ms)
                .map(|rewound| Response::RewindQueue(RewindQueueOk { rewound }))
        })
    }

    pub(in crate::shard) fn peek_messages(&mut self, r: &PeekMessages) -> Handled {
        self.logging(|s| s.engine.peek(&s.log, &r.queue, r.cursor, r.max, r.include_body).map(Response::PeekMessages))
    }

    pub(in crate::shard) fn query_message(&mut self, r: &QueryMessage) -> Handled {
        self.logging(|s| s.engine.query_message(&s.log, &r.queue, r.msg_id).map(Response::QueryMessage))
    }

    pub(in crate::shard) fn purge_queue(&mut self, now: u64, r: &PurgeQueue) -> Handled {
        self.logging(|s| {
            s.engine.purge(&mut s.log, now, &r.queue).map(|purged| Response::PurgeQueue(PurgeQueueOk { purged }))
        })
    }
}
