//! A `cmqd` child process for one test.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a broker may take to start listening before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The cmqd binary: `$CMQD_BIN`, else `target/<profile>/cmqd` next to this crate.
pub fn cmqd_path() -> PathBuf {
    if let Ok(p) = std::env::var("CMQD_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let p = target.join(profile).join("cmqd");
    assert!(p.exists(), "{} not found: run `cargo build --bins` first (make test does)", p.display());
    p
}

pub struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The HTTP port (metrics, health): an ephemeral one unless the test
    /// passed `--http-listen` itself; None with `--http-listen off`.
    pub http_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    args: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Broker {
    /// Starts cmqd with a fresh temporary data directory and `args`.
    pub fn start(args: &[&str]) -> Broker {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let mut b = Broker::start_in(&dir, args);
        b._tmp = Some(tmp);
        b
    }

    /// Starts cmqd on an existing data directory (for restart tests).
    pub fn start_in(data_dir: &Path, args: &[&str]) -> Broker {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, (addr, http_addr), stderr) = spawn(data_dir, &args);
        Broker { child: Some(child), addr, http_addr, data_dir: data_dir.to_owned(), _tmp: None, args, stderr }
    }

    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Everything cmqd logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.stop_with(rustix::process::Signal::TERM)
    }

    /// Sends `signal` (SIGTERM, SIGINT, ...), then waits for exit.
    pub fn stop_with(&mut self, signal: rustix::process::Signal) -> ExitStatus {
        let mut c = self.child.take().expect("broker is running");
        if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
            let _ = rustix::process::kill_process(pid, signal);
        }
        c.wait().expect("wait for cmqd")
    }

    /// Starts cmqd again on the same data directory and arguments (after kill9/terminate).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker first");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (child, (addr, http_addr), stderr) =
            spawn(&self.data_dir, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        self.child = Some(child);
        self.addr = addr;
        self.http_addr = http_addr;
        self.stderr = stderr;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The client and HTTP addresses a started cmqd printed.
type Addrs = (SocketAddr, Option<SocketAddr>);

fn spawn(data_dir: &Path, args: &[String]) -> (Child, Addrs, Arc<Mutex<String>>) {
    // Tests run in parallel: each broker's HTTP port is ephemeral too.
    let http: &[&str] =
        if args.iter().any(|a| a.starts_with("--http-listen")) { &[] } else { &["--http-listen", "127.0.0.1:0"] };
    // A test may listen elsewhere (protected mode); by default an ephemeral loopback port.
    let listen: &[&str] = if args.iter().any(|a| a == "--listen") { &[] } else { &["--listen", "127.0.0.1:0"] };
    let mut child = Command::new(cmqd_path())
        .args(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .args(http)
        .args(args)
        .env("RUST_LOG", std::env::var("CMQD_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cmqd");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut line = String::new();
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if std::env::var("CMQD_ECHO").is_ok() {
                eprint!("[cmqd] {line}");
            }
            if let Ok(mut l) = log2.lock() {
                l.push_str(&line);
            }
            line.clear();
        }
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        // cmqd prints its HTTP port (if any) before the client address.
        let mut http = None;
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if let Some(addr) = line.trim().strip_prefix("cmqd http on ") {
                http = addr.parse::<SocketAddr>().ok();
            }
            if let Some(addr) = line.trim().strip_prefix("cmqd listening on ") {
                let _ = tx.send(addr.parse::<SocketAddr>().map(|a| (a, http)));
            }
            line.clear();
        }
        // Keep draining so cmqd never blocks on a full pipe.
        let _ = r.read_to_end(&mut Vec::new());
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(addr)) => (child, addr, log),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            let text = log.lock().map(|s| s.clone()).unwrap_or_default();
            panic!("cmqd did not start ({other:?}); its log:\n{text}");
        }
    }
}
