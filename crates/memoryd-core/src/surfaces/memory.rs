//! What one process's sweeps remember of the surface files between sweeps,
//! so that a no-op sweep costs little more than looking at each file: the
//! stamp of each file last checked as already right (and for what), the
//! surface directories last listed clean of our tmp files (both per peer
//! folder, by relative path), the hook shims found right, and the peer
//! folder the sweep is at, held open with its surface directories for the
//! runtimes and fragment passes over it. Only the daemon keeps one; without
//! it every check reads in full.

use crate::host::files::{Beneath, PlainDir};
use crate::host::stamp::{Seen, Stamp};
use crate::surfaces::StateFile;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

#[derive(Debug, Default)]
pub struct SurfaceMemory {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// What was found right in each real peer folder.
    folders: HashMap<PathBuf, FolderMemo>,
    /// memoryd's own files found right outside the peer folders (the hook
    /// shims), by path: a few, so a scan.
    own: Vec<(PathBuf, Checked)>,
    /// Whether a sweep is under way: only then is `current` kept.
    sweeping: bool,
    /// The folder the sweep is at, kept open between the passes over it
    /// (its runtimes, then its fragment): resolved and opened once.
    current: Option<OpenFolder>,
    /// The surface state as the last operation left it: the next one
    /// parses the file again only when another writer changed it.
    state: Option<StateFile>,
}

