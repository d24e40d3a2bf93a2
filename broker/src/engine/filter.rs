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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The obvious exponential definition of §8's word matching.
    fn naive_words(pat: &[&str], text: &[&str]) -> bool {
        match pat.split_first() {
            None => text.is_empty(),
            Some((&"#", rest)) => (1..=text.len()).any(|k| naive_words(rest, &text[k..])),
            Some((&"*", rest)) => !text.is_empty() && naive_words(rest, &text[1..]),
            Some((w, rest)) => text.first() == Some(w) && naive_words(rest, &text[1..]),
        }
    }

    fn naive(binding: &str, routing: &str) -> bool {
        if routing.is_empty() {
            return false;
        }
        let pat: Vec<&str> = binding.split('.').collect();
        let text: Vec<&str> = routing.split('.').collect();
        naive_words(&pat, &text)
    }

    /// Both the public function (with its shortcuts) and the general
    /// algorithm, checked against the reference.
    fn check(binding: &str, routing: &str, expected: bool) {
        assert_eq!(naive(binding, routing), expected, "reference: {binding:?} vs {routing:?}");
        assert_eq!(binding_matches(binding, routing), expected, "{binding:?} vs {routing:?}");
        if !routing.is_empty() {
            let general = match_words(binding.as_bytes(), routing.as_bytes(), &mut 0);
            assert_eq!(general, expected, "general algorithm: {binding:?} vs {routing:?}");
        }
    }

    #[test]
    fn tag_rules() {
        // (filter tags, message tags, delivered)
        let table: &[(&[&str], &[&str], bool)] = &[
            // Rule 1: no filter tags takes everything.
            (&[], &[], true),
            (&[], &["a"], true),
            (&[], &["a", "b", "c", "d", "e"], true),
            // Rule 2: a non-empty intersection.
            (&["a"], &["a"], true),
            (&["a"], &["b", "a"], true),
            (&["a", "b"], &["b"], true),
            (&["a", "b"], &["c", "b", "x"], true),
            (&["a", "a"], &["a"], true),
            (&["a"], &["b"], false),
            (&["a", "b"], &["c", "d", "e"], false),
            // Rule 3: filter tags and an untagged message.
            (&["a"], &[], false),
            (&["a", "b", "c", "d", "e"], &[], false),
            // Exact comparison: case, whitespace, prefixes, non-ASCII.
            (&["A"], &["a"], false),
            (&["Order"], &["order"], false),
            (&["a "], &["a"], false),
            (&["ab"], &["a"], false),
            (&["a"], &["ab"], false),
            (&["é"], &["e"], false),
            (&["é"], &["é"], true),
            (&["标签"], &["标签"], true),
        ];
        for &(filter, msg, expected) in table {
            assert_eq!(tags_match(&strings(filter), &strings(msg)), expected, "filter {filter:?}, msg {msg:?}");
        }
    }

    #[test]
    fn routing_key_rules() {
        // (binding key, routing key, matched)
        let table: &[(&str, &str, bool)] = &[
            // Literal keys.
            ("order.created", "order.created", true),
            ("order.created", "order.deleted", false),
            ("order.created", "order", false),
            ("order.created", "order.created.x", false),
            ("order", "order", true),
            ("order", "orders", false),
            ("order", "order.created", false),
            // Case-sensitive.
            ("Order.created", "order.created", false),
            ("order.created", "order.Created", false),
            // `*`: exactly one word.
            ("order.*", "order.created", true),
            ("order.*", "order.deleted", true),
            ("order.*", "order", false),
            ("order.*", "order.created.eu", false),
            ("order.*", "audit.created", false),
            ("*.created", "order.created", true),
            ("*.created", "created", false),
            ("*.created", "a.b.created", false),
            ("*", "a", true),
            ("*", "a.b", false),
            ("*.*", "a.b", true),
            ("*.*", "a", false),
            ("*.*", "a.b.c", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.*.c", "a.b.b.c", false),
            // `#`: one or more words (not zero).
            ("audit.#", "audit.login", true),
            ("audit.#", "audit.login.failed.eu", true),
            ("audit.#", "audit", false),
            ("audit.#", "order.audit", false),
            ("audit.#", "auditx.login", false),
            ("#", "a", true),
            ("#", "a.b.c", true),
            ("#.created", "order.created", true),
            ("#.created", "a.b.order.created", true),
            ("#.created", "created", false),
            ("#.created", "order.created.x", false),
            ("a.#.z", "a.b.z", true),
            ("a.#.z", "a.b.c.d.z", true),
            ("a.#.z", "a.z", false),
            ("a.#.z", "a.b.z.q", false),
            ("a.#.z", "a.z.z", true),
            ("a.#.z", "a.z.z.z", true),
            // Several `#`: each takes at least one word.
            ("#.#", "a", false),
            ("#.#", "a.b", true),
            ("#.#", "a.b.c.d", true),
            ("#.#.#", "a.b", false),
            ("#.#.#", "a.b.c", true),
            ("a.#.b.#.c", "a.x.b.y.c", true),
            ("a.#.b.#.c", "a.b.b.c", false),
            ("a.#.b.#.c", "a.b.b.b.c", true),
            ("a.#.b.#.c", "a.x.b.c", false),
            ("#.a.#", "a", false),
            ("#.a.#", "x.a", false),
            ("#.a.#", "x.a.y", true),
            ("#.a.#", "a.a.a", true),
            ("#.a.#", "b.b.a.b.b", true),
            // `*` and `#` together.
            ("*.#", "a", false),
            ("*.#", "a.b", true),
            ("#.*", "a.b.c", true),
            ("#.*.x", "a.b.x", true),
            ("#.*.x", "a.x", false),
            ("*.#.*", "a.b.c", true),
            ("*.#.*", "a.b", false),
            // Wildcard characters inside a word are literal.
            ("a*b", "a*b", true),
            ("a*b", "axb", false),
            ("a*b", "ab", false),
            ("a#", "a#", true),
            ("a#", "ab", false),
            ("**", "ab", false),
            ("**", "**", true),
            ("##", "a", false),
            ("##", "##", true),
            ("order.*d", "order.created", false),
            // A routing word `*` or `#` is an ordinary word.
            ("a.*", "a.*", true),
            ("a.#", "a.#", true),
            ("a.b", "a.*", false),
            // Empty routing key: no binding matches, not even `#`.
            ("#", "", false),
            ("*", "", false),
            ("", "", false),
            ("a", "", false),
            // Empty binding key (refused by validation).
            ("", "a", false),
            ("", "a.b", false),
            // Empty words (refused by validation): words like any other.
            ("a..b", "a..b", true),
            ("a.*.b", "a..b", true),
            ("a.#", "a.", true),
            ("a.", "a", false),
            ("a", "a.", false),
            (".a", "a", false),
            ("*", ".", false),
            ("*.*", ".", true),
        ];
        for &(binding, routing, expected) in table {
            check(binding, routing, expected);
        }
    }

    #[test]
    fn sixteen_words() {
        let words: Vec<String> = (0..16).map(|i| format!("w{i}")).collect();
        let key = words.join(".");
        assert_eq!(key.bytes().filter(|&b| b == b'.').count(), ROUTING_KEY_DOTS_MAX);
        assert!(validate_routing_key("routingKey", &key).is_ok());
        check(&key, &key, true);
        check("#", &key, true);
        check("w0.#", &key, true);
        check("#.w15", &key, true);
        check("w0.#.w15", &key, true);
        check("#.w7.#", &key, true);
        check(&["*"; 16].join("."), &key, true);
        check(&["*"; 15].join("."), &key, false);
        check(&["*"; 17].join("."), &key, false);
        check(&["#"; 16].join("."), &key, true);
        check(&["#"; 17].join("."), &key, false);
        check(&format!("{}.#", ["*"; 15].join(".")), &key, true);
        check(&format!("{}.#", ["*"; 16].join(".")), &key, false);
        check(&words[..15].join("."), &key, false);
    }

    /// `#.#.#.#.#.#.#.#.x` against a 16-word key without `x` (and variants)
    /// must not explore the exponential number of ways to split the key:
    /// the loop runs at most (routing words + 1) × (binding words + 1) times.
    #[test]
    fn pathological_bindings_take_bounded_work() {
        let cases = [
            (format!("{}.x", ["#"; 8].join(".")), ["a"; 16].join("."), false),
            (format!("{}.x", ["#"; 8].join(".")), format!("{}.x", ["a"; 15].join(".")), true),
            (format!("{}.x", ["#"; 15].join(".")), ["a"; 16].join("."), false),
            (format!("{}.x", ["#.a"; 7].join(".")), ["a"; 16].join("."), false),
            (format!("{}.x", ["*.#"; 7].join(".")), ["a"; 16].join("."), false),
            // Far beyond the API's limits: still polynomial.
            (format!("{}.x", ["#"; 100].join(".")), ["a"; 1000].join("."), false),
            (format!("{}.b", ["#.a"; 50].join(".")), ["a"; 1000].join("."), false),
            (format!("{}.a", ["#.a"; 50].join(".")), ["a"; 1000].join("."), true),
        ];
        for (binding, routing, expected) in cases {
            let mut steps = 0;
            assert_eq!(match_words(binding.as_bytes(), routing.as_bytes(), &mut steps), expected, "{binding}");
            let p_words = binding.split('.').count() as u64;
            let t_words = routing.split('.').count() as u64;
            let bound = (p_words + 1) * (t_words + 1);
            assert!(steps <= bound, "{binding} vs {t_words} words: {steps} steps > {bound}");
        }
        // The one the brief names, pinned, so a regression to backtracking
        // over every `#` shows up as a changed count, not a slow test.
        let mut steps = 0;
        let (binding, routing) = ("#.#.#.#.#.#.#.#.x", ["a"; 16].join("."));
        assert!(!match_words(binding.as_bytes(), routing.as_bytes(), &mut steps));
        assert!(steps <= 10 * 17, "{steps}");
        assert!(!naive(binding, &routing), "the reference agrees (C(15,7) = 6435 splits)");
    }

    #[test]
    fn subscriptions() {
        let none: &[String] = &[];
        let tags = strings(&["a", "b"]);
        let bindings = strings(&["order.created", "audit.#"]);
        let tag = FilterType::Tag;
        let rk = FilterType::RoutingKey;
        // Tag topics: binding keys and routing keys play no part.
        assert!(subscription_matches(tag, none, none, none, ""));
        assert!(subscription_matches(tag, none, &bindings, &tags, "x.y"));
        assert!(subscription_matches(tag, &strings(&["b"]), none, &tags, ""));
        assert!(!subscription_matches(tag, &strings(&["c"]), &bindings, &tags, "order.created"));
        assert!(!subscription_matches(tag, &strings(&["c"]), none, none, ""));
        // Routing-key topics: tags play no part; no binding keys, nothing.
        assert!(!subscription_matches(rk, none, none, none, "order.created"));
        assert!(!subscription_matches(rk, none, none, &tags, "order.created"));
        assert!(subscription_matches(rk, none, &bindings, none, "order.created"));
        assert!(subscription_matches(rk, &strings(&["zz"]), &bindings, &tags, "audit.login"));
        assert!(!subscription_matches(rk, none, &bindings, none, "order.deleted"));
        assert!(!subscription_matches(rk, none, &bindings, none, "audit"));
        assert!(!subscription_matches(rk, none, &bindings, &tags, ""));
        assert!(!subscription_matches(rk, none, &strings(&["#"]), none, ""));
        assert!(subscription_matches(rk, none, &strings(&["x", "y", "#"]), none, "z"));
    }

    #[test]
    fn filter_type_values() {
        assert_eq!(FilterType::from_u8(1), Some(FilterType::Tag));
        assert_eq!(FilterType::from_u8(2), Some(FilterType::RoutingKey));
        for v in [0, 3, 255] {
            assert_eq!(FilterType::from_u8(v), None);
        }
        for t in [FilterType::Tag, FilterType::RoutingKey] {
            assert_eq!(FilterType::from_u8(t.as_u8()), Some(t));
        }
        assert_eq!(FilterType::default(), FilterType::Tag);
    }

    #[test]
    fn tag_validation() {
        assert!(validate_tags("msgTag", &[]).is_ok());
        assert!(validate_tags("msgTag", &strings(&["a", "b", "c", "d", "e"])).is_ok());
        assert!(validate_tags("msgTag", &strings(&["a", "a"])).is_ok(), "duplicates are harmless");
        assert!(validate_tags("msgTag", &["x".repeat(TAG_CHARS_MAX)]).is_ok());
        assert!(validate_tags("msgTag", &["é".repeat(TAG_CHARS_MAX)]).is_ok(), "characters, not bytes");
        assert!(validate_tags("msgTag", &strings(&["with space", "a.b", "*", "#"])).is_ok());

        let err = validate_tags("msgTag", &strings(&["a", "b", "c", "d", "e", "f"])).unwrap_err();
        assert_eq!(err, "msgTag: at most 5 tags (got 6)");
        let err = validate_tags("filterTag", &["a".into(), "x".repeat(TAG_CHARS_MAX + 1)]).unwrap_err();
        assert_eq!(err, "filterTag.2: must be 1-16 characters long (got 17)");
        let err = validate_tags("msgTag", &strings(&[""])).unwrap_err();
        assert_eq!(err, "msgTag.1: must be 1-16 characters long (got 0)");
        let err = validate_tags("msgTag", &strings(&["a", "b", "c\n"])).unwrap_err();
        assert!(err.starts_with("msgTag.3: character '\\n' is not allowed"), "{err}");
        assert!(validate_tags("msgTag", &strings(&["\0"])).is_err());
        assert!(validate_tags("msgTag", &strings(&["a\u{7f}"])).is_err());
    }

    #[test]
    fn routing_key_validation() {
        let ok = |k: &str| validate_routing_key("routingKey", k);
        assert!(ok("").is_ok(), "empty means no routing key");
        assert!(ok("order").is_ok());
        assert!(ok("order.created.eu-west_1").is_ok());
        assert!(ok("a*b.#.*.!~").is_ok(), "wildcard characters are ordinary in a routing key");
        assert!(ok(&"a".repeat(ROUTING_KEY_BYTES_MAX)).is_ok());
        assert!(ok(&["a"; 16].join(".")).is_ok());

        assert_eq!(ok(&"a".repeat(65)).unwrap_err(), "routingKey: at most 64 bytes (got 65)");
        assert_eq!(ok(&["a"; 17].join(".")).unwrap_err(), "routingKey: at most 15 dots (16 words) (got 16)");
        for bad in ["a.", ".a", "a..b", ".", "a.b."] {
            let err = ok(bad).unwrap_err();
            assert!(err.starts_with("routingKey: empty word"), "{bad:?}: {err}");
        }
        for bad in ["a b", "a\tb", "é", "a\u{0}", " a"] {
            let err = ok(bad).unwrap_err();
            assert!(err.starts_with("routingKey: character"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn binding_key_validation() {
        let ok = |keys: &[&str]| validate_binding_keys("bindingKey", &strings(keys));
        assert!(ok(&[]).is_ok(), "no binding keys (the subscription then receives nothing)");
        assert!(ok(&["order.created", "order.*", "audit.#", "#", "*.*"]).is_ok());
        assert!(ok(&["a*b", "##", "a.#.z", "#.#"]).is_ok());
        assert!(ok(&[&"a".repeat(BINDING_KEY_BYTES_MAX)]).is_ok());
        assert!(ok(&[&["#"; 16].join(".")]).is_ok());

        assert_eq!(ok(&["a"; 6]).unwrap_err(), "bindingKey: at most 5 binding keys (got 6)");
        assert_eq!(ok(&["a", ""]).unwrap_err(), "bindingKey.2: must not be empty");
        assert_eq!(ok(&[&"a".repeat(65)]).unwrap_err(), "bindingKey.1: at most 64 bytes (got 65)");
        assert_eq!(
            ok(&["a", "b", &["*"; 17].join(".")]).unwrap_err(),
            "bindingKey.3: at most 15 dots (16 words) (got 16)"
        );
        assert!(ok(&["a.", "b"]).unwrap_err().starts_with("bindingKey.1: empty word"));
        assert!(ok(&["a..#"]).unwrap_err().starts_with("bindingKey.1: empty word"));
        assert!(ok(&["a", "a b"]).unwrap_err().starts_with("bindingKey.2: character ' '"));
    }

    /// Keys of 1-8 words over a tiny alphabet, so that random pairs match often.
    fn routing_key() -> impl Strategy<Value = String> {
        let word = prop_oneof![6 => "[abc]", 1 => Just("ab".to_string()), 1 => "[*#]"];
        proptest::collection::vec(word, 1..=8).prop_map(|w| w.join("."))
    }

    fn binding_key() -> impl Strategy<Value = String> {
        let word = prop_oneof![
            4 => "[abc]",
            2 => Just("*".to_string()),
            2 => Just("#".to_string()),
            1 => Just("a*".to_string()),
        ];
        proptest::collection::vec(word, 1..=8).prop_map(|w| w.join("."))
    }

    /// A binding key made from a routing key, so that most of them match:
    /// some words become `*`, some runs of words become one `#`, and now and
    /// then a word is changed or dropped.
    fn derived_pair() -> impl Strategy<Value = (String, String)> {
        proptest::collection::vec(("[abc]", 0..10u8), 1..=12).prop_map(|words| {
            let routing: Vec<&str> = words.iter().map(|(w, _)| w.as_str()).collect();
            let mut binding: Vec<&str> = Vec::new();
            for (w, roll) in &words {
                match roll {
                    0 | 1 => binding.push("*"),
                    2 | 3 if binding.last() == Some(&"#") => {}
                    2 | 3 => binding.push("#"),
                    4 => binding.push("c"),
                    5 if words.len() > 1 => {}
                    _ => binding.push(w),
                }
            }
            (binding.join("."), routing.join("."))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn binding_matches_equals_the_reference(binding in binding_key(), routing in routing_key()) {
            prop_assert_eq!(binding_matches(&binding, &routing), naive(&binding, &routing));
            let general = match_words(binding.as_bytes(), routing.as_bytes(), &mut 0);
            prop_assert_eq!(general, naive(&binding, &routing));
        }

        #[test]
        fn derived_bindings_equal_the_reference((binding, routing) in derived_pair()) {
            prop_assert_eq!(binding_matches(&binding, &routing), naive(&binding, &routing));
        }

        /// Anything at all, empty words and empty keys included.
        #[test]
        fn arbitrary_keys_equal_the_reference(binding in "[ab.*#]{0,12}", routing in "[ab.*#]{0,12}") {
            prop_assert_eq!(binding_matches(&binding, &routing), naive(&binding, &routing));
        }

        #[test]
        fn tags_match_equals_set_intersection(
            filter in proptest::collection::vec("[abcdA]", 0..=5),
            msg in proptest::collection::vec("[abcdA]", 0..=5),
        ) {
            let f: HashSet<&String> = filter.iter().collect();
            let m: HashSet<&String> = msg.iter().collect();
            let expected = f.is_empty() || !f.is_disjoint(&m);
            prop_assert_eq!(tags_match(&filter, &msg), expected);
        }
    }
}
