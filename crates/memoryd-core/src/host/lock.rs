//! Cross-process file locks: the provision lock `S/provision.lock` (spec
//! 20), on which every process that writes surfaces, the slot or the fleet
//! map serialises, and the store lock `S/store/store.lock` (spec 40), on
//! which every change of lasting presence, link and inbox state does. A
//! marker type keeps their guards apart, so a function that needs one can
//! never be handed the other.
//!
//! Within a process, waiters queue and are served in arrival order (a
//! mutex that every waiter polls lets a thread that just released win again
//! and again while an earlier waiter times out: a burst of 30 agents' sends
//! saw 5 s waits end in `lock.busy`). The one whose turn it is takes an
//! exclusive `flock` on the one open file description, polled (1 ms growing
//! to 50 ms) until the timeout, so a wait on another process can always be
//! cancelled. The holder writes `"<pid> <what>"` into
//! the file. The kernel releases the lock when its holder dies, so there is
//! no stale-lock breaking anywhere. `flock` is not re-entrant: an operation
//! takes the guard once and passes it down.

use crate::host::files::{FileError, FileGuard};
use std::collections::VecDeque;
use std::fs::{File, TryLockError};
use std::io::{Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
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
    queue: Mutex<Queue>,
    /// Signalled whenever the turn passes or a waiter leaves the queue.
    turn: Condvar,
    kind: PhantomData<K>,
}

/// This process's waiters, by ticket, in arrival order.
#[derive(Debug, Default)]
struct Queue {
    next_ticket: u64,
    waiting: VecDeque<u64>,
    /// Whether a waiter of this process has its turn (holds or is taking
    /// the `flock`).
    taken: bool,
}

/// Proof that a lock is held; released on drop.
#[derive(Debug)]
pub struct Guard<'a, K> {
    file: MutexGuard<'a, File>,
    lock: &'a FileLock<K>,
}

pub type ProvisionLock = FileLock<ProvisionKind>;
pub type ProvisionGuard<'a> = Guard<'a, ProvisionKind>;
pub type StoreLock = FileLock<StoreKind>;
pub type StoreGuard<'a> = Guard<'a, StoreKind>;

impl<K> Drop for Guard<'_, K> {
    fn drop(&mut self) {
        let _ = self.file.unlock();
        // The next in line waits for the file handle's mutex only until
        // this guard's fields drop, right after this.
        self.lock.pass_turn();
    }
}

impl<K> FileLock<K> {
    /// Opens (creating if missing, never deleting) the lock file.
    pub fn open(files: &FileGuard, path: &Path) -> Result<FileLock<K>, LockError> {
        let file = files.open_lock_file(path)?;
        Ok(FileLock {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            queue: Mutex::new(Queue::default()),
            turn: Condvar::new(),
            kind: PhantomData,
        })
    }

    /// Takes the lock for `what`: first this process's turn, in arrival
    /// order, then the `flock`, both within `timeout`; `cancelled` is asked
    /// at least every 50 ms.
    pub fn acquire(
        &self,
        what: &str,
        timeout: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Guard<'_, K>, LockError> {
        let started = Instant::now();
        self.wait_for_turn(started, timeout, cancelled)?;
        // The turn is ours alone, so this waits at most for the previous
        // holder's guard to finish dropping. The mutex only guards a file
        // handle: a panic elsewhere cannot have left it half-changed.
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => {
                    write_holder(&mut file, what);
                    return Ok(Guard { file, lock: self });
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(error)) => {
                    drop(file);
                    self.pass_turn();
                    return Err(LockError::Unsupported { path: self.path.clone(), error });
                }
            }
            let failure = if started.elapsed() >= timeout {
                Some(self.busy(timeout))
            } else if cancelled() {
                Some(LockError::Cancelled)
            } else {
                None
            };
            if let Some(error) = failure {
                drop(file);
                self.pass_turn();
                return Err(error);
            }
            std::thread::sleep(pause.min(timeout.saturating_sub(started.elapsed())));
            pause = (pause * 2).min(POLL_EVERY);
        }
    }

    /// Queues behind this process's earlier waiters until it is this
    /// caller's turn, or leaves the queue on timeout or cancellation.
    fn wait_for_turn(
        &self,
        started: Instant,
        timeout: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), LockError> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push_back(ticket);
        loop {
            if !queue.taken && queue.waiting.front() == Some(&ticket) {
                queue.waiting.pop_front();
                queue.taken = true;
                return Ok(());
            }
            let left = timeout.saturating_sub(started.elapsed());
            let failure = if left.is_zero() {
                Some(self.busy(timeout))
            } else {
                // Asked without the queue's mutex: it is the caller's code.
                drop(queue);
                let stop = cancelled().then_some(LockError::Cancelled);
                queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                stop
            };
            if let Some(error) = failure {
                queue.waiting.retain(|t| *t != ticket);
                drop(queue);
                // The one behind may now be first.
                self.turn.notify_all();
                return Err(error);
            }
            if !queue.taken && queue.waiting.front() == Some(&ticket) {
                continue;
            }
            queue = self.turn.wait_timeout(queue, left.min(POLL_EVERY)).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    fn pass_turn(&self) {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).taken = false;
        self.turn.notify_all();
    }

    fn busy(&self, waited: Duration) -> LockError {
        LockError::Busy { path: self.path.clone(), holder: self.holder(), waited }
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

    /// Threads that take the lock again as soon as they release it: with
    /// waiters served in arrival order, none waits longer than the others'
    /// turns, so none times out.
    #[test]
    fn waiters_of_one_process_are_served_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let lock = Arc::new(StoreLock::open(&FileGuard::live(), &dir.path().join("store.lock")).unwrap());
        let until = Instant::now() + Duration::from_millis(1500);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    let mut turns = 0;
                    while Instant::now() < until {
                        let held = lock.acquire("send", Duration::from_millis(500), &|| false)?;
                        std::thread::sleep(Duration::from_millis(1));
                        drop(held);
                        turns += 1;
                    }
                    Ok::<_, LockError>(turns)
                })
            })
            .collect();
        for thread in threads {
            let turns = thread.join().unwrap().unwrap();
            assert!(turns >= 10, "a thread had only {turns} turns");
        }
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
