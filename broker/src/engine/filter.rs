//! Topic fan-out filtering (HTTP spec §8): which subscriptions receive a
//! published message. Everything here is a pure function of its arguments.
//!
//! # Tag topics (`filterType` 1)
//!
//! 1. A subscription without filter tags receives every message, tagged or not.
//! 2. A subscription with filter tags receives a message iff the two tag sets
//!    intersect.
//! 3. So a subscription with filter tags never receives an untagged message.
//!
//! Tags compare exactly: case-sensitive, no trimming, no normalisation.
//!
//! # Routing-key topics (`filterType` 2)
//!
//! Keys are split into words at every `.`. A binding key matches a routing key
//! when the two match word by word, where a binding word that is exactly `*`
//! matches exactly one word and one that is exactly `#` matches **one or more**
//! words (CMQ's documented rule; AMQP's "zero or more" is not used). A
//! subscription matches if any of its binding keys does; one without binding
//! keys receives nothing. The decisions for the corner cases:
//!
//! | Case | Decision |
//! |---|---|
//! | empty routing key (`""`) | means "no routing key" and matches no binding key, not even `#` |
//! | binding key `#` | matches every non-empty routing key |
//! | `#` in the middle (`a.#.z`) | `a`, then at least one word, then `z` |
//! | several `#` (`#.#`) | each takes at least one word: `#.#` needs at least two words |
//! | `*` or `#` inside a word (`a*b`, `a#`, `**`) | a literal word; only a word that is exactly `*` or `#` is a wildcard |
//! | `*` or `#` in a routing key | ordinary characters; a routing word `*` is matched literally by nothing, since a binding word `*` is a wildcard |
//! | empty words (`a..b`, `.a`, `a.`) | refused by validation in both kinds of key; the matcher itself (total, for any input) treats an empty word as a word like any other (so `*` matches it), as RabbitMQ does |
//! | empty binding key | refused by validation; the matcher never matches it against a non-empty routing key |
//! | case | words compare exactly, case-sensitive |
//!
//! [`binding_matches`] allocates nothing and runs in O(words(binding) ×
//! words(routing key)) word comparisons in the worst case, however many `#`
//! the binding holds (greedy matching that backtracks only to the last `#`),
//! and in a single comparison when the binding has no wildcard character.
//!
//! # Validation
//!
//! The `validate_*` helpers check CMQ's limits and our character rules; their
//! errors name the offending field (`msgTag.2: ...`) and become
//! INVALID_PARAMETER errors.
//!
//! * Tags (`msgTag`, `filterTag`): at most 5 per list; each 1-16 characters
//!   (Unicode scalar values, not bytes); no control characters. Anything
//!   else, including spaces and non-ASCII text, is allowed.
//! * Routing keys: empty (= none), or at most 64 bytes and 15 dots (16 words)
//!   of printable ASCII other than space (`!` to `~`), with no empty word.
//! * Binding keys: at most 5; each non-empty, with the routing-key rules.
//!   Words `*` and `#` are wildcards; any other word is literal.
//!
//! Duplicates in a list are allowed; they change nothing in matching.

use std::fmt;

/// Tags on one message (`msgTag.n`), CMQ: 5.
pub const MSG_TAGS_MAX: usize = 5;
/// Filter tags on one subscription (`filterTag.n`), CMQ: 5.
pub const FILTER_TAGS_MAX: usize = 5;
/// Characters in one tag, message or filter tag alike, CMQ: 16.
pub const TAG_CHARS_MAX: usize = 16;
/// Bytes in a routing key, CMQ: 64.
pub const ROUTING_KEY_BYTES_MAX: usize = 64;
/// Dots in a routing key or binding key, CMQ: 15 (so at most 16 words).
pub const ROUTING_KEY_DOTS_MAX: usize = 15;
/// Binding keys on one subscription (`bindingKey.n`), CMQ: 5.
pub const BINDING_KEYS_MAX: usize = 5;
/// Bytes in one binding key, CMQ: 64.
pub const BINDING_KEY_BYTES_MAX: usize = 64;

// `validate_tags` serves message tags and filter tags with one limit.
const _: () = assert!(MSG_TAGS_MAX == FILTER_TAGS_MAX);

/// How a topic's subscriptions select messages (`filterType`, create-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FilterType {
    /// 1: message tags (`msgTag`) against subscription filter tags (`filterTag`). CMQ's default.
    #[default]
    Tag,
    /// 2: the message's routing key (`routingKey`) against subscription binding keys (`bindingKey`).
    RoutingKey,
}

impl FilterType {
    /// CMQ's wire value: 1 or 2; anything else is `None`.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Tag),
            2 => Some(Self::RoutingKey),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Self::Tag => 1,
            Self::RoutingKey => 2,
        }
    }
}

/// Whether a subscription of a topic with `filter_type` receives a message.
/// Only the inputs of that filter type count: a tag topic ignores binding
/// keys and the routing key, a routing-key topic ignores tags.
pub fn subscription_matches(
    filter_type: FilterType,
    filter_tags: &[String],
    binding_keys: &[String],
    msg_tags: &[String],
    routing_key: &str,
) -> bool {
    match filter_type {
        FilterType::Tag => tags_match(filter_tags, msg_tags),
        FilterType::RoutingKey => binding_keys.iter().any(|b| binding_matches(b, routing_key)),
    }
}

/// §8 rules 1-3: no filter tags takes everything; otherwise some filter tag
/// must equal (exactly) some message tag.
pub fn tags_match(filter_tags: &[String], msg_tags: &[String]) -> bool {
    filter_tags.is_empty() || filter_tags.iter().any(|f| msg_tags.contains(f))
}

