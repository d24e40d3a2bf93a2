//! One blocking method per broker operation.

use bytes::Bytes;
use cmq_protocol::limits::PEEK_MSGS_MAX;
use cmq_protocol::{
    BatchDeleteMessage, BatchReceiveMessage, BatchSendMessage, CancelRedrive, ChangeMessageVisibility,
    ChangeMessageVisibilityOk, CreateQueue, DeleteMessage, DeleteQueue, EndTransaction, ErrorCode, GetQueueAttributes,
    ItemResult, ListQueues, ListQueuesOk, ListRedrives, MessageStatus, PeekMessages, PeekMessagesOk, Ping, PurgeQueue,
    QueryMessage, QueueAttributesUpdate, QueueInfo, ReceiptHandle, ReceiveMessage, ReceivedMessage, RedriveInfo,
    Request, Response, RewindQueue, SendMessage, SendTransactionMessage, SetQueueAttributes, StartRedrive,
};

use crate::client::Client;
use crate::error::ClientError;
use crate::idempotency::random_keys;

/// Unwraps the expected response variant. The connection already checks
/// that a response's opcode matches its request's, so a mismatch here would
/// be a bug in this crate, reported rather than panicked on. Visible to the
/// modules declared after `ops` in lib.rs (`#[macro_use]`).
macro_rules! expect {
    ($resp:expr, $variant:ident) => {
        match $resp {
            Response::$variant(ok) => Ok(ok),
            other => Err(ClientError::Protocol(format!(
                concat!(stringify!($variant), " answered with {}"),
                other.opcode().name()
            ))),
        }
    };
}

impl Client {
    /// Creates a queue; attributes left `None` take the broker's defaults.
    /// Returns the queue id.
    pub fn create_queue(&mut self, queue: &str, attributes: &QueueAttributesUpdate) -> Result<u64, ClientError> {
        let req = Request::CreateQueue(CreateQueue { queue: queue.to_owned(), attributes: attributes.clone() });
        expect!(self.call(&req)?, CreateQueue).map(|ok| ok.queue_id)
    }

    /// Deletes a queue and every message in it.
    pub fn delete_queue(&mut self, queue: &str) -> Result<(), ClientError> {
        let req = Request::DeleteQueue(DeleteQueue { queue: queue.to_owned() });
        expect!(self.call(&req)?, DeleteQueue).map(drop)
    }

    /// One page of the queues whose name starts with `prefix` and contains
    /// `contains` (either may be empty), in creation order; `limit` 0 asks
    /// for the broker's default page size.
    pub fn list_queues(
        &mut self,
        prefix: &str,
        contains: &str,
        offset: u32,
        limit: u32,
    ) -> Result<ListQueuesOk, ClientError> {
        let req =
            Request::ListQueues(ListQueues { prefix: prefix.to_owned(), contains: contains.to_owned(), offset, limit });
        expect!(self.call(&req)?, ListQueues)
    }

    /// A queue's attributes and live message counts.
    pub fn queue_info(&mut self, queue: &str) -> Result<QueueInfo, ClientError> {
        let req = Request::GetQueueAttributes(GetQueueAttributes { queue: queue.to_owned() });
        expect!(self.call(&req)?, GetQueueAttributes)
    }

    /// Changes the attributes that are `Some`; returns the queue's new state.
    pub fn set_queue_attributes(
        &mut self,
        queue: &str,
        attributes: &QueueAttributesUpdate,
    ) -> Result<QueueInfo, ClientError> {
        let req =
            Request::SetQueueAttributes(SetQueueAttributes { queue: queue.to_owned(), attributes: attributes.clone() });
        expect!(self.call(&req)?, SetQueueAttributes)
    }

    /// Sends one message, receivable after `delay_seconds`; returns its id.
    pub fn send(&mut self, queue: &str, body: impl Into<Bytes>, delay_seconds: u32) -> Result<u64, ClientError> {
        self.send_with(queue, body, &SendOptions { delay_seconds, ..SendOptions::default() })
    }

    /// [`Client::send`] with options. The send carries an idempotency key
    /// (yours, or in a cluster a fresh random one), so in a cluster a send
    /// whose answer was lost, or that met a leader change, is sent again
    /// and stored once. Against a single node a lost answer is
    /// [`ClientError::OutcomeUnknown`]: sending again with the same
    /// [`SendOptions::idempotency_key`] within the broker's dedup window is
    /// then safe, and answers with the first send's id if it was stored.
    pub fn send_with(&mut self, queue: &str, body: impl Into<Bytes>, opts: &SendOptions) -> Result<u64, ClientError> {
        let key = opts.idempotency_key.or_else(|| self.keys_by_default().then(IdempotencyKey::random));
        let req = Request::SendMessage(SendMessage {
            queue: queue.to_owned(),
            delay_seconds: opts.delay_seconds,
            body: body.into(),
            idempotency_key: key.map(|k| k.to_bytes()).unwrap_or_default(),
        });
        expect!(self.call(&req)?, SendMessage).map(|ok| ok.msg_id)
    }

