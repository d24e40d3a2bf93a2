//! The io_uring backend: the one place with `unsafe` for submission queue
//! entries. A flight's ops are submitted as one linked chain (write ->
//! fdatasync -> ...), so the kernel runs them in order and cancels the rest
//! after a failure; completion is signalled on the WAL's eventfd, which is
//! registered with the ring.

use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::io::{FlightResult, IoFailure, Notifier, Op};

/// Submission queue size: the longest chain submitted at once. A flight
/// is normally 2 ops (write, fdatasync), 4 across a segment roll; longer
/// flights (huge batches split by the torn window) go in several chains.
const URING_ENTRIES: u32 = 16;
const CHAIN_OPS_MAX: usize = URING_ENTRIES as usize;

pub(crate) struct Uring {
    ring: IoUring,
    /// The running flight. Holding the ops holds the `Arc`s that keep every
    /// buffer and file referenced by a submitted entry alive.
    ops: Vec<Op>,
    /// First op of the submitted chain, its length, completions seen.
    next: usize,
    chain: usize,
    seen: usize,
    /// Lowest-index hard error and short write seen in the chain.
    failure: Option<IoFailure>,
    short: Option<(usize, usize)>,
    cancelled: bool,
    busy: bool,
}

impl Uring {
    /// Sets up a ring and checks that it really works here (seccomp
    /// profiles, e.g. Docker's default, refuse io_uring_setup or enter).
    pub(crate) fn probe(notifier: &Notifier) -> io::Result<Self> {
        let mut ring = IoUring::new(URING_ENTRIES)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [(opcode::Write::CODE, "write"), (opcode::Fsync::CODE, "fsync"), (opcode::Nop::CODE, "nop")]
        {
            if !probe.is_supported(code) {
                return Err(io::Error::new(io::ErrorKind::Unsupported, format!("io_uring lacks the {name} opcode")));
            }
        }
        let nop = opcode::Nop::new().build().user_data(u64::MAX);
        // SAFETY: a NOP references no memory.
        unsafe { ring.submission().push(&nop) }.map_err(|_| io::Error::other("io_uring submission queue full"))?;
        ring.submit_and_wait(1)?;
        let res = ring
            .completion()
            .next()
            .map(|c| c.result())
            .ok_or_else(|| io::Error::other("io_uring NOP did not complete"))?;
        if res < 0 {
            return Err(io::Error::from_raw_os_error(-res));
        }
        ring.submitter().register_eventfd(notifier.raw_fd())?;
        Ok(Uring {
            ring,
            ops: Vec::new(),
            next: 0,
            chain: 0,
            seen: 0,
            failure: None,
            short: None,
            cancelled: false,
            busy: false,
        })
    }

    pub(crate) fn start(&mut self, ops: Vec<Op>) -> FlightResult {
        debug_assert!(!self.busy);
        self.ops = ops;
        self.next = 0;
        if self.ops.is_empty() {
            return Ok(());
        }
        self.submit_chain().inspect_err(|_| self.ops.clear())
    }

    fn submit_chain(&mut self) -> FlightResult {
        let n = (self.ops.len() - self.next).min(CHAIN_OPS_MAX);
        self.chain = n;
        self.seen = 0;
        self.failure = None;
        self.short = None;
        self.cancelled = false;
        {
            let mut sq = self.ring.submission();
            // The queue is empty between chains and n <= its size; checking
            // anyway means no partial chain can ever be left in it.
            if sq.capacity() - sq.len() < n {
                return Err(IoFailure {
                    op_index: self.next,
                    error: io::Error::other("io_uring submission queue full"),
                });
            }
            for i in self.next..self.next + n {
                let entry = match &self.ops[i] {
                    Op::Write { file, off, buf, start, end, .. } => {
                        let bytes = &buf[*start..*end];
                        // Flights split writes at TORN_WINDOW_BYTES, far below u32::MAX.
                        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                        opcode::Write::new(types::Fd(file.as_raw_fd()), bytes.as_ptr(), len).offset(*off).build()
                    }
                    Op::Sync { file, .. } => {
                        opcode::Fsync::new(types::Fd(file.as_raw_fd())).flags(types::FsyncFlags::DATASYNC).build()
                    }
                };
                let entry = entry.user_data(i as u64);
                let entry = if i + 1 < self.next + n { entry.flags(squeue::Flags::IO_LINK) } else { entry };
                // SAFETY: the entry points into `self.ops[i]`'s buffer and
                // file, which `self.ops` keeps alive and unchanged until every
                // entry of this chain has completed: `self.ops` is replaced
                // only by `start` (never while busy), a short write's op is
                // advanced only after the whole chain completed, and `Drop`
                // waits for outstanding completions (or leaks the ops).
                // Capacity was checked above, so the push cannot fail.
                let _ = unsafe { sq.push(&entry) };
            }
        }
        match self.ring.submit() {
            Ok(_) => {
                self.busy = true;
                Ok(())
            }
            Err(error) => Err(IoFailure { op_index: self.next, error }),
        }
    }

