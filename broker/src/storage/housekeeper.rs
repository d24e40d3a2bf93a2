//! A per-WAL helper thread for the slow file-system work that must stay off
//! the shard's event loop: creating the next segment ahead of time
//! (fallocate + two fsyncs), keeping the spare segment and adopting it when
//! the disk is full, deleting released segments (unmapping them, then
//! unlink + a directory fsync each, oldest first, so a crash can only ever
//! leave a prefix of them behind — never a gap), and writing checkpoint
//! files (the shard's catalog). Jobs run in the order they were sent: a
//! deletion sent after a checkpoint runs after it, a preparation sent
//! after deletions sees the space they freed.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::segment::{adopt_spare, create_segment, ensure_spare, is_full, sync_dir, Reserve, Segment};

/// Encodes a checkpoint's bytes (on the housekeeper thread: encoding a
/// large catalog is work the loop should not do).
pub(crate) type Encode = Box<dyn FnOnce() -> Vec<u8> + Send>;

enum Job {
    Prepare {
        base: u64,
        capacity: u64,
        /// On a full disk, the spare may become the segment.
        adopt: bool,
    },
    /// `seg`, when given, is unmapped and closed first.
    Delete { path: PathBuf, seg: Option<Box<Segment>> },
    Checkpoint {
        name: String,
        pos: u64,
        encode: Encode,
        /// fdatasync'd first, so that the log is durable up to `pos`
        /// before the checkpoint claims it.
        sync: Option<Arc<File>>,
    },
}

/// A segment file ready to join the log.
pub(crate) struct NewSegment {
    pub file: File,
    pub capacity: u64,
}

pub(crate) struct Prepared {
    pub base: u64,
    pub result: io::Result<NewSegment>,
    /// A normal segment could not be created for lack of space (the result
    /// is then the adopted spare, or the ENOSPC error).
    pub disk_full: bool,
}

pub(crate) struct CheckpointDone {
    pub pos: u64,
    pub result: io::Result<()>,
}

pub(crate) struct Housekeeper {
    jobs: Option<Sender<Job>>,
    prepared: Receiver<Prepared>,
    checkpoints: Receiver<CheckpointDone>,
    thread: Option<JoinHandle<()>>,
}

/// Creates the segment at `base`; on a full disk, adopts the spare instead
/// (if there is one and `adopt` allows). Makes sure a spare exists first,
/// so the emergency allowance is renewed before space goes to a new
/// segment.
fn prepare(dir: &Path, base: u64, capacity: u64, adopt: bool, fault_file: &Option<PathBuf>) -> Prepared {
    if let Err(e) = ensure_spare(dir, fault_file) {
        log::debug!("no spare segment in {}: {e}", dir.display());
    }
    match create_segment(dir, base, capacity, Reserve::Preallocate, fault_file) {
        Ok(file) => Prepared { base, result: Ok(NewSegment { file, capacity }), disk_full: false },
        Err(e) if is_full(&e) && !adopt => Prepared { base, result: Err(e), disk_full: true },
        Err(e) if is_full(&e) => {
            let result = match adopt_spare(dir, base) {
                Ok(Some((file, capacity))) => {
                    log::warn!(
                        "WAL in {}: disk full; the spare segment becomes segment {base} (receives and deletes only)",
                        dir.display()
                    );
                    Ok(NewSegment { file, capacity })
                }
                Ok(None) => Err(e),
                Err(adopt) => Err(adopt),
            };
            Prepared { base, result, disk_full: true }
        }
        Err(e) => Prepared { base, result: Err(e), disk_full: false },
    }
}

impl Housekeeper {
    pub(crate) fn spawn(dir: &Path, fault_file: Option<PathBuf>) -> io::Result<Self> {
        // Unbounded: deletions come in bursts from `release_before` (one per
        // released segment, each an unmap of tens of milliseconds), and the
        // shard's loop must never wait for them. The queue is bounded by
        // the number of segment files, and the WAL keeps at most one
        // preparation and one checkpoint outstanding.
        let (jobs_tx, jobs_rx) = unbounded::<Job>();
        let (prep_tx, prep_rx) = bounded::<Prepared>(1);
        let (ckpt_tx, ckpt_rx) = bounded::<CheckpointDone>(1);
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new().name("cmq-wal-keeper".into()).spawn(move || {
            for job in jobs_rx {
                match job {
                    Job::Prepare { base, capacity, adopt } => {
                        if prep_tx.send(prepare(&dir, base, capacity, adopt, &fault_file)).is_err() {
                            return;
                        }
                    }
                    Job::Delete { path, seg } => {
                        // Unmapping a segment whose pages are resident takes
                        // the kernel tens of milliseconds (measured: about
                        // 20 ms for 64 MiB); here it stalls no event loop.
                        drop(seg);
                        let r = std::fs::remove_file(&path).and_then(|()| sync_dir(&dir));
                        if let Err(e) = r {
                            log::warn!("deleting released WAL segment {}: {e}", path.display());
                        }
                    }
                    Job::Checkpoint { name, pos, encode, sync } => {
                        let result = sync
                            .map_or(Ok(()), |f| f.sync_data())
                            .and_then(|()| super::checkpoint::write(&dir, &name, &encode(), &fault_file));
                        if ckpt_tx.send(CheckpointDone { pos, result }).is_err() {
                            return;
                        }
                    }
                }
            }
        })?;
        Ok(Housekeeper { jobs: Some(jobs_tx), prepared: prep_rx, checkpoints: ckpt_rx, thread: Some(thread) })
    }

    fn send(&self, job: Job) {
        if let Some(tx) = &self.jobs {
            // The thread only exits when `jobs` is dropped, so this cannot
            // fail while `self` lives.
            let _ = tx.send(job);
        }
    }

    pub(crate) fn prepare(&self, base: u64, capacity: u64, adopt: bool) {
        self.send(Job::Prepare { base, capacity, adopt });
    }

    /// Unmaps, closes and deletes a released segment.
    pub(crate) fn release(&self, seg: Segment) {
        self.send(Job::Delete { path: seg.path.clone(), seg: Some(Box::new(seg)) });
    }

    /// Deletes a segment file nothing has mapped.
    pub(crate) fn delete(&self, path: PathBuf) {
        self.send(Job::Delete { path, seg: None });
    }

    pub(crate) fn checkpoint(&self, name: String, pos: u64, encode: Encode, sync: Option<Arc<File>>) {
        self.send(Job::Checkpoint { name, pos, encode, sync });
    }

    pub(crate) fn try_prepared(&self) -> Option<Prepared> {
        self.prepared.try_recv().ok()
    }

    pub(crate) fn wait_prepared(&self) -> Option<Prepared> {
        self.prepared.recv().ok()
    }

    pub(crate) fn try_checkpoint(&self) -> Option<CheckpointDone> {
        self.checkpoints.try_recv().ok()
    }
}

impl Drop for Housekeeper {
    fn drop(&mut self) {
        // Let queued deletions, a running creation and a checkpoint finish so
        // that a reopen of the same directory sees a settled state. The WAL
        // keeps at most one of each outstanding and the result channels have
        // room for it, so the thread never blocks on its final send.
        self.jobs = None;
        while self.prepared.try_recv().is_ok() {}
        while self.checkpoints.try_recv().is_ok() {}
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
