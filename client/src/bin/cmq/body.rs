//! Message bodies in and out: from an argument, stdin or a file, optionally
//! base64; and back out as one unambiguous line or as base64.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use cmq_client::protocol::limits::MSG_BYTES_MAX;

use crate::args::BodyArgs;

/// The largest body the broker accepts from anyone (a queue's maxMsgSize or
/// a topic's may be lower; the broker judges those). A longer input is
/// refused after reading at most one byte more, never read whole.
pub const BODY_BYTES_MAX: usize = MSG_BYTES_MAX as usize;

/// Base64 input for the largest body: 4 characters per 3 bytes, plus a line
/// break every 76 characters (as base64(1) writes them, CRLF at worst).
pub const BASE64_INPUT_BYTES_MAX: usize = BODY_BYTES_MAX.div_ceil(3) * 4 / 76 * 78 + 80;

/// The argument meaning "read the body from stdin".
pub const STDIN_BODY: &str = "-";

/// The body `args` describe, as bytes to send.
pub fn read_body(args: &BodyArgs) -> Result<Bytes> {
    let limit = if args.base64 { BASE64_INPUT_BYTES_MAX } else { BODY_BYTES_MAX };
    let raw = match (&args.body, &args.file) {
        (_, Some(path)) => read_limited(open(path)?, limit, &path.display().to_string())?,
        (Some(body), None) if body == STDIN_BODY => read_limited(io::stdin().lock(), limit, "stdin")?,
        (Some(body), None) => body.as_bytes().to_vec(),
        (None, None) => unreachable!("clap requires a body or --file"),
    };
    if !args.base64 {
        return Ok(Bytes::from(raw));
    }
    let bytes = decode_base64(&raw).context("--base64: the body is not valid base64")?;
    if bytes.len() > BODY_BYTES_MAX {
        bail!("the body decodes to {} bytes; a message holds at most {BODY_BYTES_MAX}", bytes.len());
    }
    Ok(Bytes::from(bytes))
}

fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Reads everything, refusing input longer than `limit` bytes without
/// holding more than `limit + 1` of them.
fn read_limited(input: impl Read, limit: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    input.take(limit as u64 + 1).read_to_end(&mut buf).with_context(|| format!("reading {what}"))?;
    if buf.len() > limit {
        bail!("{what} holds more than {limit} bytes, more than a message can carry ({BODY_BYTES_MAX} bytes)");
    }
    Ok(buf)
}

/// Standard-alphabet base64 with padding; whitespace (line breaks from
/// base64(1)) is ignored.
pub fn decode_base64(text: &[u8]) -> Result<Vec<u8>> {
    let compact: Vec<u8> = text.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    Ok(STANDARD.decode(compact)?)
}

pub fn encode_base64(body: &[u8]) -> String {
    STANDARD.encode(body)
}

/// A body on one line, reversibly: valid UTF-8 stays as it is except that
/// `\` becomes `\\`, newline `\n`, carriage return `\r`, tab `\t`, and every
/// other control character and every byte that is not UTF-8 becomes `\xNN`
/// (`NN` the byte in hex; a multi-byte control character is one `\xNN` per
/// byte). So one line is exactly one message, whatever its body holds.
pub fn line_text(body: &[u8]) -> Cow<'_, str> {
    let plain = |b: &u8| *b >= 0x20 && *b != b'\\' && *b != 0x7f && *b < 0x80;
    if body.iter().all(plain) {
        // ASCII without controls or backslashes: nothing to escape.
        return Cow::Borrowed(std::str::from_utf8(body).unwrap_or_default());
    }
    let mut out = String::with_capacity(body.len() + 16);
    for chunk in body.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => {
                    let mut utf8 = [0; 4];
                    for b in c.encode_utf8(&mut utf8).bytes() {
                        let _ = write!(out, "\\x{b:02X}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inverse of `line_text`, to prove it loses nothing.
    fn unescape(line: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                let mut utf8 = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                continue;
            }
            match chars.next() {
                Some('\\') => out.push(b'\\'),
                Some('n') => out.push(b'\n'),
                Some('r') => out.push(b'\r'),
                Some('t') => out.push(b'\t'),
                Some('x') => {
                    let hex: String = chars.by_ref().take(2).collect();
                    out.push(u8::from_str_radix(&hex, 16).expect("two hex digits"));
                }
                other => panic!("unknown escape {other:?} in {line:?}"),
            }
        }
        out
    }

    #[test]
    fn one_line_per_body_and_nothing_lost() {
        let bodies: [&[u8]; 8] = [
            b"hello",
            b"two\nlines\r\n",
            b"tab\tand \\ backslash \\n literally",
            b"\x00\x01\x1b[31m\x7f",
            "caf\u{e9} \u{85} \u{2028}".as_bytes(),
            b"bad \xff\xc3( utf-8",
            b"",
            b"\\x41 is not A",
        ];
        for body in bodies {
            let line = line_text(body);
            assert!(!line.contains(['\n', '\r']), "{line:?}");
            assert!(!line.chars().any(char::is_control), "{line:?}");
            assert_eq!(unescape(&line), body, "{line:?}");
        }
        assert!(matches!(line_text(b"plain text"), Cow::Borrowed("plain text")));
        assert_eq!(line_text(b"a\nb\\c"), "a\\nb\\\\c");
        assert_eq!(line_text(b"\xff"), "\\xFF");
        assert_eq!(line_text("\u{85}".as_bytes()), "\\xC2\\x85");
    }

    #[test]
    fn base64_round_trips_and_ignores_line_breaks() {
        let body: Vec<u8> = (0..=255).collect();
        let text = encode_base64(&body);
        assert_eq!(decode_base64(text.as_bytes()).expect("valid"), body);
        let wrapped: String =
            text.as_bytes().chunks(76).map(|l| format!("{}\r\n", std::str::from_utf8(l).expect("ascii"))).collect();
        assert_eq!(decode_base64(wrapped.as_bytes()).expect("wrapped"), body);
        assert!(decode_base64(b"not base64!").is_err());
        assert!(decode_base64(b"QQ").is_err(), "padding is required");
    }

    #[test]
    fn inputs_longer_than_a_message_are_refused_without_reading_them_whole() {
        let exact = vec![b'x'; BODY_BYTES_MAX];
        assert_eq!(read_limited(&exact[..], BODY_BYTES_MAX, "stdin").expect("fits").len(), BODY_BYTES_MAX);
        let over = vec![b'x'; BODY_BYTES_MAX + 1];
        let err = read_limited(&over[..], BODY_BYTES_MAX, "stdin").expect_err("one byte too many");
        assert!(err.to_string().starts_with("stdin holds more than 1048576 bytes"), "{err}");
        // The base64 of the largest body, wrapped as base64(1) wraps it, fits the base64 limit.
        let wrapped = encode_base64(&exact).len() / 76 * 78 + 78;
        assert!(wrapped <= BASE64_INPUT_BYTES_MAX, "{wrapped} > {BASE64_INPUT_BYTES_MAX}");
    }
}
