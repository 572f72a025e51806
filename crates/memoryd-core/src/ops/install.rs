//! The binaries an install runs: `memoryd`, `memoryctl` and `iapeer`.
//!
//! Every command we generate names them by absolute path: the iapeer core
//! runs our provision command with launchd's minimal PATH, where a bare
//! name is not found.

use crate::config::Config;
use std::path::{Path, PathBuf};

/// The absolute `memoryd` and `memoryctl` of this install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub memoryd: PathBuf,
    pub memoryctl: PathBuf,
}

impl Binaries {
    /// `memoryd_bin` / `memoryctl_bin` from the config, else the running
    /// binary and its sibling. `running` is the canonical path of this
    /// process's binary, taken at start-up: a binary replaced on disk can
    /// no longer name itself (Linux says `… (deleted)`).
    pub fn resolve(config: &Config, running: &Path) -> Binaries {
        Binaries {
            memoryd: config.memoryd_bin.clone().unwrap_or_else(|| running.with_file_name("memoryd")),
            memoryctl: config.memoryctl_bin.clone().unwrap_or_else(|| running.with_file_name("memoryctl")),
        }
    }

    /// The canonical path of the running binary.
    pub fn running() -> std::io::Result<PathBuf> {
        std::env::current_exe()?.canonicalize()
    }
}

/// Whether the root whose config file is `config_file` holds a memoryd
/// install.
///
/// The rule: a root is an install when its config file exists
/// (`R/plugins/memoryd/memoryd.toml`, or the file `MEMORYD_CONFIG` names).
/// `memoryctl init` writes that file before anything else and `uninstall`
/// keeps it, so it is there exactly when someone set memoryd up on the
/// root. The state dir proves nothing: a command run against a mistyped
/// root can create it. A file that cannot be looked at (a directory closed
/// to this user) is not taken for a missing one.
pub fn is_installed(config_file: &Path) -> bool {
    match std::fs::metadata(config_file) {
        Ok(_) => true,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory),
    }
}

/// The sentence for a root that holds no install.
pub fn missing(root: &Path) -> String {
    let quoted = crate::surfaces::shims::sh_quote(&root.to_string_lossy());
    format!(
        "there is no memoryd install at {} (no config file); make one with: memoryctl --root {quoted} init --vault DIR, \
         or check --root",
        root.display()
    )
}

/// The launcher the iapeer notifier's watcher runs to relaunch memoryd.
pub fn launcher_script(memoryd: &Path, root: &Path) -> String {
    use crate::surfaces::shims::sh_quote;
    format!(
        "#!/bin/sh\n\
         # memoryd launcher: the iapeer notifier's watcher runs it to relaunch memoryd.\n\
         # Written by memoryd update; verify --repair restores it.\n\
         exec {} --root {} \"$@\"\n",
        sh_quote(&memoryd.to_string_lossy()),
        sh_quote(&root.to_string_lossy())
    )
}

/// Whether `path` is an executable file; the error says what is wrong.
pub fn check_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(format!("{} is not an executable file", path.display())),
        Err(e) => Err(format!("{} is missing ({e})", path.display())),
    }
}

/// The `iapeer` binary: `iapeer_bin`, else (outside the test sandbox) the
/// first `iapeer` in PATH, then `~/.local/bin/iapeer`. The error is the
/// sentence to show.
pub fn iapeer_bin(config: &Config, sandboxed: bool) -> Result<PathBuf, String> {
    if let Some(bin) = &config.iapeer_bin {
        return Ok(bin.clone());
    }
    if sandboxed {
        return Err("iapeer_bin is not set, and the test sandbox never looks iapeer up in PATH; \
                    pass --iapeer-bin or set MEMORYD_IAPEER_BIN"
            .to_owned());
    }
    let in_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("iapeer")).collect::<Vec<_>>())
        .unwrap_or_default();
    let local = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/bin/iapeer"));
    in_path.into_iter().chain(local).find(|p| p.is_absolute() && p.is_file()).ok_or_else(|| {
        "iapeer was not found in PATH or ~/.local/bin; set iapeer_bin in the config \
         (memoryctl init --iapeer-bin PATH)"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_wins_then_the_siblings_of_the_running_binary() {
        let mut config = Config::default();
        let found = Binaries::resolve(&config, Path::new("/opt/m/bin/memoryctl"));
        assert_eq!(found.memoryd, PathBuf::from("/opt/m/bin/memoryd"));
        assert_eq!(found.memoryctl, PathBuf::from("/opt/m/bin/memoryctl"));
        config.memoryd_bin = Some(PathBuf::from("/usr/bin/memoryd"));
        assert_eq!(Binaries::resolve(&config, Path::new("/x/memoryctl")).memoryd, PathBuf::from("/usr/bin/memoryd"));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // the fixture is written directly
    fn an_install_is_a_root_whose_config_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("plugins/memoryd/memoryd.toml");
        assert!(!is_installed(&config), "an empty root");
        assert!(!is_installed(&dir.path().join("a-file/memoryd.toml")), "a root that is not a dir");
        std::fs::write(dir.path().join("a-file"), "x").unwrap();
        assert!(!is_installed(&dir.path().join("a-file/memoryd.toml")), "a path through a file");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, "").unwrap();
        assert!(is_installed(&config));
        assert!(missing(dir.path()).contains("init --vault DIR"));
    }

    #[test]
    fn the_sandbox_never_resolves_iapeer_through_path() {
        let mut config = Config::default();
        assert!(iapeer_bin(&config, true).unwrap_err().contains("--iapeer-bin"));
        config.iapeer_bin = Some(PathBuf::from("/t/iapeer"));
        assert_eq!(iapeer_bin(&config, true).unwrap(), PathBuf::from("/t/iapeer"));
    }
}
