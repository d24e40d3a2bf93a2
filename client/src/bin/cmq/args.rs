//! Command-line syntax. Help texts are built from the protocol's constants
//! so ranges and defaults shown cannot drift from what the broker enforces.

use clap::{Args, Parser, Subcommand, ValueEnum};
use cmq_client::protocol::limits::{BATCH_MSGS_MAX, LIST_PAGE_DEFAULT, LIST_PAGE_MAX, POLLING_WAIT_SECONDS_MAX};
use cmq_client::protocol::queue_attributes::{
    AttrRange, MAX_MSG_HEAP_NUM, MAX_MSG_SIZE, MSG_RETENTION_SECONDS, POLLING_WAIT_SECONDS, REWIND_SECONDS,
    VISIBILITY_TIMEOUT,
};
use cmq_client::{FlushPolicy, QueueAttributesUpdate, ReceiptHandle};

/// Global flags sort after each subcommand's own in its help.
const GLOBAL_ORDER: usize = 1000;

#[derive(Debug, Parser)]
#[command(
    name = "cmq",
    version,
    about = "Command-line client for the cmq message-queue broker",
    after_help = "Exit status: 0 on success (also when a receive finds no message), 1 when the broker refuses a \
                  request or cannot be reached (stderr: \"error: <code> <NAME>: <message>\"), 2 on a usage error.\n\
                  Message and queue ids and receipt handles are decimal strings; times are Unix seconds."
)]
pub struct Cli {
    /// Broker address
    #[arg(long, global = true, display_order = GLOBAL_ORDER, env = "CMQ_SERVER", default_value = "127.0.0.1:7700", value_name = "HOST:PORT")]
    pub server: String,

    /// Print machine-readable JSON on stdout; failures print {"code","name","message"}
    #[arg(long, global = true, display_order = GLOBAL_ORDER)]
    pub json: bool,

    /// Seconds to wait for the broker to connect or answer, on top of any receive polling wait (0: forever)
    #[arg(long, global = true, display_order = GLOBAL_ORDER, default_value_t = 10, value_name = "SECONDS")]
    pub timeout: u64,

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

    /// Delete a queue and every message in it
    DeleteQueue {
        /// Queue name
        name: String,
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
    },

    /// Send one message and print its msgId
    Send {
        /// Queue name
        name: String,
        /// Message body (UTF-8 text)
        body: String,
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
    },

    /// Receive messages and print each body on its own line (--json: an array of messages);
    /// prints "no message" on stderr and exits 0 if none arrived
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

    /// Check that the broker answers, and show its name, shard count and round-trip time
    Ping,
}

/// Queue attributes; each omitted flag keeps the current value (set-queue)
/// or takes the broker's default (create-queue).
#[derive(Debug, Args)]
pub struct QueueAttrArgs {
    #[arg(long, value_name = "N", help = attr_help("Most messages the queue may hold", "", &MAX_MSG_HEAP_NUM))]
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
            ..Default::default()
        }
    }
}

fn attr_help(what: &str, unit: &str, range: &AttrRange) -> String {
    format!("{what} ({}: {}-{}{unit}) [default: {}]", range.name, range.min, range.max, range.default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn set_queue_requires_an_attribute() {
        let err = Cli::try_parse_from(["cmq", "set-queue", "q"]).expect_err("no attribute given");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(Cli::try_parse_from(["cmq", "set-queue", "q", "--visibility-timeout", "5"]).is_ok());
        assert!(Cli::try_parse_from(["cmq", "create-queue", "q"]).is_ok());
    }

    #[test]
    fn receipt_handles_parse_as_decimal() {
        let cli = Cli::try_parse_from(["cmq", "delete", "q", "340282366920938463463374607431768211455"]).expect("u128");
        let Command::Delete { receipt, .. } = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert_eq!(receipt, ReceiptHandle(u128::MAX));
        assert!(Cli::try_parse_from(["cmq", "delete", "q", "12ab"]).is_err());
    }

    #[test]
    fn receive_bounds_come_from_the_protocol() {
        assert!(Cli::try_parse_from(["cmq", "receive", "q", "--max", "16", "--wait", "30"]).is_ok());
        assert!(Cli::try_parse_from(["cmq", "receive", "q", "--max", "17"]).is_err());
        assert!(Cli::try_parse_from(["cmq", "receive", "q", "--max", "0"]).is_err());
        assert!(Cli::try_parse_from(["cmq", "receive", "q", "--wait", "31"]).is_err());
    }
}
