//! Checkpoint files written beside the log (the shard's catalog): written
//! atomically by the housekeeper thread, never on the shard's loop, after
//! the log is durable up to the checkpoint's position.
//!
//! A checkpoint `<name>` is written into `<name>.next`, a file kept
//! preallocated for it (see [`CHECKPOINT_RESERVE_MIN_BYTES`]), trimmed to
//! its length, fsync'd, renamed over `<name>`, and the directory fsync'd.
//! Then a fresh `<name>.next` is preallocated for the next version. On a
//! full disk the write therefore needs no new space as long as the
//! checkpoint did not grow past the reserve; the catalog is what lets
//! segments be released, so it must not be stopped by the full disk it is
//! meant to cure.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::segment::{fault, is_full, no_space, sync_dir, Fault};
use super::CHECKPOINT_RESERVE_MIN_BYTES;

fn next_name(name: &str) -> String {
    format!("{name}.next")
}

/// Writes `bytes` as `dir/name`, atomically and durably, then reserves
/// space for the next version. A failure leaves the previous version in
/// place. `fault_file` is the WAL's test hook: a full disk (any content)
/// fails only if the reserve is too small, `eio` fails the write.
pub(crate) fn write(dir: &Path, name: &str, bytes: &[u8], fault_file: &Option<std::path::PathBuf>) -> io::Result<()> {
    let next = dir.join(next_name(name));
    let len = bytes.len() as u64;
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&next)?;
    let reserved = f.metadata()?.len();
    match fault(fault_file) {
        Fault::Eio => return Err(super::segment::eio()),
        Fault::Full if len > reserved => return Err(no_space()),
        _ => {}
    }
    f.write_all_at(bytes, 0)?;
    f.set_len(len)?;
    f.sync_all()?;
    std::fs::rename(&next, dir.join(name))?;
    sync_dir(dir)?;
    reserve_next(dir, name, len, fault_file);
    Ok(())
}

/// Preallocates `<name>.next` for a checkpoint of up to twice `last_len`
/// bytes. Best effort: on a full disk the next write needs new space.
fn reserve_next(dir: &Path, name: &str, last_len: u64, fault_file: &Option<std::path::PathBuf>) {
    let bytes = (2 * last_len).max(CHECKPOINT_RESERVE_MIN_BYTES);
    let path = dir.join(next_name(name));
    let r = (|| {
        match fault(fault_file) {
            Fault::Full => return Err(no_space()),
            Fault::Eio => return Err(super::segment::eio()),
            _ => {}
        }
        let f = File::create(&path)?;
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, bytes)?;
        f.sync_all()
    })();
    if let Err(e) = r {
        if !is_full(&e) {
            log::warn!("cannot reserve space for the next {}: {e}", path.display());
        }
        // An empty file (or none) is fine: the next write extends it.
        let _ = OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_keeps_a_reserve() -> io::Result<()> {
        let d = tempfile::tempdir()?;
        write(d.path(), "cat", b"first", &None)?;
        assert_eq!(std::fs::read(d.path().join("cat"))?, b"first");
        let next = d.path().join("cat.next");
        assert_eq!(std::fs::metadata(&next)?.len(), CHECKPOINT_RESERVE_MIN_BYTES);
        write(d.path(), "cat", b"second, longer", &None)?;
        assert_eq!(std::fs::read(d.path().join("cat"))?, b"second, longer");
        Ok(())
    }

    #[test]
    fn a_full_disk_still_takes_a_checkpoint_that_fits_the_reserve() -> io::Result<()> {
        let d = tempfile::tempdir()?;
        let fault = d.path().join("FAULT");
        let ff = Some(fault.clone());
        write(d.path(), "cat", b"one", &ff)?;
        std::fs::write(&fault, b"")?;
        write(d.path(), "cat", b"two", &ff)?;
        assert_eq!(std::fs::read(d.path().join("cat"))?, b"two");
        // The reserve could not be renewed on the full disk: the next write
        // needs new space and fails, leaving the last version.
        let e = write(d.path(), "cat", b"three", &ff).err().ok_or_else(|| io::Error::other("wrote on a full disk"))?;
        assert!(is_full(&e), "{e}");
        assert_eq!(std::fs::read(d.path().join("cat"))?, b"two");
        std::fs::write(&fault, b"eio")?;
        assert!(write(d.path(), "cat", b"four", &ff).is_err());
        std::fs::remove_file(&fault)?;
        write(d.path(), "cat", b"five", &ff)?;
        assert_eq!(std::fs::read(d.path().join("cat"))?, b"five");
        Ok(())
    }
}
