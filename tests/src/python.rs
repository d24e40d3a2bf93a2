//! Runs a test's Python script with the Python of one of the repository's
//! virtual environments (the browser tests' Playwright, the CMQ SDK).
//! Scripts print `ok <check>` per check and `all checks passed` at the end;
//! [`Script::run`] asserts both. [`Script::spawn`] runs one that talks with
//! the test on its standard input and output while it runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A virtual environment at the repository's root and the `make` target that installs it.
#[derive(Debug, Clone, Copy)]
pub struct Venv {
    pub dir: &'static str,
    pub make_target: &'static str,
}

/// Playwright for Python (the console's browser tests).
pub const CONSOLE_VENV: Venv = Venv { dir: ".venv-console", make_target: "console-venv" };

/// The CMQ Python SDK (`qcloud-cmq-sdk-py3`).
pub const SDK_VENV: Venv = Venv { dir: ".venv-cmq-sdk", make_target: "sdk-venv" };

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl Venv {
    /// Its Python; panics saying how to install it when it is missing.
    pub fn python(&self) -> PathBuf {
        let python = repo_root().join(self.dir).join("bin/python");
        assert!(python.exists(), "{} is missing: run `make {}` (make test does)", python.display(), self.make_target);
        python
    }
}

/// A script and how to run it.
pub struct Script {
    command: Command,
    name: String,
}

impl Script {
    /// `path` (relative to the repository's root) run by `venv`'s Python.
    pub fn new(venv: Venv, path: &str) -> Script {
        let mut command = Command::new(venv.python());
        command.arg(repo_root().join(path));
        Script { command, name: path.to_owned() }
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Script {
        self.command.arg(arg);
        self
    }

    pub fn args<S: AsRef<std::ffi::OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Script {
        self.command.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Script {
        self.command.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Script {
        self.command.current_dir(dir);
        self
    }

    /// Runs it to the end; asserts it passed, with at least `checks` checks. Its output.
    #[track_caller]
    pub fn run(mut self, checks: usize) -> String {
        let out = self.command.output().unwrap_or_else(|e| panic!("run {}: {e}", self.name));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_passed(&self.name, out.status.success(), &stdout, &String::from_utf8_lossy(&out.stderr), checks);
        stdout
    }

    /// Starts it with its standard input and output connected to the test.
    pub fn spawn(mut self) -> Running {
        let mut child = self
            .command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.name));
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Running { child, stdin, lines, seen: String::new(), stderr: Some(stderr), name: self.name }
    }
}

/// A script started by [`Script::spawn`]. Dropped, it is killed.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Everything it printed so far.
    seen: String,
    stderr: Option<JoinHandle<String>>,
    name: String,
}

impl Running {
    /// Waits (within `timeout`) for a line starting with `prefix`; returns the rest of it.
    #[track_caller]
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(e) => {
                    let stderr = self.stop();
                    panic!("{}: no line {prefix:?} ({e:?}); output:\n{}\n{stderr}", self.name, self.seen);
                }
            }
        }
    }

    /// Writes a line to its standard input.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").and_then(|_| stdin.flush()).expect("write to the script");
    }

    /// Waits for it to end; asserts it passed, with at least `checks` checks. Its output.
    #[track_caller]
    pub fn finish(mut self, checks: usize) -> String {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait for the script");
        for line in self.lines.iter() {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
        assert_passed(&self.name, status.success(), &self.seen, &stderr, checks);
        std::mem::take(&mut self.seen)
    }

    /// Kills it; what it wrote to standard error.
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[track_caller]
fn assert_passed(name: &str, success: bool, stdout: &str, stderr: &str, checks: usize) {
    assert!(success && stdout.contains("all checks passed"), "{name} failed:\n{stdout}\n{stderr}");
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(passed >= checks, "{name}: {passed} checks passed, expected at least {checks}:\n{stdout}");
}
