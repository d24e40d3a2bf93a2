//! Runs one subcommand against the broker.

use std::io::{self, BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cmq_client::idempotency::random_keys;
use cmq_client::protocol::limits::{PEEK_MSGS_MAX, POLLING_WAIT_SECONDS_MAX};
use cmq_client::{
    str_list, BatchPublishMessage, BatchSendMessage, CheckOutcome, CheckerStopper, Client, ClientError, ErrorCode,
    QueueInfo, ReceivedMessage, RedriveInfo, RedriveState, Request, SetSubscriptionAttributes, Subscribe,
    SubscribeBuilder, SubscriptionInfo, TopicInfo, TransactionCheck, TransactionChecker,
};
use serde::Serialize;
use serde_json::json;

use crate::args::{topic_update, Cli, Command, PrintField, PEEK_DEFAULT, PUSH_SIGNATURE_HEADER};
use crate::batch::batch_lines;
use crate::body::{encode_base64, line_text, read_body};
use crate::render::{
    check_line, client_error_name, decision_text, message_status_table, origin_note, peek_header, peek_row,
    queue_info_table, redrive_table, redrive_target, secs, subscription_info_table, subscription_table, time_cell,
    topic_info_table, CheckJson, ErrorJson, MessageJson, MessageStatusJson, PeekedJson, QueueInfoJson, QueueListJson,
    RedriveJson, SubscriptionInfoJson, SubscriptionListJson, TopicInfoJson, TopicListJson,
};
use crate::time::utc;

/// How often `redrive-status --watch` asks again.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Where results go: one JSON document or human text on stdout.
pub struct Out {
    pub json: bool,
    pub stdout: io::StdoutLock<'static>,
}

impl Out {
    pub fn json(&mut self, value: &impl Serialize) -> Result<()> {
        serde_json::to_writer(&mut self.stdout, value).context("writing output")?;
        writeln!(self.stdout).context("writing output")
    }

    pub fn line(&mut self, text: impl std::fmt::Display) -> Result<()> {
        writeln!(self.stdout, "{text}").context("writing output")
    }

    /// Commands with nothing to report print `{}` in JSON mode, so a JSON
    /// consumer always gets a document.
    pub fn done(&mut self) -> Result<()> {
        if self.json {
            self.json(&json!({}))?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.stdout.flush().context("writing output")
    }
}

pub fn run(cli: &Cli) -> Result<()> {
    let timeout = (cli.timeout > 0).then(|| Duration::from_secs(cli.timeout));
    // Refused before touching the broker: nobody could answer the question.
    if matches!(cli.command, Command::Purge { yes: false, .. }) && !io::stdin().is_terminal() {
        bail!("refusing to purge without --yes: stdin is not a terminal to confirm on");
    }
    if let Command::TxChecker { group, commit, rollback, ask } = &cli.command {
        let mode = match (commit, rollback, ask) {
            (true, _, _) => Mode::Commit,
            (_, true, _) => Mode::Rollback,
            _ => Mode::Ask,
        };
        debug_assert!(*ask || *commit || *rollback, "clap requires one");
        return tx_checker(cli, timeout, group, mode);
    }
    // Read before connecting: a missing file or bad base64 is reported as
    // such, and no connection idles while stdin is read.
    let mut body = match &cli.command {
        Command::Send { body, .. } | Command::SendTx { body, .. } | Command::Publish { body, .. } => {
            Some(read_body(body)?)
        }
        _ => None,
    };
    let mut client = Client::connect_secure(cli.server.as_str(), timeout, cli.creds.resolve()?, cli.tls.resolve()?)
        .map_err(|e| connect_failed(e, &cli.server, timeout))?;
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
        Command::DeleteQueue { name, force } => {
            if !force {
                confirm_delete_queue(c, name)?;
            }
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
                more_note(page.queues.len(), *offset, page.total, "queues");
            }
        }
        Command::QueueInfo { name } => {
            let info = c.queue_info(name)?;
            print_queue_info(&mut out, &info)?;
        }
        Command::SetQueue { name, attrs, no_dead_letter } => {
            let mut update = attrs.to_update();
            if *no_dead_letter {
                update.dead_letter_queue = Some(String::new());
            }
            let info = c.set_queue_attributes(name, &update)?;
            print_queue_info(&mut out, &info)?;
        }
        Command::Send { name, delay, .. } => {
            let id = c.send(name, body.take().unwrap_or_default(), *delay)?;
            if out.json {
                out.json(&json!({ "msgId": id.to_string() }))?;
            } else {
                out.line(id)?;
            }
        }
        Command::SendBatch { name, delay, base64 } => {
            let delay_seconds = *delay;
            batch_lines(c, &mut out, "sent", *base64, |bodies| {
                let idempotency_keys = random_keys(bodies.len());
                Request::BatchSendMessage(BatchSendMessage {
                    queue: name.clone(),
                    delay_seconds,
                    bodies,
                    idempotency_keys,
                })
            })?;
        }
        Command::Receive { name, wait, max, delete, follow, print, base64 } => {
            let how = Receiving { wait: *wait, max: *max, delete: *delete, print, base64: *base64 };
            if *follow {
                // It ends only when nobody reads stdout any more: nothing left to flush.
                return receive_follow(c, &mut out, name, &how);
            }
            receive(c, &mut out, name, &how)?;
        }
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
        Command::Peek { name, max, all, body } => {
            let limit = if *all { u64::MAX } else { u64::from(max.unwrap_or(PEEK_DEFAULT)) };
            peek(c, &mut out, name, limit, *body)?;
        }
        Command::Message { name, msg_id } => {
            let status = c.query_message(name, *msg_id)?;
            if out.json {
                out.json(&MessageStatusJson::from(&status))?;
            } else {
                write!(out.stdout, "{}", message_status_table(&status)).context("writing output")?;
            }
        }
        Command::Rewind { name, since } => {
            let rewound = c.rewind_queue(name, *since)?;
            if out.json {
                out.json(&json!({ "rewound": rewound, "startConsumeTime": secs(*since) }))?;
            } else {
                out.line(rewound)?;
                eprintln!(
                    "{rewound} deleted messages are receivable again; every message of {name} enqueued since {} will be \
                     received again, oldest first",
                    utc(secs(*since))
                );
            }
        }
        Command::Purge { name, yes } => {
            if !yes {
                confirm_purge(c, name)?;
            }
            let purged = c.purge_queue(name)?;
            if out.json {
                out.json(&json!({ "purged": purged }))?;
            } else {
                out.line(purged)?;
            }
        }
        Command::SendTx { name, group, .. } => {
            let id = c.send_transaction_message(name, group, body.take().unwrap_or_default())?;
            if out.json {
                out.json(&json!({ "msgId": id.to_string() }))?;
            } else {
                out.line(id)?;
            }
        }
        Command::Commit { name, msg_id } | Command::Rollback { name, msg_id } => {
            let commit = matches!(cli.command, Command::Commit { .. });
            c.end_transaction(name, *msg_id, commit)?;
            out.done()?;
        }
        Command::Redrive { dead_letter_queue, to, rate } => {
            let task = c.start_redrive(dead_letter_queue, to.as_deref(), *rate)?;
            // Like create-queue and send, plain output is the new id alone, for `task=$(cmq redrive …)`.
            if out.json {
                out.json(&RedriveJson::from(&task))?;
            } else {
                out.line(task.id)?;
                eprintln!("{}", redrive_started_note(&task));
            }
        }
        Command::RedriveStatus { id, watch } => redrive_status(c, &mut out, *id, *watch)?,
        Command::RedriveCancel { id } => {
            let task = c.cancel_redrive(*id)?;
            print_redrive(&mut out, &task)?;
        }
        Command::CreateTopic { name, filter_type, max_msg_size, msg_retention_seconds } => {
            let id = c.create_topic(name, &topic_update(*filter_type, *max_msg_size, *msg_retention_seconds))?;
            if out.json {
                out.json(&json!({ "topicId": id.to_string() }))?;
            } else {
                out.line(id)?;
            }
        }
        Command::DeleteTopic { name } => {
            c.delete_topic(name)?;
            out.done()?;
        }
        Command::ListTopics { prefix, contains, offset, limit } => {
            let page = c.list_topics(prefix, contains, *offset, *limit)?;
            if out.json {
                out.json(&TopicListJson::from(&page))?;
            } else {
                for t in &page.topics {
                    out.line(&t.topic)?;
                }
                more_note(page.topics.len(), *offset, page.total, "topics");
            }
        }
        Command::TopicInfo { name } => {
            let info = c.topic_info(name)?;
            print_topic_info(&mut out, &info)?;
        }
        Command::SetTopic { name, max_msg_size } => {
            let info = c.set_topic_attributes(name, *max_msg_size)?;
            print_topic_info(&mut out, &info)?;
        }
        Command::Publish { topic, select, .. } => {
            let id = c.publish(topic, body.take().unwrap_or_default(), &select.tags, &select.routing_key)?;
            if out.json {
                out.json(&json!({ "msgId": id.to_string() }))?;
            } else {
                out.line(id)?;
            }
        }
        Command::PublishBatch { topic, select, base64 } => {
            let tags = str_list(&select.tags);
            batch_lines(c, &mut out, "published", *base64, |bodies| {
                Request::BatchPublishMessage(BatchPublishMessage {
                    topic: topic.clone(),
                    idempotency_keys: random_keys(bodies.len()),
                    bodies,
                    tags: tags.clone(),
                    routing_key: select.routing_key.clone(),
                })
            })?;
        }
        Command::Subscribe { topic, name, queue, http, filters, push, dead_letter_queue } => {
            let mut sub = match (queue, http) {
                (Some(queue), _) => Subscribe::to_queue(topic, name, queue),
                (None, Some(url)) => Subscribe::to_http(topic, name, url),
                (None, None) => unreachable!("clap requires --queue or --http"),
            };
            sub = sub.with_filter_tags(&filters.tags).with_binding_keys(&filters.binding_keys);
            if let Some(strategy) = push.notify_strategy() {
                sub = sub.with_notify_strategy(strategy);
            }
            if let Some(format) = push.format() {
                sub = sub.with_format(format);
            }
            if let Some(dlq) = dead_letter_queue {
                sub = sub.with_dead_letter_queue(dlq);
            }
            let ok = c.subscribe(&sub)?;
            if out.json {
                out.json(&json!({ "subscriptionId": ok.subscription_id.to_string(), "pushSecret": ok.push_secret }))?;
            } else {
                out.line(ok.subscription_id)?;
                if !ok.push_secret.is_empty() {
                    out.line(&ok.push_secret)?;
                }
            }
            if !ok.push_secret.is_empty() {
                eprintln!(
                    "pushes to {} carry X-CMQ-Timestamp and {PUSH_SIGNATURE_HEADER}: sha256= the hex HMAC-SHA256, keyed \
                     with the push secret's text (shown above, and by `cmq subscription-info {topic} {name}`), of \
                     the timestamp, '.', and the request body; see docs/HTTP_PUSH.md",
                    sub.endpoint
                );
            }
        }
        Command::Unsubscribe { topic, name } => {
            c.unsubscribe(topic, name)?;
            out.done()?;
        }
        Command::ListSubscriptions { topic, contains, offset, limit } => {
            let page = c.list_subscriptions(topic, contains, *offset, *limit)?;
            if out.json {
                out.json(&SubscriptionListJson::from(&page))?;
            } else {
                if !page.subscriptions.is_empty() {
                    write!(out.stdout, "{}", subscription_table(&page)).context("writing output")?;
                }
                more_note(page.subscriptions.len(), *offset, page.total, "subscriptions");
            }
        }
        Command::SubscriptionInfo { topic, name } => {
            let info = c.subscription_info(topic, name)?;
            print_subscription_info(&mut out, &info)?;
        }
        Command::SetSubscription { topic, name, filters, clear_tags, clear_binding_keys, push } => {
            // A list given replaces the stored one; a --clear flag gives the empty list.
            let list = |given: &[String], clear: bool| (clear || !given.is_empty()).then(|| str_list(given));
            let update = SetSubscriptionAttributes {
                topic: topic.clone(),
                subscription: name.clone(),
                notify_strategy: push.notify_strategy(),
                notify_content_format: push.format(),
                filter_tags: list(&filters.tags, *clear_tags),
                binding_keys: list(&filters.binding_keys, *clear_binding_keys),
            };
            let info = c.set_subscription_attributes(&update)?;
            print_subscription_info(&mut out, &info)?;
        }
        Command::ClearFilterTags { topic, name } => {
            c.clear_subscription_filter_tags(topic, name)?;
            out.done()?;
        }
        Command::Cluster { command } => crate::cluster::run(c, &mut out, command)?,
        Command::Key { command } => crate::keys::run_key(c, &mut out, command)?,
        Command::Policy { command } => crate::keys::run_policy(c, &mut out, command)?,
        Command::Whoami => crate::keys::whoami(c, &mut out)?,
        Command::TxChecker { .. } => unreachable!("handled before connecting"),
        Command::Stats(a) => crate::top::stats(c, &mut out, a)?,
        Command::Top(a) => crate::top::top(c, &mut out, a)?,
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

/// On stderr, when a listing page is not the last.
fn more_note(shown: usize, offset: u32, total: u32, what: &str) {
    let shown_to = u64::from(offset) + shown as u64;
    if shown_to < u64::from(total) {
        eprintln!("{shown} of {total} matching {what} shown; --offset {shown_to} for more");
    }
}

fn print_topic_info(out: &mut Out, info: &TopicInfo) -> Result<()> {
    if out.json {
        out.json(&TopicInfoJson::from(info))
    } else {
        write!(out.stdout, "{}", topic_info_table(info)).context("writing output")
    }
}

fn print_subscription_info(out: &mut Out, info: &SubscriptionInfo) -> Result<()> {
    if out.json {
        out.json(&SubscriptionInfoJson::from(info))
    } else {
        write!(out.stdout, "{}", subscription_info_table(info)).context("writing output")
    }
}

fn print_queue_info(out: &mut Out, info: &cmq_client::QueueInfo) -> Result<()> {
    if out.json {
        out.json(&QueueInfoJson::from(info))
    } else {
        write!(out.stdout, "{}", queue_info_table(info)).context("writing output")
    }
}

/// How `receive` receives and prints.
struct Receiving<'a> {
    wait: Option<u32>,
    max: u16,
    delete: bool,
    print: &'a [PrintField],
    base64: bool,
}

impl Receiving<'_> {
    fn once(&self, client: &mut Client, queue: &str, wait: Option<u32>) -> Result<Vec<ReceivedMessage>> {
        Ok(if self.max <= 1 {
            client.receive(queue, wait)?.into_iter().collect()
        } else {
            client.receive_batch(queue, self.max, wait)?
        })
    }

    /// One message as one line: the --print fields, tab-separated (no field
    /// contains a tab: bodies are escaped or base64).
    fn line(&self, m: &ReceivedMessage) -> String {
        let field = |f: &PrintField| match f {
            PrintField::Body if self.base64 => encode_base64(&m.body),
            PrintField::Body => line_text(&m.body).into_owned(),
            PrintField::Id => m.msg_id.to_string(),
            PrintField::Handle => m.receipt_handle.to_string(),
        };
        self.print.iter().map(field).collect::<Vec<_>>().join("\t")
    }

    fn json<'m>(&self, m: &'m ReceivedMessage) -> MessageJson<'m> {
        MessageJson::new(m, self.base64)
    }

    /// Prints one message (plain output; the JSON shapes differ per mode).
    /// Where a dead-lettered message came from is for the person watching.
    fn print_plain(&self, out: &mut Out, m: &ReceivedMessage) -> Result<()> {
        out.line(self.line(m))?;
        if let Some(origin) = &m.origin {
            eprintln!("{}", origin_note(m.msg_id, origin));
        }
        Ok(())
    }
}

