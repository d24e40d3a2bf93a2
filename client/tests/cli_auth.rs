//! The CLI with keys: creating them, connecting with them from flags, the
//! environment and credentials files (refused when others may read them),
//! policies, rotation and `whoami`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::cli::{json, ok, stderr};
use support::Broker;

/// `cmq --server ADDR --timeout 5 ARGS` with `env` set and the default
/// credentials file out of reach.
fn cmq_env(addr: std::net::SocketAddr, args: &[&str], env: &[(&str, &str)], home: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmq"))
        .args(["--server", &addr.to_string(), "--timeout", "5"])
        .args(args)
        .env_remove("CMQ_SERVER")
        .env_remove("CMQ_SECRET_ID")
        .env_remove("CMQ_SECRET_KEY")
        .env("HOME", home)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run cmq")
}

fn write_private(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[test]
fn keys_policies_and_credentials_from_every_source() {
    let dir = tempfile::tempdir().expect("tmp");
    let home = dir.path();
    let admin_file = dir.path().join("admin.creds");
    let broker = Broker::start(&["--init-admin-key", admin_file.to_str().expect("utf-8")]);
    let addr = broker.addr;
    let admin = admin_file.to_str().expect("utf-8");
    let run = |args: &[&str]| cmq_env(addr, args, &[], home);
    // Anonymous is refused, with the code on stderr.
    let refused = run(&["list-queues"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("AUTH_FAILED"), "{}", stderr(&refused));
    // A key with a policy from a file; --json shows the SecretKey once.
    let policy = dir.path().join("p.json");
    std::fs::write(
        &policy,
        r#"{"version":"2.0","statement":[{"effect":"allow","action":["cmq:SendMessage","cmq:CreateQueue"],"resource":"queue/app-*"}]}"#,
    )
    .expect("policy");
    let created: Value =
        json(run(&["--credentials", admin, "key", "create", "app", "--policy", policy.to_str().unwrap(), "--json"]));
    let (id, key) = (created["secretId"].as_str().expect("id"), created["secretKey"].as_str().expect("key"));
    assert!(id.starts_with("AKID") && key.len() == 40, "{created}");
    // Flags.
    let who = ok(run(&["--secret-id", id, "--secret-key", key, "whoami"]));
    assert!(who.starts_with("app (AKID"), "{who}");
    ok(run(&["--secret-id", id, "--secret-key", key, "create-queue", "app-1"]));
    ok(run(&["--secret-id", id, "--secret-key", key, "send", "app-1", "hi"]));
    let denied = run(&["--secret-id", id, "--secret-key", key, "purge", "app-1", "--yes"]);
    assert!(stderr(&denied).contains("ACCESS_DENIED"), "{}", stderr(&denied));
    // The environment.
    let env = cmq_env(addr, &["whoami", "--json"], &[("CMQ_SECRET_ID", id), ("CMQ_SECRET_KEY", key)], home);
    assert_eq!(json(env)["name"], "app");
    // A credentials file with a profile, and the default file under $HOME.
    let file = dir.path().join("creds");
    write_private(&file, &format!("[profile.app]\nsecret_id = \"{id}\"\nsecret_key = \"{key}\"\n"));
    let who = ok(run(&["--credentials", file.to_str().unwrap(), "--profile", "app", "whoami"]));
    assert!(who.starts_with("app "), "{who}");
    std::fs::create_dir_all(home.join(".config/cmq")).expect("mkdir");
    write_private(&home.join(".config/cmq/credentials"), &format!("secret_id = \"{id}\"\nsecret_key = \"{key}\"\n"));
    assert!(ok(run(&["whoami"])).starts_with("app "), "the default file is used");
    // Others may read it: refused before connecting.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let open = run(&["--credentials", file.to_str().unwrap(), "--profile", "app", "whoami"]);
    assert!(!open.status.success() && stderr(&open).contains("chmod 600"), "{}", stderr(&open));
    // Policy get/set, rotation, list, delete.
    let got = ok(run(&["--credentials", admin, "policy", "get", "app"]));
    assert!(got.contains("cmq:SendMessage"), "{got}");
    let all = dir.path().join("all.json");
    std::fs::write(&all, r#"{"version":"2.0","statement":[{"effect":"allow","action":"cmq:*","resource":"*"}]}"#)
        .expect("w");
    ok(run(&["--credentials", admin, "policy", "set", "app", all.to_str().unwrap()]));
    ok(run(&["--secret-id", id, "--secret-key", key, "purge", "app-1", "--yes"]));
    let rotated: Value = json(run(&["--credentials", admin, "key", "rotate", "app", "--json"]));
    assert_eq!(rotated["secretId"], id);
    let listed: Value = json(run(&["--credentials", admin, "key", "list", "--json"]));
    let app = listed["keys"].as_array().expect("keys").iter().find(|k| k["name"] == "app").cloned().expect("app");
    assert_eq!(app["secretKeys"], 2);
    assert!(!listed.to_string().contains(key), "list never shows a SecretKey");
    ok(run(&["--credentials", admin, "key", "delete", "app"]));
    let gone = run(&["--secret-id", id, "--secret-key", key, "whoami"]);
    assert!(stderr(&gone).contains("AUTH_FAILED"), "{}", stderr(&gone));
}
