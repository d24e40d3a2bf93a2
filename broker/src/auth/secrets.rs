//! SecretIds and SecretKeys from the OS CSPRNG, and the credentials file
//! format (`secret_id = "..."`, `secret_key = "..."`, TOML).

use std::io::Write;
use std::path::Path;

use cmq_protocol::auth::{AUTH_NONCE_BYTES, SECRET_ID_PREFIX, SECRET_ID_RANDOM_CHARS, SECRET_KEY_CHARS};

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `n` characters drawn uniformly from [A-Za-z0-9] (rejection sampling: no modulo bias).
fn random_chars(n: usize) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf)?;
        for b in buf {
            // 62 * 4 = 248: bytes from 248 up would favour some characters.
            if b < 248 && out.len() < n {
                out.push(ALPHANUMERIC[usize::from(b % 62)] as char);
            }
        }
    }
    Ok(out)
}

/// A new SecretId (`AKID` + 32 characters) and SecretKey (40 characters).
pub fn new_key_pair() -> Result<(String, String), getrandom::Error> {
    Ok((format!("{SECRET_ID_PREFIX}{}", random_chars(SECRET_ID_RANDOM_CHARS)?), random_chars(SECRET_KEY_CHARS)?))
}

pub fn new_secret_key() -> Result<String, getrandom::Error> {
    random_chars(SECRET_KEY_CHARS)
}

/// A fresh server nonce.
pub fn nonce() -> Result<[u8; AUTH_NONCE_BYTES], getrandom::Error> {
    let mut n = [0u8; AUTH_NONCE_BYTES];
    getrandom::fill(&mut n)?;
    Ok(n)
}

/// Writes a credentials file readable by its owner only (created 0600;
/// an existing file is replaced). Its name says which key it holds.
pub fn write_credentials(path: &Path, name: &str, secret_id: &str, secret_key: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(f, "# cmq key {name:?}, created by cmqd --init-admin-key")?;
    writeln!(f, "secret_id = \"{secret_id}\"")?;
    writeln!(f, "secret_key = \"{secret_key}\"")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_their_shape_and_differ() {
        let (id, key) = new_key_pair().expect("csprng");
        assert!(id.starts_with("AKID") && id.len() == 36, "{id}");
        assert_eq!(key.len(), 40);
        assert!(key.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(new_key_pair().expect("csprng"), (id, key));
        assert_ne!(nonce().expect("csprng"), nonce().expect("csprng"));
    }

    #[test]
    fn credentials_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("admin.creds");
        write_credentials(&path, "admin", "AKIDx", "secret").expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("secret_id = \"AKIDx\"") && text.contains("secret_key = \"secret\""));
    }
}
