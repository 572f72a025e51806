//! Cross-process file locks: the provision lock `S/provision.lock` (spec
//! 20), on which every process that writes surfaces, the slot or the fleet
//! map serialises, and the store lock `S/store/store.lock` (spec 40), on
//! which every change of lasting presence, link and inbox state does. A
//! marker type keeps their guards apart, so a function that needs one can
//! never be handed the other.
//!
//! An in-process mutex guards the one open file description, then an
//! exclusive `flock` on it is polled every 50 ms until the timeout, so a
//! wait can always be cancelled. The holder writes `"<pid> <what>"` into
//! the file. The kernel releases the lock when its holder dies, so there is
//! no stale-lock breaking anywhere. `flock` is not re-entrant: an operation
//! takes the guard once and passes it down.

use crate::host::files::{FileError, FileGuard};
use std::fs::{File, TryLockError};
use std::io::{Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, TryLockError as MutexTryLockError};
use std::time::{Duration, Instant};

const POLL_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the lock {path} is busy: held by {holder} for more than {secs}s; try again when it is done", secs = waited.as_secs())]
    Busy { path: PathBuf, holder: String, waited: Duration },
    #[error("waiting for a lock was cancelled")]
    Cancelled,
    #[error("cannot lock {path}: {error} (the filesystem may not support flock)")]
    Unsupported { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    File(#[from] FileError),
}

/// Marks the provision lock.
#[derive(Debug)]
pub struct ProvisionKind;
/// Marks the store lock.
#[derive(Debug)]
pub struct StoreKind;

/// A lock file, opened once per process.
#[derive(Debug)]
pub struct FileLock<K> {
    path: PathBuf,
    file: Mutex<File>,
    kind: PhantomData<K>,
}

/// Proof that a lock is held; released on drop.
#[derive(Debug)]
pub struct Guard<'a, K> {
    file: MutexGuard<'a, File>,
    kind: PhantomData<K>,
}

pub type ProvisionLock = FileLock<ProvisionKind>;
pub type ProvisionGuard<'a> = Guard<'a, ProvisionKind>;
pub type StoreLock = FileLock<StoreKind>;
pub type StoreGuard<'a> = Guard<'a, StoreKind>;

impl<K> Drop for Guard<'_, K> {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl<K> FileLock<K> {
    /// Opens (creating if missing, never deleting) the lock file.
    pub fn open(files: &FileGuard, path: &Path) -> Result<FileLock<K>, LockError> {
        let file = files.open_lock_file(path)?;
        Ok(FileLock { path: path.to_path_buf(), file: Mutex::new(file), kind: PhantomData })
    }

    /// Takes the lock for `what`, polling until `timeout`; `cancelled` is
    /// asked between polls.
    pub fn acquire(
        &self,
        what: &str,
        timeout: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Guard<'_, K>, LockError> {
        let started = Instant::now();
        loop {
            let inner = match self.file.try_lock() {
                Ok(g) => Some(g),
                // The mutex only guards a file handle: a panic elsewhere
                // cannot have left it half-changed.
                Err(MutexTryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(MutexTryLockError::WouldBlock) => None,
            };
            if let Some(mut file) = inner {
                match file.try_lock() {
                    Ok(()) => {
                        write_holder(&mut file, what);
                        return Ok(Guard { file, kind: PhantomData });
                    }
                    Err(TryLockError::WouldBlock) => {}
                    Err(TryLockError::Error(error)) => {
                        return Err(LockError::Unsupported { path: self.path.clone(), error });
                    }
                }
            }
            if started.elapsed() >= timeout {
                return Err(LockError::Busy { path: self.path.clone(), holder: self.holder(), waited: timeout });
            }
            if cancelled() {
                return Err(LockError::Cancelled);
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// What the holder wrote, for messages (`"<pid> <what>"`).
    pub fn holder(&self) -> String {
        read_holder(&self.path)
    }
}

/// The holder recorded in a lock file, or a phrase saying it is unknown.
pub fn read_holder(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => text.trim().to_owned(),
        _ => "an unknown process".to_owned(),
    }
}

fn write_holder(file: &mut File, what: &str) {
    // The holder line is informative only; failing to write it must not
    // fail the operation that holds the lock.
    let _ = file.set_len(0);
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.write_all(format!("{} {what}\n", std::process::id()).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn serialises_threads_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("provision.lock");
        let lock = Arc::new(ProvisionLock::open(&FileGuard::live(), &path).unwrap());
        let guard = lock.acquire("sweep", Duration::from_secs(1), &|| false).unwrap();
        assert_eq!(read_holder(&path), format!("{} sweep", std::process::id()));
        assert!(crate::host::instance::lock_is_held(&path).unwrap());

        let other = Arc::clone(&lock);
        let err = std::thread::spawn(move || {
            other.acquire("provision", Duration::from_millis(120), &|| false).map(|_| ()).unwrap_err()
        })
        .join()
        .unwrap();
        assert!(matches!(&err, LockError::Busy { holder, .. } if holder.ends_with("sweep")), "{err}");

        // A second opening (another process would do the same) conflicts too.
        let second = ProvisionLock::open(&FileGuard::live(), &path).unwrap();
        assert!(matches!(second.acquire("x", Duration::ZERO, &|| false), Err(LockError::Busy { .. })));
        drop(guard);
        second.acquire("x", Duration::ZERO, &|| false).unwrap();
    }

    #[test]
    fn a_wait_can_be_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("provision.lock");
        let lock = ProvisionLock::open(&FileGuard::live(), &path).unwrap();
        let _held = lock.acquire("a", Duration::ZERO, &|| false).unwrap();
        let second = ProvisionLock::open(&FileGuard::live(), &path).unwrap();
        let started = Instant::now();
        assert!(matches!(second.acquire("b", Duration::from_secs(30), &|| true), Err(LockError::Cancelled)));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
