//! What memoryd remembers about each peer folder it provisioned
//! (`S/surfaces.json`): the runtimes it wired, the files and dirs it
//! created (only those may be deleted by unprovision), the content hash
//! of the Codex hooks.json it last had trusted, and the runtimes memory was
//! turned off for. Read and written under the provision lock.

use crate::host::files::{FileError, FileGuard};
use crate::host::stamp::{Seen, Stamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRecord {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub runtimes: BTreeSet<String>,
    /// Paths relative to the real peer folder.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub created: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_hooks: Option<String>,
}

impl PeerRecord {
    fn is_empty(&self) -> bool {
        *self == PeerRecord::default()
    }
}

/// Every provisioned folder, keyed by its real path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurfaceState {
    folders: BTreeMap<PathBuf, PeerRecord>,
    /// Per real folder, the runtimes `unprovision-peer` turned memory off
    /// for: sweeps, repairs and fragment renders leave them alone
    /// (otherwise the next sweep would wire a removed or switched-off peer
    /// again) until `provision-peer` turns them back on. Apart from the
    /// records so that "nothing is off", the usual case, costs nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    off: BTreeMap<PathBuf, BTreeSet<String>>,
    /// What may have changed since the state was read or written.
    #[serde(skip)]
    touched: Touched,
}

/// The folders whose records were handed out for change, or `all`: saving
/// compares only those with the saved state, not every record of the fleet.
/// Bookkeeping, not state: equal whatever it holds.
#[derive(Debug, Clone, Default)]
struct Touched {
    folders: BTreeSet<PathBuf>,
    all: bool,
}

impl PartialEq for Touched {
    fn eq(&self, _: &Touched) -> bool {
        true
    }
}

impl Eq for Touched {}

/// `S/surfaces.json` as this operation last read or wrote it. A sweep
/// takes the lock batch by batch; it parses the file again only when
/// another writer changed it in between, and writes it only when the state
/// changed (parsing and writing a 10,000-folder state at every batch cost a
/// no-op sweep a fifth of its time).
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    /// The file's bytes when last read or written (`None`: no file).
    bytes: Option<Vec<u8>>,
    /// The file's stamp when last read or written.
    seen: Option<Seen>,
    /// What those bytes say.
    saved: SurfaceState,
    /// The working copy.
    pub state: SurfaceState,
}

impl StateFile {
    /// Reads the state; a missing file is an empty state. A malformed one
    /// is logged and taken as empty: losing it only means that files we
    /// created are kept on unprovision and Codex hook trust is asked for
    /// again.
    pub fn load(path: &Path) -> StateFile {
        let mut file = StateFile {
            path: path.to_path_buf(),
            bytes: None,
            seen: None,
            saved: SurfaceState::default(),
            state: SurfaceState::default(),
        };
        file.refresh();
        file
    }

    /// Catches up with the file (call it with the lock held): kept as is
    /// when its stamp, or else its bytes, are those last seen.
    pub fn refresh(&mut self) {
        let read_at = SystemTime::now();
        let stamp = std::fs::metadata(&self.path).ok().map(|meta| Stamp::of(&meta));
        if let (Some(seen), Some(stamp)) = (&self.seen, &stamp)
            && seen.unchanged(stamp)
        {
            return;
        }
        self.seen = stamp.map(|stamp| Seen::new(stamp, read_at));
        let bytes = std::fs::read(&self.path).ok();
        if bytes == self.bytes {
            return;
        }
        self.saved = bytes.as_deref().map_or_else(SurfaceState::default, |b| {
            serde_json::from_slice(b).unwrap_or_else(|e| {
                tracing::warn!(path = %self.path.display(), error = %e, "the surface state is malformed; starting afresh");
                SurfaceState::default()
            })
        });
        self.state = self.saved.clone();
        self.bytes = bytes;
    }

