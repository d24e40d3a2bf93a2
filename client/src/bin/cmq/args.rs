//! Command-line syntax. Help texts are built from the protocol's constants
//! so ranges and defaults shown cannot drift from what the broker enforces.

use std::path::PathBuf;

use clap::{ArgGroup, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use cmq_client::protocol::limits::{
    BATCH_MSGS_MAX, LIST_PAGE_DEFAULT, LIST_PAGE_MAX, PEEK_MSGS_MAX, POLLING_WAIT_SECONDS_MAX,
};
use cmq_client::protocol::limits::{TOPIC_FILTERS_MAX, TOPIC_TAGS_MAX};
use cmq_client::protocol::queue_attributes::{
    AttrRange, FIRST_QUERY_INTERVAL, MAX_MSG_HEAP_NUM, MAX_MSG_SIZE, MAX_QUERY_COUNT, MAX_RECEIVE_COUNT,
    MAX_TIME_TO_LIVE, MSG_RETENTION_SECONDS, POLLING_WAIT_SECONDS, REWIND_SECONDS, VISIBILITY_TIMEOUT,
};
use cmq_client::protocol::topics::{TOPIC_MAX_MSG_SIZE, TOPIC_MSG_RETENTION_SECONDS};
use cmq_client::{
    FilterType, FlushPolicy, NotifyContentFormat, NotifyStrategy, QueueAttributesUpdate, ReceiptHandle,
    TopicAttributesUpdate, TxDefault,
};

use crate::time::{now_ms, parse_time, TIME_FORMATS};

/// Messages `peek` shows when given neither --max nor --all.
pub const PEEK_DEFAULT: u32 = 20;

/// Global flags sort after each subcommand's own in its help.
const GLOBAL_ORDER: usize = 1000;

/// The port cmqd listens on by default, used when --server names only a host.
pub const DEFAULT_PORT: u16 = 7700;

#[derive(Debug, Parser)]
#[command(
    name = "cmq",
    version,
    about = "Command-line client for the cmq message-queue broker",
    after_help = "Exit status: 0 on success (also when a receive finds no message), 1 when the broker refuses a \
                  request or cannot be reached (stderr: \"error: <code> <NAME>: <message>\"), 2 on a usage error.\n\
                  Message, queue, topic and subscription ids and receipt handles are decimal strings; times are \
                  Unix seconds.\n\n\
                  Topics: a publish reaches every subscription whose filter matches, each getting its own copy, \
                  delivered into a queue or POSTed to a URL. For example:\n  \
                  cmq create-topic events --filter-type routing-key\n  \
                  cmq subscribe events orders --queue orders --binding-key 'order.*'\n  \
                  cmq subscribe events audit --http https://example.com/hook --binding-key 'audit.#'\n  \
                  cmq publish events 'order 42 paid' --routing-key order.paid"
)]
pub struct Cli {
    /// Broker address, or several nodes of a cluster comma-separated (tried in order; the rest of the cluster is
    /// learned from the first that answers); a host without a port means port 7700
    #[arg(
        long,
        global = true,
        display_order = GLOBAL_ORDER,
        env = "CMQ_SERVER",
        default_value = "127.0.0.1:7700",
        value_name = "HOST[:PORT][,...]",
        value_parser = server_list
    )]
    pub server: String,

    /// Print machine-readable JSON on stdout; failures print {"code","name","message"}
    #[arg(long, global = true, display_order = GLOBAL_ORDER)]
    pub json: bool,

    /// Seconds to wait for the broker to connect or answer, on top of any receive polling wait (0: forever)
    #[arg(
        long,
        global = true,
        display_order = GLOBAL_ORDER,
        default_value_t = 10,
        value_name = "SECONDS",
        value_parser = whole_u64
    )]
    pub timeout: u64,

    #[command(flatten)]
    pub creds: crate::keys::CredentialArgs,

    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a queue and print its id; omitted attributes take the broker's defaults
    CreateQueue {
        /// Queue name: 1-64 letters, digits, '-' or '_', starting with a letter
        name: String,
        #[command(flatten)]
        attrs: QueueAttrArgs,
    },

    /// Delete a queue and every message in it; asks first if it holds messages, unless --force
    DeleteQueue {
        /// Queue name
        name: String,
        /// Delete even if the queue holds messages, without asking (required when stdin is not a terminal)
        #[arg(long, short = 'f')]
        force: bool,
    },

    /// List queue names in creation order (with --json: totalCount and queueList with ids)
    ListQueues {
        /// Only queues whose name starts with this
        #[arg(long, default_value = "", hide_default_value = true)]
        prefix: String,
        /// Only queues whose name contains this
        #[arg(long, default_value = "", hide_default_value = true)]
        contains: String,
        /// Skip this many matching queues
        #[arg(long, default_value_t = 0)]
        offset: u32,
        #[arg(
            long,
            default_value_t = 0,
            help = format!("Queues per page, at most {LIST_PAGE_MAX}; 0 asks for the broker's default ({LIST_PAGE_DEFAULT})")
        )]
        limit: u32,
    },

    /// Show a queue's attributes and message counts (CMQ attribute names)
    QueueInfo {
        /// Queue name
        name: String,
    },

    /// Change a queue's attributes (at least one) and show the result
    #[command(mut_group("QueueAttrArgs", |g| g.required(true)))]
    SetQueue {
        /// Queue name
        name: String,
        #[command(flatten)]
        attrs: QueueAttrArgs,
        /// Remove the dead-letter policy (deadLetterQueueName, maxReceiveCount, maxTimeToLive)
        #[arg(long, group = "QueueAttrArgs", conflicts_with_all = ["dead_letter_queue", "max_receive_count", "max_time_to_live"])]
        no_dead_letter: bool,
    },

    /// Send one message and print its msgId
    #[command(after_help = "The body is the argument's text, all of stdin (BODY is -) or all of a file (--file), \
                            byte for byte, trailing newline included: one message either way. With --base64 that \
                            input is base64 and the decoded bytes are sent (binary bodies).")]
    Send {
        /// Queue name
        name: String,
        #[command(flatten)]
        body: BodyArgs,
        /// Seconds before the message becomes receivable
        #[arg(long, default_value_t = 0, value_name = "SECONDS")]
        delay: u32,
    },

    #[command(about = format!(
        "Send one message per stdin line, {BATCH_MSGS_MAX} per request, printing one msgId per line \
         (--json: an array); empty lines are skipped, since a body cannot be empty"
    ))]
    SendBatch {
        /// Queue name
        name: String,
        /// Seconds before the messages become receivable
        #[arg(long, default_value_t = 0, value_name = "SECONDS")]
        delay: u32,
        /// Each line is base64: send the bytes it decodes to
        #[arg(long)]
        base64: bool,
    },

    /// Receive messages and print each on its own line (--json: an array of messages);
    /// prints "no message" on stderr and exits 0 if none arrived
    #[command(after_help = "Plain output is one message a line: the fields of --print, tab-separated. A body keeps \
                            its text except that \\ becomes \\\\, newline \\n, carriage return \\r, tab \\t, and \
                            other control characters and bytes that are not UTF-8 \\xNN, so a line is always exactly \
                            one message; --base64 prints the exact bytes instead. With --delete a message is deleted \
                            only after it has been printed.")]
    Receive {
        /// Queue name
        name: String,
        #[arg(
            long,
            value_name = "SECONDS",
            value_parser = clap::value_parser!(u32).range(0..=i64::from(POLLING_WAIT_SECONDS_MAX)),
            help = format!("Long-poll up to this many seconds (0-{POLLING_WAIT_SECONDS_MAX}) [default: the queue's pollingWaitSeconds]")
        )]
        wait: Option<u32>,
        #[arg(
            long,
            value_name = "N",
            default_value_t = 1,
            value_parser = clap::value_parser!(u16).range(1..=BATCH_MSGS_MAX as i64),
            help = format!("Receive up to this many messages (1-{BATCH_MSGS_MAX}) in one request")
        )]
        max: u16,
        /// Delete the received messages after printing them
        #[arg(long)]
        delete: bool,
        /// Keep receiving until interrupted (Ctrl-C), printing each message as it arrives (--json: one object
        /// a line); long-polls --wait seconds at a time [default wait: 30]
        #[arg(long)]
        follow: bool,
        /// What to print for each message, comma-separated, as tab-separated columns: body, id (msgId),
        /// handle (receipt handle, for delete and change-visibility); --json prints every field
        #[arg(long, value_enum, value_name = "FIELD,...", value_delimiter = ',', default_value = "body")]
        print: Vec<PrintField>,
        /// Print bodies base64-encoded: the exact bytes, binary-safe (with --json: msgBody is base64)
        #[arg(long)]
        base64: bool,
    },

    /// Delete a received message
    Delete {
        /// Queue name
        name: String,
        /// Receipt handle from a receive
        receipt: ReceiptHandle,
    },

    /// Make a received message invisible for SECONDS from now (0: return it now); prints nextVisibleTime
    ChangeVisibility {
        /// Queue name
        name: String,
        /// Receipt handle from a receive
        receipt: ReceiptHandle,
        /// Seconds of invisibility from now
        seconds: u32,
    },

    /// Show messages without receiving them: ready, delayed, in flight, half (transaction) and deleted but
    /// rewindable, oldest first (--json: an array); changes nothing
    #[command(after_help = "Columns: msgId, state, times received, enqueue time, next visible time (in flight: \
                            when the lease expires; delayed: when it becomes ready), body size in bytes; FROM \
                            (source queue of dead-lettered messages) and BODY when there are any / when asked.")]
    Peek {
        /// Queue name
        name: String,
        #[arg(
            long,
            value_name = "N",
            conflicts_with = "all",
            value_parser = clap::value_parser!(u32).range(1..),
            help = format!(
                "Show at most N messages, fetched {PEEK_MSGS_MAX} a request [default: {PEEK_DEFAULT}]"
            )
        )]
        max: Option<u32>,
        /// Show every message, paging through the queue
        #[arg(long)]
        all: bool,
        /// Show the bodies too (non-UTF-8 bytes as \xNN, control characters escaped)
        #[arg(long)]
        body: bool,
    },

    /// Show one message's state by msgId: ready, delayed, in flight until when, deleted, dead-lettered, expired…
    Message {
        /// Queue name
        name: String,
        /// Message id (from send or receive)
        #[arg(value_parser = whole_u64)]
        msg_id: u64,
    },

    /// Make the messages enqueued since --since receivable again, oldest first, deleted ones still within the
    /// queue's rewindSeconds included; prints how many deleted messages came back
    #[command(after_help = "Messages received again keep their msgIds; deleted ones get new receipt handles.")]
    Rewind {
        /// Queue name
        name: String,
        #[arg(
            long,
            value_name = "TIME",
            allow_hyphen_values = true,
            value_parser = since_parser,
            help = format!("Rewind to this time: {TIME_FORMATS}")
        )]
        since: u64,
    },

    /// Drop every message of a queue, durably, and print how many; asks first unless --yes
    Purge {
        /// Queue name
        name: String,
        /// Do not ask for confirmation (required when stdin is not a terminal)
        #[arg(long, short = 'y')]
        yes: bool,
    },

    /// Send a transaction (half) message: stored but invisible until committed; prints its msgId
    #[command(after_help = "Resolve it with `cmq commit` or `cmq rollback`. Unresolved after the queue's \
                            firstQueryInterval, the broker asks the group's checker (`cmq tx-checker`), up to \
                            maxQueryCount times, then applies the queue's transactionDefault. The body is given as \
                            for `cmq send`.")]
    SendTx {
        /// Queue name
        name: String,
        #[command(flatten)]
        body: BodyArgs,
        /// Producer group whose checker the broker asks about it
        #[arg(long, value_name = "GROUP")]
        group: String,
    },

    /// Commit a transaction message: it becomes receivable
    Commit {
        /// Queue name
        name: String,
        /// Message id from send-tx
        #[arg(value_parser = whole_u64)]
        msg_id: u64,
    },

    /// Roll back a transaction message: it is discarded
    Rollback {
        /// Queue name
        name: String,
        /// Message id from send-tx
        #[arg(value_parser = whole_u64)]
        msg_id: u64,
    },

    /// Answer the broker's transaction checks for a producer group until interrupted, printing each
    /// check and the answer (--json: one object a line)
    #[command(group(ArgGroup::new("decision").required(true).args(["commit", "rollback", "ask"])))]
    TxChecker {
        /// Producer group to answer for
        #[arg(long, value_name = "GROUP")]
        group: String,
        /// Commit every message asked about
        #[arg(long)]
        commit: bool,
        /// Roll back every message asked about
        #[arg(long)]
        rollback: bool,
        /// Ask for each message: one answer a line on stdin (c/commit, r/rollback, s/skip; end of input stops)
        #[arg(long)]
        ask: bool,
    },

    /// Start moving a dead-letter queue's messages back to their source queues (or to --to) in the
    /// background; prints the task id and state
    Redrive {
        /// The dead-letter queue to empty
        dead_letter_queue: String,
        /// Send every message to this queue instead of back where it came from
        #[arg(long, value_name = "QUEUE")]
        to: Option<String>,
        /// Move at most N messages a second (0: as fast as possible)
        #[arg(long, value_name = "N", default_value_t = 0)]
        rate: u32,
    },

    /// List redrive tasks (or one) with what they moved and what remains (--json: an array)
    RedriveStatus {
        /// Only this task
        #[arg(value_parser = whole_u64)]
        id: Option<u64>,
        /// Refresh every second until every task shown is done or cancelled
        #[arg(long)]
        watch: bool,
    },

    /// Cancel a running redrive task (messages moved so far stay moved); prints its id and state
    RedriveCancel {
        /// Task id from redrive or redrive-status
        #[arg(value_parser = whole_u64)]
        id: u64,
    },

    /// Create a topic and print its id; omitted attributes take the broker's defaults
    #[command(after_help = "filterType and msgRetentionSeconds cannot change after creation; maxMsgSize can \
                            (set-topic).")]
    CreateTopic {
        /// Topic name: 1-64 letters, digits, '-' or '_', starting with a letter
        name: String,
        /// How subscriptions select messages (filterType): tag = the message's tags against each
        /// subscription's filter tags, routing-key = its routing key against binding keys [default: tag]
        #[arg(long, value_enum, value_name = "TYPE")]
        filter_type: Option<FilterTypeArg>,
        #[arg(long, value_name = "BYTES", help = attr_help("Largest message body", " bytes", &TOPIC_MAX_MSG_SIZE))]
        max_msg_size: Option<u32>,
        #[arg(
            long,
            value_name = "SECONDS",
            help = attr_help("How long a message is kept for delivery", "s", &TOPIC_MSG_RETENTION_SECONDS)
        )]
        msg_retention_seconds: Option<u32>,
    },

    /// Delete a topic and all its subscriptions; deliveries still pending are dropped
    DeleteTopic {
        /// Topic name
        name: String,
    },

    /// List topic names in creation order (with --json: totalCount and topicList with ids)
    ListTopics {
        /// Only topics whose name starts with this
        #[arg(long, default_value = "", hide_default_value = true)]
        prefix: String,
        /// Only topics whose name contains this
        #[arg(long, default_value = "", hide_default_value = true)]
        contains: String,
        /// Skip this many matching topics
        #[arg(long, default_value_t = 0)]
        offset: u32,
        #[arg(
            long,
            default_value_t = 0,
            help = format!("Topics per page, at most {LIST_PAGE_MAX}; 0 asks for the broker's default ({LIST_PAGE_DEFAULT})")
        )]
        limit: u32,
    },

    /// Show a topic's attributes, subscription count and pending deliveries (CMQ attribute names)
    TopicInfo {
        /// Topic name
        name: String,
    },

    /// Change a topic's maxMsgSize (the only attribute that can change) and show the result
    SetTopic {
        /// Topic name
        name: String,
        #[arg(
            long,
            value_name = "BYTES",
            help = format!(
                "Largest message body ({}: {}-{} bytes)",
                TOPIC_MAX_MSG_SIZE.name, TOPIC_MAX_MSG_SIZE.min, TOPIC_MAX_MSG_SIZE.max
            )
        )]
        max_msg_size: u32,
    },

    /// Publish one message to a topic and print its msgId; it reaches every subscription whose filter matches
    /// (none matching: it is dropped)
    #[command(after_help = "The body is given as for `cmq send`: text, - for all of stdin, or --file, optionally \
                            --base64.")]
    Publish {
        /// Topic name
        topic: String,
        #[command(flatten)]
        body: BodyArgs,
        #[command(flatten)]
        select: PublishArgs,
    },

    #[command(about = format!(
        "Publish one message per stdin line, {BATCH_MSGS_MAX} per request, all with the same tags and routing key, \
         printing one msgId per line (--json: an array); empty lines are skipped"
    ))]
    PublishBatch {
        /// Topic name
        topic: String,
        #[command(flatten)]
        select: PublishArgs,
        /// Each line is base64: publish the bytes it decodes to
        #[arg(long)]
        base64: bool,
    },

    /// Subscribe to a topic: deliver matching messages into a queue or POST them to a URL; prints the
    /// subscription id, and for --http the secret pushes are signed with
    #[command(
        group(ArgGroup::new("endpoint").required(true).args(["queue", "http"])),
        after_help = format!(
            "Each HTTP push carries X-CMQ-Timestamp and {PUSH_SIGNATURE_HEADER}: sha256= the hex HMAC-SHA256, \
             keyed with the subscription's push secret as text (also shown by subscription-info), of the \
             timestamp, '.', and the request body. docs/HTTP_PUSH.md has the format and how to verify it."
        )
    )]
    Subscribe {
        /// Topic name
        topic: String,
        /// Subscription name, unique within the topic: 1-64 letters, digits, '-' or '_', starting with a letter
        name: String,
        /// Deliver into this queue of the broker (each message gets a new msgId there)
        #[arg(long, value_name = "QUEUE")]
        queue: Option<String>,
        /// POST each message to this http:// or https:// URL
        #[arg(long, value_name = "URL")]
        http: Option<String>,
        #[command(flatten)]
        filters: FilterArgs,
        #[command(flatten)]
        push: PushArgs,
        /// HTTP: put pushes that exhaust their retries into this queue instead of dropping them
        /// (deadLetterQueueName) [default: none]
        #[arg(long, value_name = "QUEUE", requires = "http", conflicts_with = "queue")]
        dead_letter_queue: Option<String>,
    },

    /// Remove a subscription; deliveries still pending for it are dropped
    Unsubscribe {
        /// Topic name
        topic: String,
        /// Subscription name
        name: String,
    },

    /// List a topic's subscriptions: name, protocol, endpoint (with --json: totalCount and subscriptionList
    /// with ids)
    ListSubscriptions {
        /// Topic name
        topic: String,
        /// Only subscriptions whose name contains this
        #[arg(long, default_value = "", hide_default_value = true)]
        contains: String,
        /// Skip this many matching subscriptions
        #[arg(long, default_value_t = 0)]
        offset: u32,
        #[arg(
            long,
            default_value_t = 0,
            help = format!(
                "Subscriptions per page, at most {LIST_PAGE_MAX}; 0 asks for the broker's default ({LIST_PAGE_DEFAULT})"
            )
        )]
        limit: u32,
    },

    /// Show a subscription's settings, push secret and delivery counts (CMQ attribute names)
    SubscriptionInfo {
        /// Topic name
        topic: String,
        /// Subscription name
        name: String,
    },

    /// Change a subscription (at least one setting) and show the result; a list given replaces the stored one,
    /// settings not given are kept
    #[command(
        group(ArgGroup::new("change").required(true).multiple(true)
            .args(["tags", "clear_tags", "binding_keys", "clear_binding_keys", "notify_strategy", "format"])),
        mut_arg("tags", |a| a.help(format!(
            "Receive only messages carrying one of these tags (filterTag; repeatable, up to {TOPIC_FILTERS_MAX}); \
             replaces the stored tags [default: unchanged]"
        ))),
        mut_arg("binding_keys", |a| a.help(format!(
            "Receive messages whose routing key matches one of these (bindingKey; repeatable, up to \
             {TOPIC_FILTERS_MAX}; '*' one word, '#' one or more); replaces the stored keys [default: unchanged]"
        ))),
        mut_arg("notify_strategy", |a| a.help("HTTP: how failed pushes are retried (notifyStrategy) [default: unchanged]")),
        mut_arg("format", |a| a.help("What a delivery carries (notifyContentFormat) [default: unchanged]")),
    )]
    SetSubscription {
        /// Topic name
        topic: String,
        /// Subscription name
        name: String,
        #[command(flatten)]
        filters: FilterArgs,
        /// Remove every filter tag: the subscription then receives every message of a tag topic
        #[arg(long, conflicts_with = "tags")]
        clear_tags: bool,
        /// Remove every binding key: the subscription then receives nothing from a routing-key topic
        #[arg(long, conflicts_with = "binding_keys")]
        clear_binding_keys: bool,
        #[command(flatten)]
        push: PushArgs,
    },

    /// Remove every filter tag of a subscription: it then receives every message of its tag topic
    ClearFilterTags {
        /// Topic name
        topic: String,
        /// Subscription name
        name: String,
    },

    /// Check that the broker answers, and show its name, shard count and round-trip time
    Ping,

    /// Show the broker's metrics once: per shard and per queue totals, p99 latencies (--json for scripts)
    Stats(crate::top::StatsArgs),

    /// Live view of the broker, refreshed every --interval seconds: rates, depth, in flight, p99, fsync time
    Top(crate::top::TopArgs),

    /// A cluster's nodes and Raft groups: status, leadership transfer, membership
    #[command(after_help = "Every shard is a Raft group with a replica on each node; its leader runs its requests. \
                            --server may list several nodes: the first that answers is asked, and each node for \
                            its own view (only a shard's leader knows its followers' lag).")]
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },

    /// Keys (SecretId/SecretKey) and their lifecycle: create, list, delete, rotate
    Key {
        #[command(subcommand)]
        command: crate::keys::KeyCommand,
    },

    /// A key's permissions: a CAM policy document (docs/SECURITY.md)
    Policy {
        #[command(subcommand)]
        command: crate::keys::PolicyCommand,
    },

    /// Show which key this client authenticates as, and the broker's authentication mode
    Whoami,
}

