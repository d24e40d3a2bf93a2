//! HTTP producers and consumers: one task per connection, one request in
//! flight (HTTP/1.1 without pipelining, as the SDKs work). A producer sends
//! `SendMessage` until the run stops measuring; a consumer long-polls
//! `ReceiveMessage` and deletes what it gets with `DeleteMessage`. Counts,
//! latencies and the `--verify` log are booked exactly as the binary
//! workers book them (`worker.rs`), so the report is the same.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::conn::{CallError, Conn};
use crate::body::{self, BodyArena, Header, HEADER_BYTES};
use crate::stats::{Counters, ErrKey, Phase, Run};
use crate::verify::{AckSet, Delivery, FOREIGN};
use crate::worker::{ConsumerSpec, Finished, Outcome, ProducerSpec, OUTCOME_UNKNOWN};

/// Characters of an HTTP body's header: the binary header (`body.rs`) in
/// hex, since a CMQ message body is text. `--size` may not be smaller.
pub const TEXT_HEADER_CHARS: usize = 2 * HEADER_BYTES;

/// CMQ's "no message" answer to a receive (spec §6).
pub const CODE_NO_MESSAGE: i64 = 7000;

/// How long a producer waits before looking again while the backlog is full.
const BACKLOG_PAUSE: Duration = Duration::from_millis(1);

/// A call's deadline beyond its long-poll wait: a gateway that takes longer is stuck.
const ANSWER_MARGIN: Duration = Duration::from_secs(15);

/// What both kinds of agent share.
pub struct Ctx {
    pub run: Arc<Run>,
    pub counters: Arc<Counters>,
    pub size: usize,
    pub wait_s: u32,
    pub verify: bool,
    pub backlog_max: u64,
}

