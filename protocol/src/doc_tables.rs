//! PROTOCOL.md's tables checked against the code, both ways: every error
//! code, opcode and limit the document lists exists here with the same name
//! and value, and every one the code has is in the document.

use std::collections::BTreeMap;

use crate::limits::*;
use crate::{ErrorCode, Opcode};

const DOC: &str = include_str!("../PROTOCOL.md");

/// The cells of each body row (`| a | b | … |`) of the first table after
/// the heading `heading`.
fn rows(heading: &str) -> Vec<Vec<&'static str>> {
    let start = DOC.find(heading).unwrap_or_else(|| panic!("PROTOCOL.md has no heading {heading:?}"));
    DOC[start + heading.len()..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| !l.starts_with("| ---"))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .skip(1) // the header row
        .collect()
}

/// `0x020A` or `4440` as a number.
fn number(cell: &str) -> u64 {
    let cell = cell.replace(',', "");
    let parsed = match cell.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => cell.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("not a number: {cell:?}"))
}

#[test]
fn error_code_table_matches_the_code() {
    same_table("## 3. Errors", ErrorCode::ALL.iter().map(|c| (u64::from(c.0), c.name().to_owned())).collect());
}

#[test]
fn opcode_table_matches_the_code() {
    same_table("## 5. Operations", Opcode::ALL.iter().map(|o| (*o as u64, o.name().to_owned())).collect());
}

/// A limit's value as the table writes it: `1,048,576`, `16 × 1 MiB + 64 KiB
/// = 16,842,752` (the figure after `=`), or `64 MiB`.
fn limit_value(cell: &str) -> u64 {
    let cell = cell.rsplit('=').next().expect("split yields one item").trim();
    match cell.strip_suffix(" MiB") {
        Some(mib) => number(mib) << 20,
        None => number(cell),
    }
}

fn code_limit(name: &str) -> Option<u64> {
    Some(match name {
        "BATCH_MSGS_MAX" => BATCH_MSGS_MAX as u64,
        "MSG_BYTES_MAX" => MSG_BYTES_MAX.into(),
        "FRAME_BYTES_MAX" => FRAME_BYTES_MAX.into(),
        "NAME_CHARS_MAX" => NAME_CHARS_MAX as u64,
        "STRING_BYTES_MAX" => STRING_BYTES_MAX as u64,
        "LIST_PAGE_MAX" => LIST_PAGE_MAX.into(),
        "POLLING_WAIT_SECONDS_MAX" => POLLING_WAIT_SECONDS_MAX.into(),
        "AUTH_PAYLOAD_BYTES_MAX" => AUTH_PAYLOAD_BYTES_MAX as u64,
        "HANDSHAKE_FRAME_BYTES_MAX" => HANDSHAKE_FRAME_BYTES_MAX.into(),
        "PEER_FRAME_BYTES_MAX" => PEER_FRAME_BYTES_MAX.into(),
        "PEER_HANDSHAKE_FRAME_BYTES_MAX" => PEER_HANDSHAKE_FRAME_BYTES_MAX.into(),
        "PEER_ADDR_BYTES_MAX" => PEER_ADDR_BYTES_MAX as u64,
        "PEER_REFUSE_MESSAGE_BYTES_MAX" => PEER_REFUSE_MESSAGE_BYTES_MAX as u64,
        "IDEMPOTENCY_KEY_BYTES_MAX" => IDEMPOTENCY_KEY_BYTES_MAX as u64,
        _ => return None,
    })
}

#[test]
fn limit_tables_match_the_code() {
    let mut seen = 0;
    for row in rows("## 6. Limits").into_iter().chain(rows("### Peer limits")) {
        let name = row[0].trim_matches('`');
        let value = code_limit(name).unwrap_or_else(|| panic!("PROTOCOL.md lists limit {name}, unknown to this test"));
        assert_eq!(limit_value(row[1]), value, "PROTOCOL.md's value of {name}");
        seen += 1;
    }
    assert_eq!(seen, 14, "every limit code_limit knows is in a table");
}

#[test]
fn the_title_names_the_versions_spoken() {
    use crate::handshake::{PROTOCOL_VERSION_MAX as MAX, PROTOCOL_VERSION_MIN as MIN};
    let title = DOC.lines().next().expect("a title");
    let want = if MIN == MAX { format!("version {MAX}") } else { format!("versions {MIN} and {MAX}") };
    const { assert!(MAX - MIN <= 1, "name every version spoken in the title") };
    assert!(title.ends_with(&want), "{title}");
}

/// Both directions of one table against the code's `(value, name)` pairs.
fn same_table(heading: &str, code: BTreeMap<u64, String>) {
    let doc: BTreeMap<u64, String> = rows(heading).iter().map(|r| (number(r[0]), r[1].to_owned())).collect();
    assert_eq!(doc, code, "PROTOCOL.md's table under {heading:?} (left) against the code (right)");
}

#[test]
fn peer_kind_and_refuse_tables_match_the_code() {
    use crate::peer::{PeerKind, RefuseReason};
    let kinds = PeerKind::ALL.iter().map(|k| (*k as u64, format!("{k:?}"))).collect();
    same_table("### Frames", kinds);
    let reasons = (0..=u16::MAX)
        .map(RefuseReason)
        .filter(|r| r.name() != "UNKNOWN")
        .map(|r| (u64::from(r.0), r.name().to_owned()))
        .collect();
    same_table("### Authentication handshake", reasons);
}
