//! The run directory's lock: `OUT/.lock`, held (an OS file lock, `flock` on
//! Unix) for as long as a `glimpse train` works in the directory, so a
//! second one started on the same run (a `--resume` typed while the first
//! still trains, or a fresh run into the same `--out`) is refused instead
//! of interleaving checkpoints and metrics with it.
//!
//! The lock belongs to the open file, not to the file's existence: the OS
//! drops it when the holder exits, however it exits (kill -9 included), so
//! a `.lock` file left behind by a killed run never blocks the next one.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// A held run-directory lock; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes `dir`'s lock (creating `dir` and the lock file if needed)
    /// without waiting: [`TrainError::Locked`] when another process, or
    /// another handle in this one, holds it.
    // `File::try_lock` is std since Rust 1.89, above the workspace's
    // declared minimum (1.85); the toolchain glimpse builds with has it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let io = |p: &Path, e: std::io::Error| TrainError::Io(format!("{}: {e}", p.display()));
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(TrainError::Locked {
                    dir: dir.to_path_buf(),
                    lock: path,
                    holder: holder(&text),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(&path, e)),
        }
        // The holder's pid, for the refusal message of the next one (the
        // lock itself does not depend on it).
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{pid}\n").as_bytes()))
            .map_err(|e| io(&path, e))?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// " (pid N)" from a lock file's text, when it holds one.
fn holder(text: &str) -> String {
    text.trim()
        .parse::<u32>()
        .map(|pid| format!(" (pid {pid})"))
        .unwrap_or_default()
}
