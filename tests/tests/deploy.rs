//! What deploy/ ships, checked against the real cmqd: the alert rules pass
//! promtool's checks and unit tests, the Grafana dashboard is well formed
//! and every query names a metric cmqd exports, docs/METRICS.md lists
//! exactly the exported families, the systemd unit passes
//! `systemd-analyze verify`, and cmqd signals readiness to systemd.
//!
//! promtool and systemd-analyze are required, not optional: `make test`
//! installs them (Debian's `prometheus` and `systemd` packages) and these
//! tests fail, naming the command, when they are missing.

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cmq_integration_tests::broker::cmqd_path;
use cmq_integration_tests::http;
use cmq_integration_tests::Broker;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A tool the Makefile installs; a missing one fails the test loudly.
fn tool(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed: `make test` installs it (apt-get install -y {package}); this test does not skip")
    })
}

/// Metric names a real scrape exposes: each family's sample names.
fn exported() -> BTreeSet<String> {
    let broker = Broker::start(&["--shards", "1"]);
    let page = http::get(broker.http_addr.expect("http port"), "/metrics");
    let mut names = BTreeSet::new();
    for line in page.body.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    assert!(names.len() > 30, "{}", page.body);
    names
}

/// `cmq_*` names in a query text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("cmq_") {
        let start = i + at;
        let word_start = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + text[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len() - start);
        if word_start {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

#[test]
fn alert_rules_pass_promtool_checks_and_unit_tests() {
    let promtool = tool("promtool", "prometheus");
    let dir = repo().join("deploy/prometheus");
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]] {
        let out = Command::new(&promtool).args(args).current_dir(&dir).output().expect("run promtool");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
    // Every alert named in the issue has a rule, and a unit test.
    let rules = read("deploy/prometheus/alerts.yml");
    let tests = read("deploy/prometheus/alerts.test.yml");
    for alert in [
        "CmqDiskNearlyFull",
        "CmqFsyncSlow",
        "CmqQueueDepthGrowing",
        "CmqOldestMessageTooOld",
        "CmqDeadLetters",
        "CmqPushFailures",
        "CmqShardStalled",
        "CmqProcessRestarted",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "{alert} has no rule");
        assert!(tests.contains(&format!("alertname: {alert}")), "{alert} has no unit test");
    }
}

#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    let exported = exported();
    let dash: Value = serde_json::from_str(&read("deploy/grafana/cmq-dashboard.json")).expect("the dashboard is JSON");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40), "a stable uid for imports");
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let vars: Vec<&str> =
        dash["templating"]["list"].as_array().expect("variables").iter().filter_map(|v| v["name"].as_str()).collect();
    assert!(vars.contains(&"datasource"), "the data source is chosen at import: {vars:?}");
    let panels = dash["panels"].as_array().expect("panels");
    let rows: Vec<&str> = panels.iter().filter(|p| p["type"] == "row").filter_map(|p| p["title"].as_str()).collect();
    assert_eq!(rows, ["Overview", "Per queue", "Storage", "Topics"]);
    let mut ids = BTreeSet::new();
    let mut queried = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate id: {title}");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().expect("x"), g["w"].as_u64().expect("w"));
        assert!(x + w <= 24 && g["h"].as_u64().is_some() && g["y"].as_u64().is_some(), "{title}: {g}");
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("{title}: no query"));
        for t in targets {
            let expr = t["expr"].as_str().filter(|e| !e.is_empty()).unwrap_or_else(|| panic!("{title}: empty query"));
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: {expr}");
            for n in names {
                assert!(exported.contains(&n), "panel {title:?} queries {n}, which cmqd does not export");
                queried.insert(n);
            }
        }
    }
    for n in ["cmq_messages_sent_total", "cmq_queue_messages", "cmq_wal_fsync_seconds_bucket", "cmq_pushes_total"] {
        assert!(queried.contains(n), "the dashboard shows {n}");
    }
    for n in metric_names(&read("deploy/prometheus/alerts.yml")) {
        assert!(exported.contains(&n), "an alert uses {n}, which cmqd does not export");
    }
}

#[test]
fn the_metrics_doc_lists_exactly_the_exported_families() {
    let exported = exported();
    let families: BTreeSet<String> = exported
        .iter()
        .filter(|n| !n.ends_with("_bucket") && !n.ends_with("_sum") && !n.ends_with("_count"))
        .cloned()
        .collect();
    let doc = read("docs/METRICS.md");
    let listed: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, families, "docs/METRICS.md and a scrape disagree");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = tool("systemd-analyze", "systemd");
    let unit = read("deploy/systemd/cmqd.service");
    for directive in [
        "Type=notify",
        "DynamicUser=yes",
        "User=cmq",
        "StateDirectory=cmq",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "Restart=on-failure",
        "ExecStart=/usr/bin/cmqd ",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(directive)), "the unit lacks {directive}");
    }
    // verify checks that ExecStart exists: point it at the cmqd built here.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cmqd.service");
    std::fs::write(&path, unit.replace("/usr/bin/cmqd", &cmqd_path().display().to_string())).expect("write");
    let out = Command::new(analyze).arg("verify").arg(&path).output().expect("run systemd-analyze");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Unknown keys and bad values are warnings (exit 0): any line naming the unit is a failure.
    let complaints: Vec<&str> = text.lines().filter(|l| l.contains("cmqd.service")).collect();
    assert!(out.status.success() && complaints.is_empty(), "systemd-analyze verify:\n{text}");
}

#[test]
fn cmqd_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut child = Command::new(cmqd_path())
        .args(["--listen", "127.0.0.1:0", "--http-listen", "off", "--shards", "2", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cmqd");
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = child.wait().expect("cmqd exits");
    assert!(status.success(), "{status}");
}
