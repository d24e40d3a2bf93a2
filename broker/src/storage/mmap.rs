//! Read-only memory maps of segment files: the one place with `unsafe` for
//! reading the log.
//!
//! A segment is written through its file descriptor (pwrite / io_uring)
//! while it is mapped, so a map must never hand out a slice covering bytes
//! that a write may still change. Each map therefore tracks a *stable*
//! prefix: bytes below it are never written again while a shared borrow of
//! the map can exist. Only the owner (through `&mut self`) moves the stable
//! end, and only slices inside the stable prefix are ever created.

use std::fs::File;
use std::io;

use memmap2::{MmapOptions, MmapRaw};

pub(crate) struct SegmentMap {
    raw: MmapRaw,
    stable: usize,
}

impl SegmentMap {
    /// Maps the first `len` bytes of `file` read-only, with nothing stable.
    pub(crate) fn map(file: &File, len: u64) -> io::Result<Self> {
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large to map"))?;
        let raw = MmapOptions::new().len(len).map_raw_read_only(file)?;
        Ok(SegmentMap { raw, stable: 0 })
    }

    /// Declares `file[..end]` immutable until the next call. Callers only
    /// write below the old stable end while holding `&mut self`, which
    /// proves that no slice from [`Self::slice`] is still borrowed.
    pub(crate) fn set_stable(&mut self, end: u64) {
        self.stable = usize::try_from(end).unwrap_or(usize::MAX).min(self.raw.len());
    }

    #[cfg(test)]
    pub(crate) fn stable(&self) -> usize {
        self.stable
    }

    /// `file[off..off + len]`, if that lies inside the stable prefix.
    pub(crate) fn slice(&self, off: u64, len: u64) -> Option<&[u8]> {
        let off = usize::try_from(off).ok()?;
        let len = usize::try_from(len).ok()?;
        let end = off.checked_add(len)?;
        if end > self.stable {
            return None;
        }
        // SAFETY: `off..end` lies within the mapping (stable <= map length),
        // which stays mapped for as long as `self` is borrowed. The bytes are
        // in the stable prefix, which nobody writes while `&self` is
        // borrowed (see the module comment). The file is never truncated
        // while mapped: segments are preallocated and only ever deleted
        // whole, after their map is dropped, and the data-directory lock
        // keeps other cmqd processes out. (A process outside cmq truncating
        // the file would raise SIGBUS, as with any mmap reader.)
        Some(unsafe { std::slice::from_raw_parts(self.raw.as_ptr().add(off), len) })
    }

    /// The whole stable prefix.
    pub(crate) fn stable_bytes(&self) -> &[u8] {
        self.slice(0, self.stable as u64).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn map_sees_writes_after_they_become_stable() -> io::Result<()> {
        let mut f = tempfile::tempfile()?;
        f.set_len(8192)?;
        let mut map = SegmentMap::map(&f, 8192)?;
        assert!(map.slice(0, 1).is_none(), "nothing stable yet");
        f.write_all_at(b"hello", 100)?;
        map.set_stable(105);
        assert_eq!(map.slice(100, 5), Some(&b"hello"[..]));
        assert!(map.slice(100, 6).is_none());
        assert!(map.slice(u64::MAX, 2).is_none());
        map.set_stable(u64::MAX);
        assert_eq!(map.stable(), 8192);
        assert_eq!(map.stable_bytes().len(), 8192);
        let _ = &mut f;
        Ok(())
    }
}