    /// Reaps completions; returns the flight result once it has finished.
    pub(crate) fn poll(&mut self) -> Option<FlightResult> {
        if !self.busy {
            return None;
        }
        let mut got = [(0u64, 0i32); CHAIN_OPS_MAX];
        let mut n = 0;
        for cqe in self.ring.completion() {
            if n < got.len() {
                got[n] = (cqe.user_data(), cqe.result());
                n += 1;
            }
        }
        for &(idx, res) in &got[..n] {
            self.on_completion(idx as usize, res);
        }
        if self.seen < self.chain {
            return None;
        }
        self.busy = false;
        self.chain_done()
    }

    fn on_completion(&mut self, i: usize, res: i32) {
        self.seen += 1;
        if res == -(rustix::io::Errno::CANCELED.raw_os_error()) {
            self.cancelled = true;
            return;
        }
        if res < 0 {
            if self.failure.as_ref().is_none_or(|f| i < f.op_index) {
                self.failure = Some(IoFailure { op_index: i, error: io::Error::from_raw_os_error(-res) });
            }
            return;
        }
        if let Some(Op::Write { start, end, .. }) = self.ops.get(i) {
            let done = res as usize;
            if done == 0 && end > start {
                self.failure = Some(IoFailure { op_index: i, error: io::Error::from(io::ErrorKind::WriteZero) });
            } else if done < end - start && self.short.is_none_or(|(j, _)| i < j) {
                self.short = Some((i, done));
            }
        }
    }

    /// Called when every entry of the chain has completed: the flight's
    /// result, or None when the next chain was submitted.
    fn chain_done(&mut self) -> Option<FlightResult> {
        if let Some(f) = self.failure.take() {
            self.ops.clear();
            return Some(Err(f));
        }
        if let Some((i, done)) = self.short.take() {
            // The kernel broke the chain after a short write: continue from
            // the unwritten remainder.
            if let Some(Op::Write { off, start, .. }) = self.ops.get_mut(i) {
                *off += done as u64;
                *start += done;
            }
            self.next = i;
            return self.continue_flight();
        }
        if self.cancelled {
            let op_index = self.next;
            self.ops.clear();
            return Some(Err(IoFailure { op_index, error: io::Error::other("io_uring cancelled a linked operation") }));
        }
        self.next += self.chain;
        if self.next < self.ops.len() {
            return self.continue_flight();
        }
        self.ops.clear();
        Some(Ok(()))
    }

    fn continue_flight(&mut self) -> Option<FlightResult> {
        match self.submit_chain() {
            Ok(()) => None,
            Err(f) => {
                self.ops.clear();
                Some(Err(f))
            }
        }
    }

    /// Blocks until the running flight finishes.
    pub(crate) fn wait(&mut self) -> Option<FlightResult> {
        while self.busy {
            let outstanding = self.chain - self.seen;
            if let Err(e) = self.ring.submit_and_wait(outstanding.max(1)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    // The kernel may still use the buffers: keep them alive.
                    std::mem::forget(std::mem::take(&mut self.ops));
                    self.busy = false;
                    return Some(Err(IoFailure { op_index: 0, error: e }));
                }
            }
            if let Some(r) = self.poll() {
                return Some(r);
            }
        }
        None
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let _ = self.wait();
    }
}
