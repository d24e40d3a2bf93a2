//! CAM-style policies: which actions a key may take on which resources.
//!
//! ```json
//! {"version": "2.0", "statement": [
//!   {"effect": "allow", "action": ["cmq:SendMessage", "cmq:Receive*"], "resource": ["queue/orders-*"]},
//!   {"effect": "deny",  "action": ["cmq:PurgeQueue"], "resource": ["*"]}]}
//! ```
//! Nothing is allowed unless a statement allows it; an explicit deny beats
//! any allow. `*` in an action or resource matches any run of characters
//! (`/` included), anywhere in the pattern. Matching is case-sensitive.

use cmq_protocol::auth::POLICY_BYTES_MAX;
use serde::Deserialize;

/// The only policy language version (CAM's).
pub const POLICY_VERSION: &str = "2.0";

/// Statements one policy may hold.
pub const POLICY_STATEMENTS_MAX: usize = 100;

/// Actions or resources one statement may list.
pub const POLICY_PATTERNS_MAX: usize = 100;

/// The policy of a key that can do everything (the `--init-admin-key` key).
pub const ADMIN_POLICY: &str =
    r#"{"version":"2.0","statement":[{"effect":"allow","action":["cmq:*"],"resource":["*"]}]}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: String,
    statement: Vec<Statement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Statement {
    effect: String,
    action: OneOrMany,
    resource: OneOrMany,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    actions: Vec<String>,
    resources: Vec<String>,
}

impl Rule {
    fn matches(&self, action: &str, resource: &str) -> bool {
        self.actions.iter().any(|p| glob(p, action)) && self.resources.iter().any(|p| glob(p, resource))
    }
}

/// A compiled policy. The empty policy allows nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

impl Policy {
    /// Parses and checks a policy document; "" is the empty policy.
    pub fn parse(text: &str) -> Result<Policy, String> {
        if text.trim().is_empty() {
            return Ok(Policy::default());
        }
        if text.len() > POLICY_BYTES_MAX {
            return Err(format!("policy: {} bytes, at most {POLICY_BYTES_MAX}", text.len()));
        }
        let doc: Document = serde_json::from_str(text).map_err(|e| format!("policy: not a policy document: {e}"))?;
        if doc.version != POLICY_VERSION {
            return Err(format!("policy: version {:?}; only {POLICY_VERSION:?} is known", doc.version));
        }
        if doc.statement.len() > POLICY_STATEMENTS_MAX {
            return Err(format!("policy: {} statements, at most {POLICY_STATEMENTS_MAX}", doc.statement.len()));
        }
        let mut policy = Policy::default();
        for (i, s) in doc.statement.into_iter().enumerate() {
            let rule = Rule { actions: s.action.into_vec(), resources: s.resource.into_vec() };
            check_patterns(i, &rule)?;
            match s.effect.as_str() {
                "allow" => policy.allow.push(rule),
                "deny" => policy.deny.push(rule),
                other => return Err(format!("policy: statement {i}: effect {other:?}; use \"allow\" or \"deny\"")),
            }
        }
        Ok(policy)
    }

    /// Whether `action` (e.g. `cmq:SendMessage`) on `resource` (e.g.
    /// `queue/orders`) is allowed: some allow matches and no deny does.
    pub fn allows(&self, action: &str, resource: &str) -> bool {
        self.allow.iter().any(|r| r.matches(action, resource)) && !self.deny.iter().any(|r| r.matches(action, resource))
    }
}

fn check_patterns(i: usize, rule: &Rule) -> Result<(), String> {
    for (what, list) in [("action", &rule.actions), ("resource", &rule.resources)] {
        if list.is_empty() || list.len() > POLICY_PATTERNS_MAX {
            return Err(format!("policy: statement {i}: {what} needs 1 to {POLICY_PATTERNS_MAX} entries"));
        }
    }
    for a in &rule.actions {
        if a != "*" && !a.starts_with("cmq:") {
            return Err(format!("policy: statement {i}: action {a:?} must be \"*\" or start with \"cmq:\""));
        }
    }
    Ok(())
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
/// Greedy with backtracking to the last star: linear in practice, never
/// exponential (one backtrack point).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_at_their_edges() {
        assert!(glob("queue/orders-*", "queue/orders-1"));
        assert!(glob("queue/orders-*", "queue/orders-"));
        assert!(!glob("queue/orders-*", "queue/orders"));
        assert!(!glob("queue/orders-*", "queue/orders_1"));
        assert!(glob("*", ""));
        assert!(glob("*", "topic/x"));
        assert!(glob("cmq:Receive*", "cmq:ReceiveMessage"));
        assert!(glob("cmq:*Message", "cmq:BatchSendMessage"));
        assert!(!glob("cmq:*Message", "cmq:BatchSendMessages"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("queue/orders", "queue/orders"));
        assert!(!glob("queue/orders", "queue/orders2"));
        assert!(glob("**", "x"));
    }

    #[test]
    fn deny_beats_allow_and_nothing_is_allowed_by_default() {
        let p = Policy::parse(
            r#"{"version":"2.0","statement":[
            {"effect":"allow","action":["cmq:*"],"resource":["queue/*"]},
            {"effect":"deny","action":"cmq:PurgeQueue","resource":"queue/keep"}]}"#,
        )
        .expect("valid");
        assert!(p.allows("cmq:PurgeQueue", "queue/other"));
        assert!(!p.allows("cmq:PurgeQueue", "queue/keep"));
        assert!(p.allows("cmq:SendMessage", "queue/keep"));
        assert!(!p.allows("cmq:SendMessage", "topic/t"));
        assert!(!Policy::default().allows("cmq:SendMessage", "queue/q"));
        assert!(Policy::parse(ADMIN_POLICY).expect("admin").allows("cmq:CreateKey", "key/x"));
    }

    #[test]
    fn bad_documents_are_refused_with_a_reason() {
        for (doc, why) in [
            ("{", "not a policy document"),
            (r#"{"version":"1.0","statement":[]}"#, "version"),
            (r#"{"version":"2.0","statement":[{"effect":"maybe","action":"*","resource":"*"}]}"#, "effect"),
            (r#"{"version":"2.0","statement":[{"effect":"allow","action":"sqs:X","resource":"*"}]}"#, "cmq:"),
            (r#"{"version":"2.0","statement":[{"effect":"allow","action":[],"resource":"*"}]}"#, "entries"),
            (r#"{"version":"2.0","statement":[],"extra":1}"#, "unknown field"),
        ] {
            let err = Policy::parse(doc).expect_err(doc);
            assert!(err.contains(why), "{doc}: {err}");
        }
        let big = format!(r#"{{"version":"2.0","statement":[],"x":"{}"}}"#, "a".repeat(POLICY_BYTES_MAX));
        assert!(Policy::parse(&big).expect_err("too big").contains("at most"));
        assert_eq!(Policy::parse("  ").expect("empty"), Policy::default());
    }
}
