//! One blocking method per broker operation.

use bytes::Bytes;
use cmq_protocol::{
    BatchDeleteMessage, BatchReceiveMessage, BatchSendMessage, ChangeMessageVisibility, ChangeMessageVisibilityOk,
    CreateQueue, DeleteMessage, DeleteQueue, ErrorCode, GetQueueAttributes, ItemResult, ListQueues, ListQueuesOk, Ping,
    QueueAttributesUpdate, QueueInfo, ReceiptHandle, ReceiveMessage, ReceivedMessage, Request, Response, SendMessage,
    SetQueueAttributes,
};

use crate::client::Client;
use crate::error::ClientError;

/// Unwraps the expected response variant. The connection already checks
/// that a response's opcode matches its request's, so a mismatch here would
/// be a bug in this crate, reported rather than panicked on.
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
        let req = Request::SendMessage(SendMessage { queue: queue.to_owned(), delay_seconds, body: body.into() });
        expect!(self.call(&req)?, SendMessage).map(|ok| ok.msg_id)
    }

    /// Sends up to `limits::BATCH_MSGS_MAX` messages in one request, all or
    /// none; returns their ids in order. Larger batches are refused by the
    /// broker (BATCH_TOO_LARGE), not split: splitting would lose all-or-none.
    pub fn send_batch(&mut self, queue: &str, bodies: &[Bytes], delay_seconds: u32) -> Result<Vec<u64>, ClientError> {
        let req = Request::BatchSendMessage(BatchSendMessage {
            queue: queue.to_owned(),
            delay_seconds,
            bodies: bodies.to_vec(),
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

    /// Round trip to the shard serving any open connection.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        expect!(self.call(&Request::Ping(Ping {}))?, Ping).map(drop)
    }
}

fn is_no_message(e: &ClientError) -> bool {
    matches!(e, ClientError::Server { code, .. } if *code == ErrorCode::NO_MESSAGE)
}
