//! The two I/O backends behind one small interface. A *flight* is a list of
//! [`Op`]s executed strictly in order, stopping at the first failure; its
//! completion is signalled on an eventfd that the shard registers in its
//! mio `Poll`.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};

use super::uring::Uring;
use super::FLIGHTS_MAX;

/// One step of a flight. The `Arc`s keep the file and the bytes alive for
/// as long as the backend (or the kernel, for io_uring) may use them.
#[derive(Clone)]
pub(crate) enum Op {
    Write {
        seg_base: u64,
        file: Arc<File>,
        /// File offset of `buf[start]`.
        off: u64,
        buf: Arc<Vec<u8>>,
        start: usize,
        end: usize,
    },
    Sync {
        seg_base: u64,
        file: Arc<File>,
    },
}

impl Op {
    pub(crate) fn seg_base(&self) -> u64 {
        match self {
            Op::Write { seg_base, .. } | Op::Sync { seg_base, .. } => *seg_base,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Write { .. } => "write",
            Op::Sync { .. } => "fdatasync",
        }
    }
}

/// The first op of a flight that failed, and why.
#[derive(Debug)]
pub(crate) struct IoFailure {
    pub op_index: usize,
    pub error: io::Error,
}

pub(crate) type FlightResult = Result<(), IoFailure>;

/// Runs ops synchronously on the calling thread (the flusher thread).
pub(crate) fn run_ops(ops: &[Op]) -> FlightResult {
    for (op_index, op) in ops.iter().enumerate() {
        let r = match op {
            Op::Write { file, off, buf, start, end, .. } => file.write_all_at(&buf[*start..*end], *off),
            Op::Sync { file, .. } => file.sync_data(),
        };
        r.map_err(|error| IoFailure { op_index, error })?;
    }
    Ok(())
}

/// A non-blocking eventfd: written once per completed flight.
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

/// The thread backend: one flusher thread per WAL running pwrite +
/// fdatasync, one flight at a time.
pub(crate) struct Flusher {
    jobs: Option<Sender<Vec<Op>>>,
    done: Receiver<FlightResult>,
    thread: Option<JoinHandle<()>>,
    busy: bool,
}

impl Flusher {
    pub(crate) fn spawn(notifier: Arc<Notifier>) -> io::Result<Self> {
        let (jobs_tx, jobs_rx) = bounded::<Vec<Op>>(FLIGHTS_MAX);
        let (done_tx, done_rx) = bounded::<FlightResult>(FLIGHTS_MAX);
        let thread = std::thread::Builder::new().name("cmq-wal-flush".into()).spawn(move || {
            for ops in jobs_rx {
                let r = run_ops(&ops);
                // Release the buffers before reporting, so the WAL can
                // take them back for reuse.
                drop(ops);
                if done_tx.send(r).is_err() {
                    return;
                }
                notifier.signal();
            }
        })?;
        Ok(Flusher { jobs: Some(jobs_tx), done: done_rx, thread: Some(thread), busy: false })
    }

    fn start(&mut self, ops: Vec<Op>) -> FlightResult {
        let tx =
            self.jobs.as_ref().ok_or_else(|| IoFailure { op_index: 0, error: io::Error::other("flusher stopped") })?;
        tx.send(ops).map_err(|_| IoFailure { op_index: 0, error: io::Error::other("flusher thread exited") })?;
        self.busy = true;
        Ok(())
    }

    fn poll(&mut self) -> Option<FlightResult> {
        match self.done.try_recv() {
            Ok(r) => {
                self.busy = false;
                Some(r)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => self.busy.then(|| {
                self.busy = false;
                Err(IoFailure { op_index: 0, error: io::Error::other("flusher thread exited") })
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
    /// Starts a flight. An immediate error means nothing was started.
    pub(crate) fn start(&mut self, ops: Vec<Op>) -> FlightResult {
        match self {
            Engine::Uring(u) => u.start(ops),
            Engine::Thread(t) => t.start(ops),
        }
    }

    /// The running flight's result, if it has finished. Cheap.
    pub(crate) fn poll(&mut self) -> Option<FlightResult> {
        match self {
            Engine::Uring(u) => u.poll(),
            Engine::Thread(t) => t.poll(),
        }
    }
}
