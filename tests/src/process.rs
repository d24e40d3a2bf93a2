//! Resource figures of a running process, read from /proc, and the test
//! process's own file-descriptor limit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Memory figures of a process from /proc/PID/status, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// VmRSS: everything resident (anonymous, file-backed, shared).
    pub rss: u64,
    /// RssAnon: resident anonymous memory (heap, buffers), leaving out
    /// file pages such as mapped log segments, which the kernel can drop.
    pub anon: u64,
}

/// Reads `pid`'s memory figures; None once the process is gone.
pub fn memory(pid: u32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(Memory { rss: field("VmRSS:")?, anon: field("RssAnon:")? })
}

/// Samples a process's memory every few milliseconds on its own thread,
/// keeping the peaks, and raises `over` once RSS passes `limit` (so a test
/// against a broker without the bound can stop before it exhausts the machine).
pub struct MemoryWatch {
    peak_rss: Arc<AtomicU64>,
    peak_anon: Arc<AtomicU64>,
    over: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How often [`MemoryWatch`] samples.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

impl MemoryWatch {
    pub fn start(pid: u32, limit: u64) -> MemoryWatch {
        let peak_rss = Arc::new(AtomicU64::new(0));
        let peak_anon = Arc::new(AtomicU64::new(0));
        let over = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak_rss, peak_anon, over, stop) = (peak_rss.clone(), peak_anon.clone(), over.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(m) = memory(pid) else { break };
                    peak_rss.fetch_max(m.rss, Ordering::Relaxed);
                    peak_anon.fetch_max(m.anon, Ordering::Relaxed);
                    if m.rss > limit {
                        over.store(true, Ordering::Relaxed);
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        MemoryWatch { peak_rss, peak_anon, over, stop, thread: Some(thread) }
    }

    /// Whether RSS has passed the limit.
    pub fn over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// A flag that turns true when RSS passes the limit, for worker threads.
    pub fn over_flag(&self) -> Arc<AtomicBool> {
        self.over.clone()
    }

    /// Highest VmRSS seen.
    pub fn peak_rss(&self) -> u64 {
        self.peak_rss.load(Ordering::Relaxed)
    }

    /// Highest RssAnon seen.
    pub fn peak_anon(&self) -> u64 {
        self.peak_anon.load(Ordering::Relaxed)
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Raises this process's open-file limit towards `want` (children, such as
/// cmqd, inherit it); returns the soft limit in force afterwards.
pub fn raise_fd_limit(want: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= want {
        return current;
    }
    let target = limit.maximum.map_or(want, |max| max.min(want));
    limit.current = Some(target);
    if setrlimit(Resource::Nofile, limit).is_ok() {
        target
    } else {
        current
    }
}