/// Whether `binding_key` matches `routing_key` (`*`: exactly one word, `#`:
/// one or more words). An empty routing key matches nothing. See the module
/// documentation for the corner cases.
pub fn binding_matches(binding_key: &str, routing_key: &str) -> bool {
    if routing_key.is_empty() {
        return false;
    }
    if !binding_key.bytes().any(|b| b == b'*' || b == b'#') {
        // Every word is literal: word-by-word equality is string equality.
        return binding_key == routing_key;
    }
    match_words(binding_key.as_bytes(), routing_key.as_bytes(), &mut 0)
}

/// The word of `s` starting at byte offset `pos` and the offset of the next
/// word. Offsets run from 0 to `s.len()`; `s.len() + 1` means "no word left"
/// (so `"a."` has the words `"a"` at 0 and `""` at 2).
#[inline]
fn word_at(s: &[u8], pos: usize) -> (&[u8], usize) {
    let rest = &s[pos..];
    match rest.iter().position(|&b| b == b'.') {
        Some(i) => (&rest[..i], pos + i + 1),
        None => (rest, s.len() + 1),
    }
}

/// Word-wise wildcard matching without the empty-key and literal shortcuts.
///
/// `#` is "one word, then zero or more words". The zero-or-more part is the
/// `*` of the classic greedy glob matcher: on a mismatch, only the most
/// recent `#` is made to swallow one more word and matching resumes after
/// it. Earlier `#`s never need to grow: the stretch between two `#`s has a
/// fixed length, so moving it right only starts the later `#` later, and
/// that later `#` can already swallow those words itself. Every backtrack
/// advances the last `#`'s extent by a word, so the loop runs at most
/// (routing words + 1) × (binding words + 1) times. `steps` counts iterations.
fn match_words(pat: &[u8], text: &[u8], steps: &mut u64) -> bool {
    let (p_end, t_end) = (pat.len() + 1, text.len() + 1);
    let (mut p, mut t) = (0, 0);
    // The last `#` seen: the pattern offset after it, and the text offset
    // where the words it has swallowed so far end.
    let mut last_hash: Option<(usize, usize)> = None;
    while t < t_end {
        *steps += 1;
        let (tw, t_next) = word_at(text, t);
        if p < p_end {
            let (pw, p_next) = word_at(pat, p);
            if pw == b"#" {
                // Its one mandatory word; more only on backtracking.
                (p, t) = (p_next, t_next);
                last_hash = Some((p, t));
                continue;
            }
            if pw == b"*" || pw == tw {
                (p, t) = (p_next, t_next);
                continue;
            }
        }
        let Some((after_hash, swallowed_to)) = last_hash else { return false };
        let (_, next) = word_at(text, swallowed_to);
        last_hash = Some((after_hash, next));
        (p, t) = (after_hash, next);
    }
    // The text is used up: matched iff the pattern is too (every pattern
    // word, `#` included, needs at least one text word).
    p >= p_end
}

/// `field` or `field.n` (1-based, as the API's indexed parameters), for error texts.
struct Field<'a>(&'a str, Option<usize>);

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(i) => write!(f, "{}.{}", self.0, i + 1),
            None => f.write_str(self.0),
        }
    }
}

/// Checks a list of message tags or filter tags: at most 5, each 1-16
/// characters without control characters.
pub fn validate_tags(field: &str, tags: &[String]) -> Result<(), String> {
    if tags.len() > MSG_TAGS_MAX {
        return Err(format!("{field}: at most {MSG_TAGS_MAX} tags (got {})", tags.len()));
    }
    for (i, tag) in tags.iter().enumerate() {
        let field = Field(field, Some(i));
        let chars = tag.chars().count();
        if chars == 0 || chars > TAG_CHARS_MAX {
            return Err(format!("{field}: must be 1-{TAG_CHARS_MAX} characters long (got {chars})"));
        }
        if let Some(bad) = tag.chars().find(|c| c.is_control()) {
            return Err(format!("{field}: character {bad:?} is not allowed (no control characters)"));
        }
    }
    Ok(())
}

/// Checks a message's routing key. Empty is valid and means "no routing key".
pub fn validate_routing_key(field: &str, key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Ok(());
    }
    check_key(Field(field, None), key, ROUTING_KEY_BYTES_MAX)
}

/// Checks a subscription's binding keys: at most 5, each a non-empty key
/// under the routing-key rules (with words `*` and `#` as wildcards).
pub fn validate_binding_keys(field: &str, keys: &[String]) -> Result<(), String> {
    if keys.len() > BINDING_KEYS_MAX {
        return Err(format!("{field}: at most {BINDING_KEYS_MAX} binding keys (got {})", keys.len()));
    }
    for (i, key) in keys.iter().enumerate() {
        let field = Field(field, Some(i));
        if key.is_empty() {
            return Err(format!("{field}: must not be empty"));
        }
        check_key(field, key, BINDING_KEY_BYTES_MAX)?;
    }
    Ok(())
}

/// The rules routing keys and binding keys share, for a non-empty key.
fn check_key(field: Field<'_>, key: &str, bytes_max: usize) -> Result<(), String> {
    if key.len() > bytes_max {
        return Err(format!("{field}: at most {bytes_max} bytes (got {})", key.len()));
    }
    if let Some(bad) = key.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("{field}: character {bad:?} is not allowed (printable ASCII other than space only)"));
    }
    let dots = key.bytes().filter(|&b| b == b'.').count();
    if dots > ROUTING_KEY_DOTS_MAX {
        return Err(format!(
            "{field}: at most {ROUTING_KEY_DOTS_MAX} dots ({} words) (got {dots})",
            ROUTING_KEY_DOTS_MAX + 1
        ));
    }
    if key.split('.').any(str::is_empty) {
        return Err(format!("{field}: empty word (a leading, trailing or doubled '.')"));
    }
    Ok(())
}
