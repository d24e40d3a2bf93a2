//! Exclusive lock on a data directory, so two cmqd processes never open
//! the same logs. An OS file lock (`flock` through `File::try_lock`): it
//! dies with the process, so a crash or kill -9 never leaves a stale lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = "LOCK";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data directory {} is in use by another cmqd (holder: {holder}); stop it or use another directory",
        dir.display()
    )]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock data directory {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Held for the life of the process; dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    dir: PathBuf,
}

impl DataDirLock {
    /// Creates `dir` if needed and locks it, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let io_err = |source| LockError::Io { dir: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let path = dir.join(LOCK_FILE);
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "unknown".into());
                return Err(LockError::Held { dir: dir.to_path_buf(), holder });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
        // The pid is only a hint for the error message above.
        file.set_len(0).map_err(io_err)?;
        writeln!(file, "pid {}", std::process::id()).map_err(io_err)?;
        Ok(DataDirLock { _file: file, dir: dir.to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_and_released_on_drop() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let a = DataDirLock::acquire(d.path())?;
        let err = DataDirLock::acquire(d.path()).err().ok_or("locked twice")?;
        let msg = err.to_string();
        assert!(msg.contains(&d.path().display().to_string()), "{msg}");
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        drop(a);
        DataDirLock::acquire(d.path())?;
        Ok(())
    }
}
