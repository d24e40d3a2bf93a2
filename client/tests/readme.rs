//! README.md's examples run as written: every ```sh block, in order, with
//! `bash -euo pipefail`, against a real cmqd the test starts (reached
//! through `$CMQ_SERVER`, as a reader's shell would reach the default
//! 127.0.0.1:7700), with the `cmq` under test first on `$PATH`. The HTTP
//! subscription's example endpoint is pointed at a listener of the test's.
//! Only `make run` (the test starts its own cmqd) and `make test` (this
//! suite) are not run. The sample cmqd.toml must start a broker.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Broker, HttpSink, EVENT_TIMEOUT};

/// Read at build time: editing the README rebuilds this test.
const README: &str = include_str!("../../README.md");

/// The README's example HTTP endpoint (host and port), which the test
/// rewrites to its own listener before running the block.
const README_HOOK: &str = "127.0.0.1:8080";

/// The two commands the README promises: one starts the broker, one runs this suite.
const MAKE_COMMANDS: [&str; 2] = ["make run", "make test"];

/// Longest a block may run (its long polls wait a few seconds at most).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(90);

/// The section whose shell blocks are not run here: they start, kill and
/// add cluster nodes by hand (`make cluster`, `cmqd` in the foreground,
/// `kill -9 "$(pgrep ...)"`, which on a shared machine could hit another
/// test's node). What they show, a client given the seed list following
/// the leaders through a kill and `cmq cluster status`, is
/// tests/tests/cluster_client.rs.
const NOT_RUN_SECTION: &str = "## Cluster";

/// A fenced block: the line its fence opens on, its info string, its text,
/// and the `## ` heading it is under.
struct Block {
    line: usize,
    lang: String,
    text: String,
    section: String,
}

fn fenced_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    let mut section = String::new();
    for (i, line) in markdown.lines().enumerate() {
        if open.is_none() && line.starts_with("## ") {
            section = line.trim().to_owned();
        }
        match (open.take(), line.strip_prefix("```")) {
            (None, Some(lang)) => {
                let (lang, text) = (lang.trim().to_owned(), String::new());
                open = Some(Block { line: i + 1, lang, text, section: section.clone() })
            }
            (Some(b), Some(_)) => blocks.push(b),
            (Some(mut b), None) => {
                b.text.push_str(line);
                b.text.push('\n');
                open = Some(b);
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "README.md: a fenced block is never closed");
    blocks
}

/// The commands of a block: lines without comments, blank ones dropped.
fn commands(block: &Block) -> Vec<&str> {
    block.text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).collect()
}

fn run_block(block: &Block, text: &str, env: &[(&str, String)], dir: &Path) {
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", text])
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("run bash");
    let deadline = Instant::now() + BLOCK_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bash") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let ok = status.is_some_and(|s| s.success());
    assert!(
        ok,
        "README.md block at line {} {}:\n{text}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        block.line,
        status.map_or_else(|| format!("ran past {BLOCK_TIMEOUT:?}"), |s| format!("failed ({s})")),
        read(&out),
        read(&err)
    );
}

#[test]
fn every_shell_block_of_the_readme_runs_as_written() {
    let blocks = fenced_blocks(README);
    for b in &blocks {
        assert!(
            ["sh", "toml", "text", ""].contains(&b.lang.as_str()),
            "README.md line {}: shell examples are ```sh blocks, so that this test runs them (got ```{})",
            b.line,
            b.lang
        );
    }
    let shell: Vec<&Block> = blocks.iter().filter(|b| b.lang == "sh" && b.section != NOT_RUN_SECTION).collect();
    let (make, examples): (Vec<&Block>, Vec<&Block>) =
        shell.into_iter().partition(|b| commands(b).iter().all(|c| c.starts_with("make ")));
    let make: Vec<&str> = make.iter().flat_map(|b| commands(b)).collect();
    assert_eq!(make, MAKE_COMMANDS, "the README's two commands");
    assert!(examples.len() >= 7, "{} example blocks", examples.len());
    assert!(
        README.contains(&format!("http://{README_HOOK}/")),
        "the HTTP example's endpoint moved: update README_HOOK"
    );

    let broker = Broker::start(&["--shards", "2"]);
    let sink = HttpSink::always(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let cmq_dir = Path::new(env!("CARGO_BIN_EXE_cmq")).parent().expect("cmq's directory").to_owned();
    let path = format!("{}:{}", cmq_dir.display(), std::env::var("PATH").unwrap_or_default());
    let env = [("CMQ_SERVER", broker.addr.to_string()), ("PATH", path)];
    for block in examples {
        let text = block.text.replace(README_HOOK, &sink.addr.to_string());
        run_block(block, &text, &env, dir.path());
    }

    // The topic example's HTTP subscription got its push.
    let push = sink.next(EVENT_TIMEOUT, "the README's HTTP push");
    let json: Value = serde_json::from_slice(&push.body).expect("a JSON push (--format json)");
    assert_eq!((push.target.as_str(), json["msgBody"].as_str()), ("/cmq", Some("{\"order\":8}")), "{push:?}");
}

#[test]
fn the_sample_configuration_starts_a_broker() {
    let toml = fenced_blocks(README).into_iter().find(|b| b.lang == "toml").expect("a cmqd.toml sample");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cmqd.toml");
    std::fs::write(&path, &toml.text).expect("write");
    // The harness's --listen and --data-dir flags win over the file's, as documented.
    let broker = Broker::start(&["--config", path.to_str().expect("utf-8")]);
    let c = support::client(broker.addr);
    assert_eq!(c.shard_count(), 2, "shards = 2 from the file");
}
