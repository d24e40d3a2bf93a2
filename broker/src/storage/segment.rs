//! Segment files: names, creation, listing.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::encode_segment_header;
use super::mmap::SegmentMap;

const NAME_DIGITS: usize = 20;
const SUFFIX: &str = ".log";
const TMP_SUFFIX: &str = ".log.tmp";
/// The spare segment file (see `SPARE_SEGMENT_BYTES`): no `.log` suffix,
/// so it is not part of the log until adopted.
pub(crate) const SPARE_NAME: &str = "spare-segment";
const SPARE_TMP_NAME: &str = "spare-segment.tmp";

pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:0NAME_DIGITS$}{SUFFIX}"))
}

fn tmp_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:0NAME_DIGITS$}{TMP_SUFFIX}"))
}

fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Bases of the segment files in `dir`, sorted. Leftover temporary files of
/// an interrupted creation are deleted.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = parse_name(name, SUFFIX) {
            bases.push(base);
        } else if parse_name(name, TMP_SUFFIX).is_some() {
            log::info!("removing interrupted segment creation {}", entry.path().display());
            std::fs::remove_file(entry.path())?;
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// What the fault-injection file (a test hook, `WalConfig::fault_file`)
/// currently simulates.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Fault {
    /// No file: no fault.
    None,
    /// The file exists (any content but `eio`): a full disk. Creating a
    /// segment fails with ENOSPC; writes into preallocated segments still
    /// succeed, as they do on a real full disk.
    Full,
    /// The file holds `eio`: a failing device. Every write, fdatasync and
    /// segment creation fails with EIO.
    Eio,
    /// The file holds `eio-sync`: writes succeed, every fdatasync fails with
    /// EIO (a device whose writeback fails: the PostgreSQL fsync case).
    EioSync,
    /// The file holds `eio-create`: only segment creation fails, with EIO.
    EioCreate,
    /// The file holds `stall-sync`: a slow device. fdatasync on the thread
    /// backend does not start until the file says otherwise; writes work.
    StallSync,
}

pub(crate) fn fault(fault_file: &Option<PathBuf>) -> Fault {
    let Some(path) = fault_file.as_deref() else { return Fault::None };
    match std::fs::read(path) {
        Ok(b) if b.trim_ascii() == b"eio" => Fault::Eio,
        Ok(b) if b.trim_ascii() == b"eio-create" => Fault::EioCreate,
        Ok(b) if b.trim_ascii() == b"eio-sync" => Fault::EioSync,
        Ok(b) if b.trim_ascii() == b"stall-sync" => Fault::StallSync,
        Ok(_) => Fault::Full,
        Err(_) => Fault::None,
    }
}

pub(crate) fn no_space() -> io::Error {
    io::Error::from(rustix::io::Errno::NOSPC)
}

pub(crate) fn eio() -> io::Error {
    io::Error::from(rustix::io::Errno::IO)
}

/// True for the errors of a full disk or an exhausted quota: nothing was
/// written, and the same call succeeds once space returns.
pub(crate) fn is_full(e: &io::Error) -> bool {
    e.raw_os_error()
        .is_some_and(|c| c == rustix::io::Errno::NOSPC.raw_os_error() || c == rustix::io::Errno::DQUOT.raw_os_error())
}

/// How a new segment's space is reserved.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Reserve {
    /// fallocate the whole capacity (normal segments).
    Preallocate,
    /// Sparse file (a repair filler for a gap, which stays empty).
    Sparse,
}