/// `cmq cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the nodes, and each shard's leader, term, commit index, followers' lag and state digest
    /// (--json: every node's full answer)
    Status,

    /// Make a node the leader of a shard, and wait until the cluster map shows it
    TransferLeader {
        /// The shard (0 .. shard count - 1)
        #[arg(long, value_name = "N")]
        shard: u16,
        /// The node to lead it (a voter of the shard's group)
        #[arg(long, value_name = "NODE", value_parser = node_id)]
        to: u64,
    },

    /// Add a node to every shard's group, and wait until every shard's leader counts it; the node
    /// (started with --peers naming the others) catches up by itself
    AddNode {
        /// The new node's id (its --node-id)
        #[arg(long, value_name = "N", value_parser = node_id)]
        id: u64,
        /// Where the other nodes reach it (its --peer-listen)
        #[arg(long, value_name = "HOST:PORT")]
        peer_addr: String,
    },

    /// Remove a node from every shard's group, and wait until no shard's leader counts it
    RemoveNode {
        /// The node's id
        #[arg(long, value_name = "N", value_parser = node_id)]
        id: u64,
    },
}

/// A node id: 1 or more (0 means "no node" on the wire).
fn node_id(s: &str) -> Result<u64, String> {
    match whole_u64(s)? {
        0 => Err("node ids start at 1".to_owned()),
        id => Ok(id),
    }
}

