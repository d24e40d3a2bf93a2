//! Runs one subcommand against the broker.

use std::collections::VecDeque;
use std::io::{self, BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use cmq_client::protocol::limits::BATCH_MSGS_MAX;
use cmq_client::{BatchSendMessage, Client, ClientError, ReceivedMessage, Request, Response, Ticket};
use serde::Serialize;
use serde_json::json;

use crate::args::{Cli, Command};
use crate::render::{body_text, queue_info_table, secs, time_cell, MessageJson, QueueInfoJson, QueueListJson};

/// send-batch keeps this many requests in flight: enough to hide the round
/// trip (pipelining is worth ~100x on loopback), few enough to bound memory.
const SEND_WINDOW_REQUESTS: usize = 32;

/// ... and at most this many body bytes, so that neither side ever blocks
/// writing while the other is blocked writing too (socket buffers are a few MiB).
const SEND_WINDOW_BYTES: usize = 2 * 1024 * 1024;

/// Where results go: one JSON document or human text on stdout.
struct Out {
    json: bool,
    stdout: io::StdoutLock<'static>,
}

impl Out {
    fn json(&mut self, value: &impl Serialize) -> Result<()> {
        serde_json::to_writer(&mut self.stdout, value).context("writing output")?;
        writeln!(self.stdout).context("writing output")
    }

    fn line(&mut self, text: impl std::fmt::Display) -> Result<()> {
        writeln!(self.stdout, "{text}").context("writing output")
    }

    /// Commands with nothing to report print `{}` in JSON mode, so a JSON
    /// consumer always gets a document.
    fn done(&mut self) -> Result<()> {
        if self.json {
            self.json(&json!({}))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.stdout.flush().context("writing output")
    }
}

pub fn run(cli: &Cli) -> Result<()> {
    let timeout = (cli.timeout > 0).then(|| Duration::from_secs(cli.timeout));
    let mut client = Client::connect_with_timeout(cli.server.as_str(), timeout)
        .with_context(|| format!("cannot connect to {}", cli.server))?;
    let mut out = Out { json: cli.json, stdout: io::stdout().lock() };
    let c = &mut client;
    match &cli.command {
        Command::CreateQueue { name, attrs } => {
            let id = c.create_queue(name, &attrs.to_update())?;
            if out.json {
                out.json(&json!({ "queueId": id.to_string() }))?;
            } else {
                out.line(id)?;
            }
        }
        Command::DeleteQueue { name } => {
            c.delete_queue(name)?;
            out.done()?;
        }
        Command::ListQueues { prefix, contains, offset, limit } => {
            let page = c.list_queues(prefix, contains, *offset, *limit)?;
            if out.json {
                out.json(&QueueListJson::from(&page))?;
            } else {
                for q in &page.queues {
                    out.line(&q.queue)?;
                }
                let shown_to = u64::from(*offset) + page.queues.len() as u64;
                if shown_to < u64::from(page.total) {
                    eprintln!(
                        "{} of {} matching queues shown; --offset {shown_to} for more",
                        page.queues.len(),
                        page.total
                    );
                }
            }
        }
        Command::QueueInfo { name } => {
            let info = c.queue_info(name)?;
            print_queue_info(&mut out, &info)?;
        }
        Command::SetQueue { name, attrs } => {
            let info = c.set_queue_attributes(name, &attrs.to_update())?;
            print_queue_info(&mut out, &info)?;
        }
        Command::Send { name, body, delay } => {
            let id = c.send(name, body.clone(), *delay)?;
            if out.json {
                out.json(&json!({ "msgId": id.to_string() }))?;
            } else {
                out.line(id)?;
            }
        }
        Command::SendBatch { name, delay } => send_batch(c, &mut out, name, *delay)?,
        Command::Receive { name, wait, max, delete } => receive(c, &mut out, name, *wait, *max, *delete)?,
        Command::Delete { name, receipt } => {
            c.delete_message(name, *receipt)?;
            out.done()?;
        }
        Command::ChangeVisibility { name, receipt, seconds } => {
            let ok = c.change_visibility(name, *receipt, *seconds)?;
            if out.json {
                out.json(&json!({
                    "receiptHandle": ok.receipt_handle.to_string(),
                    "nextVisibleTime": secs(ok.next_visible_time_ms),
                }))?;
            } else {
                out.line(time_cell(ok.next_visible_time_ms))?;
            }
        }
        Command::Ping => {
            let started = Instant::now();
            c.ping()?;
            let rtt_us = started.elapsed().as_micros();
            let info = c.server_info();
            if out.json {
                out.json(&json!({
                    "server": info.server,
                    "version": info.version,
                    "shardCount": info.shard_count,
                    "shardId": info.shard_id,
                    "rttMicros": rtt_us,
                }))?;
            } else {
                out.line(format_args!(
                    "pong from {} (protocol v{}, shard {} of {}) in {rtt_us} µs",
                    info.server, info.version, info.shard_id, info.shard_count
                ))?;
            }
        }
    }
    out.flush()
}

fn print_queue_info(out: &mut Out, info: &cmq_client::QueueInfo) -> Result<()> {
    if out.json {
        out.json(&QueueInfoJson::from(info))
    } else {
        write!(out.stdout, "{}", queue_info_table(info)).context("writing output")
    }
}

/// Sends stdin, one message per line, keeping a window of batch requests in
/// flight. Ids are printed in input order as batches complete, so after a
/// failure the output covers exactly the lines known to be sent.
fn send_batch(client: &mut Client, out: &mut Out, queue: &str, delay_seconds: u32) -> Result<()> {
    let mut stdin = io::stdin().lock();
    let mut window = SendWindow::default();
    let mut batch: Vec<Bytes> = Vec::with_capacity(BATCH_MSGS_MAX);
    let mut line = Vec::new();
    let result = (|| -> Result<()> {
        loop {
            line.clear();
            if stdin.read_until(b'\n', &mut line).context("reading stdin")? == 0 {
                break;
            }
            let body = line.strip_suffix(b"\n").unwrap_or(&line);
            let body = body.strip_suffix(b"\r").unwrap_or(body);
            if body.is_empty() {
                continue;
            }
            batch.push(Bytes::copy_from_slice(body));
            if batch.len() == BATCH_MSGS_MAX {
                window.submit(client, out, queue, delay_seconds, std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            window.submit(client, out, queue, delay_seconds, std::mem::take(&mut batch))?;
        }
        while !window.pending.is_empty() {
            window.complete_oldest(client, out)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        if window.confirmed > 0 || !window.pending.is_empty() {
            eprintln!(
                "note: {} messages were sent (the first non-empty lines, ids printed); {} more were in flight \
                 and may or may not have been sent",
                window.confirmed,
                window.pending.iter().map(|p| p.count).sum::<usize>()
            );
        }
        return Err(e);
    }
    if out.json {
        out.json(&window.ids.iter().map(u64::to_string).collect::<Vec<_>>())?;
    }
    Ok(())
}

#[derive(Default)]
struct SendWindow {
    pending: VecDeque<PendingBatch>,
    bytes: usize,
    confirmed: usize,
    /// Collected only for --json, which prints one array at the end.
    ids: Vec<u64>,
}

struct PendingBatch {
    ticket: Ticket,
    count: usize,
    bytes: usize,
}

impl SendWindow {
    fn submit(
        &mut self,
        client: &mut Client,
        out: &mut Out,
        queue: &str,
        delay: u32,
        bodies: Vec<Bytes>,
    ) -> Result<()> {
        let count = bodies.len();
        let bytes = bodies.iter().map(Bytes::len).sum();
        let req = Request::BatchSendMessage(BatchSendMessage { queue: queue.to_owned(), delay_seconds: delay, bodies });
        let ticket = client.submit(&req)?;
        self.pending.push_back(PendingBatch { ticket, count, bytes });
        self.bytes += bytes;
        while self.pending.len() >= SEND_WINDOW_REQUESTS || self.bytes > SEND_WINDOW_BYTES {
            self.complete_oldest(client, out)?;
        }
        Ok(())
    }

    fn complete_oldest(&mut self, client: &mut Client, out: &mut Out) -> Result<()> {
        let Some(oldest) = self.pending.front() else { return Ok(()) };
        let ids = match client.wait(oldest.ticket)? {
            Response::BatchSendMessage(ok) if ok.msg_ids.len() == oldest.count => ok.msg_ids,
            other => {
                return Err(ClientError::Protocol(format!(
                    "batch of {} answered with {:?}",
                    oldest.count,
                    other.opcode()
                ))
                .into())
            }
        };
        self.bytes -= oldest.bytes;
        self.confirmed += oldest.count;
        self.pending.pop_front();
        if out.json {
            self.ids.extend_from_slice(&ids);
        } else {
            for id in ids {
                out.line(id)?;
            }
        }
        Ok(())
    }
}

/// Prints before deleting, and deletes only after the output is flushed: a
/// message must never be deleted without having been shown.
fn receive(client: &mut Client, out: &mut Out, queue: &str, wait: Option<u32>, max: u16, delete: bool) -> Result<()> {
    let messages: Vec<ReceivedMessage> = if max <= 1 {
        client.receive(queue, wait)?.into_iter().collect()
    } else {
        client.receive_batch(queue, max, wait)?
    };
    if messages.is_empty() {
        eprintln!("no message");
        if out.json {
            out.json(&[(); 0])?;
        }
        return Ok(());
    }
    if out.json {
        out.json(&messages.iter().map(MessageJson::from).collect::<Vec<_>>())?;
    } else {
        for m in &messages {
            out.line(body_text(&m.body))?;
        }
    }
    out.flush()?;
    if !delete {
        return Ok(());
    }
    if let [only] = &messages[..] {
        client.delete_message(queue, only.receipt_handle)?;
        return Ok(());
    }
    let handles: Vec<_> = messages.iter().map(|m| m.receipt_handle).collect();
    let results = client.delete_batch(queue, &handles)?;
    let failed: Vec<_> = messages.iter().zip(&results).filter(|(_, r)| r.code != 0).collect();
    if let Some((m, first)) = failed.first() {
        return Err(ClientError::Server {
            code: cmq_client::ErrorCode(first.code),
            message: format!(
                "could not delete {} of {} messages; msgId {}: {}",
                failed.len(),
                messages.len(),
                m.msg_id,
                first.message
            ),
        }
        .into());
    }
    Ok(())
}