    /// Writes the state when it changed: compares the records handed out
    /// since the last save, not the whole state.
    pub fn save(&mut self, files: &FileGuard) -> Result<(), FileError> {
        let (state, saved) = (&self.state, &self.saved);
        let changed = if state.touched.all {
            state != saved
        } else {
            state.touched.folders.iter().any(|folder| state.folders.get(folder) != saved.folders.get(folder))
        };
        if !changed {
            self.state.touched = Touched::default();
            return Ok(());
        }
        let mut bytes = serde_json::to_vec_pretty(&self.state).unwrap_or_default();
        bytes.push(b'\n');
        let written_at = SystemTime::now();
        files.write_if_changed(&self.path, &bytes, Some(0o600))?;
        self.seen = std::fs::metadata(&self.path).ok().map(|meta| Seen::new(Stamp::of(&meta), written_at));
        self.bytes = Some(bytes);
        self.state.touched = Touched::default();
        self.saved = self.state.clone();
        Ok(())
    }
}

impl SurfaceState {
    pub fn record(&mut self, folder: &Path) -> &mut PeerRecord {
        if !self.touched.all && !self.touched.folders.contains(folder) {
            self.touched.folders.insert(folder.to_path_buf());
        }
        self.folders.entry(folder.to_path_buf()).or_default()
    }

    /// The record of `folder`, to look at (not marked for the save's compare).
    pub fn get(&self, folder: &Path) -> Option<&PeerRecord> {
        self.folders.get(folder)
    }

    /// Every folder memoryd wired, with its record.
    pub fn folders(&self) -> impl Iterator<Item = (&Path, &PeerRecord)> {
        self.folders.iter().map(|(path, record)| (path.as_path(), record))
    }

    /// Whether memory is turned off for `runtime` in the folder `cwd`.
    pub fn is_off(&self, cwd: &Path, runtime: &str) -> bool {
        !self.off.is_empty()
            && cwd.canonicalize().is_ok_and(|real| self.off.get(&real).is_some_and(|r| r.contains(runtime)))
    }

    /// Records that `unprovision-peer` (`on == false`) or `provision-peer`
    /// (`on == true`) switched `runtime` in `cwd`; a vanished folder has
    /// nothing to switch.
    pub fn switch(&mut self, cwd: &Path, runtime: &str, on: bool) {
        let Ok(real) = cwd.canonicalize() else { return };
        self.touched.all = true;
        if on {
            if let Some(off) = self.off.get_mut(&real) {
                off.remove(runtime);
                if off.is_empty() {
                    self.off.remove(&real);
                }
            }
        } else {
            self.off.entry(real).or_default().insert(runtime.to_owned());
        }
    }

    /// Forgets every switch (uninstall: a later `init` wires every peer).
    pub fn forget_switches(&mut self) {
        self.touched.all = true;
        self.off.clear();
    }

    /// Drops records that hold nothing any more.
    pub fn prune(&mut self) {
        self.touched.all = true;
        self.folders.retain(|_, r| !r.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_state_follows_another_writer_and_is_written_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (path, peer) = (dir.path().join("surfaces.json"), dir.path().to_path_buf());
        let files = FileGuard::live();
        let mut mine = StateFile::load(&path);
        mine.state.record(&peer).runtimes.insert("claude".into());
        mine.save(&files).unwrap();
        let written = std::fs::metadata(&path).unwrap().modified().unwrap();

        // Unchanged: not written again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        mine.refresh();
        mine.save(&files).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), written);

        // Another writer between two batches: the next refresh sees its work.
        let mut theirs = StateFile::load(&path);
        theirs.state.switch(&peer, "codex", false);
        theirs.save(&files).unwrap();
        assert!(!mine.state.is_off(&peer, "codex"));
        mine.refresh();
        assert!(mine.state.is_off(&peer, "codex"));
        assert!(mine.state.folders().any(|(_, r)| r.runtimes.contains("claude")));
        mine.state.switch(&peer, "codex", true);
        mine.save(&files).unwrap();
        assert!(!StateFile::load(&path).state.is_off(&peer, "codex"));
    }
}
