//! Facts about the process and its data directory, read at scrape time on
//! the HTTP thread (none of it is on the request path): memory, open file
//! descriptors, uptime, the build, and the disk under the data directory.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The version and the git commit this binary was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = env!("CMQ_GIT_COMMIT");

/// Read once at start-up.
#[derive(Clone, Debug)]
pub struct ProcessStart {
    pub at: Instant,
    /// Unix seconds.
    pub unix_secs: f64,
}

impl ProcessStart {
    pub fn now() -> ProcessStart {
        let unix_secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        ProcessStart { at: Instant::now(), unix_secs }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessSample {
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub uptime_secs: f64,
    pub start_unix_secs: f64,
}

/// The disk under the data directory, and each shard's oldest segment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiskSample {
    pub free_bytes: u64,
    pub size_bytes: u64,
    /// Per shard: seconds since its oldest live segment file was created
    /// (or last modified, where the file system keeps no creation time).
    pub oldest_segment_age_secs: Vec<Option<f64>>,
}

pub fn sample_process(start: &ProcessStart) -> ProcessSample {
    ProcessSample {
        resident_bytes: resident_bytes().unwrap_or(0),
        open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
        uptime_secs: start.at.elapsed().as_secs_f64(),
        start_unix_secs: start.unix_secs,
    }
}

/// Resident set size from /proc/self/statm (pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

pub fn sample_disk(data_dir: &Path, shards: usize) -> DiskSample {
    let (free_bytes, size_bytes) = match rustix::fs::statvfs(data_dir) {
        Ok(s) => (s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize),
        Err(_) => (0, 0),
    };
    let oldest_segment_age_secs =
        (0..shards).map(|k| oldest_segment_age(&data_dir.join(format!("shard-{k}")))).collect();
    DiskSample { free_bytes, size_bytes, oldest_segment_age_secs }
}

/// Segments are named by base position, zero-padded, so the smallest name
/// is the oldest segment.
fn oldest_segment_age(dir: &Path) -> Option<f64> {
    let oldest = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.ends_with(".log"))
        .min()?;
    let meta = std::fs::metadata(dir.join(oldest)).ok()?;
    let born = meta.created().or_else(|_| meta.modified()).ok()?;
    Some(SystemTime::now().duration_since(born).map_or(0.0, |d| d.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_and_disk_are_read() {
        let p = sample_process(&ProcessStart::now());
        assert!(p.resident_bytes > 0 && p.open_fds > 0 && p.start_unix_secs > 1e9);
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = dir.path().join("shard-0");
        std::fs::create_dir(&shard).expect("mkdir");
        std::fs::write(shard.join("00000000000000001000.log"), b"x").expect("write");
        std::fs::write(shard.join("00000000000000000000.log.tmp"), b"x").expect("write");
        let d = sample_disk(dir.path(), 2);
        assert!(d.size_bytes >= d.free_bytes && d.size_bytes > 0);
        let age = d.oldest_segment_age_secs[0].expect("one segment");
        assert!((0.0..60.0).contains(&age), "{age}");
        assert_eq!(d.oldest_segment_age_secs[1], None, "no shard-1 directory");
    }
}
