//! The slot `R/memory-provider.json` (spec 20): how the iapeer core finds
//! its memory provider, its heartbeat and its provision commands.
//!
//! A slot of another provider, or one we cannot read, is never
//! overwritten or removed: we never clobber what we cannot read.

use crate::host::files::{FileError, FileGuard};
use crate::host::lock::ProvisionGuard;
use crate::host::paths::Paths;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::SystemTime;

pub const PROVIDER: &str = "memoryd";

/// One command the core runs, `{placeholders}` substituted per argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandBlock {
    pub command: String,
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    pub provider: String,
    pub package: String,
    pub version: String,
    pub registered_at: String,
    pub heartbeat: String,
    pub provision: CommandBlock,
    pub unprovision: CommandBlock,
}

/// What the slot file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// No slot file: the empty slot, a normal state.
    Empty,
    Ours(Slot),
    /// Another provider's slot, named.
    Foreign(String),
    /// Present but not readable or not a slot; the sentence says why.
    Unreadable(String),
}

impl SlotState {
    pub fn read(path: &Path) -> SlotState {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return SlotState::Empty,
            Err(e) => return SlotState::Unreadable(e.to_string()),
        };
        let value: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return SlotState::Unreadable(e.to_string()),
        };
        match value.get("provider").and_then(|p| p.as_str()) {
            Some(PROVIDER) => match serde_json::from_value(value) {
                Ok(slot) => SlotState::Ours(slot),
                Err(e) => SlotState::Unreadable(e.to_string()),
            },
            Some(other) => SlotState::Foreign(other.to_owned()),
            None => SlotState::Unreadable("it names no provider".to_owned()),
        }
    }

    /// The refusal for a step that would touch a foreign or unreadable
    /// slot; None when the slot is ours or empty.
    pub fn refusal(&self, path: &Path) -> Option<String> {
        match self {
            SlotState::Foreign(provider) => Some(format!(
                "the slot {} belongs to `{provider}`; memoryd never overwrites another provider's slot",
                path.display()
            )),
            SlotState::Unreadable(why) => Some(format!("slot unreadable: {why}; fix or remove {}", path.display())),
            SlotState::Empty | SlotState::Ours(_) => None,
        }
    }
}

/// The provision and unprovision commands, each carrying `--root`.
fn command_block(memoryctl: &Path, root: &Path, verb: &str) -> CommandBlock {
    let mut args = vec!["--root".to_owned(), root.display().to_string(), verb.to_owned()];
    for (flag, placeholder) in [
        ("--cwd", "{cwd}"),
        ("--runtime", "{runtime}"),
        ("--personality", "{personality}"),
        ("--occasion", "{occasion}"),
    ] {
        args.extend([flag.to_owned(), placeholder.to_owned()]);
    }
    CommandBlock { command: memoryctl.display().to_string(), args }
}

/// The slot this install declares.
pub fn expected(paths: &Paths, memoryctl: &Path, now: SystemTime) -> Slot {
    Slot {
        provider: PROVIDER.to_owned(),
        package: "memoryd".to_owned(),
        version: crate::VERSION.to_owned(),
        registered_at: humantime::format_rfc3339_seconds(now).to_string(),
        heartbeat: paths.heartbeat.display().to_string(),
        provision: command_block(memoryctl, &paths.root, "provision-peer"),
        unprovision: command_block(memoryctl, &paths.root, "unprovision-peer"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// Same version, heartbeat, package and commands: `registeredAt` kept.
    Identical,
    Written,
}

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    File(#[from] FileError),
}

/// Declares the slot with this version and these commands.
pub fn declare(
    _held: &ProvisionGuard<'_>,
    files: &FileGuard,
    paths: &Paths,
    memoryctl: &Path,
    now: SystemTime,
) -> Result<Declared, SlotError> {
    let state = SlotState::read(&paths.slot);
    if let Some(refusal) = state.refusal(&paths.slot) {
        return Err(SlotError::Refused(refusal));
    }
    let mut want = expected(paths, memoryctl, now);
    if let SlotState::Ours(current) = state {
        want.registered_at = current.registered_at.clone();
        if current == want {
            return Ok(Declared::Identical);
        }
    }
    let mut bytes = serde_json::to_vec_pretty(&want).unwrap_or_default();
    bytes.push(b'\n');
    files.write_atomic(&paths.slot, &bytes, Some(0o644))?;
    Ok(Declared::Written)
}

/// Removes our slot (never another provider's, never one we cannot read);
/// whether there was one.
pub fn remove(_held: &ProvisionGuard<'_>, files: &FileGuard, paths: &Paths) -> Result<bool, SlotError> {
    let state = SlotState::read(&paths.slot);
    if let Some(refusal) = state.refusal(&paths.slot) {
        return Err(SlotError::Refused(refusal));
    }
    Ok(files.remove_file(&paths.slot)?)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;
    use crate::host::lock::ProvisionLock;
    use std::time::Duration;

    #[test]
    fn declares_keeps_identical_and_refuses_foreign_or_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("root"));
        std::fs::create_dir_all(&paths.root).unwrap();
        let files = FileGuard::live();
        let lock = ProvisionLock::open(&files, &dir.path().join("p.lock")).unwrap();
        let held = lock.acquire("t", Duration::ZERO, &|| false).unwrap();
        let ctl = Path::new("/opt/bin/memoryctl");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(declare(&held, &files, &paths, ctl, t0).unwrap(), Declared::Written);
        let written = std::fs::read_to_string(&paths.slot).unwrap();
        let SlotState::Ours(slot) = SlotState::read(&paths.slot) else { panic!("{written}") };
        assert_eq!(slot.provision.command, "/opt/bin/memoryctl");
        assert_eq!(
            slot.provision.args[..3],
            ["--root".to_owned(), paths.root.display().to_string(), "provision-peer".to_owned()]
        );
        assert!(slot.unprovision.args.contains(&"{occasion}".to_owned()));
        assert!(written.ends_with("}\n") && written.contains("\n  \"provider\": \"memoryd\""));

        let later = t0 + Duration::from_secs(60);
        assert_eq!(declare(&held, &files, &paths, ctl, later).unwrap(), Declared::Identical);
        assert_eq!(std::fs::read_to_string(&paths.slot).unwrap(), written, "registeredAt kept");
        assert_eq!(declare(&held, &files, &paths, Path::new("/new/memoryctl"), later).unwrap(), Declared::Written);

        for foreign in [r#"{"provider":"mem0"}"#, "{not json"] {
            std::fs::write(&paths.slot, foreign).unwrap();
            let e = declare(&held, &files, &paths, ctl, later).unwrap_err();
            assert!(matches!(e, SlotError::Refused(_)), "{e}");
            assert_eq!(std::fs::read_to_string(&paths.slot).unwrap(), foreign, "never clobbered");
        }
        assert!(SlotState::read(&paths.slot).refusal(&paths.slot).unwrap().contains("fix or remove"));
    }
}
