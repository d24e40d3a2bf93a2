//! send-batch and publish-batch: stdin, one message a line, as pipelined
//! batch requests; and, when something fails, an exact account of which
//! lines were sent.

use std::collections::VecDeque;
use std::io::{self, BufRead, Read};

use anyhow::{Context, Result};
use bytes::Bytes;
use cmq_client::protocol::limits::BATCH_MSGS_MAX;
use cmq_client::{Client, ClientError, Request, Response, Ticket};

use crate::body::decode_base64;
use crate::commands::Out;

/// Requests kept in flight: enough to hide the round trip (pipelining is
/// worth ~100x on loopback), few enough to bound memory.
const SEND_WINDOW_REQUESTS: usize = 32;

/// ... and at most this many body bytes, so that neither side ever blocks
/// writing while the other is blocked writing too (socket buffers are a few MiB).
const SEND_WINDOW_BYTES: usize = 2 * 1024 * 1024;

/// Longest input line read, in bytes: the base64 of the largest message
/// plus a line break. A longer line is refused before it is held whole.
const LINE_BYTES_MAX: usize = crate::body::BASE64_INPUT_BYTES_MAX;

/// Input lines `first..=last` (1-based, empty lines counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lines {
    first: usize,
    last: usize,
}

impl std::fmt::Display for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "line {}", self.first)
        } else {
            write!(f, "lines {}-{}", self.first, self.last)
        }
    }
}

/// What became of a batch after the first failure.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// The broker answered with ids (printed nowhere yet: stdout lists ids in input order only).
    Sent(Vec<u64>),
    /// The broker refused it, or it never left: none of it was stored.
    NotSent,
    /// The connection failed before the answer.
    Unknown,
}

