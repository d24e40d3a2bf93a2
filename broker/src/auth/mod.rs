//! Client authentication and permissions (docs/SECURITY.md).
//!
//! * `policy`: CAM-style policy documents, compiled and evaluated.
//! * `actions`: every operation's action name and resource.
//! * `table`: the keys shard 0 publishes to every shard.
//! * `session`: an authenticated connection's key and cached decisions.
//! * `backoff`: per-address slow-down after failed attempts.
//! * `attempts`: the HTTP port's attempts in that backoff.
//! * `limits`: per-key connection and request-rate limits.
//! * `secrets`: SecretIds and SecretKeys from the OS CSPRNG, and the credentials file.

pub mod actions;
pub mod attempts;
pub mod backoff;
pub mod limits;
pub mod policy;
pub mod secrets;
pub mod session;
pub mod table;

use std::sync::atomic::{AtomicU64, Ordering};

/// `--auth`: who may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Not given: `required` once any key exists; before that anonymous
    /// clients are served (on a loopback address only: see `server.rs`).
    #[default]
    Auto,
    /// Every connection must authenticate; permissions are enforced.
    Required,
    /// Anonymous connections are served with every permission;
    /// authenticated ones are held to their policy (for migrating clients).
    Optional,
    /// No permission is checked (authentication still works, for `whoami`).
    Off,
}

impl AuthMode {
    pub fn name(self) -> &'static str {
        match self {
            AuthMode::Auto => "auto",
            AuthMode::Required => "required",
            AuthMode::Optional => "optional",
            AuthMode::Off => "off",
        }
    }

    /// Whether a connection that did not authenticate is served, given
    /// whether any key exists.
    pub fn admits_anonymous(self, have_keys: bool) -> bool {
        match self {
            AuthMode::Auto => !have_keys,
            AuthMode::Required => false,
            AuthMode::Optional | AuthMode::Off => true,
        }
    }

    /// Whether authenticated connections are held to their policies.
    pub fn enforces(self) -> bool {
        self != AuthMode::Off
    }
}

/// Protected mode: refuses configurations that would serve anonymous
/// clients beyond this machine, and warns about anonymous service on a
/// loopback address. `have_keys`: keys exist (or `--init-admin-key` makes one).
pub fn startup_check(cfg: &crate::config::Config, have_keys: bool) -> anyhow::Result<()> {
    let mode = cfg.auth;
    if mode == AuthMode::Required && !have_keys {
        anyhow::bail!(
            "--auth required, but the broker has no keys: pass --init-admin-key FILE to create an administrator key"
        );
    }
    if !mode.admits_anonymous(have_keys) {
        return Ok(());
    }
    let addr = cfg.listen;
    if addr.ip().is_loopback() || cfg.allow_anonymous {
        log::warn!(
            "serving anonymous clients on {addr} with every permission (--auth {}{}): create a key \
             (cmqd --init-admin-key FILE, or cmq key create) to require authentication",
            mode.name(),
            if have_keys { "" } else { ", no keys" }
        );
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve anonymous clients on the non-loopback address {addr} (--auth {}): \
         create an administrator key with --init-admin-key FILE (clients then authenticate with it), \
         listen on 127.0.0.1, or pass --allow-anonymous to serve anyone who can reach the port",
        mode.name()
    )
}

/// Broker-wide authentication state.
#[derive(Default)]
pub struct Auth {
    pub keys: table::AuthShared,
    pub backoff: backoff::Backoff,
    /// Failed authentication attempts (`cmq_auth_failures_total`).
    pub failures: AtomicU64,
    /// Open connections and request counts per key (`--key-connections-max`,
    /// `--key-requests-per-second`).
    pub usage: limits::KeyUsageTable,
    /// Set once `--init-admin-key` is settled (the key made and its file
    /// written, or nothing to do), so start-up reports ready only then.
    admin_key_settled: (std::sync::Mutex<bool>, std::sync::Condvar),
}

impl Auth {
    pub fn count_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn admin_key_settled(&self) {
        *self.admin_key_settled.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.admin_key_settled.1.notify_all();
    }

    /// Waits up to `timeout` for `--init-admin-key` to settle; false if it did not.
    pub fn wait_admin_key(&self, timeout: std::time::Duration) -> bool {
        let guard = self.admin_key_settled.0.lock().unwrap_or_else(|e| e.into_inner());
        let (done, _) = self
            .admin_key_settled
            .1
            .wait_timeout_while(guard, timeout, |settled| !*settled)
            .unwrap_or_else(|e| e.into_inner());
        *done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cfg(args: &[&str]) -> crate::config::Config {
        let flags = crate::config::Flags::parse_from(std::iter::once("cmqd").chain(args.iter().copied()));
        crate::config::Config::from_flags(flags).expect("valid flags")
    }

    #[test]
    fn protected_mode_refuses_anonymous_service_beyond_loopback() {
        let open = ["--listen", "0.0.0.0:7700"];
        let err = startup_check(&cfg(&open), false).expect_err("no keys, non-loopback");
        assert!(err.to_string().contains("--init-admin-key") && err.to_string().contains("--allow-anonymous"));
        startup_check(&cfg(&open), true).expect("a key: authentication is required");
        startup_check(&cfg(&[&open[..], &["--allow-anonymous"]].concat()), false).expect("explicitly open");
        startup_check(&cfg(&["--listen", "127.0.0.1:7700"]), false).expect("loopback keeps the quickstart");
        assert!(startup_check(&cfg(&[&open[..], &["--auth", "off"]].concat()), true).is_err(), "off serves anyone");
        assert!(startup_check(&cfg(&["--auth", "required"]), false).is_err(), "required needs a key");
    }

    #[test]
    fn modes_admit_anonymous_clients_as_documented() {
        assert!(AuthMode::Auto.admits_anonymous(false));
        assert!(!AuthMode::Auto.admits_anonymous(true));
        assert!(!AuthMode::Required.admits_anonymous(false));
        assert!(AuthMode::Optional.admits_anonymous(true));
        assert!(AuthMode::Off.admits_anonymous(true) && !AuthMode::Off.enforces());
    }
}