    /// Sends up to `limits::BATCH_MSGS_MAX` messages in one request, all or
    /// none; returns their ids in order. Larger batches are refused by the
    /// broker (BATCH_TOO_LARGE), not split: splitting would lose all-or-none.
    /// In a cluster each message carries a fresh idempotency key, as
    /// [`Client::send_with`].
    pub fn send_batch(&mut self, queue: &str, bodies: &[Bytes], delay_seconds: u32) -> Result<Vec<u64>, ClientError> {
        let req = Request::BatchSendMessage(BatchSendMessage {
            queue: queue.to_owned(),
            delay_seconds,
            bodies: bodies.to_vec(),
            idempotency_keys: if self.keys_by_default() { random_keys(bodies.len()) } else { Vec::new() },
        });
        let ids = expect!(self.call(&req)?, BatchSendMessage)?.msg_ids;
        if ids.len() != bodies.len() {
            return Err(ClientError::Protocol(format!("sent {} messages, got {} ids back", bodies.len(), ids.len())));
        }
        Ok(ids)
    }

    /// Receives one message, long-polling up to `wait` seconds (`None`: the
    /// queue's pollingWaitSeconds). `Ok(None)` when none arrived in time.
    pub fn receive(&mut self, queue: &str, wait: Option<u32>) -> Result<Option<ReceivedMessage>, ClientError> {
        let req = Request::ReceiveMessage(ReceiveMessage { queue: queue.to_owned(), polling_wait_seconds: wait });
        match self.call(&req) {
            Ok(resp) => expect!(resp, ReceiveMessage).map(Some),
            Err(e) if is_no_message(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Receives up to `max` messages (1..=16), answered as soon as at least
    /// one is available; empty when none arrived within the wait.
    pub fn receive_batch(
        &mut self,
        queue: &str,
        max: u16,
        wait: Option<u32>,
    ) -> Result<Vec<ReceivedMessage>, ClientError> {
        let req = Request::BatchReceiveMessage(BatchReceiveMessage {
            queue: queue.to_owned(),
            max_messages: max,
            polling_wait_seconds: wait,
        });
        let messages = match self.call(&req) {
            Ok(resp) => expect!(resp, BatchReceiveMessage)?.messages,
            Err(e) if is_no_message(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if messages.len() > usize::from(max) {
            return Err(ClientError::Protocol(format!("asked for {max} messages, got {}", messages.len())));
        }
        Ok(messages)
    }

    /// Deletes a received message.
    pub fn delete_message(&mut self, queue: &str, receipt_handle: ReceiptHandle) -> Result<(), ClientError> {
        let req = Request::DeleteMessage(DeleteMessage { queue: queue.to_owned(), receipt_handle });
        expect!(self.call(&req)?, DeleteMessage).map(drop)
    }

    /// Deletes up to 16 received messages; one result per handle, in order
    /// (code 0 is success), since each handle can fail on its own.
    pub fn delete_batch(
        &mut self,
        queue: &str,
        receipt_handles: &[ReceiptHandle],
    ) -> Result<Vec<ItemResult>, ClientError> {
        let req = Request::BatchDeleteMessage(BatchDeleteMessage {
            queue: queue.to_owned(),
            receipt_handles: receipt_handles.to_vec(),
        });
        let results = expect!(self.call(&req)?, BatchDeleteMessage)?.results;
        if results.len() != receipt_handles.len() {
            return Err(ClientError::Protocol(format!(
                "deleted {} handles, got {} results back",
                receipt_handles.len(),
                results.len()
            )));
        }
        Ok(results)
    }

    /// Makes a received message invisible for `visibility_timeout` seconds
    /// from now (0 returns it to the queue at once).
    pub fn change_visibility(
        &mut self,
        queue: &str,
        receipt_handle: ReceiptHandle,
        visibility_timeout: u32,
    ) -> Result<ChangeMessageVisibilityOk, ClientError> {
        let req = Request::ChangeMessageVisibility(ChangeMessageVisibility {
            queue: queue.to_owned(),
            receipt_handle,
            visibility_timeout,
        });
        expect!(self.call(&req)?, ChangeMessageVisibility)
    }

    /// Makes the messages enqueued at or after `start_consume_time_ms` (Unix
    /// milliseconds) receivable again in enqueue order, deleted ones still
    /// within the queue's rewindSeconds included. Returns how many deleted
    /// messages came back.
    pub fn rewind_queue(&mut self, queue: &str, start_consume_time_ms: u64) -> Result<u64, ClientError> {
        let req = Request::RewindQueue(RewindQueue { queue: queue.to_owned(), start_consume_time_ms });
        expect!(self.call(&req)?, RewindQueue).map(|ok| ok.rewound)
    }

    /// One page of a non-destructive look at the queue, in enqueue order:
    /// up to `max` (1..=100) messages after `cursor` (0: from the oldest).
    /// Pass `next_cursor` back for the next page; it is 0 after the last.
    /// Bodies are sent only if `include_body`; `body_len` is always set.
    pub fn peek_messages(
        &mut self,
        queue: &str,
        cursor: u64,
        max: u16,
        include_body: bool,
    ) -> Result<PeekMessagesOk, ClientError> {
        let req = Request::PeekMessages(PeekMessages { queue: queue.to_owned(), cursor, max, include_body });
        let page = expect!(self.call(&req)?, PeekMessages)?;
        if page.messages.len() > usize::from(max).min(PEEK_MSGS_MAX) {
            return Err(ClientError::Protocol(format!("peeked at most {max}, got {}", page.messages.len())));
        }
        // A cursor that does not move would make every paging loop spin forever.
        if page.next_cursor != 0 && page.next_cursor == cursor {
            return Err(ClientError::Protocol(format!("peek cursor {cursor} did not advance")));
        }
        Ok(page)
    }

    /// The state of one message by id: where it is now (ready, in flight
    /// until when, deleted, dead-lettered…) and its history. An id the queue
    /// cannot account for (deleted and no longer retained, another queue's,
    /// never issued) is state `Gone`, one answer for all of them.
    pub fn query_message(&mut self, queue: &str, msg_id: u64) -> Result<MessageStatus, ClientError> {
        let req = Request::QueryMessage(QueryMessage { queue: queue.to_owned(), msg_id });
        expect!(self.call(&req)?, QueryMessage)
    }

    /// Drops every message of the queue, durably; returns how many.
    pub fn purge_queue(&mut self, queue: &str) -> Result<u64, ClientError> {
        let req = Request::PurgeQueue(PurgeQueue { queue: queue.to_owned() });
        expect!(self.call(&req)?, PurgeQueue).map(|ok| ok.purged)
    }

    /// Stores a half message for `producer_group`: durable but invisible
    /// until [`Client::end_transaction`] commits it. Returns its msgId. If
    /// neither commit nor rollback arrives within the queue's
    /// firstQueryInterval, the broker asks the group's checker
    /// ([`crate::TransactionChecker`]).
    pub fn send_transaction_message(
        &mut self,
        queue: &str,
        producer_group: &str,
        body: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        let req = Request::SendTransactionMessage(SendTransactionMessage {
            queue: queue.to_owned(),
            producer_group: producer_group.to_owned(),
            body: body.into(),
        });
        expect!(self.call(&req)?, SendTransactionMessage).map(|ok| ok.msg_id)
    }

    /// Commits (the message becomes receivable) or rolls back (it is
    /// discarded) a half message.
    pub fn end_transaction(&mut self, queue: &str, msg_id: u64, commit: bool) -> Result<(), ClientError> {
        let req = Request::EndTransaction(EndTransaction { queue: queue.to_owned(), msg_id, commit });
        expect!(self.call(&req)?, EndTransaction).map(drop)
    }

    /// Starts moving the messages of `dead_letter_queue` back to the queues
    /// they came from (or all to `to`), at most `rate_per_second` a second
    /// (0: as fast as possible), as a broker background task. Returns the
    /// task; its id names it to [`Client::cancel_redrive`].
    pub fn start_redrive(
        &mut self,
        dead_letter_queue: &str,
        to: Option<&str>,
        rate_per_second: u32,
    ) -> Result<RedriveInfo, ClientError> {
        let req = Request::StartRedrive(StartRedrive {
            dead_letter_queue: dead_letter_queue.to_owned(),
            to: to.unwrap_or_default().to_owned(),
            rate_per_second,
        });
        expect!(self.call(&req)?, StartRedrive)
    }

    /// Every redrive task the broker knows (all shards), running or finished.
    pub fn list_redrives(&mut self) -> Result<Vec<RedriveInfo>, ClientError> {
        expect!(self.call(&Request::ListRedrives(ListRedrives {}))?, ListRedrives).map(|ok| ok.redrives)
    }

    /// Stops a redrive task (messages moved so far stay moved); returns its
    /// final state. Sent to the shard that runs it, which its id names.
    pub fn cancel_redrive(&mut self, id: u64) -> Result<RedriveInfo, ClientError> {
        expect!(self.call(&Request::CancelRedrive(CancelRedrive { id }))?, CancelRedrive)
    }

    /// Round trip to the shard serving any open connection.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        expect!(self.call(&Request::Ping(Ping {}))?, Ping).map(drop)
    }
}

/// A key the sender chooses per message, so that a send repeated after a
/// lost answer is stored once (16 bytes on the wire, little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IdempotencyKey(pub u128);

/// Options of [`Client::send_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// Seconds before the message becomes receivable.
    pub delay_seconds: u32,
    /// The send's idempotency key; `None`: a fresh random one. Choose your
    /// own to repeat a send yourself (after [`ClientError::OutcomeUnknown`],
    /// or after a restart of your program): within the broker's dedup
    /// window (5 minutes) the repeat stores nothing and answers with the
    /// first send's message id.
    pub idempotency_key: Option<IdempotencyKey>,
}

fn is_no_message(e: &ClientError) -> bool {
    matches!(e, ClientError::Server { code, .. } if *code == ErrorCode::NO_MESSAGE)
}