/// `--server`: one address or several, comma-separated, each as
/// [`server_address`] reads it.
pub fn server_list(s: &str) -> Result<String, String> {
    let list: Result<Vec<String>, String> = s
        .split(',')
        .map(str::trim)
        .map(|a| if a.is_empty() { Err(format!("{s:?}: an empty address in the list")) } else { server_address(a) })
        .collect();
    let list = list?;
    if list.len() > cmq_client::seeds::SEEDS_MAX {
        return Err(format!("{} addresses; at most {}", list.len(), cmq_client::seeds::SEEDS_MAX));
    }
    Ok(list.join(","))
}

/// Where a message body comes from: the argument, stdin or a file.
#[derive(Debug, Args)]
pub struct BodyArgs {
    /// Message body as text; - reads all of stdin as one message
    #[arg(value_name = "BODY", required_unless_present = "file")]
    pub body: Option<String>,
    /// Read the body from this file: all of it is one message
    #[arg(long, value_name = "PATH", conflicts_with = "body")]
    pub file: Option<PathBuf>,
    /// The body given (argument, stdin or file) is base64 (line breaks ignored): send the bytes it decodes to
    #[arg(long)]
    pub base64: bool,
}

/// What `receive` prints for each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrintField {
    /// The message body
    Body,
    /// The msgId
    Id,
    /// The receipt handle
    Handle,
}

