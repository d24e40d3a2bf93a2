//! Looking at (and damaging) cmqd's write-ahead-log files from a test, and
//! running a `cmqd` that is expected to refuse to start.
//!
//! The on-disk format is documented in `broker/src/storage/mod.rs`; the few
//! constants needed here are repeated (this crate does not link the broker),
//! so a format change that breaks them shows up as a failing test.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::broker::cmqd_path;

/// Bytes of the segment header at file offset 0.
pub const SEGMENT_HEADER_BYTES: u64 = 32;
/// Record header (format 2): len u32 (the whole record), type u8, payload
/// CRC32C u32, header CRC32C u32 (bound to the record's log position).
pub const RECORD_HEADER_BYTES: u64 = 13;
/// The broker's smallest `--segment-bytes`: 17 MiB (one record of the
/// largest size, 16.5 MiB, plus its header and the segment's).
pub const SEGMENT_BYTES_MIN: u64 = 17 << 20;
/// The spare segment each shard keeps for a full disk (`spare-segment`).
pub const SPARE_SEGMENT_BYTES: u64 = 5 << 20;
/// Where `--repair` saves the bytes it cuts, in a shard's directory.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Record types (`broker/src/engine/record.rs`; 0 is the WAL's own).
pub mod rtype {
    /// Padding written by repair, and durable marks.
    pub const WAL: u8 = 0;
    pub const QUEUE_CREATED: u8 = 1;
    pub const ENQUEUED: u8 = 4;
    pub const RECEIVED: u8 = 5;
    pub const DELETED: u8 = 6;
    pub const RELOCATED: u8 = 8;
}

/// `<data-dir>/shard-<k>`.
pub fn shard_dir(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir.join(format!("shard-{shard}"))
}

/// The segment files (`*.log`) of one shard directory, in log order.
pub fn segments(shard_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(shard_dir) {
        Ok(rd) => {
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "log")).collect()
        }
        Err(_) => Vec::new(),
    };
    // 20-digit zero-padded names sort in log order.
    out.sort();
    out
}

/// Where one record sits in a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLoc {
    /// File offset of the record header.
    pub offset: u64,
    /// The stored length field: the whole record, header included.
    pub len: u32,
    pub rtype: u8,
}

impl RecordLoc {
    /// One past the record's last byte (file offset).
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }

    /// File offset of the payload.
    pub fn payload_offset(&self) -> u64 {
        self.offset + RECORD_HEADER_BYTES
    }

    pub fn payload_len(&self) -> usize {
        self.len as usize - RECORD_HEADER_BYTES as usize
    }
}

/// Walks the record chain of a segment from offset 32 by length fields
/// (checksums are not verified): stops at a zero length or a length that
/// is impossible or runs past the file.
pub fn records(path: &Path) -> Vec<RecordLoc> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut out = Vec::new();
    let mut off = SEGMENT_HEADER_BYTES as usize;
    while off + RECORD_HEADER_BYTES as usize <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().expect("4 bytes")) as usize;
        if len < RECORD_HEADER_BYTES as usize || off + len > bytes.len() {
            break;
        }
        out.push(RecordLoc { offset: off as u64, len: len as u32, rtype: bytes[off + 4] });
        off += len;
    }
    out
}

/// The records of `recs` that the engine wrote (the WAL's own left out).
pub fn data_records(recs: &[RecordLoc]) -> Vec<RecordLoc> {
    recs.iter().copied().filter(|r| r.rtype != rtype::WAL).collect()
}

/// The newest segment holding at least one record, with its records.
pub fn newest_data_segment(shard_dir: &Path) -> Option<(PathBuf, Vec<RecordLoc>)> {
    segments(shard_dir).into_iter().rev().find_map(|p| {
        let recs = records(&p);
        (!recs.is_empty()).then_some((p, recs))
    })
}

/// Reads a record's payload.
pub fn read_payload(path: &Path, rec: &RecordLoc) -> Vec<u8> {
    let mut buf = vec![0u8; rec.payload_len()];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut buf, rec.payload_offset()))
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    buf
}

