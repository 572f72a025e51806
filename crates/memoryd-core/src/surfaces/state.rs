//! What memoryd remembers about each peer folder it provisioned
//! (`S/surfaces.json`): the runtimes it wired, the files and dirs it
//! created (only those may be deleted by unprovision), the content hash
//! of the Codex hooks.json it last had trusted, and the runtimes memory was
//! turned off for. Read and written under the provision lock.

use crate::files::{FileError, FileGuard};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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
    /// Runtimes `unprovision-peer` turned memory off for: sweeps, repairs
    /// and fragment renders leave them alone (otherwise the next sweep
    /// would wire a removed or switched-off peer again) until
    /// `provision-peer` turns them back on.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub off: BTreeSet<String>,
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
}

impl SurfaceState {
    /// Loads the state; a missing file is an empty state. A malformed one
    /// is logged and replaced: losing it only means that files we created
    /// are kept on unprovision and Codex hook trust is asked for again.
    pub fn load(path: &Path) -> SurfaceState {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "the surface state is malformed; starting afresh");
                SurfaceState::default()
            }),
            Err(_) => SurfaceState::default(),
        }
    }

    /// Writes the state when it changed.
    pub fn save(&self, files: &FileGuard, path: &Path) -> Result<(), FileError> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        files.write_if_changed(path, &bytes, Some(0o600)).map(drop)
    }

    pub fn record(&mut self, folder: &Path) -> &mut PeerRecord {
        self.folders.entry(folder.to_path_buf()).or_default()
    }

    /// Every folder memoryd wired, with its record.
    pub fn folders(&self) -> impl Iterator<Item = (&Path, &PeerRecord)> {
        self.folders.iter().map(|(path, record)| (path.as_path(), record))
    }

    /// Whether memory is turned off for `runtime` in the folder `cwd`.
    pub fn is_off(&self, cwd: &Path, runtime: &str) -> bool {
        // Most states turn nothing off: no path resolution for them.
        self.folders.values().any(|r| !r.off.is_empty())
            && cwd.canonicalize().is_ok_and(|real| self.folders.get(&real).is_some_and(|r| r.off.contains(runtime)))
    }

    /// Records that `unprovision-peer` (`on == false`) or `provision-peer`
    /// (`on == true`) switched `runtime` in `cwd`; a vanished folder has
    /// nothing to switch.
    pub fn switch(&mut self, cwd: &Path, runtime: &str, on: bool) {
        let Ok(real) = cwd.canonicalize() else { return };
        let record = self.record(&real);
        if on {
            record.off.remove(runtime);
        } else {
            record.off.insert(runtime.to_owned());
        }
        self.prune();
    }

    /// Forgets every switch (uninstall: a later `init` wires every peer).
    pub fn forget_switches(&mut self) {
        self.folders.values_mut().for_each(|r| r.off.clear());
        self.prune();
    }

    /// Drops records that hold nothing any more.
    pub fn prune(&mut self) {
        self.folders.retain(|_, r| !r.is_empty());
    }
}
