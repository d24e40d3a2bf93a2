//! The two fdatasync backends behind one small interface. Writes are done
//! inline by the WAL (a buffered `pwrite` on the shard's thread); only the
//! `fdatasync`, which blocks for a disk round trip, runs elsewhere: on a
//! per-WAL flusher thread or as an io_uring entry. At most [`FLIGHTS_MAX`]
//! runs at a time; its completion is signalled on an eventfd that the
//! shard registers in its mio `Poll`.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};

use super::segment::{eio, fault, Fault};
use super::uring::Uring;
use super::FLIGHTS_MAX;

/// A non-blocking eventfd: written once per completed fdatasync.
pub(crate) struct Notifier {
    fd: OwnedFd,
}

impl Notifier {
    pub(crate) fn new() -> io::Result<Self> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Notifier { fd })
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub(crate) fn signal(&self) {
        // Only fails when the counter would overflow, which still leaves it
        // readable, so the wakeup is not lost.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Resets the counter. Called before looking for completions so that a
    /// completion arriving afterwards signals again.
    pub(crate) fn drain(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut b);
    }

    /// Blocks until signalled or `timeout` passes.
    pub(crate) fn wait(&self, timeout: Option<Duration>) {
        let ts = timeout.map(|d| Timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        let fd = self.fd.as_fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let _ = poll(&mut fds, ts.as_ref());
    }
}

/// The thread backend: one flusher thread per WAL running fdatasync, one
/// at a time.
pub(crate) struct Flusher {
    jobs: Option<Sender<Arc<File>>>,
    done: Receiver<io::Result<()>>,
    thread: Option<JoinHandle<()>>,
    busy: bool,
}

impl Flusher {
    /// `fault_file`: the test hook of `segment::fault`; a `stall-sync`
    /// fault holds each fdatasync back while it lasts, an `eio-sync` fault
    /// fails it.
    pub(crate) fn spawn(notifier: Arc<Notifier>, fault_file: Option<PathBuf>) -> io::Result<Self> {
        let (jobs_tx, jobs_rx) = bounded::<Arc<File>>(FLIGHTS_MAX);
        let (done_tx, done_rx) = bounded::<io::Result<()>>(FLIGHTS_MAX);
        let thread = std::thread::Builder::new().name("cmq-wal-flush".into()).spawn(move || {
            for file in jobs_rx {
                while fault(&fault_file) == Fault::StallSync {
                    std::thread::sleep(Duration::from_millis(1));
                }
                // `eio-sync`: the device fails the writeback, as a real
                // fdatasync reports it: after the fact, from this thread.
                let r = if fault(&fault_file) == Fault::EioSync { Err(eio()) } else { file.sync_data() };
                drop(file);
                if done_tx.send(r).is_err() {
                    return;
                }
                notifier.signal();
            }
        })?;
        Ok(Flusher { jobs: Some(jobs_tx), done: done_rx, thread: Some(thread), busy: false })
    }

    fn start(&mut self, file: Arc<File>) -> io::Result<()> {
        debug_assert!(!self.busy, "one fdatasync at a time");
        let tx = self.jobs.as_ref().ok_or_else(|| io::Error::other("flusher stopped"))?;
        tx.send(file).map_err(|_| io::Error::other("flusher thread exited"))?;
        self.busy = true;
        Ok(())
    }

    fn poll(&mut self) -> Option<io::Result<()>> {
        match self.done.try_recv() {
            Ok(r) => {
                self.busy = false;
                Some(r)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => self.busy.then(|| {
                self.busy = false;
                Err(io::Error::other("flusher thread exited"))
            }),
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.jobs = None;
        while self.done.try_recv().is_ok() {}
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) enum Engine {
    Uring(Box<Uring>),
    Thread(Flusher),
}

impl Engine {
    /// Starts an fdatasync of `file`. An immediate error means nothing was
    /// started.
    pub(crate) fn start_sync(&mut self, file: Arc<File>) -> io::Result<()> {
        match self {
            Engine::Uring(u) => u.start_sync(file),
            Engine::Thread(t) => t.start(file),
        }
    }

    /// The running fdatasync's result, if it has finished. Cheap.
    pub(crate) fn poll(&mut self) -> Option<io::Result<()>> {
        match self {
            Engine::Uring(u) => u.poll(),
            Engine::Thread(t) => t.poll(),
        }
    }
}
