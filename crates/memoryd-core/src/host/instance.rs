//! One daemon per root: the private state dir, the single-instance lock,
//! the pid file, and the verified kill of a daemon that stopped answering.

use crate::host::egress::Egress;
use crate::host::files::{FileError, FileGuard};
use crate::host::paths::Paths;
use nix::sys::signal::Signal;
use std::fs::{File, TryLockError};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why the daemon cannot start on this root.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("another memoryd ({}) is running on this root", .pid.map_or("pid unknown".to_owned(), |p| format!("pid {p}")))]
    Held { pid: Option<u32> },
    #[error(
        "{path} is a symlink; memoryd keeps its state only in a real directory: remove the link and let memoryd create the directory"
    )]
    Symlink { path: PathBuf },
    #[error("{path} is owned by uid {owner}, not by this user (uid {me}); fix with: chown {me} {path}")]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error("{path} grants group or other permissions (mode {mode:o}); fix with: chmod 700 {path}")]
    Mode { path: PathBuf, mode: u32 },
    #[error("{path} is not a directory; move it away so memoryd can create its state directory")]
    NotDir { path: PathBuf },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot {op} {path}: {error}")]
    Io { op: &'static str, path: PathBuf, error: io::Error },
}

/// Creates `dir` with mode 0700 if missing, then refuses it unless it is a
/// real directory, ours, and closed to group and others.
pub fn ensure_private_dir(files: &FileGuard, dir: &Path) -> Result<(), InstanceError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => files.create_dir_all(dir, 0o700)?,
        Err(error) => {
            return Err(InstanceError::Io { op: "inspect", path: dir.to_path_buf(), error });
        }
        Ok(_) => {}
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|error| InstanceError::Io {
        op: "inspect",
        path: dir.to_path_buf(),
        error,
    })?;
    let path = dir.to_path_buf();
    if meta.file_type().is_symlink() {
        return Err(InstanceError::Symlink { path });
    }
    if !meta.is_dir() {
        return Err(InstanceError::NotDir { path });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(InstanceError::Owner { path, owner: meta.uid(), me });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(InstanceError::Mode { path, mode });
    }
    Ok(())
}

/// The single-instance lock, held for the daemon's life. The file is never
/// deleted: two daemons can then never lock two different files.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
}

impl InstanceLock {
    /// Takes the lock without waiting.
    pub fn acquire(files: &FileGuard, paths: &Paths) -> Result<InstanceLock, InstanceError> {
        let file = files.open_lock_file(&paths.instance_lock)?;
        match file.try_lock() {
            Ok(()) => Ok(InstanceLock { file }),
            Err(TryLockError::WouldBlock) => Err(InstanceError::Held { pid: read_pid(&paths.pid_file) }),
            Err(TryLockError::Error(error)) => {
                Err(InstanceError::Io { op: "lock", path: paths.instance_lock.clone(), error })
            }
        }
    }

    /// Adopts a lock inherited across `exec` (the lock travels with the fd).
    pub fn from_inherited(file: File) -> InstanceLock {
        InstanceLock { file }
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Whether some process holds the lock at `path` (a missing file: no).
pub fn lock_is_held(path: &Path) -> io::Result<bool> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// The pid recorded in the pid file; trust it only while the lock is held.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Writes `"<pid>\n"` (tmp + rename). Only the lock holder calls this.
pub fn write_pid(files: &FileGuard, paths: &Paths, _held: &InstanceLock) -> Result<(), FileError> {
    files.write_atomic(&paths.pid_file, format!("{}\n", std::process::id()).as_bytes(), Some(0o644))
}

/// A daemon proven to be this root's own: the lock is held, the pid file
/// names it, its command line names memoryd and it has this root's lock
/// file open. Only [`verify_daemon`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDaemon {
    pid: i32,
}

impl VerifiedDaemon {
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

/// What the verified-kill rule found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonCheck {
    /// The lock is free: no daemon runs on this root.
    NotRunning,
    Verified(VerifiedDaemon),
    /// Something holds the lock but could not be proven to be our daemon;
    /// the sentence says what was found. Nothing may be signalled.
    Unverified(String),
}

/// Applies the first step of the verified-kill rule (spec 30).
pub fn verify_daemon(paths: &Paths, egress: &Egress) -> DaemonCheck {
    match lock_is_held(&paths.instance_lock) {
        Ok(false) => return DaemonCheck::NotRunning,
        Ok(true) => {}
        Err(e) => {
            return DaemonCheck::Unverified(format!("cannot test the lock {}: {e}", paths.instance_lock.display()));
        }
    }
    let Some(pid) = read_pid(&paths.pid_file).and_then(|p| i32::try_from(p).ok()) else {
        return DaemonCheck::Unverified(format!("the lock is held but {} names no pid", paths.pid_file.display()));
    };
    if pid <= 1 {
        return DaemonCheck::Unverified(format!("the pid file names pid {pid}, which is never signalled"));
    }
    let Some(info) = egress.probe(pid) else {
        return DaemonCheck::Unverified(format!("the lock is held but pid {pid} from the pid file is not running"));
    };
    let names_memoryd = Path::new(&info.argv0).file_name().is_some_and(|n| n == "memoryd");
    if !names_memoryd {
        return DaemonCheck::Unverified(format!("pid {pid} runs `{}`, not memoryd", info.cmdline));
    }
    if !egress.has_open(pid, &paths.instance_lock) {
        return DaemonCheck::Unverified(format!(
            "pid {pid} is a memoryd without {} open (another root's daemon)",
            paths.instance_lock.display()
        ));
    }
    DaemonCheck::Verified(VerifiedDaemon { pid })
}

/// How a verified kill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillOutcome {
    /// The lock was released after SIGTERM.
    Terminated,
    /// SIGTERM was not enough; SIGKILL was.
    Killed,
}