/// The header that carries an HTTP push's signature.
pub const PUSH_SIGNATURE_HEADER: &str = "X-CMQ-Signature";

/// What selects a published message's subscriptions.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[arg(
        long = "tag",
        value_name = "TAG",
        help = format!(
            "Tag the message (repeatable, up to {TOPIC_TAGS_MAX} tags of up to 16 characters); on a tag topic it \
             reaches subscriptions without filter tags and those with a tag in common [default: none]"
        )
    )]
    pub tags: Vec<String>,
    /// Routing key: dot-separated words, up to 64 bytes and 16 words; on a routing-key topic it reaches
    /// subscriptions with a matching binding key [default: none, which matches no binding key]
    #[arg(long, value_name = "KEY", default_value = "", hide_default_value = true)]
    pub routing_key: String,
}

/// A subscription's filters; for set-subscription, a flag given replaces the stored list.
#[derive(Debug, Args)]
pub struct FilterArgs {
    #[arg(
        long = "tag",
        value_name = "TAG",
        help = format!(
            "Receive only messages carrying one of these tags (filterTag; repeatable, up to {TOPIC_FILTERS_MAX} of \
             up to 16 characters; tag topics) [default: none, which receives every message]"
        )
    )]
    pub tags: Vec<String>,
    #[arg(
        long = "binding-key",
        value_name = "KEY",
        help = format!(
            "Receive messages whose routing key matches one of these (bindingKey; repeatable, up to {TOPIC_FILTERS_MAX}; \
             routing-key topics): dot-separated words, '*' matches exactly one word, '#' one or more \
             [default: none, which receives nothing]"
        )
    )]
    pub binding_keys: Vec<String>,
}

