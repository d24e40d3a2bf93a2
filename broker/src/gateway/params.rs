//! Request parameters: the form body (POST) or query string (GET) decoded
//! into key/value pairs, with every limit checked before anything is kept,
//! typed accessors, and CMQ's indexed lists (`name.1`, `name.2`, ...).

use super::errors::{module, ApiError};

/// Largest request body (POST) accepted; larger ones get HTTP 413 before
/// being read. One message of the largest `maxMsgSize` (1 MiB) fully
/// percent-encoded is 3 MiB; batches must fit in this too.
pub const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Parameters in one request (16 list items of three lists plus the common
/// parameters fit several times over).
pub const PARAMS_MAX: usize = 128;

/// Bytes of one parameter name.
pub const PARAM_NAME_BYTES_MAX: usize = 128;

/// Items of one indexed list (CMQ's batch size).
pub const LIST_ITEMS_MAX: usize = cmq_protocol::limits::BATCH_MSGS_MAX;

/// Decoded parameters, by name (bytewise order: the signature's). Every
/// name and value is decoded into one buffer and found by its byte range:
/// two allocations per request however many parameters it has (this runs
/// for every gateway request; docs/BENCHMARKS.md, "CMQ API gateway").
#[derive(Debug, Default, Clone)]
pub struct Params {
    /// Each parameter's name then its value, decoded, back to back.
    text: String,
    /// (name start, name end = value start, value end) in `text`, sorted by name.
    pairs: Vec<(usize, usize, usize)>,
}

impl Params {
    /// Decodes `application/x-www-form-urlencoded` bytes. Malformed
    /// percent-encoding, invalid UTF-8, a repeated name and the limits above
    /// are errors.
    pub fn parse(raw: &[u8]) -> Result<Params, ApiError> {
        let count = raw.split(|b| *b == b'&').filter(|p| !p.is_empty()).count();
        if count > PARAMS_MAX {
            return Err(ApiError::param(module::INVALID_REQUEST, format!("more than {PARAMS_MAX} parameters")));
        }
        // Decoding never lengthens: the buffer is allocated once.
        let mut text = Vec::with_capacity(raw.len());
        let mut pairs = Vec::with_capacity(count);
        for piece in raw.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match piece.iter().position(|b| *b == b'=') {
                Some(i) => (&piece[..i], &piece[i + 1..]),
                None => (piece, &piece[piece.len()..]),
            };
            let a = text.len();
            decode_into(name, &mut text)?;
            let b = text.len();
            decode_into(value, &mut text)?;
            check_name(b - a)?;
            pairs.push((a, b, text.len()));
        }
        let text = String::from_utf8(text).map_err(|_| malformed("not UTF-8"))?;
        pairs.sort_by(|x, y| text[x.0..x.1].cmp(&text[y.0..y.1]));
        if let Some(w) = pairs.windows(2).find(|w| text[w[0].0..w[0].1] == text[w[1].0..w[1].1]) {
            let key = &text[w[0].0..w[0].1];
            return Err(ApiError::param(module::NOT_REPEATABLE, format!("parameter {key} is given twice")));
        }
        Ok(Params { text, pairs })
    }

    /// Every parameter in bytewise name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|&(a, b, c)| (&self.text[a..b], &self.text[b..c]))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.pairs.binary_search_by(|&(a, b, _)| self.text[a..b].cmp(name)).ok()?;
        let (_, b, c) = self.pairs[i];
        Some(&self.text[b..c])
    }

    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name).ok_or_else(|| ApiError::param(module::MISSING_PARAMETER, format!("missing parameter {name}")))
    }

    /// An optional integer within `min..=max`.
    pub fn int(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        let n: u64 = v
            .trim()
            .parse()
            .map_err(|_| ApiError::param(module::WRONG_TYPE, format!("{name}: {v:?} is not a non-negative integer")))?;
        if n < min || n > max {
            return Err(ApiError::param(module::OUT_OF_RANGE, format!("{name}: {n} is out of range {min}..={max}")));
        }
        Ok(Some(n))
    }

    /// An optional integer that must fit a u32 (ranges checked by the broker).
    pub fn u32(&self, name: &str) -> Result<Option<u32>, ApiError> {
        Ok(self.int(name, 0, u64::from(u32::MAX))?.map(|n| n as u32))
    }

    /// The indexed list `name.n` (or `name_n`): items in index order. The
    /// first index is 0 or 1 and the rest follow without gaps; a plain
    /// `name` next to indexed ones is refused; at most `max` items.
    pub fn list(&self, name: &str, max: usize) -> Result<Vec<&str>, ApiError> {
        let mut items: Vec<(u64, &str)> = Vec::new();
        for (k, v) in self.iter() {
            let Some(index) = k.strip_prefix(name).and_then(|rest| rest.strip_prefix(['.', '_'])) else { continue };
            let Ok(i) = index.parse::<u64>() else {
                return Err(ApiError::param(module::KEY_FORMAT, format!("{k}: the index is not a number")));
            };
            items.push((i, v));
        }
        if !items.is_empty() && self.get(name).is_some() {
            return Err(ApiError::param(module::NOT_REPEATABLE, format!("{name} is given both plain and indexed")));
        }
        items.sort_by_key(|(i, _)| *i);
        if items.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(ApiError::param(module::NOT_REPEATABLE, format!("{name}: an index is given twice")));
        }
        if let Some((first, _)) = items.first() {
            let consecutive = items.iter().enumerate().all(|(n, (i, _))| *i == first + n as u64);
            if *first > 1 || !consecutive {
                return Err(ApiError::param(module::NOT_CONSECUTIVE, format!("{name}: indices are not consecutive")));
            }
        }
        if items.len() > max {
            return Err(ApiError::param(module::BATCH_SIZE, format!("{name}: {} items, at most {max}", items.len())));
        }
        Ok(items.into_iter().map(|(_, v)| v).collect())
    }
}