/// What was found right in one peer folder, by path relative to it: a
/// handful of entries, so a scan, not a map keyed by full paths.
#[derive(Debug, Default)]
pub(super) struct FolderMemo {
    files: Vec<(&'static str, Checked)>,
    /// Directories listed with no tmp file of ours left, by their stamp then.
    clean_dirs: Vec<(&'static str, Seen)>,
}

/// A surface file found right: its stamp then, what it was checked
/// against, and a hash of its content.
#[derive(Debug, Clone, Copy)]
struct Checked {
    seen: Seen,
    want: u64,
    content: u64,
}

impl FolderMemo {
    /// The content hash of `rel` when it was found right against `want`
    /// and its stamp says it has not changed since.
    pub(super) fn unchanged(&self, rel: &str, now: &Stamp, want: u64) -> Option<u64> {
        let (_, checked) = self.files.iter().find(|(r, _)| *r == rel)?;
        (checked.want == want && checked.seen.unchanged(now)).then_some(checked.content)
    }

    /// `rel` was found right against `want`, as `seen`.
    pub(super) fn remember(&mut self, rel: &'static str, seen: Seen, want: u64, content: u64) {
        self.forget(rel);
        self.files.push((rel, Checked { seen, want, content }));
    }

    pub(super) fn forget(&mut self, rel: &str) {
        self.files.retain(|(r, _)| *r != rel);
    }

    /// Whether the directory `rel` was listed clean and is unchanged since
    /// (a new tmp file changes its stamp).
    pub(super) fn dir_is_clean(&self, rel: &str, now: &Stamp) -> bool {
        self.clean_dirs.iter().any(|(r, seen)| *r == rel && seen.unchanged(now))
    }

    /// The directory `rel`, as `seen`, was listed and holds no tmp file of
    /// ours (`None`: it does, or it could not be listed).
    pub(super) fn dir_listed(&mut self, rel: &'static str, seen: Option<Seen>) {
        self.clean_dirs.retain(|(r, _)| *r != rel);
        self.clean_dirs.extend(seen.map(|seen| (rel, seen)));
    }
}

/// One peer folder open for the passes over it: its real path, the
/// folder and its surface directories held open, and its memo.
#[derive(Debug, Default)]
pub(super) struct OpenFolder {
    cwd: PathBuf,
    pub(super) real: PathBuf,
    /// The folder itself (None: not open).
    root: Option<PlainDir>,
    /// The surface directories beneath it looked up so far (dropped on
    /// every write).
    dirs: Vec<(&'static str, Beneath<PlainDir>)>,
    /// The directories already seen to for tmp files while open.
    pub(super) listed: Vec<&'static str>,
    pub(super) memo: FolderMemo,
}

impl OpenFolder {
    /// Opens the folder `cwd` (following symlinks to it) and finds its
    /// real path.
    pub(super) fn open(cwd: &Path, memo: FolderMemo) -> std::io::Result<OpenFolder> {
        let (root, real) = PlainDir::open_real(cwd)?;
        Ok(OpenFolder { cwd: cwd.to_path_buf(), real, root: Some(root), dirs: Vec::new(), listed: Vec::new(), memo })
    }

    /// The surface directory `rel` (`""`: the folder), looked up once
    /// while open.
    pub(super) fn dir(&mut self, rel: &'static str) -> Beneath<&PlainDir> {
        let Some(root) = &self.root else { return Beneath::Unsure };
        if rel.is_empty() {
            return Beneath::Found(root);
        }
        let at = match self.dirs.iter().position(|(r, _)| *r == rel) {
            Some(at) => at,
            None => {
                self.dirs.push((rel, root.sub(Path::new(rel))));
                self.dirs.len() - 1
            }
        };
        match &self.dirs[at].1 {
            Beneath::Found(dir) => Beneath::Found(dir),
            Beneath::Missing => Beneath::Missing,
            Beneath::Unsure => Beneath::Unsure,
        }
    }

    /// A write or a delete changed what is there: look again.
    pub(super) fn changed(&mut self) {
        self.dirs.clear();
    }
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

    /// The folder `cwd`, open with its memo: the one the sweep holds when
    /// it is at that folder, else opened now.
    pub(super) fn open(&self, cwd: &Path) -> std::io::Result<OpenFolder> {
        let held = self.inner().current.take();
        match held {
            Some(open) if open.cwd == cwd => return Ok(open),
            Some(open) => self.put_back(open),
            None => {}
        }
        let opened = OpenFolder::open(cwd, FolderMemo::default())?;
        let memo = self.inner().folders.remove(&opened.real).unwrap_or_default();
        Ok(OpenFolder { memo, ..opened })
    }

    /// A pass over the folder ended: the sweep keeps it open for the next
    /// pass; otherwise its memo is stored and it closes.
    pub(super) fn close(&self, open: OpenFolder) {
        let mut inner = self.inner();
        if inner.sweeping {
            let previous = inner.current.replace(open);
            drop(inner);
            if let Some(previous) = previous {
                self.put_back(previous);
            }
        } else {
            drop(inner);
            self.put_back(open);
        }
    }

    /// Whether memoryd's own file `path` was found right against `want`
    /// and its stamp `now` says it has not changed since.
    pub(super) fn own_unchanged(&self, path: &Path, now: &Stamp, want: u64) -> bool {
        let inner = self.inner();
        inner.own.iter().any(|(p, checked)| p == path && checked.want == want && checked.seen.unchanged(now))
    }

    /// memoryd's own file `path` was found right against `want`, as
    /// `seen` (None: it was not, or it was written).
    pub(super) fn own_checked(&self, path: &Path, seen: Option<Seen>, want: u64) {
        let mut inner = self.inner();
        inner.own.retain(|(p, _)| p != path);
        if let Some(seen) = seen {
            inner.own.push((path.to_path_buf(), Checked { seen, want, content: 0 }));
        }
    }

    /// Whether the file `rel` of the real folder `real` is remembered as
    /// right against `want` and unchanged at `now`.
    #[cfg(test)]
    pub(super) fn unchanged(&self, real: &Path, rel: &str, now: &Stamp, want: u64) -> bool {
        self.inner().folders.get(real).is_some_and(|memo| memo.unchanged(rel, now, want).is_some())
    }

    fn put_back(&self, open: OpenFolder) {
        self.inner().folders.insert(open.real, open.memo);
    }
}

/// A sweep under way; the folder it holds open closes when it ends.
pub struct SweepScope<'m>(&'m SurfaceMemory);

impl Drop for SweepScope<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.inner();
        inner.sweeping = false;
        let current = inner.current.take();
        drop(inner);
        if let Some(open) = current {
            self.0.put_back(open);
        }
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
