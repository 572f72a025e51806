//! Where everything lives (spec 00).

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Every path memoryd uses under one root `R`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub root: PathBuf,
    pub slot: PathBuf,
    pub plugin_dir: PathBuf,
    pub default_config: PathBuf,
    pub hooks_dir: PathBuf,
    pub launcher: PathBuf,
    pub state: PathBuf,
    pub instance_lock: PathBuf,
    pub pid_file: PathBuf,
    pub fleet_checked: PathBuf,
    pub heartbeat: PathBuf,
    pub default_socket: PathBuf,
    pub provision_lock: PathBuf,
    pub fleet_map: PathBuf,
    pub fleet_births: PathBuf,
    pub surface_state: PathBuf,
    pub store: PathBuf,
    pub events: PathBuf,
    pub logs: PathBuf,
}

impl Paths {
    /// Lays out the paths under `root`, which must be absolute.
    pub fn new(root: PathBuf) -> Paths {
        let plugin_dir = root.join("plugins/memoryd");
        let state = root.join("state/memoryd");
        Paths {
            slot: root.join("memory-provider.json"),
            default_config: plugin_dir.join("memoryd.toml"),
            hooks_dir: plugin_dir.join("hooks"),
            launcher: plugin_dir.join("memoryd-launcher.sh"),
            plugin_dir,
            instance_lock: state.join("memoryd.lock"),
            pid_file: state.join("memoryd.pid"),
            fleet_checked: state.join("fleet.checked"),
            heartbeat: state.join("memoryd.heartbeat"),
            default_socket: state.join("memoryd.sock"),
            provision_lock: state.join("provision.lock"),
            fleet_map: state.join("fleet.json"),
            fleet_births: state.join("fleet.births.json"),
            surface_state: state.join("surfaces.json"),
            store: state.join("store"),
            events: state.join("events.jsonl"),
            logs: root.join("logs/memoryd"),
            state,
            root,
        }
    }

    /// The config file: `MEMORYD_CONFIG` when set, else
    /// `R/plugins/memoryd/memoryd.toml`; and whether it was named
    /// explicitly (then it must exist, while the default may be missing).
    pub fn config_file(&self, var: impl Fn(&str) -> Option<OsString>) -> (PathBuf, bool) {
        match var("MEMORYD_CONFIG").filter(|v| !v.is_empty()) {
            Some(p) => (absolute(Path::new(&p)), true),
            None => (self.default_config.clone(), false),
        }
    }
}

/// No root could be found.
#[derive(Debug, thiserror::Error)]
#[error("no root: pass --root DIR or set MEMORYD_ROOT (HOME is not set either)")]
pub struct NoRoot;

/// The root ladder: `--root` > `MEMORYD_ROOT` > `IAPEER_ROOT` > `$HOME/.iapeer`.
/// A relative root is taken from the current directory.
pub fn resolve_root(flag: Option<&Path>, var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, NoRoot> {
    let non_empty = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let root = flag
        .map(Path::to_path_buf)
        .or_else(|| non_empty("MEMORYD_ROOT"))
        .or_else(|| non_empty("IAPEER_ROOT"))
        .or_else(|| non_empty("HOME").map(|h| h.join(".iapeer")))
        .ok_or(NoRoot)?;
    Ok(absolute(&root))
}

/// An absolute, lexically normalised path (`.` and `..` resolved without
/// touching the filesystem).
pub fn absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")).join(path)
    };
    normalize(&joined)
}

/// Resolves `.` and `..` lexically.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The real location of `path`: the deepest existing ancestor resolved
/// through its symlinks, with the rest appended.
pub fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let path = normalize(path);
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return normalize(&out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return path,
        }
    }
}

/// Longest path a Unix socket address can hold, without its NUL.
pub const SOCKET_PATH_MAX: usize = if cfg!(target_os = "linux") { 107 } else { 103 };

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
    }

    #[test]
    fn root_ladder() {
        let all = [("MEMORYD_ROOT", "/m"), ("IAPEER_ROOT", "/i"), ("HOME", "/h")];
        assert_eq!(resolve_root(Some(Path::new("/f")), env(&all)).unwrap(), PathBuf::from("/f"));
        assert_eq!(resolve_root(None, env(&all)).unwrap(), PathBuf::from("/m"));
        assert_eq!(resolve_root(None, env(&all[1..])).unwrap(), PathBuf::from("/i"));
        assert_eq!(resolve_root(None, env(&all[2..])).unwrap(), PathBuf::from("/h/.iapeer"));
        assert_eq!(
            resolve_root(None, env(&[("MEMORYD_ROOT", ""), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/h/.iapeer")
        );
        assert!(resolve_root(None, env(&[])).is_err());
        assert_eq!(resolve_root(Some(Path::new("/a/./b/../c")), env(&[])).unwrap(), PathBuf::from("/a/c"));
    }

    #[test]
    fn layout() {
        let p = Paths::new(PathBuf::from("/r"));
        assert_eq!(p.state, PathBuf::from("/r/state/memoryd"));
        assert_eq!(p.default_socket, PathBuf::from("/r/state/memoryd/memoryd.sock"));
        assert_eq!(p.config_file(env(&[])), (PathBuf::from("/r/plugins/memoryd/memoryd.toml"), false));
        assert_eq!(p.config_file(env(&[("MEMORYD_CONFIG", "/etc/m.toml")])), (PathBuf::from("/etc/m.toml"), true));
    }

    #[test]
    fn resolves_the_existing_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        assert_eq!(resolve_existing_prefix(&dir.path().join("x/../y/z")), real.join("y/z"));
    }
}
