//! `cmq key ...`, `cmq policy ...` and `cmq whoami`, and where the CLI's
//! credentials come from (docs/SECURITY.md).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use cmq_client::protocol::auth::POLICY_BYTES_MAX;
use cmq_client::{Client, Credentials};
use serde_json::json;

use crate::commands::Out;

/// Global flags naming the key to connect with (none: anonymous, or the
/// default credentials file if it exists).
#[derive(Debug, Args)]
pub struct CredentialArgs {
    /// SecretId to authenticate with (with --secret-key; else $CMQ_SECRET_ID/$CMQ_SECRET_KEY, else the
    /// credentials file)
    #[arg(long, global = true, value_name = "AKID...", display_order = 1001)]
    pub secret_id: Option<String>,
    /// SecretKey of --secret-id (visible to other local users in the process list: prefer the environment or a
    /// credentials file)
    #[arg(long, global = true, value_name = "KEY", display_order = 1001)]
    pub secret_key: Option<String>,
    /// Credentials file (TOML: secret_id = "...", secret_key = "..."; refused if group or others may read it)
    /// [default: ~/.config/cmq/credentials, if it exists]
    #[arg(long, global = true, value_name = "FILE", display_order = 1001)]
    pub credentials: Option<PathBuf>,
    /// Use the [profile.NAME] table of the credentials file
    #[arg(long, global = true, value_name = "NAME", display_order = 1001)]
    pub profile: Option<String>,
}

impl CredentialArgs {
    pub fn resolve(&self) -> Result<Option<Credentials>> {
        Ok(Credentials::resolve(
            self.secret_id.as_deref(),
            self.secret_key.as_deref(),
            self.credentials.as_deref(),
            self.profile.as_deref(),
        )?)
    }
}

/// `cmq key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key and print its SecretId and SecretKey (shown this once; --json: {"secretId","secretKey"})
    Create {
        /// Key name: 1-64 letters, digits, '-' or '_', starting with a letter
        name: String,
        /// Policy document (JSON, CAM's shape); without it the key may do nothing until `policy set`
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// List keys: name, SecretId, SecretKeys valid now (2 during a rotation)
    List,
    /// Delete a key and close its connections; with --old-secret only the older SecretKey of a rotated key
    Delete {
        name: String,
        #[arg(long)]
        old_secret: bool,
    },
    /// Give a key a second SecretKey, valid alongside the first until `key delete NAME --old-secret`
    Rotate { name: String },
}

/// `cmq policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Replace a key's policy (open connections follow within a second)
    Set {
        /// The key's name
        key: String,
        /// Policy document (JSON)
        file: PathBuf,
    },
    /// Print a key's policy
    Get { key: String },
}

fn read_policy(path: &std::path::Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading policy {}", path.display()))?;
    if meta.len() > POLICY_BYTES_MAX as u64 {
        anyhow::bail!("policy {} is {} bytes; at most {POLICY_BYTES_MAX}", path.display(), meta.len());
    }
    std::fs::read_to_string(path).with_context(|| format!("reading policy {}", path.display()))
}

pub fn run_key(c: &mut Client, out: &mut Out, cmd: &KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::Create { name, policy } => {
            let policy = policy.as_deref().map(read_policy).transpose()?.unwrap_or_default();
            let k = c.create_key(name, &policy)?;
            print_secret(out, &k)
        }
        KeyCommand::Rotate { name } => {
            let k = c.rotate_key(name)?;
            print_secret(out, &k)
        }
        KeyCommand::List => {
            let keys = c.list_keys()?;
            if out.json {
                let list: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        json!({"name": k.name, "secretId": k.secret_id, "secretKeys": k.secrets,
                                    "createTime": k.created_ms / 1000, "lastModifyTime": k.modified_ms / 1000})
                    })
                    .collect();
                out.json(&json!({ "keys": list }))
            } else {
                for k in &keys {
                    out.line(format_args!("{}\t{}\t{}", k.name, k.secret_id, k.secrets))?;
                }
                Ok(())
            }
        }
        KeyCommand::Delete { name, old_secret } => {
            c.delete_key(name, *old_secret)?;
            out.done()
        }
    }
}

fn print_secret(out: &mut Out, k: &cmq_client::protocol::KeySecret) -> Result<()> {
    if out.json {
        out.json(&json!({ "secretId": k.secret_id, "secretKey": k.secret_key }))
    } else {
        out.line(format_args!("secret_id = \"{}\"\nsecret_key = \"{}\"", k.secret_id, k.secret_key))?;
        eprintln!("key {:?}: the SecretKey is shown this once; keep it (e.g. in a 0600 credentials file)", k.name);
        Ok(())
    }
}

pub fn run_policy(c: &mut Client, out: &mut Out, cmd: &PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Set { key, file } => {
            c.set_policy(key, &read_policy(file)?)?;
            out.done()
        }
        PolicyCommand::Get { key } => {
            let p = c.get_policy(key)?;
            out.line(p)
        }
    }
}

pub fn whoami(c: &mut Client, out: &mut Out) -> Result<()> {
    let me = c.who_am_i()?;
    if out.json {
        out.json(&json!({ "name": me.key_name, "secretId": me.secret_id, "auth": me.auth_mode }))
    } else if me.key_name.is_empty() {
        out.line(format_args!("anonymous (broker auth: {})", me.auth_mode))
    } else {
        out.line(format_args!("{} ({}; broker auth: {})", me.key_name, me.secret_id, me.auth_mode))
    }
}
