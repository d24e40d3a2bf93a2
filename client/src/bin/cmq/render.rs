//! Output: JSON shapes (CMQ's field names; ids as decimal strings because
//! msgIds carry the shard in their top bits and exceed what a JSON number
//! reader using doubles keeps exactly), human tables, body escaping.

use std::borrow::Cow;
use std::fmt::Write as _;

use cmq_client::{ClientError, ListQueuesOk, QueueInfo, ReceivedMessage};
use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueInfoJson<'a> {
    queue_name: &'a str,
    queue_id: String,
    max_msg_heap_num: u64,
    polling_wait_seconds: u32,
    visibility_timeout: u32,
    max_msg_size: u32,
    msg_retention_seconds: u32,
    rewind_seconds: u32,
    flush_policy: &'static str,
    create_time: u64,
    last_modify_time: u64,
    active_msg_num: u64,
    inactive_msg_num: u64,
    delay_msg_num: u64,
    rewind_msg_num: u64,
    min_msg_time: u64,
    shard: u16,
}

impl<'a> From<&'a QueueInfo> for QueueInfoJson<'a> {
    fn from(q: &'a QueueInfo) -> Self {
        let a = &q.attributes;
        QueueInfoJson {
            queue_name: &q.queue,
            queue_id: q.queue_id.to_string(),
            max_msg_heap_num: a.max_msg_heap_num,
            polling_wait_seconds: a.polling_wait_seconds,
            visibility_timeout: a.visibility_timeout,
            max_msg_size: a.max_msg_size,
            msg_retention_seconds: a.msg_retention_seconds,
            rewind_seconds: a.rewind_seconds,
            flush_policy: a.flush_policy.as_str(),
            create_time: secs(q.create_time_ms),
            last_modify_time: secs(q.last_modify_time_ms),
            active_msg_num: q.active_msg_num,
            inactive_msg_num: q.inactive_msg_num,
            delay_msg_num: q.delay_msg_num,
            rewind_msg_num: q.rewind_msg_num,
            min_msg_time: secs(q.min_msg_time_ms),
            shard: q.shard,
        }
    }
}

/// Two aligned columns, in the same order and with the same names as the JSON.
pub fn queue_info_table(q: &QueueInfo) -> String {
    let a = &q.attributes;
    let rows: [(&str, String); 17] = [
        ("queueName", q.queue.clone()),
        ("queueId", q.queue_id.to_string()),
        ("maxMsgHeapNum", a.max_msg_heap_num.to_string()),
        ("pollingWaitSeconds", a.polling_wait_seconds.to_string()),
        ("visibilityTimeout", a.visibility_timeout.to_string()),
        ("maxMsgSize", a.max_msg_size.to_string()),
        ("msgRetentionSeconds", a.msg_retention_seconds.to_string()),
        ("rewindSeconds", a.rewind_seconds.to_string()),
        ("flushPolicy", a.flush_policy.as_str().to_owned()),
        ("createTime", time_cell(q.create_time_ms)),
        ("lastModifyTime", time_cell(q.last_modify_time_ms)),
        ("activeMsgNum", q.active_msg_num.to_string()),
        ("inactiveMsgNum", q.inactive_msg_num.to_string()),
        ("delayMsgNum", q.delay_msg_num.to_string()),
        ("rewindMsgNum", q.rewind_msg_num.to_string()),
        ("minMsgTime", time_cell(q.min_msg_time_ms)),
        ("shard", q.shard.to_string()),
    ];
    let mut out = String::new();
    for (name, value) in rows {
        let _ = writeln!(out, "{name:<20} {value}");
    }
    out
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueListJson<'a> {
    total_count: u32,
    queue_list: Vec<QueueSummaryJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueueSummaryJson<'a> {
    queue_id: String,
    queue_name: &'a str,
}

impl<'a> From<&'a ListQueuesOk> for QueueListJson<'a> {
    fn from(l: &'a ListQueuesOk) -> Self {
        QueueListJson {
            total_count: l.total,
            queue_list: l
                .queues
                .iter()
                .map(|q| QueueSummaryJson { queue_id: q.queue_id.to_string(), queue_name: &q.queue })
                .collect(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageJson<'a> {
    msg_id: String,
    receipt_handle: String,
    msg_body: Cow<'a, str>,
    enqueue_time: u64,
    first_dequeue_time: u64,
    next_visible_time: u64,
    dequeue_count: u32,
}

impl<'a> From<&'a ReceivedMessage> for MessageJson<'a> {
    fn from(m: &'a ReceivedMessage) -> Self {
        MessageJson {
            msg_id: m.msg_id.to_string(),
            receipt_handle: m.receipt_handle.to_string(),
            msg_body: body_text(&m.body),
            enqueue_time: secs(m.enqueue_time_ms),
            first_dequeue_time: secs(m.first_dequeue_time_ms),
            next_visible_time: secs(m.next_visible_time_ms),
            dequeue_count: m.dequeue_count,
        }
    }
}

/// The `--json` form of a failure.
#[derive(Serialize)]
pub struct ErrorJson<'a> {
    /// The broker's code; null when the failure is the client's or the network's.
    pub code: Option<u16>,
    pub name: &'a str,
    pub message: String,
}

/// Names for failures that never reached the broker, in the style of its codes.
pub fn client_error_name(e: &ClientError) -> &'static str {
    match e {
        ClientError::Server { code, .. } => code.name(),
        ClientError::Handshake { code: Some(code), .. } => code.name(),
        ClientError::Handshake { code: None, .. } => "HANDSHAKE_FAILED",
        ClientError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "CONNECTION_REFUSED",
        ClientError::Io(_) if e.is_timeout() => "TIMEOUT",
        ClientError::Io(_) => "IO_ERROR",
        ClientError::Protocol(_) => "PROTOCOL_ERROR",
        ClientError::Disconnected => "DISCONNECTED",
    }
}

/// A body as text: valid UTF-8 unchanged, each invalid byte as `\xNN`.
/// Never fails, so a binary body cannot crash the tool.
pub fn body_text(body: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(body) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(body.len() + 16);
    for chunk in body.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
    Cow::Owned(out)
}

/// Protocol milliseconds to CMQ's Unix seconds.
pub fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// Unix seconds plus a readable UTC date; 0 (CMQ's "none") stays bare.
pub fn time_cell(ms: u64) -> String {
    match secs(ms) {
        0 => "0".to_owned(),
        s => format!("{s} ({})", utc(s)),
    }
}

/// `YYYY-MM-DD hh:mm:ss UTC`, computed here rather than pulling in a date
/// crate for one line of human output.
pub fn utc(unix_secs: u64) -> String {
    let (days, rem) = (unix_secs / 86_400, unix_secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Howard Hinnant's days-to-civil algorithm, for days since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn invalid_utf8_is_escaped_and_valid_text_untouched() {
        assert!(matches!(body_text("héllo".as_bytes()), Cow::Borrowed("héllo")));
        assert_eq!(body_text(b"a\xffb\xc3"), "a\\xFFb\\xC3");
        assert_eq!(body_text(b""), "");
    }

    #[test]
    fn zero_times_stay_bare() {
        assert_eq!(time_cell(0), "0");
        assert_eq!(time_cell(999), "0");
        assert_eq!(time_cell(1_700_000_000_123), "1700000000 (2023-11-14 22:13:20 UTC)");
    }
}
