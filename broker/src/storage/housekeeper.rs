//! A per-WAL helper thread for the slow file-system work that must stay off
//! the shard's event loop: creating the next segment ahead of time
//! (fallocate + two fsyncs) and deleting released segments (unmapping
//! them, then unlink + a directory fsync each, oldest first, so a crash can
//! only ever leave a prefix of them behind — never a gap).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::segment::{create_segment, sync_dir, Reserve, Segment};

enum Job {
    Prepare {
        base: u64,
        capacity: u64,
    },
    /// `seg`, when given, is unmapped and closed first.
    Delete {
        path: PathBuf,
        seg: Option<Box<Segment>>,
    },
}

pub(crate) struct Prepared {
    pub base: u64,
    pub result: io::Result<File>,
}

pub(crate) struct Housekeeper {
    jobs: Option<Sender<Job>>,
    prepared: Receiver<Prepared>,
    thread: Option<JoinHandle<()>>,
}

impl Housekeeper {
    pub(crate) fn spawn(dir: &Path, fault_file: Option<PathBuf>) -> io::Result<Self> {
        // Unbounded: deletions come in bursts from `release_before` (one per
        // released segment, each an unmap of tens of milliseconds), and the
        // shard's loop must never wait for them. The queue is bounded by
        // the number of segment files, and the WAL keeps at most one
        // preparation outstanding.
        let (jobs_tx, jobs_rx) = unbounded::<Job>();
        // The WAL keeps at most one preparation outstanding.
        let (prep_tx, prep_rx) = bounded::<Prepared>(1);
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new().name("cmq-wal-keeper".into()).spawn(move || {
            for job in jobs_rx {
                match job {
                    Job::Prepare { base, capacity } => {
                        let result = create_segment(&dir, base, capacity, Reserve::Preallocate, &fault_file);
                        if prep_tx.send(Prepared { base, result }).is_err() {
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
                }
            }
        })?;
        Ok(Housekeeper { jobs: Some(jobs_tx), prepared: prep_rx, thread: Some(thread) })
    }

    fn send(&self, job: Job) {
        if let Some(tx) = &self.jobs {
            // The thread only exits when `jobs` is dropped, so this cannot
            // fail while `self` lives.
            let _ = tx.send(job);
        }
    }

    pub(crate) fn prepare(&self, base: u64, capacity: u64) {
        self.send(Job::Prepare { base, capacity });
    }

    /// Unmaps, closes and deletes a released segment.
    pub(crate) fn release(&self, seg: Segment) {
        self.send(Job::Delete { path: seg.path.clone(), seg: Some(Box::new(seg)) });
    }

    /// Deletes a segment file nothing has mapped.
    pub(crate) fn delete(&self, path: PathBuf) {
        self.send(Job::Delete { path, seg: None });
    }

    pub(crate) fn try_prepared(&self) -> Option<Prepared> {
        self.prepared.try_recv().ok()
    }

    pub(crate) fn wait_prepared(&self) -> Option<Prepared> {
        self.prepared.recv().ok()
    }
}

impl Drop for Housekeeper {
    fn drop(&mut self) {
        // Let queued deletions and a running creation finish so that a
        // reopen of the same directory sees a settled state. The WAL keeps
        // at most one preparation outstanding and the result channel has
        // room for it, so the thread never blocks on its final send.
        self.jobs = None;
        while self.prepared.try_recv().is_ok() {}
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