/// How messages are pushed to HTTP endpoints.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// HTTP: how failed pushes are retried (notifyStrategy) [default: exponential]
    #[arg(long, value_enum, value_name = "STRATEGY")]
    pub notify_strategy: Option<NotifyArg>,
    /// What a delivery carries (notifyContentFormat) [default: simplified for --queue, json for --http]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<FormatArg>,
}

impl PushArgs {
    pub fn notify_strategy(&self) -> Option<NotifyStrategy> {
        self.notify_strategy.map(|n| match n {
            NotifyArg::Backoff => NotifyStrategy::BackoffRetry,
            NotifyArg::Exponential => NotifyStrategy::ExponentialDecayRetry,
        })
    }

    pub fn format(&self) -> Option<NotifyContentFormat> {
        self.format.map(|f| match f {
            FormatArg::Json => NotifyContentFormat::Json,
            FormatArg::Simplified => NotifyContentFormat::Simplified,
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FilterTypeArg {
    /// Message tags against filter tags (filterType 1)
    Tag,
    /// The routing key against binding keys (filterType 2)
    RoutingKey,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NotifyArg {
    /// BACKOFF_RETRY: 3 retries at random 10-20 s intervals, then dropped (or dead-lettered)
    Backoff,
    /// EXPONENTIAL_DECAY_RETRY: retries 1, 2, 4 … s apart, capped at 512 s, for up to a day
    Exponential,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// JSON: a document with the body and its metadata
    Json,
    /// SIMPLIFIED: the raw body
    Simplified,
}

pub fn topic_update(
    filter_type: Option<FilterTypeArg>,
    max_msg_size: Option<u32>,
    msg_retention_seconds: Option<u32>,
) -> TopicAttributesUpdate {
    TopicAttributesUpdate {
        max_msg_size,
        msg_retention_seconds,
        filter_type: filter_type.map(|f| match f {
            FilterTypeArg::Tag => FilterType::Tag,
            FilterTypeArg::RoutingKey => FilterType::RoutingKey,
        }),
    }
}

fn since_parser(s: &str) -> Result<u64, String> {
    parse_time(s, now_ms())
}

/// The command line's grammar, with every value allowed to look like a
/// negative number: `--delay -5` then reaches the value's parser, which says
/// what range it takes, instead of clap suggesting `-- -5`.
pub fn command() -> clap::Command {
    let negative_ok = |a: clap::Arg| {
        if a.get_action().takes_values() {
            a.allow_negative_numbers(true)
        } else {
            a
        }
    };
    Cli::command().mut_args(negative_ok).mut_subcommands(move |sub| sub.mut_args(negative_ok))
}

/// Parses the process's arguments (exits with a usage error, status 2, on bad ones).
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command()).exit())
}

/// Parses `args` (the program name first), for tests.
#[cfg(test)]
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::from_arg_matches(&command().try_get_matches_from(args)?)
}

/// A u64 with a range error for negative numbers (clap's own says only
/// "invalid digit").
fn whole_u64(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| match s.strip_prefix('-').map(|d| d.bytes().all(|b| b.is_ascii_digit())) {
        Some(true) => format!("{s} is not in 0..={}", u64::MAX),
        _ => format!("{s} is not a whole number"),
    })
}