/// The message bodies of an `Enqueued` payload: uid u32, first_seq u64,
/// first_msg_id u64, enqueue_ms u64, visible_at_ms u64, count u16, then
/// count × (len u32, body).
pub fn enqueued_bodies(payload: &[u8]) -> Vec<Vec<u8>> {
    const HEADER: usize = 4 + 8 + 8 + 8 + 8;
    let count = u16::from_le_bytes(payload[HEADER..HEADER + 2].try_into().expect("2 bytes")) as usize;
    let mut off = HEADER + 2;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = u32::from_le_bytes(payload[off..off + 4].try_into().expect("4 bytes")) as usize;
        out.push(payload[off + 4..off + 4 + len].to_vec());
        off += 4 + len;
    }
    out
}

/// Overwrites bytes of a file in place and makes them durable.
pub fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    f.write_all_at(bytes, offset).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    f.sync_all().unwrap_or_else(|e| panic!("syncing {}: {e}", path.display()));
}

/// Reads one byte of a file.
pub fn byte_at(path: &Path, offset: u64) -> u8 {
    let mut b = [0u8; 1];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut b, offset))
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    b[0]
}

/// Disk use of the segment files of one shard directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogUsage {
    pub files: usize,
    /// Sum of file lengths.
    pub len_bytes: u64,
    /// Sum of allocated blocks × 512 (segments are preallocated, so this
    /// is close to `len_bytes`; a sparse file would show less).
    pub allocated_bytes: u64,
    pub names: Vec<String>,
}

impl std::fmt::Display for LogUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} segment(s), {:.1} MiB long, {:.1} MiB allocated [{}]",
            self.files,
            self.len_bytes as f64 / (1 << 20) as f64,
            self.allocated_bytes as f64 / (1 << 20) as f64,
            self.names.join(" ")
        )
    }
}

/// Disk use of one shard's segment files.
pub fn log_usage(shard_dir: &Path) -> LogUsage {
    let mut u = LogUsage::default();
    for p in segments(shard_dir) {
        // A segment released between the listing and the stat is gone: skip it.
        let Ok(m) = std::fs::metadata(&p) else { continue };
        u.files += 1;
        u.len_bytes += m.len();
        u.allocated_bytes += m.blocks() * 512;
        u.names.push(p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    }
    u
}

/// How a `cmqd` run that was expected to fail ended.
#[derive(Debug)]
pub struct Refusal {
    /// None if it was still running at the deadline (then killed).
    pub status: Option<ExitStatus>,
    /// It printed its listening line, i.e. it started after all (then killed).
    pub started: bool,
    pub stderr: String,
}

/// Runs cmqd on `data_dir` with `args` (plus an ephemeral listen address)
/// and waits up to `timeout` for it to exit. If it starts listening instead,
/// it is killed and `started` is set.
pub fn run_cmqd_expecting_refusal(data_dir: &Path, args: &[&str], timeout: Duration) -> Refusal {
    let mut child = Command::new(cmqd_path())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .args(["--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cmqd");
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let readers = [
        pump(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>), stdout.clone()),
        pump(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>), stderr.clone()),
    ];
    let deadline = Instant::now() + timeout;
    let mut status = None;
    let mut started = false;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
            break;
        }
        if stdout.lock().map(|s| s.contains("cmqd listening on")).unwrap_or(false) {
            started = true;
        }
        if started || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        // Polling a child's exit: there is no portable blocking wait with a timeout.
        std::thread::sleep(Duration::from_millis(10));
    }
    for r in readers {
        let _ = r.join();
    }
    let stderr = stderr.lock().map(|s| s.clone()).unwrap_or_default();
    Refusal { status, started, stderr }
}

fn pump(src: Option<Box<dyn Read + Send>>, into: Arc<Mutex<String>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Some(mut src) = src else { return };
        let mut buf = [0u8; 4096];
        while let Ok(n) = src.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = into.lock() {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    })
}

/// A tmpfs mounted for one test (a small, really full disk); unmounted on
/// drop. The tests run as root: a mount that fails is a test failure with
/// the reason, never a silent pass.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB at `path` (created if missing).
    pub fn mount(path: &Path, size_mib: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount(8) to make a {size_mib} MiB tmpfs (this test needs it): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a {size_mib} MiB tmpfs at {} (this test needs root or CAP_SYS_ADMIN): {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { path: path.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}