/// A verified daemon survived SIGKILL, or could not be signalled.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    #[error("memoryd pid {pid} survived SIGKILL")]
    Survived { pid: i32 },
    #[error(transparent)]
    Signal(#[from] crate::host::egress::EgressError),
}

/// Ends a verified daemon: SIGTERM and SIGCONT, up to `term_wait` for the
/// lock to be released, then SIGKILL and up to `kill_wait`. The lock's
/// release, not `kill(pid, 0)` (true for a zombie), is the sign of death.
pub fn kill_verified(
    paths: &Paths,
    egress: &Egress,
    daemon: &VerifiedDaemon,
    term_wait: Duration,
    kill_wait: Duration,
) -> Result<KillOutcome, KillError> {
    egress.signal_daemon(daemon, Signal::SIGTERM)?;
    egress.signal_daemon(daemon, Signal::SIGCONT)?;
    if wait_for_release(&paths.instance_lock, term_wait) {
        return Ok(KillOutcome::Terminated);
    }
    egress.signal_daemon(daemon, Signal::SIGKILL)?;
    if wait_for_release(&paths.instance_lock, kill_wait) {
        return Ok(KillOutcome::Killed);
    }
    Err(KillError::Survived { pid: daemon.pid })
}

/// Polls the lock every 250 ms until it is free or `limit` passes.
pub fn wait_for_release(lock: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !matches!(lock_is_held(lock), Ok(true)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(
            Duration::from_millis(250)
                .min(deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(1)),
        );
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;
    use std::os::unix::fs::DirBuilderExt;

    #[test]
    fn private_dir_checks() {
        let dir = tempfile::tempdir().unwrap();
        let files = FileGuard::live();
        let state = dir.path().join("a/state");
        ensure_private_dir(&files, &state).unwrap();
        assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
        files.set_mode(&state, 0o750).unwrap();
        assert!(matches!(ensure_private_dir(&files, &state), Err(InstanceError::Mode { .. })));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        let e = ensure_private_dir(&files, &link).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        let open = dir.path().join("open");
        std::fs::DirBuilder::new().mode(0o777).create(&open).unwrap();
        files.set_mode(&open, 0o777).unwrap();
        assert!(ensure_private_dir(&files, &open).unwrap_err().to_string().contains("chmod 700"));
    }

    #[test]
    fn the_lock_is_exclusive_and_free_again_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let files = FileGuard::live();
        let paths = Paths::new(dir.path().to_path_buf());
        ensure_private_dir(&files, &paths.state).unwrap();
        assert!(!lock_is_held(&paths.instance_lock).unwrap());
        let lock = InstanceLock::acquire(&files, &paths).unwrap();
        write_pid(&files, &paths, &lock).unwrap();
        assert!(lock_is_held(&paths.instance_lock).unwrap());
        match InstanceLock::acquire(&files, &paths) {
            Err(InstanceError::Held { pid }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        let egress = Egress::live();
        match verify_daemon(&paths, &egress) {
            // The test binary holds the lock but is not named memoryd.
            DaemonCheck::Unverified(why) => assert!(why.contains("not memoryd"), "{why}"),
            other => panic!("{other:?}"),
        }
        drop(lock);
        assert!(!lock_is_held(&paths.instance_lock).unwrap());
        assert_eq!(verify_daemon(&paths, &egress), DaemonCheck::NotRunning);
        assert!(paths.instance_lock.exists(), "the lock file is never deleted");
    }
}