/// A parameter name must have 1 to [`PARAM_NAME_BYTES_MAX`] bytes.
fn check_name(len: usize) -> Result<(), ApiError> {
    if len == 0 {
        return Err(ApiError::param(module::KEY_FORMAT, "a parameter without a name"));
    }
    if len > PARAM_NAME_BYTES_MAX {
        return Err(ApiError::param(module::KEY_FORMAT, format!("a parameter name over {PARAM_NAME_BYTES_MAX} bytes")));
    }
    Ok(())
}

/// The value of hex digit `c` (checked by the caller).
fn hex_value(c: u8) -> u8 {
    (c as char).to_digit(16).unwrap_or(0) as u8
}

fn malformed(what: &str) -> ApiError {
    ApiError::param(module::INVALID_REQUEST, format!("malformed form encoding: {what}"))
}

/// Appends `raw` form-decoded (`+` is a space, `%XY` a byte) to `out`.
/// A `%` must be followed by two hex digits (`form_urlencoded` would keep
/// a bad escape as it is), and what is appended must be UTF-8 on its own (a
/// sequence split across two names or values is refused, as decoding the
/// body whole refuses it).
fn decode_into(raw: &[u8], out: &mut Vec<u8>) -> Result<(), ApiError> {
    let start = out.len();
    let mut rest = raw;
    while !rest.is_empty() {
        // Most bytes stand for themselves: copy them a run at a time.
        let plain = rest.iter().position(|b| matches!(b, b'+' | b'%')).unwrap_or(rest.len());
        out.extend_from_slice(&rest[..plain]);
        let Some((&b, tail)) = rest[plain..].split_first() else { break };
        rest = tail;
        match b {
            b'+' => out.push(b' '),
            _ => {
                let Some(&[hi, lo]) = rest.get(..2).filter(|h| h.iter().all(u8::is_ascii_hexdigit)) else {
                    return Err(malformed("% is not followed by two hex digits"));
                };
                out.push((hex_value(hi) << 4) | hex_value(lo));
                rest = &rest[2..];
            }
        }
    }
    std::str::from_utf8(&out[start..]).map_err(|_| malformed("not UTF-8"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(raw: &str) -> Params {
        Params::parse(raw.as_bytes()).expect("parses")
    }

    fn err(raw: &str) -> ApiError {
        Params::parse(raw.as_bytes()).expect_err("refused")
    }

    #[test]
    fn form_values_are_decoded() {
        let q = p("msgBody=hello+world%21%E4%BD%A0&queueName=q1&empty=");
        assert_eq!(q.get("msgBody"), Some("hello world!你"));
        assert_eq!(q.get("empty"), Some(""));
        assert_eq!(q.required("nope").expect_err("missing").module, module::MISSING_PARAMETER);
        assert_eq!(q.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["empty", "msgBody", "queueName"]);
        let bare = p("flag&a%5Fb=x%3Dy&&z=%2B");
        assert_eq!(bare.iter().collect::<Vec<_>>(), [("a_b", "x=y"), ("flag", ""), ("z", "+")]);
        assert_eq!(bare.get("a"), None);
    }

    #[test]
    fn bad_encodings_and_repeats_are_refused() {
        assert_eq!(err("a=%zz").module, module::INVALID_REQUEST);
        assert_eq!(err("a=%4").module, module::INVALID_REQUEST);
        assert_eq!(err("a=%ff%fe").module, module::INVALID_REQUEST, "not UTF-8");
        assert_eq!(err("a=%E4%BD").module, module::INVALID_REQUEST, "a sequence cut short");
        assert_eq!(err("a=%E4&%BD%A0=1").module, module::INVALID_REQUEST, "split across two parameters");
        assert_eq!(err("a=%").module, module::INVALID_REQUEST);
        assert_eq!(err("a=%+1").module, module::INVALID_REQUEST, "a sign is not a hex digit");
        assert!(Params::parse(b"a=\xff").is_err(), "raw bytes that are not UTF-8");
        assert_eq!(err("a=1&a=2").module, module::NOT_REPEATABLE);
        assert_eq!(err("b=1&a=2&b=3").module, module::NOT_REPEATABLE, "apart in the body");
        assert_eq!(err("=1").module, module::KEY_FORMAT);
        let long = format!("{}=1", "k".repeat(PARAM_NAME_BYTES_MAX + 1));
        assert_eq!(err(&long).module, module::KEY_FORMAT);
        p(&format!("{}=1", "k".repeat(PARAM_NAME_BYTES_MAX)));
    }

    #[test]
    fn parameter_count_is_limited_at_its_boundary() {
        let at = (0..PARAMS_MAX).map(|i| format!("p{i}=1")).collect::<Vec<_>>().join("&");
        p(&at);
        let over = format!("{at}&x=1");
        assert_eq!(err(&over).module, module::INVALID_REQUEST);
    }

    #[test]
    fn integers_are_typed_and_ranged() {
        let q = p("a=5&b=x&c=31");
        assert_eq!(q.int("a", 0, 30).expect("ok"), Some(5));
        assert_eq!(q.int("none", 0, 30).expect("ok"), None);
        assert_eq!(q.int("b", 0, 30).expect_err("type").module, module::WRONG_TYPE);
        assert_eq!(q.int("c", 0, 30).expect_err("range").module, module::OUT_OF_RANGE);
        assert_eq!(q.int("c", 0, 31).expect("max is inclusive"), Some(31));
    }

    #[test]
    fn indexed_lists_start_at_0_or_1_and_are_consecutive() {
        assert_eq!(
            p("m.1=a&m.2=b&m.10=j&m.3=c&m.4=d&m.5=e&m.6=f&m.7=g&m.8=h&m.9=i").list("m", 16).expect("ok").len(),
            10
        );
        assert_eq!(p("m.2=b&m.1=a").list("m", 16).expect("ok"), ["a", "b"]);
        assert_eq!(p("m.0=a&m.1=b").list("m", 16).expect("ok"), ["a", "b"]);
        assert_eq!(p("m_1=a&m_2=b").list("m", 16).expect("underscores"), ["a", "b"]);
        assert_eq!(p("mx.1=a").list("m", 16).expect("other name"), Vec::<&str>::new());
        assert_eq!(p("m.1=a&m.3=c").list("m", 16).expect_err("gap").module, module::NOT_CONSECUTIVE);
        assert_eq!(p("m.2=a").list("m", 16).expect_err("start").module, module::NOT_CONSECUTIVE);
        assert_eq!(p("m.1=a&m_1=b").list("m", 16).expect_err("twice").module, module::NOT_REPEATABLE);
        assert_eq!(p("m=a&m.1=b").list("m", 16).expect_err("plain and indexed").module, module::NOT_REPEATABLE);
        assert_eq!(p("m.x=a").list("m", 16).expect_err("index").module, module::KEY_FORMAT);
        let at = (1..=LIST_ITEMS_MAX).map(|i| format!("m.{i}=x")).collect::<Vec<_>>().join("&");
        assert_eq!(p(&at).list("m", LIST_ITEMS_MAX).expect("at the limit").len(), LIST_ITEMS_MAX);
        let over = format!("{at}&m.{}=x", LIST_ITEMS_MAX + 1);
        assert_eq!(p(&over).list("m", LIST_ITEMS_MAX).expect_err("over").module, module::BATCH_SIZE);
    }
}
