//! Running the `cmq` binary in tests.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use serde_json::Value;

/// Runs `cmq --server ADDR --timeout 5 ARGS` with empty stdin.
pub fn cmq(addr: SocketAddr, args: &[&str]) -> Output {
    cmq_with_stdin(addr, args, "")
}

/// Runs `cmq ARGS` as they are (no --server, no $CMQ_SERVER), stdin empty.
pub fn cmq_bare(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmq"))
        .args(args)
        .env_remove("CMQ_SERVER")
        .stdin(Stdio::null())
        .output()
        .expect("run cmq")
}

/// Runs `cmq` with `stdin` on its standard input.
pub fn cmq_with_stdin(addr: SocketAddr, args: &[&str], stdin: &str) -> Output {
    cmq_with_bytes(addr, args, stdin.as_bytes())
}

/// `cmq --server ADDR --timeout 5 ARGS`, every stdio piped, started.
fn spawn(addr: SocketAddr, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cmq"))
        .arg("--server")
        .arg(addr.to_string())
        .args(["--timeout", "5"])
        .args(args)
        .env_remove("CMQ_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cmq")
}

/// Runs `cmq` with `stdin` (any bytes) on its standard input.
pub fn cmq_with_bytes(addr: SocketAddr, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = spawn(addr, args);
    let mut pipe = child.stdin.take().expect("stdin piped");
    // A command that exits without reading its input (a refusal) closes the pipe first.
    if let Err(e) = pipe.write_all(stdin) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
    }
    drop(pipe);
    child.wait_with_output().expect("cmq finished")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("utf-8 stderr")
}

/// A fresh cmqd (2 shards) with one queue called `name`.
pub fn broker_with_queue(name: &str) -> super::Broker {
    let broker = super::broker(2);
    ok(cmq(broker.addr, &["create-queue", name]));
    broker
}

/// Stdout of a command that must have succeeded.
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "exit {:?}, stderr: {}", o.status.code(), stderr(&o));
    stdout(&o)
}

/// Stdout of a command that must have succeeded, as one JSON document.
pub fn json(o: Output) -> Value {
    serde_json::from_str(&ok(o)).expect("stdout is one JSON document")
}

pub trait CloneOutput {
    fn clone_output(&self) -> Output;
}

impl CloneOutput for Output {
    fn clone_output(&self) -> Output {
        Output { status: self.status, stdout: self.stdout.clone(), stderr: self.stderr.clone() }
    }
}

/// A `cmq` that keeps running (tx-checker, receive --follow): its output
/// arrives line by line, as events to wait for.
pub struct Running {
    pub child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

impl Running {
    pub fn start(addr: SocketAddr, args: &[&str]) -> Running {
        let mut child = spawn(addr, args);
        let stdout = lines(child.stdout.take().expect("stdout piped"));
        let stderr = lines(child.stderr.take().expect("stderr piped"));
        Running { child, stdout, stderr }
    }

    /// The next stdout line (without its newline); panics after `within`.
    pub fn line(&self, within: Duration) -> String {
        self.stdout.recv_timeout(within).unwrap_or_else(|e| panic!("no stdout line within {within:?}: {e}"))
    }

    /// Waits for a stderr line containing `text`; returns it.
    pub fn stderr_with(&self, text: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(e) => panic!("no stderr line with {text:?} within {within:?}: {e}"),
            }
        }
    }

    /// Everything left on stdout and stderr once the process has exited.
    pub fn finish(mut self) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
        let status = self.child.wait().expect("cmq exits");
        (status, self.stdout.iter().collect(), self.stderr.iter().collect())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}