/// Sends stdin, one message per line, as batch requests made by `request`
/// (send-batch, publish-batch), keeping a window of them in flight. Ids are
/// printed in input order as batches complete. After a failure, stderr says
/// exactly which lines were sent, refused, or (only if the connection
/// failed) may or may not have been.
pub fn batch_lines(
    client: &mut Client,
    out: &mut Out,
    verb: &str,
    base64: bool,
    mut request: impl FnMut(Vec<Bytes>) -> Request,
) -> Result<()> {
    let mut stdin = io::stdin().lock();
    let mut window = SendWindow::default();
    let mut batch = Batch::default();
    let mut line = Vec::new();
    let mut line_no = 0;
    let result = (|| -> Result<()> {
        while read_line(&mut stdin, &mut line, line_no + 1)? {
            line_no += 1;
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.is_empty() {
                continue;
            }
            let body = match base64 {
                true => decode_base64(text).with_context(|| format!("line {line_no} is not valid base64"))?,
                false => text.to_vec(),
            };
            batch.push(Bytes::from(body), line_no);
            if batch.bodies.len() == BATCH_MSGS_MAX {
                window.submit(client, out, batch.take(&mut request))?;
            }
        }
        if !batch.bodies.is_empty() {
            window.submit(client, out, batch.take(&mut request))?;
        }
        while !window.pending.is_empty() {
            window.complete_oldest(client, out)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        // A line that failed to decode leaves its batch unsent.
        let unsent = batch.lines.map(|l| (l, Fate::NotSent));
        window.settle(client, &e, unsent);
        for note in window.notes(verb, out.json) {
            eprintln!("note: {note}");
        }
        return Err(e);
    }
    if out.json {
        out.json(&window.ids.iter().map(u64::to_string).collect::<Vec<_>>())?;
    }
    Ok(())
}

/// Reads one line of at most `LINE_BYTES_MAX` bytes; false at the end of input.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>, line_no: usize) -> Result<bool> {
    line.clear();
    let n = input.by_ref().take(LINE_BYTES_MAX as u64 + 1).read_until(b'\n', line).context("reading stdin")?;
    if line.len() > LINE_BYTES_MAX {
        anyhow::bail!("line {line_no} is longer than {LINE_BYTES_MAX} bytes, more than a message can carry");
    }
    Ok(n > 0)
}

/// The batch being filled.
#[derive(Default)]
struct Batch {
    bodies: Vec<Bytes>,
    lines: Option<Lines>,
}

impl Batch {
    fn push(&mut self, body: Bytes, line_no: usize) {
        self.bodies.push(body);
        let first = self.lines.map_or(line_no, |l| l.first);
        self.lines = Some(Lines { first, last: line_no });
    }

    fn take(&mut self, request: &mut impl FnMut(Vec<Bytes>) -> Request) -> (Request, Lines) {
        let lines = self.lines.take().expect("a batch has lines");
        (request(std::mem::take(&mut self.bodies)), lines)
    }
}

#[derive(Default)]
struct SendWindow {
    pending: VecDeque<PendingBatch>,
    bytes: usize,
    /// Messages confirmed (and their ids printed) in input order.
    confirmed: usize,
    /// Lines of the confirmed messages.
    confirmed_lines: Option<Lines>,
    /// Collected only for --json, which prints one array at the end.
    ids: Vec<u64>,
    /// The failed batch and every one after it, in input order.
    settled: Vec<(Lines, Fate)>,
}

struct PendingBatch {
    ticket: Ticket,
    count: usize,
    bytes: usize,
    lines: Lines,
}

impl SendWindow {
    /// `req` is a BatchSendMessage or a BatchPublishMessage.
    fn submit(&mut self, client: &mut Client, out: &mut Out, (req, lines): (Request, Lines)) -> Result<()> {
        let (count, bytes) = match &req {
            Request::BatchSendMessage(r) => (r.bodies.len(), r.bodies.iter().map(Bytes::len).sum()),
            Request::BatchPublishMessage(r) => (r.bodies.len(), r.bodies.iter().map(Bytes::len).sum()),
            other => unreachable!("not a batch of messages: {:?}", other.opcode()),
        };
        let ticket = match client.submit(&req) {
            Ok(t) => t,
            Err(e) => {
                self.settled.push((lines, Fate::NotSent));
                return Err(e.into());
            }
        };
        self.pending.push_back(PendingBatch { ticket, count, bytes, lines });
        self.bytes += bytes;
        while self.pending.len() >= SEND_WINDOW_REQUESTS || self.bytes > SEND_WINDOW_BYTES {
            self.complete_oldest(client, out)?;
        }
        Ok(())
    }

    fn complete_oldest(&mut self, client: &mut Client, out: &mut Out) -> Result<()> {
        let Some(oldest) = self.pending.pop_front() else { return Ok(()) };
        self.bytes -= oldest.bytes;
        let ids = match batch_ids(client.wait(oldest.ticket), oldest.count) {
            Ok(ids) => ids,
            Err(e) => {
                self.settled.push((oldest.lines, fate_of(&e)));
                return Err(e.into());
            }
        };
        self.confirmed += oldest.count;
        let first = self.confirmed_lines.map_or(oldest.lines.first, |l| l.first);
        self.confirmed_lines = Some(Lines { first, last: oldest.lines.last });
        if out.json {
            self.ids.extend_from_slice(&ids);
        } else {
            for id in ids {
                out.line(id)?;
            }
        }
        Ok(())
    }

    /// After `failure`: learns what became of every batch still in flight
    /// (their answers are on the way; after a connection failure the client
    /// has already failed them all), then the batch that was being filled.
    fn settle(&mut self, client: &mut Client, failure: &anyhow::Error, unsent: Option<(Lines, Fate)>) {
        let connection_lost =
            failure.downcast_ref::<ClientError>().is_some_and(|e| !matches!(e, ClientError::Server { .. }));
        while let Some(p) = self.pending.pop_front() {
            let fate = if connection_lost {
                Fate::Unknown
            } else {
                match batch_ids(client.wait(p.ticket), p.count) {
                    Ok(ids) => Fate::Sent(ids),
                    Err(e) => fate_of(&e),
                }
            };
            self.settled.push((p.lines, fate));
        }
        self.settled.extend(unsent);
    }

    /// The account of a failed run, one note a line, merging neighbours
    /// with the same fate.
    fn notes(&self, verb: &str, json: bool) -> Vec<String> {
        let mut notes = Vec::new();
        match self.confirmed_lines {
            Some(lines) if json => notes.push(format!("{} messages were {verb} ({lines})", self.confirmed)),
            Some(lines) => notes.push(format!("{} messages were {verb} ({lines}, msgIds printed)", self.confirmed)),
            None if self.settled.iter().all(|(_, f)| *f == Fate::NotSent) => {
                notes.push(format!("no message was {verb}"));
            }
            None => {}
        }
        let mut groups: Vec<(Lines, &Fate)> = Vec::new();
        for (lines, fate) in &self.settled {
            match groups.last_mut() {
                Some((l, f)) if *f == fate && !matches!(fate, Fate::Sent(_)) => l.last = lines.last,
                _ => groups.push((*lines, fate)),
            }
        }
        for (lines, fate) in groups {
            notes.push(match fate {
                Fate::NotSent => format!("{lines}: not {verb}"),
                Fate::Sent(ids) => {
                    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
                    format!("{lines}: {verb} after all, msgIds {} (not printed above)", ids.join(" "))
                }
                Fate::Unknown => {
                    format!("{lines}: may or may not have been {verb} (the connection failed before the answer)")
                }
            });
        }
        notes
    }
}

/// The ids of a batch of `count`, or why there are none.
fn batch_ids(answer: Result<Response, ClientError>, count: usize) -> Result<Vec<u64>, ClientError> {
    match answer? {
        Response::BatchSendMessage(ok) if ok.msg_ids.len() == count => Ok(ok.msg_ids),
        Response::BatchPublishMessage(ok) if ok.msg_ids.len() == count => Ok(ok.msg_ids),
        other => Err(ClientError::Protocol(format!("batch of {count} answered with {:?}", other.opcode()))),
    }
}

/// A refusal means nothing of the batch was stored (batches are all or
/// none); any other failure leaves its outcome unknown.
fn fate_of(e: &ClientError) -> Fate {
    match e {
        ClientError::Server { .. } => Fate::NotSent,
        _ => Fate::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(confirmed: Option<Lines>, settled: Vec<(Lines, Fate)>) -> SendWindow {
        SendWindow {
            confirmed: confirmed.map_or(0, |l| l.last - l.first + 1),
            confirmed_lines: confirmed,
            settled,
            ..SendWindow::default()
        }
    }

    fn lines(first: usize, last: usize) -> Lines {
        Lines { first, last }
    }

    #[test]
    fn a_refusal_of_everything_says_nothing_was_sent() {
        let w = window(None, vec![(lines(1, 16), Fate::NotSent), (lines(17, 20), Fate::NotSent)]);
        assert_eq!(w.notes("sent", false), ["no message was sent", "lines 1-20: not sent"]);
    }

    #[test]
    fn each_line_range_gets_its_own_fate() {
        let w = window(
            Some(lines(1, 32)),
            vec![
                (lines(33, 48), Fate::NotSent),
                (lines(49, 64), Fate::Sent(vec![7, 8])),
                (lines(65, 80), Fate::Unknown),
                (lines(81, 81), Fate::Unknown),
            ],
        );
        assert_eq!(
            w.notes("published", false),
            [
                "32 messages were published (lines 1-32, msgIds printed)",
                "lines 33-48: not published",
                "lines 49-64: published after all, msgIds 7 8 (not printed above)",
                "lines 65-81: may or may not have been published (the connection failed before the answer)",
            ]
        );
        assert_eq!(w.notes("sent", true)[0], "32 messages were sent (lines 1-32)", "no ids printed with --json");
    }

    #[test]
    fn overlong_lines_are_refused_before_being_held() {
        let mut input = io::Cursor::new(vec![b'x'; LINE_BYTES_MAX + 10]);
        let mut line = Vec::new();
        let err = read_line(&mut input, &mut line, 3).expect_err("too long");
        assert!(err.to_string().starts_with("line 3 is longer than"), "{err}");
        assert_eq!(line.len(), LINE_BYTES_MAX + 1);
        let mut input = io::Cursor::new(b"a\nb".to_vec());
        assert!(read_line(&mut input, &mut line, 1).expect("ok") && line == b"a\n");
        assert!(read_line(&mut input, &mut line, 2).expect("ok") && line == b"b");
        assert!(!read_line(&mut input, &mut line, 3).expect("ok"));
    }
}