/// Creates a segment durably: temp file, preallocate, header, fsync,
/// rename, fsync directory. Returns the open file.
pub(crate) fn create_segment(
    dir: &Path,
    base: u64,
    capacity: u64,
    reserve: Reserve,
    fault_file: &Option<PathBuf>,
) -> io::Result<File> {
    match fault(fault_file) {
        Fault::None | Fault::StallSync | Fault::EioSync => {}
        Fault::Full => return Err(no_space()),
        Fault::Eio | Fault::EioCreate => return Err(eio()),
    }
    let tmp = tmp_path(dir, base);
    let result = (|| {
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
        match reserve {
            Reserve::Preallocate => rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, capacity)?,
            Reserve::Sparse => f.set_len(capacity)?,
        }
        f.write_all_at(&encode_segment_header(base, capacity), 0)?;
        f.sync_all()?;
        std::fs::rename(&tmp, segment_path(dir, base))?;
        sync_dir(dir)?;
        Ok(f)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes sure the spare segment file exists (preallocated, all zero),
/// creating it durably if not: temp file, fallocate, fsync, rename, fsync
/// the directory. Fails like a segment creation on a full disk.
pub(crate) fn ensure_spare(dir: &Path, fault_file: &Option<PathBuf>) -> io::Result<()> {
    let path = dir.join(SPARE_NAME);
    if path.exists() {
        return Ok(());
    }
    match fault(fault_file) {
        Fault::None | Fault::StallSync | Fault::EioSync => {}
        Fault::Full => return Err(no_space()),
        Fault::Eio | Fault::EioCreate => return Err(eio()),
    }
    let tmp = dir.join(SPARE_TMP_NAME);
    let result = (|| {
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, super::SPARE_SEGMENT_BYTES)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Turns the spare file into the segment at `base`: header, fsync, rename,
/// fsync the directory. No new space is needed. Returns the file and its
/// capacity, or None when there is no spare.
pub(crate) fn adopt_spare(dir: &Path, base: u64) -> io::Result<Option<(File, u64)>> {
    let spare = dir.join(SPARE_NAME);
    let f = match open_rw(&spare) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let capacity = f.metadata()?.len();
    f.write_all_at(&encode_segment_header(base, capacity), 0)?;
    f.sync_all()?;
    std::fs::rename(&spare, segment_path(dir, base))?;
    sync_dir(dir)?;
    Ok(Some((f, capacity)))
}

/// The ranges of `file[from..len)` that may hold non-zero bytes, from the
/// file system's `SEEK_DATA` / `SEEK_HOLE`: everything outside them reads as
/// zero. On ext4 (measured here, kernel 6.18) unwritten preallocated
/// extents are holes, while their pages in the page cache are data: written
/// ones before any writeback, and also ones only read (cached zeros, which
/// claims more than the truth and is harmless). A file system without
/// support reports one data range up to the end of the file, and an
/// unexpected error is answered the same way: the result never claims less
/// data than there is; at worst it costs the full read of a plain scan.
pub(crate) fn data_ranges(file: &File, from: u64, len: u64) -> Vec<Range<usize>> {
    use rustix::fs::{seek, SeekFrom};
    let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut off = from;
    while off < len {
        let start = match seek(file, SeekFrom::Data(off)) {
            Ok(d) => d.max(off),
            // No data at or after `off`.
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => {
                out.push(to_usize(off)..to_usize(len));
                break;
            }
        };
        if start >= len {
            break;
        }
        let end = match seek(file, SeekFrom::Hole(start)) {
            Ok(h) if h > start => h.min(len),
            _ => len,
        };
        out.push(to_usize(start)..to_usize(end));
        off = end;
    }
    out
}

/// A live segment of the log.
pub(crate) struct Segment {
    pub base: u64,
    pub capacity: u64,
    /// One past the last record byte (global position); `base + header`
    /// when empty. For the active segment this lags `Wal::end` by whatever
    /// is not written yet.
    pub data_end: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub map: SegmentMap,
    /// An adopted spare (smaller than any normal segment): while it is the
    /// last segment, only `Reserve` appends may use it.
    pub emergency: bool,
}

impl Segment {
    pub(crate) fn new(base: u64, capacity: u64, path: PathBuf, file: File) -> io::Result<Self> {
        let map = SegmentMap::map(&file, capacity)?;
        let emergency = capacity < super::SEGMENT_BYTES_MIN;
        let data_end = base + super::SEGMENT_HEADER_BYTES;
        Ok(Segment { base, capacity, data_end, path, file: Arc::new(file), map, emergency })
    }

    pub(crate) fn end(&self) -> u64 {
        self.base + self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_and_parse() {
        let p = segment_path(Path::new("/x"), 123);
        assert_eq!(p, Path::new("/x/00000000000000000123.log"));
        assert_eq!(parse_name("00000000000000000123.log", SUFFIX), Some(123));
        assert_eq!(parse_name("0000000000000000123.log", SUFFIX), None);
        assert_eq!(parse_name("0000000000000000012a.log", SUFFIX), None);
        assert_eq!(parse_name("18446744073709551615.log", SUFFIX), Some(u64::MAX));
        assert_eq!(parse_name("99999999999999999999.log", SUFFIX), None);
    }
}