/// `HOST[:PORT]` to `HOST:PORT`, the port defaulting to 7700. IPv6 literals
/// may come bare (`::1`) or bracketed (`[::1]`, `[::1]:7701`).
pub fn server_address(s: &str) -> Result<String, String> {
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(format!("[{s}]:{DEFAULT_PORT}"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(|| format!("{s:?}: no closing ]"))?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{s:?}: {v6:?} is not an IPv6 address"));
        }
        match after {
            "" => (&s[..v6.len() + 2], None),
            _ => (
                &s[..v6.len() + 2],
                Some(after.strip_prefix(':').ok_or_else(|| format!("{s:?}: expected :PORT after ]"))?),
            ),
        }
    } else {
        match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{s:?} names no host"));
    }
    match port {
        None => Ok(format!("{host}:{DEFAULT_PORT}")),
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => Ok(format!("{host}:{port}")),
            _ => Err(format!("{s:?}: the port must be a number from 1 to 65535")),
        },
    }
}

/// Queue attributes; each omitted flag keeps the current value (set-queue)
/// or takes the broker's default (create-queue).
#[derive(Debug, Args)]
pub struct QueueAttrArgs {
    #[arg(
        long,
        value_name = "N",
        value_parser = whole_u64,
        help = attr_help("Most messages the queue may hold", "", &MAX_MSG_HEAP_NUM)
    )]
    pub max_msg_heap_num: Option<u64>,

    #[arg(
        long,
        value_name = "SECONDS",
        help = attr_help("Long-poll wait of receives that do not give one", "s", &POLLING_WAIT_SECONDS)
    )]
    pub polling_wait_seconds: Option<u32>,

    #[arg(
        long,
        value_name = "SECONDS",
        help = attr_help("How long a received message stays invisible", "s", &VISIBILITY_TIMEOUT)
    )]
    pub visibility_timeout: Option<u32>,

    #[arg(long, value_name = "BYTES", help = attr_help("Largest message body", " bytes", &MAX_MSG_SIZE))]
    pub max_msg_size: Option<u32>,

    #[arg(
        long,
        value_name = "SECONDS",
        help = attr_help("How long an unconsumed message is kept", "s", &MSG_RETENTION_SECONDS)
    )]
    pub msg_retention_seconds: Option<u32>,

    #[arg(
        long,
        value_name = "SECONDS",
        help = attr_help("How far back deleted messages stay rewindable, up to msgRetentionSeconds", "s", &REWIND_SECONDS)
    )]
    pub rewind_seconds: Option<u32>,

    /// When writes are acknowledged: sync = after fdatasync, async = once written, synced within the
    /// broker's flush interval (flushPolicy) [default: the broker's --flush setting]
    #[arg(long, value_enum, value_name = "POLICY")]
    pub flush: Option<FlushArg>,

    /// Move messages that are received too often (--max-receive-count) or stay unconsumed too long
    /// (--max-time-to-live) to this queue (deadLetterQueueName) [default: none]
    #[arg(long, value_name = "DLQ")]
    pub dead_letter_queue: Option<String>,

    #[arg(
        long,
        value_name = "N",
        conflicts_with = "max_time_to_live",
        help = format!(
            "Dead-letter a message after N receives without a delete ({}: {}-{}); replaces a --max-time-to-live \
             policy [default: none]",
            MAX_RECEIVE_COUNT.name, MAX_RECEIVE_COUNT.min, MAX_RECEIVE_COUNT.max
        )
    )]
    pub max_receive_count: Option<u32>,

    #[arg(
        long,
        value_name = "SECONDS",
        help = format!(
            "Dead-letter a message unconsumed this long ({}: {}-{}s, below msgRetentionSeconds); replaces a \
             --max-receive-count policy [default: none]",
            MAX_TIME_TO_LIVE.name, MAX_TIME_TO_LIVE.min, MAX_TIME_TO_LIVE.max
        )
    )]
    pub max_time_to_live: Option<u32>,

    #[arg(
        long,
        value_name = "SECONDS",
        help = attr_help("Transaction messages: wait before first asking the producer's checker", "s", &FIRST_QUERY_INTERVAL)
    )]
    pub first_query_interval: Option<u32>,

    #[arg(
        long,
        value_name = "N",
        help = attr_help("Transaction messages: checks before applying --transaction-default", "", &MAX_QUERY_COUNT)
    )]
    pub max_query_count: Option<u32>,

    /// Transaction messages: what happens to one still unresolved after --max-query-count checks
    /// (transactionDefault) [default: rollback]
    #[arg(long, value_enum, value_name = "DECISION")]
    pub transaction_default: Option<TxDefaultArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TxDefaultArg {
    Commit,
    Rollback,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FlushArg {
    Sync,
    Async,
}

impl QueueAttrArgs {
    pub fn to_update(&self) -> QueueAttributesUpdate {
        QueueAttributesUpdate {
            max_msg_heap_num: self.max_msg_heap_num,
            polling_wait_seconds: self.polling_wait_seconds,
            visibility_timeout: self.visibility_timeout,
            max_msg_size: self.max_msg_size,
            msg_retention_seconds: self.msg_retention_seconds,
            rewind_seconds: self.rewind_seconds,
            flush_policy: self.flush.map(|f| match f {
                FlushArg::Sync => FlushPolicy::Sync,
                FlushArg::Async => FlushPolicy::Async,
            }),
            dead_letter_queue: self.dead_letter_queue.clone(),
            max_receive_count: self.max_receive_count,
            max_time_to_live: self.max_time_to_live,
            first_query_interval: self.first_query_interval,
            max_query_count: self.max_query_count,
            transaction_default: self.transaction_default.map(|d| match d {
                TxDefaultArg::Commit => TxDefault::Commit,
                TxDefaultArg::Rollback => TxDefault::Rollback,
            }),
        }
    }
}

fn attr_help(what: &str, unit: &str, range: &AttrRange) -> String {
    format!("{what} ({}: {}-{}{unit}) [default: {}]", range.name, range.min, range.max, range.default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_consistent() {
        command().debug_assert();
    }

    #[test]
    fn set_queue_requires_an_attribute() {
        let err = try_parse_from(["cmq", "set-queue", "q"]).expect_err("no attribute given");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(try_parse_from(["cmq", "set-queue", "q", "--visibility-timeout", "5"]).is_ok());
        assert!(try_parse_from(["cmq", "create-queue", "q"]).is_ok());
    }

    #[test]
    fn no_dead_letter_alone_is_an_attribute_change_and_conflicts_with_a_policy() {
        let cli = try_parse_from(["cmq", "set-queue", "q", "--no-dead-letter"]).expect("enough on its own");
        assert!(matches!(cli.command, Command::SetQueue { no_dead_letter: true, .. }));
        assert!(try_parse_from(["cmq", "set-queue", "q", "--no-dead-letter", "--dead-letter-queue", "d"]).is_err());
        assert!(try_parse_from(["cmq", "create-queue", "q", "--no-dead-letter"]).is_err(), "set-queue only");
        let both = ["cmq", "create-queue", "q", "--dead-letter-queue", "d", "--max-receive-count", "3"];
        assert!(try_parse_from(both).is_ok());
        let both = [&both[..], &["--max-time-to-live", "300"]].concat();
        assert!(try_parse_from(both).is_err(), "one limit or the other");
    }

    #[test]
    fn since_takes_relative_times_that_look_like_flags() {
        let cli = try_parse_from(["cmq", "rewind", "q", "--since", "-10m"]).expect("relative");
        let Command::Rewind { since, .. } = cli.command else { panic!("{:?}", cli.command) };
        let now = now_ms();
        assert!((now - 601_000..=now - 599_000).contains(&since), "{since}");
        assert!(try_parse_from(["cmq", "rewind", "q", "--since", "1795600800"]).is_ok());
        assert!(try_parse_from(["cmq", "rewind", "q", "--since", "2026-11-25T10:00:00Z"]).is_ok());
        assert!(try_parse_from(["cmq", "rewind", "q", "--since", "soon"]).is_err());
        assert!(try_parse_from(["cmq", "rewind", "q"]).is_err(), "--since is required");
    }

    #[test]
    fn tx_checker_needs_exactly_one_decision() {
        assert!(try_parse_from(["cmq", "tx-checker", "--group", "g", "--commit"]).is_ok());
        assert!(try_parse_from(["cmq", "tx-checker", "--group", "g"]).is_err());
        assert!(try_parse_from(["cmq", "tx-checker", "--group", "g", "--commit", "--ask"]).is_err());
    }

    #[test]
    fn peek_max_and_all_exclude_each_other() {
        assert!(try_parse_from(["cmq", "peek", "q", "--max", "500", "--body"]).is_ok());
        assert!(try_parse_from(["cmq", "peek", "q", "--all"]).is_ok());
        assert!(try_parse_from(["cmq", "peek", "q", "--all", "--max", "5"]).is_err());
        assert!(try_parse_from(["cmq", "peek", "q", "--max", "0"]).is_err());
    }

    #[test]
    fn receipt_handles_parse_as_decimal() {
        let cli = try_parse_from(["cmq", "delete", "q", "340282366920938463463374607431768211455"]).expect("u128");
        let Command::Delete { receipt, .. } = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert_eq!(receipt, ReceiptHandle(u128::MAX));
        assert!(try_parse_from(["cmq", "delete", "q", "12ab"]).is_err());
    }

    #[test]
    fn subscribe_needs_exactly_one_endpoint_and_dead_letters_only_pushes() {
        let parse = |args: &[&str]| try_parse_from([&["cmq", "subscribe", "t", "s"], args].concat());
        assert!(parse(&["--queue", "q"]).is_ok());
        assert!(parse(&["--http", "http://h/"]).is_ok());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--queue", "q", "--http", "http://h/"]).is_err());
        assert!(parse(&["--http", "http://h/", "--dead-letter-queue", "d"]).is_ok());
        assert!(parse(&["--queue", "q", "--dead-letter-queue", "d"]).is_err(), "queue deliveries are not pushed");
        let cli = parse(&["--queue", "q", "--tag", "a", "--tag", "b", "--binding-key", "x.*", "--format", "json"])
            .expect("repeatable filters");
        let Command::Subscribe { filters, push, .. } = cli.command else { panic!("{:?}", cli.command) };
        assert_eq!(
            (filters.tags, filters.binding_keys),
            (vec!["a".to_owned(), "b".to_owned()], vec!["x.*".to_owned()])
        );
        assert_eq!((push.format(), push.notify_strategy()), (Some(NotifyContentFormat::Json), None));
        let cli = parse(&["--http", "h", "--notify-strategy", "backoff"]).expect("strategy");
        let Command::Subscribe { push, .. } = cli.command else { panic!("{:?}", cli.command) };
        assert_eq!(push.notify_strategy(), Some(NotifyStrategy::BackoffRetry));
        assert!(parse(&["--queue", "q", "--notify-strategy", "forever"]).is_err());
    }

    #[test]
    fn set_subscription_needs_a_change_and_clearing_excludes_a_list() {
        let parse = |args: &[&str]| try_parse_from([&["cmq", "set-subscription", "t", "s"], args].concat());
        let err = parse(&[]).expect_err("nothing to change");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        for change in [&["--tag", "a"][..], &["--clear-tags"], &["--binding-key", "k"], &["--clear-binding-keys"]] {
            assert!(parse(change).is_ok(), "{change:?}");
        }
        assert!(parse(&["--format", "simplified", "--notify-strategy", "exponential"]).is_ok());
        assert!(parse(&["--tag", "a", "--clear-tags"]).is_err());
        assert!(parse(&["--binding-key", "a", "--clear-binding-keys"]).is_err());
        assert!(parse(&["--tag", "a", "--clear-binding-keys"]).is_ok());
    }

    #[test]
    fn topic_commands_parse() {
        let cli = try_parse_from(["cmq", "create-topic", "t", "--filter-type", "routing-key"]).expect("create");
        let Command::CreateTopic { filter_type, max_msg_size, .. } = cli.command else { panic!("{:?}", cli.command) };
        assert_eq!(topic_update(filter_type, max_msg_size, None).filter_type, Some(FilterType::RoutingKey));
        assert!(try_parse_from(["cmq", "create-topic", "t", "--filter-type", "tags"]).is_err());
        assert!(try_parse_from(["cmq", "set-topic", "t"]).is_err(), "--max-msg-size is required");
        let cli = try_parse_from(["cmq", "publish", "t", "--tag", "a", "body", "--tag", "b"]).expect("publish");
        let Command::Publish { body, select, .. } = cli.command else { panic!("{:?}", cli.command) };
        assert_eq!((body.body.as_deref(), select.tags.len(), select.routing_key.as_str()), (Some("body"), 2, ""));
        assert!(try_parse_from(["cmq", "publish-batch", "t", "--routing-key", "a.b"]).is_ok());
    }

    #[test]
    fn receive_bounds_come_from_the_protocol() {
        assert!(try_parse_from(["cmq", "receive", "q", "--max", "16", "--wait", "30"]).is_ok());
        assert!(try_parse_from(["cmq", "receive", "q", "--max", "17"]).is_err());
        assert!(try_parse_from(["cmq", "receive", "q", "--max", "0"]).is_err());
        assert!(try_parse_from(["cmq", "receive", "q", "--wait", "31"]).is_err());
    }

    #[test]
    fn a_server_without_a_port_uses_7700() {
        assert_eq!(server_address("cmq.internal").as_deref(), Ok("cmq.internal:7700"));
        assert_eq!(server_address("10.0.0.5:7800").as_deref(), Ok("10.0.0.5:7800"));
        assert_eq!(server_address("::1").as_deref(), Ok("[::1]:7700"));
        assert_eq!(server_address("[::1]").as_deref(), Ok("[::1]:7700"));
        assert_eq!(server_address("[fe80::1]:7701").as_deref(), Ok("[fe80::1]:7701"));
        assert_eq!(server_list("a, b:7702,[::1]").as_deref(), Ok("a:7700,b:7702,[::1]:7700"));
        assert!(server_list("a,,b").is_err());
        assert!(server_list(&vec!["h"; cmq_client::seeds::SEEDS_MAX + 1].join(",")).is_err());
        for bad in ["", ":7700", "host:", "host:0", "host:70000", "host:x", "[::1", "[nope]:1", "[::1]7700"] {
            assert!(server_address(bad).is_err(), "{bad:?}");
        }
        let cli = try_parse_from(["cmq", "--server", "broker-1", "ping"]).expect("host only");
        assert_eq!(cli.server, "broker-1:7700");
    }

    #[test]
    fn negative_numbers_get_a_range_error_not_a_usage_tip() {
        let cases: [&[&str]; 7] = [
            &["receive", "q", "--wait", "-5"],
            &["send", "q", "x", "--delay", "-5"],
            &["message", "q", "-5"],
            &["change-visibility", "q", "1", "-5"],
            &["create-queue", "q", "--max-msg-heap-num", "-1"],
            &["--timeout", "-1", "ping"],
            &["redrive-cancel", "-3"],
        ];
        for args in cases {
            let err = try_parse_from([&["cmq"][..], args].concat()).expect_err("negative");
            let text = err.to_string();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{args:?}: {text}");
            assert!(text.contains("is not in 0..="), "{args:?}: {text}");
            assert!(!text.contains("-- -"), "{args:?}: {text}");
        }
        assert!(try_parse_from(["cmq", "rewind", "q", "--since", "-5m"]).is_ok(), "relative times still work");
        let cli = try_parse_from(["cmq", "send", "q", "-5"]).expect("a body may look like a number");
        let Command::Send { body, .. } = cli.command else { panic!("{:?}", cli.command) };
        assert_eq!(body.body.as_deref(), Some("-5"));
    }

    #[test]
    fn a_body_comes_from_exactly_one_place() {
        assert!(try_parse_from(["cmq", "send", "q", "text"]).is_ok());
        assert!(try_parse_from(["cmq", "send", "q", "-"]).is_ok(), "stdin");
        assert!(try_parse_from(["cmq", "send", "q", "--file", "f.json"]).is_ok());
        assert!(try_parse_from(["cmq", "send", "q", "--file", "f", "--base64"]).is_ok());
        assert!(try_parse_from(["cmq", "send", "q"]).is_err(), "no body");
        assert!(try_parse_from(["cmq", "send", "q", "text", "--file", "f"]).is_err(), "two bodies");
        assert!(try_parse_from(["cmq", "send-tx", "q", "-", "--group", "g"]).is_ok());
        assert!(try_parse_from(["cmq", "publish", "t", "--file", "f", "--tag", "a"]).is_ok());
    }

    #[test]
    fn receive_prints_chosen_fields_and_follows() {
        let cli = try_parse_from(["cmq", "receive", "q", "--print", "id,handle,body", "--follow", "--delete"])
            .expect("fields");
        let Command::Receive { print, follow, delete, .. } = cli.command else { panic!("{:?}", cli.command) };
        assert_eq!((print, follow, delete), (vec![PrintField::Id, PrintField::Handle, PrintField::Body], true, true));
        let cli = try_parse_from(["cmq", "receive", "q"]).expect("defaults");
        let Command::Receive { print, .. } = cli.command else { panic!("{:?}", cli.command) };
        assert_eq!(print, [PrintField::Body]);
        assert!(try_parse_from(["cmq", "receive", "q", "--print", "secret"]).is_err());
    }
}
