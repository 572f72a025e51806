//! What one process's sweeps remember of the surface files between sweeps,
//! so that a no-op sweep costs little more than looking at each file: the
//! stamp of each file last checked as already right (and for what), the
//! surface directories last listed clean of our tmp files, and the real
//! peer folders of the sweep under way. Only the daemon keeps one; without
//! it every check reads in full.

use crate::host::stamp::{Seen, Stamp};
use crate::surfaces::StateFile;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

#[derive(Debug, Default)]
pub struct SurfaceMemory {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    files: HashMap<PathBuf, Checked>,
    /// Directories listed with no tmp file of ours left, by their stamp then.
    clean_dirs: HashMap<PathBuf, Seen>,
    /// Whether a sweep is under way: only then are the two below kept.
    sweeping: bool,
    /// Directories already seen to in this sweep.
    dirs_this_sweep: HashSet<PathBuf>,
    /// Peer folders resolved in this sweep.
    folders: HashMap<PathBuf, PathBuf>,
    /// The surface state as the last operation left it: the next one
    /// parses the file again only when another writer changed it.
    state: Option<StateFile>,
}

/// A surface file found right: its stamp then, what it was checked
/// against, and a hash of its content.
#[derive(Debug, Clone, Copy)]
struct Checked {
    seen: Seen,
    want: u64,
    content: u64,
}

impl SurfaceMemory {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A sweep starts: until the scope ends, each peer folder is resolved
    /// and each directory looked at once (outside a sweep, every time).
    pub fn sweep(&self) -> SweepScope<'_> {
        self.inner().sweeping = true;
        SweepScope(self)
    }

    /// The surface state the last operation kept, if any.
    pub fn take_state(&self) -> Option<StateFile> {
        self.inner().state.take()
    }

    pub fn keep_state(&self, state: StateFile) {
        self.inner().state = Some(state);
    }

    /// The real path of a peer folder, resolved once per sweep.
    pub fn resolve(&self, cwd: &Path) -> std::io::Result<PathBuf> {
        if let Some(real) = self.inner().folders.get(cwd) {
            return Ok(real.clone());
        }
        let real = cwd.canonicalize()?;
        let mut inner = self.inner();
        if inner.sweeping {
            inner.folders.insert(cwd.to_path_buf(), real.clone());
        }
        Ok(real)
    }

    /// The content hash of `path` when it was found right against `want`
    /// and its stamp says it has not changed since.
    pub fn unchanged(&self, path: &Path, now: &Stamp, want: u64) -> Option<u64> {
        let inner = self.inner();
        let checked = inner.files.get(path)?;
        (checked.want == want && checked.seen.unchanged(now)).then_some(checked.content)
    }

    /// `path` was found right against `want`, as `seen`.
    pub fn remember(&self, path: &Path, seen: Seen, want: u64, content: u64) {
        self.inner().files.insert(path.to_path_buf(), Checked { seen, want, content });
    }

    pub fn forget(&self, path: &Path) {
        self.inner().files.remove(path);
    }

    /// Whether `dir` needs no listing now: already seen to in this sweep,
    /// or listed clean and unchanged since (a new tmp file changes its
    /// stamp). Marks it seen to in this sweep.
    pub fn dir_is_clean(&self, dir: &Path, now: Option<&Stamp>) -> bool {
        let mut inner = self.inner();
        if inner.sweeping && !inner.dirs_this_sweep.insert(dir.to_path_buf()) {
            return true;
        }
        now.is_some_and(|now| inner.clean_dirs.get(dir).is_some_and(|seen| seen.unchanged(now)))
    }

    /// `dir`, as `seen`, was listed and holds no tmp file of ours.
    pub fn dir_listed(&self, dir: &Path, seen: Option<Seen>) {
        let mut inner = self.inner();
        match seen {
            Some(seen) => inner.clean_dirs.insert(dir.to_path_buf(), seen),
            None => inner.clean_dirs.remove(dir),
        };
    }
}

/// A sweep under way; its per-sweep memory goes when it ends.
pub struct SweepScope<'m>(&'m SurfaceMemory);

impl Drop for SweepScope<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.inner();
        inner.sweeping = false;
        inner.dirs_this_sweep.clear();
        inner.folders.clear();
    }
}

/// FNV-1a, 64 bits: change detection, not security.
pub fn fnv(bytes: &[u8]) -> u64 {
    fnv_from(0xcbf2_9ce4_8422_2325, bytes)
}

/// FNV-1a continued from `hash`.
pub fn fnv_from(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}