/// Prints before deleting, and deletes only after the output is flushed: a
/// message must never be deleted without having been shown.
fn receive(client: &mut Client, out: &mut Out, queue: &str, how: &Receiving<'_>) -> Result<()> {
    let messages = how.once(client, queue, how.wait)?;
    if messages.is_empty() {
        eprintln!("no message");
        if out.json {
            out.json(&[(); 0])?;
        }
        return Ok(());
    }
    if out.json {
        out.json(&messages.iter().map(|m| how.json(m)).collect::<Vec<_>>())?;
    } else {
        for m in &messages {
            how.print_plain(out, m)?;
        }
    }
    out.flush()?;
    if how.delete {
        delete_received(client, queue, &messages)?;
    }
    Ok(())
}

/// `receive --follow`: long-polls again and again, printing (and with
/// --delete deleting) each batch as it comes, until interrupted or until
/// nobody reads stdout any more. A message interrupted between being
/// printed and deleted comes back after its visibility timeout: at least
/// once, never lost.
fn receive_follow(client: &mut Client, out: &mut Out, queue: &str, how: &Receiving<'_>) -> Result<()> {
    let wait = Some(how.wait.unwrap_or(POLLING_WAIT_SECONDS_MAX));
    loop {
        let messages = how.once(client, queue, wait)?;
        let printed = messages.iter().try_for_each(|m| match out.json {
            true => out.json(&how.json(m)),
            false => how.print_plain(out, m),
        });
        match printed.and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if is_broken_pipe(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
        if !how.delete || messages.is_empty() {
            continue;
        }
        // A failed delete (the lease ran out first) means the message comes
        // back later: worth a warning, not the end of the stream.
        if let Err(e) = delete_received(client, queue, &messages) {
            match e.downcast_ref::<ClientError>() {
                Some(ClientError::Server { .. }) => eprintln!("warning: {e:#}"),
                _ => return Err(e),
            }
        }
    }
}

/// The reader of our stdout went away (`cmq receive --follow | head`).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}

fn delete_received(client: &mut Client, queue: &str, messages: &[ReceivedMessage]) -> Result<()> {
    if let [only] = messages {
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

/// Pages through the queue, printing each page as it arrives: a queue can
/// be far longer than is sensible to hold.
fn peek(client: &mut Client, out: &mut Out, queue: &str, limit: u64, with_body: bool) -> Result<()> {
    let mut shown: u64 = 0;
    let mut cursor = 0;
    if out.json {
        write!(out.stdout, "[").context("writing output")?;
    } else {
        out.line(peek_header(with_body))?;
    }
    loop {
        let want = (limit - shown).min(PEEK_MSGS_MAX as u64) as u16;
        let page = client.peek_messages(queue, cursor, want, with_body)?;
        for m in &page.messages {
            if out.json {
                if shown > 0 {
                    write!(out.stdout, ",").context("writing output")?;
                }
                serde_json::to_writer(&mut out.stdout, &PeekedJson::new(m, with_body)).context("writing output")?;
            } else {
                out.line(peek_row(m, with_body))?;
            }
            shown += 1;
        }
        cursor = page.next_cursor;
        if cursor == 0 || shown >= limit {
            break;
        }
    }
    if out.json {
        writeln!(out.stdout, "]").context("writing output")?;
    }
    if cursor != 0 {
        eprintln!("{shown} messages shown, more follow: --max N or --all for more");
    } else if shown == 0 {
        eprintln!("no messages");
    }
    Ok(())
}

/// Asks on the terminal, showing what would go.
fn confirm_purge(client: &mut Client, queue: &str) -> Result<()> {
    let info = client.queue_info(queue)?;
    let question = format!("Purge every message of queue {queue} ({})? This cannot be undone.", held_text(&info));
    if !ask_yes(&question)? {
        bail!("not purged");
    }
    Ok(())
}

/// Messages a queue-info shows as held: ready, in flight, delayed.
fn held(info: &QueueInfo) -> u64 {
    info.active_msg_num + info.inactive_msg_num + info.delay_msg_num
}

fn held_text(info: &QueueInfo) -> String {
    format!("{} ready, {} in flight, {} delayed", info.active_msg_num, info.inactive_msg_num, info.delay_msg_num)
}

/// An empty queue goes without asking. One that holds messages is deleted
/// only after a yes on the terminal; without a terminal there is nobody to
/// ask, and --force is the way to say it is meant (as purge's --yes).
fn confirm_delete_queue(client: &mut Client, queue: &str) -> Result<()> {
    let info = client.queue_info(queue)?;
    let n = held(&info);
    if n == 0 {
        return Ok(());
    }
    let what = format!("{n} message{} ({})", if n == 1 { "" } else { "s" }, held_text(&info));
    if !io::stdin().is_terminal() {
        bail!(
            "queue {queue} holds {what}: refusing to delete it without --force (stdin is not a terminal to \
             confirm on)"
        );
    }
    if !ask_yes(&format!("Delete queue {queue} and the {what} it holds? This cannot be undone."))? {
        bail!("not deleted");
    }
    Ok(())
}

/// `question [y/N] ` on stderr; true for y or yes on stdin.
fn ask_yes(question: &str) -> Result<bool> {
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    io::stdin().lock().read_line(&mut answer).context("reading the answer")?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// Why `cmq` could not reach the broker, in words: "timed out after 10 s
/// connecting to HOST:PORT (is cmqd running?)" rather than the OS's
/// "Resource temporarily unavailable (os error 11)". Stays a `ClientError`
/// so that --json still names the failure (TIMEOUT, CONNECTION_REFUSED).
pub fn connect_failed(e: ClientError, server: &str, timeout: Option<Duration>) -> anyhow::Error {
    let (kind, text) = match &e {
        // Several seeds: the client's error lists what each one did.
        ClientError::Io(io) if server.contains(',') => (io.kind(), format!("{io} (is cmqd running?)")),
        e if e.is_timeout() => {
            let after = timeout.map_or_else(|| "waiting".to_owned(), |t| format!("after {} s", t.as_secs()));
            (io::ErrorKind::TimedOut, format!("timed out {after} connecting to {server} (is cmqd running?)"))
        }
        ClientError::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => (
            io::ErrorKind::ConnectionRefused,
            format!("cannot connect to {server}: connection refused (is cmqd running?)"),
        ),
        ClientError::Io(io) => (io.kind(), format!("cannot connect to {server}: {io}")),
        _ => return anyhow::Error::new(e).context(format!("cannot connect to {server}")),
    };
    ClientError::Io(io::Error::new(kind, text)).into()
}

/// What `cmq redrive` says on stderr about the task it started.
fn redrive_started_note(task: &RedriveInfo) -> String {
    if task.state != RedriveState::Running {
        return format!("redrive {} {}: nothing to move from {}", task.id, task.state.as_str(), task.dead_letter_queue);
    }
    let rate =
        if task.rate_per_second == 0 { "no rate limit".to_owned() } else { format!("{}/s", task.rate_per_second) };
    format!(
        "redrive {} running: moving {} messages from {} to {} ({rate}); follow with: cmq redrive-status {} --watch",
        task.id,
        task.remaining,
        task.dead_letter_queue,
        redrive_target(task),
        task.id
    )
}

fn print_redrive(out: &mut Out, task: &RedriveInfo) -> Result<()> {
    if out.json {
        out.json(&RedriveJson::from(task))
    } else {
        out.line(format_args!("{} {}", task.id, task.state.as_str()))
    }
}

/// One listing, or with `watch` a new one every second until no task shown
/// is running. On a terminal each listing replaces the last; otherwise a
/// listing is printed only when it differs from the previous one.
fn redrive_status(client: &mut Client, out: &mut Out, id: Option<u64>, watch: bool) -> Result<()> {
    let redraw = watch && !out.json && out.stdout.is_terminal();
    let mut last = None;
    loop {
        let mut tasks = client.list_redrives()?;
        if let Some(id) = id {
            tasks.retain(|t| t.id == id);
            if tasks.is_empty() {
                let message = format!("no redrive task with id {id}");
                return Err(ClientError::Server { code: ErrorCode::REDRIVE_NOT_FOUND, message }.into());
            }
        }
        let text = if out.json {
            let all: Vec<RedriveJson> = tasks.iter().map(RedriveJson::from).collect();
            format!("{}\n", serde_json::to_string(&all).context("encoding JSON")?)
        } else if tasks.is_empty() {
            String::new()
        } else {
            redrive_table(&tasks)
        };
        if last.as_ref() != Some(&text) {
            if redraw {
                // Home and clear: the new table replaces the old one.
                write!(out.stdout, "\x1b[H\x1b[2J").context("writing output")?;
            }
            write!(out.stdout, "{text}").context("writing output")?;
            out.flush()?;
            if tasks.is_empty() && !out.json {
                eprintln!("no redrive tasks");
            }
            last = Some(text);
        }
        if !watch || tasks.iter().all(|t| t.state != RedriveState::Running) {
            return Ok(());
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Commit,
    Rollback,
    Ask,
}

/// Registers as the group's checker and answers until interrupted (or, with
/// --ask, until stdin ends).
fn tx_checker(cli: &Cli, timeout: Option<Duration>, group: &str, mode: Mode) -> Result<()> {
    let mut checker = TransactionChecker::connect_secure(
        cli.server.as_str(),
        group,
        timeout,
        cli.creds.resolve()?.as_ref(),
        cli.tls.resolve()?.as_ref(),
    )
    .map_err(|e| match e {
        e @ ClientError::Server { .. } => {
            anyhow::Error::new(e).context(format!("cannot register as the checker of {group}"))
        }
        e => connect_failed(e, &cli.server, timeout),
    })?;
    let what = match mode {
        Mode::Commit => "committing every message asked about",
        Mode::Rollback => "rolling back every message asked about",
        Mode::Ask => "asking about each message",
    };
    eprintln!("answering transaction checks for group {group} on {}, {what}; Ctrl-C stops", cli.server);
    let stopper = checker.stopper();
    // Locked per check, not for the whole run: the checker may serve
    // several nodes from several threads (one callback at a time).
    let (stdin, stdout) = (io::stdin(), io::stdout());
    let json = cli.json;
    let decide = |check: &TransactionCheck| match mode {
        Mode::Commit => Some(true),
        Mode::Rollback => Some(false),
        Mode::Ask => ask(&mut stdin.lock(), check, &stopper),
    };
    let report = |o: &CheckOutcome<'_>| {
        let mut stdout = stdout.lock();
        let written = if json {
            let error = o.result.as_ref().err().map(|e| ErrorJson {
                code: e.code().map(|c| c.0),
                name: client_error_name(e),
                message: e.to_string(),
            });
            serde_json::to_writer(&mut stdout, &CheckJson::new(o.check, o.decision, error))
                .map_err(io::Error::from)
                .and_then(|()| writeln!(stdout))
        } else {
            let refused = o.result.as_ref().err().map(|e| format!(" (refused: {e})")).unwrap_or_default();
            writeln!(stdout, "{} -> {}{refused}", check_line(o.check), decision_text(o.decision))
        };
        // Nobody is reading any more: stop rather than answer unseen.
        if written.and_then(|()| stdout.flush()).is_err() {
            stopper.stop();
        }
    };
    let stats = checker.run_with_report(decide, report)?;
    eprintln!(
        "stopped after {} checks: {} committed, {} rolled back, {} unanswered, {} refused",
        stats.checks, stats.committed, stats.rolled_back, stats.undecided, stats.refused
    );
    Ok(())
}

/// One question per check on stderr, one answer per line on stdin; the end
/// of stdin stops the checker.
fn ask(stdin: &mut io::StdinLock<'_>, check: &TransactionCheck, stopper: &CheckerStopper) -> Option<bool> {
    eprintln!("{}", check_line(check));
    loop {
        eprint!("commit, rollback or skip (ask again later)? [c/r/s] ");
        let mut line = String::new();
        match stdin.read_line(&mut line) {
            Ok(0) | Err(_) => {
                eprintln!();
                stopper.stop();
                return None;
            }
            Ok(_) => match line.trim().to_ascii_lowercase().as_str() {
                "c" | "commit" => return Some(true),
                "r" | "rollback" => return Some(false),
                "s" | "skip" | "" => return None,
                other => eprintln!("{other:?}: answer c, r or s"),
            },
        }
    }
}