/// A text body: the header in hex, then `.` up to `size` characters.
pub fn text_body(arena: &mut BodyArena, id: u64, sent_ns: u64, size: usize) -> String {
    let raw = arena.body(id, sent_ns);
    let mut s = String::with_capacity(size.max(TEXT_HEADER_CHARS));
    for b in &raw[..HEADER_BYTES] {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s.extend(std::iter::repeat_n('.', size.saturating_sub(TEXT_HEADER_CHARS)));
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The header of a text body; `None` for anything else. Never panics.
pub fn parse_text(body: &str) -> Option<Header> {
    let hex = body.as_bytes().get(..TEXT_HEADER_CHARS)?;
    let mut raw = [0u8; HEADER_BYTES];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        raw[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    body::parse(&raw)
}

fn file(out: &mut Outcome, c: &Counters, e: &CallError) {
    let key = match e {
        CallError::Cmq { code, .. } => ErrKey::Cmq(*code),
        CallError::Transport(_) => ErrKey::Other("disconnected"),
        CallError::Protocol(_) => ErrKey::Other("protocol"),
        CallError::Timeout => ErrKey::Other("timeout"),
    };
    *out.errors.entry(key).or_default() += 1;
    c.errors.fetch_add(1, Relaxed);
}

/// Whether the connection is unusable after `e` (hyper closes it on any
/// transport failure or timeout).
fn fatal(e: &CallError) -> bool {
    matches!(e, CallError::Transport(_) | CallError::Timeout)
}

pub async fn produce(spec: ProducerSpec, mut conn: Conn, ctx: Ctx) -> Finished {
    let (run, c) = (&ctx.run, &ctx.counters);
    let mut out = Outcome { acks: ctx.verify.then(AckSet::default), ..Outcome::default() };
    let mut arena = BodyArena::new(HEADER_BYTES, run.nonce);
    let (mut seq, mut budget, mut turn) = (0u64, spec.budget.unwrap_or(u64::MAX), 0usize);
    while run.phase() <= Phase::Measure && budget > 0 {
        if ctx.backlog_max > 0 && run.backlog() > ctx.backlog_max {
            tokio::time::sleep(BACKLOG_PAUSE).await;
            continue;
        }
        let queue = &spec.queues[turn % spec.queues.len()];
        turn += 1;
        let t0 = run.now_ns();
        let text = text_body(&mut arena, body::message_id(spec.index, seq), t0, ctx.size);
        let params = [("Action", "SendMessage"), ("queueName", queue.as_str()), ("msgBody", text.as_str())];
        match conn.call(&params, ANSWER_MARGIN).await {
            Ok(_) => {
                c.sent.fetch_add(1, Relaxed);
                run.acked_total.fetch_add(1, Relaxed);
                if let Ok(mut h) = c.hists.lock() {
                    h.send_ack.saturating_record(run.now_ns().saturating_sub(t0).max(1));
                }
                if let Some(a) = out.acks.as_mut() {
                    a.mark(seq, 1);
                }
                seq += 1;
                budget -= 1;
            }
            Err(e) => {
                file(&mut out, c, &e);
                if fatal(&e) {
                    // The message may have been stored: deliveries can no longer be counted against acks.
                    run.uncertain.store(true, Relaxed);
                    *out.errors.entry(ErrKey::Other(OUTCOME_UNKNOWN)).or_default() += 1;
                    out.broken = Some(format!("producer {}: {e}", spec.index));
                    break;
                }
            }
        }
    }
    run.producers_done.fetch_add(1, Relaxed);
    Finished { producer: Some(spec.index), out }
}

pub async fn consume(spec: ConsumerSpec, mut conn: Conn, ctx: Ctx) -> Finished {
    let (run, c) = (&ctx.run, &ctx.counters);
    let mut out = Outcome::default();
    let wait = ctx.wait_s.to_string();
    let within = Duration::from_secs(u64::from(ctx.wait_s)) + ANSWER_MARGIN;
    let mut turn = 0usize;
    while run.phase() < Phase::Stop {
        let queue = spec.queues[turn % spec.queues.len()].as_str();
        turn += 1;
        let params = [("Action", "ReceiveMessage"), ("queueName", queue), ("pollingWaitSeconds", wait.as_str())];
        let got = match conn.call(&params, within).await {
            Ok(v) => v,
            Err(CallError::Cmq { code: CODE_NO_MESSAGE, .. }) => {
                c.empty_receives.fetch_add(1, Relaxed);
                continue;
            }
            Err(e) => {
                file(&mut out, c, &e);
                if fatal(&e) {
                    run.uncertain.store(true, Relaxed);
                    out.broken = Some(format!("consumer {}: {e}", spec.index));
                    break;
                }
                continue;
            }
        };
        let (handle, first) = book_delivery(&got, &ctx, &mut out);
        let params = [("Action", "DeleteMessage"), ("queueName", queue), ("receiptHandle", handle.as_str())];
        let deleted = conn.call(&params, ANSWER_MARGIN).await;
        match &deleted {
            Ok(_) => {
                c.deleted.fetch_add(1, Relaxed);
                if let Some(d) = out.deliveries.last_mut().filter(|_| ctx.verify) {
                    d.deleted = true;
                }
            }
            Err(e) => file(&mut out, c, e),
        }
        // A first delivery counts once its delete is answered: the run ends
        // when every acknowledged message is accounted for, and its counts
        // are read then, so a delete still in flight would be missing from
        // them (one of 400 was, on a loaded machine).
        if first {
            run.first_deliveries.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        if let Err(e) = deleted.as_ref() {
            if fatal(e) {
                out.broken = Some(format!("consumer {}: {e}", spec.index));
                break;
            }
        }
    }
    Finished { producer: None, out }
}

/// Books one received message (counts, end-to-end latency, the verify
/// log) and returns its receipt handle and whether it is a first delivery
/// of one of this run's messages.
fn book_delivery(msg: &Value, ctx: &Ctx, out: &mut Outcome) -> (String, bool) {
    let (run, c) = (&ctx.run, &ctx.counters);
    let text = msg.get("msgBody").and_then(Value::as_str).unwrap_or_default();
    let ours = parse_text(text).filter(|h| h.nonce == run.nonce);
    let dequeue_count = msg.get("dequeueCount").and_then(Value::as_u64).unwrap_or(1) as u32;
    if let Some(head) = ours {
        if let Ok(mut h) = c.hists.lock() {
            h.e2e.saturating_record(run.now_ns().saturating_sub(head.sent_ns).max(1));
        }
    }
    if ctx.verify {
        let recv_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let lease_end_ms = msg.get("nextVisibleTime").and_then(Value::as_u64).unwrap_or(0) * 1000;
        let id = ours.map_or(FOREIGN, |h| h.id);
        out.deliveries.push(Delivery { id, recv_ms, lease_end_ms, dequeue_count, deleted: false });
    }
    c.received.fetch_add(1, Relaxed);
    let handle = msg.get("receiptHandle").and_then(Value::as_str).unwrap_or_default().to_owned();
    (handle, ours.is_some() && dequeue_count == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_bodies_round_trip_and_foreign_ones_are_not_ours() {
        let mut arena = BodyArena::new(HEADER_BYTES, 7);
        let t = text_body(&mut arena, body::message_id(3, 99), 123_456, 64);
        assert_eq!(t.len(), 64);
        assert_eq!(parse_text(&t), Some(Header { nonce: 7, id: body::message_id(3, 99), sent_ns: 123_456 }));
        assert_eq!(text_body(&mut arena, 1, 2, 10).len(), TEXT_HEADER_CHARS, "never shorter than the header");
        for cut in 0..TEXT_HEADER_CHARS {
            assert_eq!(parse_text(&t[..cut]), None);
        }
        assert_eq!(parse_text("zz not a loadgen body at all, not even hex, long enough"), None);
        assert_eq!(parse_text("é"), None);
    }
}
