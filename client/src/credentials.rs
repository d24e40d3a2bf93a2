//! A key to authenticate with (SecretId and SecretKey), and where it comes
//! from: flags, `$CMQ_SECRET_ID`/`$CMQ_SECRET_KEY`, or a credentials file
//! (TOML: `secret_id = "..."` and `secret_key = "..."` at the top, or in a
//! `[profile.NAME]` table), which is refused if group or others may read
//! it, as ssh refuses such a private key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ClientError;

/// Environment variables holding a key.
pub const ENV_SECRET_ID: &str = "CMQ_SECRET_ID";
pub const ENV_SECRET_KEY: &str = "CMQ_SECRET_KEY";

/// Where credentials are looked for when no file is named, under `$HOME`.
pub const DEFAULT_CREDENTIALS_PATH: &str = ".config/cmq/credentials";

/// Largest credentials file read (a wrong path must not read a huge file).
pub const CREDENTIALS_FILE_BYTES_MAX: u64 = 64 * 1024;

/// A SecretId and its SecretKey. `Debug` never shows the SecretKey.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub secret_id: String,
    pub secret_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("secret_id", &self.secret_id).field("secret_key", &"<redacted>").finish()
    }
}

#[derive(Deserialize, Default)]
struct FileKey {
    secret_id: Option<String>,
    secret_key: Option<String>,
}

#[derive(Deserialize)]
struct File {
    #[serde(flatten)]
    top: FileKey,
    #[serde(default)]
    profile: std::collections::BTreeMap<String, FileKey>,
}

fn invalid(msg: String) -> ClientError {
    ClientError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg))
}

impl Credentials {
    pub fn new(secret_id: impl Into<String>, secret_key: impl Into<String>) -> Credentials {
        Credentials { secret_id: secret_id.into(), secret_key: secret_key.into() }
    }

    /// Reads a credentials file: the top-level key, or `[profile.NAME]`.
    pub fn from_file(path: &Path, profile: Option<&str>) -> Result<Credentials, ClientError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| invalid(format!("credentials file {shown}: {e}")))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(invalid(format!(
                "credentials file {shown} is readable by group or others (mode {:o}): chmod 600 it",
                mode & 0o777
            )));
        }
        if meta.len() > CREDENTIALS_FILE_BYTES_MAX {
            return Err(invalid(format!("credentials file {shown} is over {CREDENTIALS_FILE_BYTES_MAX} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| invalid(format!("credentials file {shown}: {e}")))?;
        let file: File = toml::from_str(&text).map_err(|e| invalid(format!("credentials file {shown}: {e}")))?;
        let key = match profile {
            None => file.top,
            Some(p) => file
                .profile
                .get(p)
                .map(|k| FileKey { secret_id: k.secret_id.clone(), secret_key: k.secret_key.clone() })
                .ok_or_else(|| invalid(format!("credentials file {shown} has no [profile.{p}]")))?,
        };
        match (key.secret_id, key.secret_key) {
            (Some(id), Some(key)) => Ok(Credentials::new(id, key)),
            _ => Err(invalid(format!("credentials file {shown}: secret_id and secret_key are both needed"))),
        }
    }

    /// The key to use: `--secret-id/--secret-key` (both), else the
    /// environment (both), else `--credentials FILE`, else the default file
    /// if it exists; None: connect anonymously.
    pub fn resolve(
        secret_id: Option<&str>,
        secret_key: Option<&str>,
        file: Option<&Path>,
        profile: Option<&str>,
    ) -> Result<Option<Credentials>, ClientError> {
        match (secret_id, secret_key) {
            (Some(id), Some(key)) => return Ok(Some(Credentials::new(id, key))),
            (None, None) => {}
            _ => return Err(invalid("--secret-id and --secret-key go together".into())),
        }
        match (std::env::var(ENV_SECRET_ID).ok(), std::env::var(ENV_SECRET_KEY).ok()) {
            (Some(id), Some(key)) => return Ok(Some(Credentials::new(id, key))),
            (None, None) => {}
            _ => return Err(invalid(format!("${ENV_SECRET_ID} and ${ENV_SECRET_KEY} go together"))),
        }
        if let Some(path) = file {
            return Credentials::from_file(path, profile).map(Some);
        }
        match default_path().filter(|p| p.exists()) {
            Some(path) => Credentials::from_file(&path, profile).map(Some),
            None => Ok(None),
        }
    }
}

/// `~/.config/cmq/credentials`, if `$HOME` is set.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(DEFAULT_CREDENTIALS_PATH))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn files_are_read_with_profiles_and_refused_when_others_may_read_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let text =
            "secret_id = \"AKIDa\"\nsecret_key = \"ka\"\n[profile.app]\nsecret_id = \"AKIDb\"\nsecret_key = \"kb\"\n";
        let p = write(dir.path(), "c", text, 0o600);
        assert_eq!(Credentials::from_file(&p, None).expect("top"), Credentials::new("AKIDa", "ka"));
        assert_eq!(Credentials::from_file(&p, Some("app")).expect("profile"), Credentials::new("AKIDb", "kb"));
        assert!(Credentials::from_file(&p, Some("nope")).is_err());
        let open = write(dir.path(), "open", text, 0o644);
        let err = Credentials::from_file(&open, None).expect_err("world readable").to_string();
        assert!(err.contains("chmod 600"), "{err}");
        let half = write(dir.path(), "half", "secret_id = \"x\"\n", 0o600);
        assert!(Credentials::from_file(&half, None).is_err());
        assert!(!format!("{:?}", Credentials::new("id", "topsecret")).contains("topsecret"));
    }

    #[test]
    fn flags_win_and_must_come_in_pairs() {
        let got = Credentials::resolve(Some("AKIDf"), Some("kf"), None, None).expect("flags");
        assert_eq!(got, Some(Credentials::new("AKIDf", "kf")));
        assert!(Credentials::resolve(Some("AKIDf"), None, None, None).is_err());
    }
}
