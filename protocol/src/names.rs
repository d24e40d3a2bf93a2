//! Resource names and which shard owns them.

use crate::limits::NAME_CHARS_MAX;

/// Checks CMQ's name rule for queues (and later topics and subscriptions):
/// 1..=64 characters, ASCII letters, digits, `-` and `_`, starting with a letter.
/// The error text names the field and the rule, for an INVALID_PARAMETER error.
pub fn validate_name(field: &str, name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > NAME_CHARS_MAX {
        return Err(format!("{field}: must be 1-{NAME_CHARS_MAX} characters long (got {})", name.chars().count()));
    }
    if !bytes[0].is_ascii_alphabetic() {
        return Err(format!("{field}: must start with a letter"));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(format!("{field}: character {bad:?} is not allowed (letters, digits, '-' and '_' only)"));
    }
    Ok(())
}

/// The shard that owns a named resource: FNV-1a (64-bit) of the name's bytes,
/// modulo the shard count. Clients compute the same function to send each
/// request straight to the owning shard's connection. Changing it would move
/// every queue, so it is part of the protocol (PROTOCOL.md, "Shard routing").
pub fn shard_for(name: &str, shard_count: u16) -> u16 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    for b in name.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    (hash % u64::from(shard_count.max(1))) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rule_boundaries() {
        assert!(validate_name("queue", "a").is_ok());
        assert!(validate_name("queue", &"a".repeat(64)).is_ok());
        assert!(validate_name("queue", &"a".repeat(65)).is_err());
        assert!(validate_name("queue", "").is_err());
        assert!(validate_name("queue", "1abc").is_err());
        assert!(validate_name("queue", "-abc").is_err());
        assert!(validate_name("queue", "a-b_c9").is_ok());
        assert!(validate_name("queue", "a.b").is_err());
        assert!(validate_name("queue", "aé").is_err());
        let err = validate_name("queue", "a b").expect_err("space");
        assert!(err.starts_with("queue:"), "{err}");
    }

    #[test]
    fn shard_hash_golden_values() {
        // FNV-1a 64 reference values; pinned because data on disk depends on them.
        assert_eq!(shard_for("", u16::MAX), (0xcbf2_9ce4_8422_2325u64 % 65535) as u16);
        assert_eq!(shard_for("a", u16::MAX), (0xaf63_dc4c_8601_ec8cu64 % 65535) as u16);
        assert_eq!(shard_for("anything", 1), 0);
        assert_eq!(shard_for("anything", 0), 0);
    }
}
