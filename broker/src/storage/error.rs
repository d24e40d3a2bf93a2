use std::io;
use std::path::PathBuf;

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A system call failed. `op` says what the WAL was doing.
    #[error("WAL {op} failed on {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The disk is full: the next segment cannot be created. Nothing was
    /// written and nothing is lost; the WAL stays writable. [`Normal`]
    /// appends get this once the last normal segment is full, [`Reserve`]
    /// appends once the spare segment is used up too. Appends resume by
    /// themselves as soon as a segment can be created (retried in the
    /// background, see `NO_SPACE_RETRY_MS`, and at once when a segment is
    /// released).
    ///
    /// [`Normal`]: super::AppendClass::Normal
    /// [`Reserve`]: super::AppendClass::Reserve
    #[error(
        "WAL out of disk space: no room for a new segment (nothing was written; writes resume when space returns)"
    )]
    NoSpace,
    /// An earlier write, fsync or segment creation failed; the WAL refuses
    /// writes until [`super::Wal::try_recover`] succeeds.
    #[error("WAL is unavailable after an earlier write, fsync or segment creation failure")]
    Unavailable,
    /// A record or header failed verification outside the torn-tail rule.
    #[error(
        "WAL corruption in {} at file offset {offset}: {reason}. Start cmqd with --repair to skip exactly \
         the damaged records and keep every valid record after them (the bytes cut are saved in the \
         log directory's quarantine/ first)",
        path.display()
    )]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    /// A segment of another on-disk format version: never repaired.
    #[error(
        "WAL segment {} has on-disk format version {found}, this cmqd reads version {supported} only; \
         there is no conversion: start this cmqd on a new data directory",
        path.display()
    )]
    Format { path: PathBuf, found: u32, supported: u32 },
    /// Segment files are missing between two log positions.
    #[error(
        "WAL segments missing in {}: no file holds log positions {from}..{to} \
         (start cmqd with --repair to continue without them)",
        dir.display()
    )]
    Gap { dir: PathBuf, from: u64, to: u64 },
    /// The configuration is out of bounds.
    #[error("invalid WAL configuration: {0}")]
    Config(String),
    /// The io_uring backend was required but cannot be used here.
    #[error("io_uring backend requested but not usable here: {0}")]
    UringUnavailable(io::Error),
    /// `append` was given more than `RECORD_PAYLOAD_MAX_BYTES`.
    #[error("record payload of {len} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge { len: u64, max: u32 },
    /// Record type 0 is reserved for padding.
    #[error("record type 0 is reserved for WAL padding")]
    ReservedType,
    /// `read` asked for bytes that are not a readable part of the log.
    #[error("log range {pos}+{len} is not readable: {why}")]
    OutOfRange { pos: u64, len: u64, why: &'static str },
    /// The call needs the WAL quiescent (nothing in flight, nothing pending).
    #[error("WAL busy: {0}")]
    Busy(&'static str),
    /// `try_recover` found data that had completed a write but whose bytes
    /// no longer verify: the page cache lost it after a failed writeback.
    /// Restart the process so the log is replayed from disk.
    #[error(
        "written WAL data no longer verifies in {} at file offset {offset}; restart required",
        path.display()
    )]
    Lost { path: PathBuf, offset: u64 },
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        WalError::Io { op, path: path.into(), source }
    }

    /// True when the cause is a full disk (real or injected): either
    /// [`WalError::NoSpace`] (nothing written, the WAL stays writable) or a
    /// write that failed with ENOSPC / EDQUOT (the WAL is failed; see
    /// [`super::Wal::is_failed`]).
    pub fn is_no_space(&self) -> bool {
        match self {
            WalError::NoSpace => true,
            WalError::Io { source, .. } => super::segment::is_full(source),
            _ => false,
        }
    }
}

/// Error of [`super::Wal::replay`]: the log or the callback failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError<E> {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("replay callback failed: {0}")]
    Callback(E),
}
