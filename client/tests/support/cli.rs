//! Running the `cmq` binary in tests.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Runs `cmq --server ADDR --timeout 5 ARGS` with empty stdin.
pub fn cmq(addr: SocketAddr, args: &[&str]) -> Output {
    cmq_with_stdin(addr, args, "")
}

/// Runs `cmq` with `stdin` on its standard input.
pub fn cmq_with_stdin(addr: SocketAddr, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cmq"))
        .arg("--server")
        .arg(addr.to_string())
        .args(["--timeout", "5"])
        .args(args)
        .env_remove("CMQ_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cmq");
    let mut pipe = child.stdin.take().expect("stdin piped");
    // A command that exits without reading its input (a refusal) closes the pipe first.
    if let Err(e) = pipe.write_all(stdin.as_bytes()) {
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
