//! The io_uring fdatasync backend: the one place with `unsafe` for
//! submission queue entries. One `IORING_OP_FSYNC` (with
//! `IORING_FSYNC_DATASYNC`) at a time; its completion is signalled on the
//! WAL's eventfd, which is registered with the ring.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{opcode, types, IoUring, Probe};

/// Submission queue size. One entry is in use at a time; the kernel rounds
/// the ring up to a power of two anyway.
const URING_ENTRIES: u32 = 4;

/// `user_data` of the fdatasync entry (the probe's NOP uses another).
const SYNC_USER_DATA: u64 = 1;

pub(crate) struct Uring {
    ring: IoUring,
    /// The file of the running fdatasync, kept open until it completes.
    file: Option<Arc<File>>,
}

impl Uring {
    /// Sets up a ring and checks that it really works here (seccomp
    /// profiles, e.g. Docker's default, refuse io_uring_setup or enter).
    pub(crate) fn probe(notifier: &super::io::Notifier) -> io::Result<Self> {
        let mut ring = IoUring::new(URING_ENTRIES)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [(opcode::Fsync::CODE, "fsync"), (opcode::Nop::CODE, "nop")] {
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
        Ok(Uring { ring, file: None })
    }

    pub(crate) fn start_sync(&mut self, file: Arc<File>) -> io::Result<()> {
        if self.file.is_some() {
            // Left over from a submission that failed (the WAL failed on
            // it): finish it first. Never happens on the normal path.
            self.wait();
        }
        let entry = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(SYNC_USER_DATA);
        // SAFETY: the entry references only the file descriptor, which
        // `self.file` keeps open until the completion is reaped (`poll`),
        // or `wait` (also run by `Drop`) has seen it.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        self.file = Some(file);
        // On an error the entry may or may not have reached the kernel:
        // `self.file` stays set, so the descriptor stays open and the next
        // `start_sync` or `Drop` waits for it.
        self.ring.submit().map(|_| ())
    }

    /// Reaps the completion; returns the fdatasync's result once it has
    /// finished.
    pub(crate) fn poll(&mut self) -> Option<io::Result<()>> {
        self.file.as_ref()?;
        let res = self.ring.completion().find(|c| c.user_data() == SYNC_USER_DATA).map(|c| c.result())?;
        self.file = None;
        Some(if res < 0 { Err(io::Error::from_raw_os_error(-res)) } else { Ok(()) })
    }

    /// Blocks until the running fdatasync finishes.
    fn wait(&mut self) {
        while self.file.is_some() {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The kernel may still use the descriptor: keep it open.
                    std::mem::forget(self.file.take());
                    return;
                }
            }
            let _ = self.poll();
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        self.wait();
    }
}
