//! The hook shims `R/plugins/memoryd/hooks/memoryd.<runtime>.<event>.sh`:
//! fail-open `#!/bin/sh` scripts that hand the agent's hook to
//! `memoryctl hook`. Every hook entry we write points at one of them.

use crate::host::files::{FileError, FileGuard, WriteOutcome};
use crate::host::stamp::{Seen, Stamp};
use crate::surfaces::{SurfaceMemory, memory};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The surfaces contract version (`MAJOR.MINOR` of the shim format). The
/// shims report it as their client version, so a peer still wired by an
/// older memoryd shows up as such until a sweep rewrites its shims.
pub const CLIENT_VERSION: &str = "1.0";

/// One hook event: the shim's event name, the agents' event name, the
/// explicit timeout (seconds) and Claude's tool matcher.
#[derive(Debug, Clone, Copy)]
pub struct HookEvent {
    pub shim: &'static str,
    pub agent: &'static str,
    pub timeout: u64,
    pub claude_matcher: Option<&'static str>,
}

pub const EVENTS: [HookEvent; 5] = [
    HookEvent { shim: "session-start", agent: "SessionStart", timeout: 10, claude_matcher: None },
    HookEvent { shim: "prompt-submit", agent: "UserPromptSubmit", timeout: 5, claude_matcher: None },
    HookEvent {
        shim: "post-tool",
        agent: "PostToolUse",
        timeout: 5,
        claude_matcher: Some("Write|Edit|MultiEdit|Bash"),
    },
    HookEvent { shim: "session-end", agent: "SessionEnd", timeout: 2, claude_matcher: None },
    // Both runtimes let a Stop hook block the stop with a reason the agent
    // then reads (docs/hooks.md): an urgent message reaches it before it
    // goes idle.
    HookEvent { shim: "stop", agent: "Stop", timeout: 5, claude_matcher: None },
];

/// The runtimes that get surfaces.
pub const SESSION_RUNTIMES: [&str; 2] = ["claude", "codex"];

pub fn shim_path(hooks_dir: &Path, runtime: &str, event: &HookEvent) -> PathBuf {
    hooks_dir.join(format!("memoryd.{runtime}.{}.sh", event.shim))
}

/// The shim's bytes: exec the absolute `memoryctl` with the root, or exit 0
/// when it is missing so a broken install never blocks an agent.
pub fn render(memoryctl: &Path, root: &Path, runtime: &str, event: &HookEvent) -> String {
    format!(
        "#!/bin/sh\n\
         # memoryd hook shim ({runtime} {event}), surfaces contract {CLIENT_VERSION}.\n\
         # Written by memoryd; a sweep repairs any edit.\n\
         bin={bin}\n\
         [ -x \"$bin\" ] || exit 0\n\
         exec \"$bin\" --root {root} hook {event} --runtime {runtime} --client-version {CLIENT_VERSION}\n",
        event = event.shim,
        bin = sh_quote(&memoryctl.to_string_lossy()),
        root = sh_quote(&root.to_string_lossy()),
    )
}

/// The shims' mode.
const SHIM_MODE: u32 = 0o755;

/// Writes every shim of every session runtime (0755, byte for byte; a lost
/// exec bit is drift). How many were (re)written. With `memory`, a shim
/// whose stamp is the one it had when last found right is not read (a
/// chmod moves the ctime, so the mode is checked too).
pub fn write_all(
    files: &FileGuard,
    hooks_dir: &Path,
    memoryctl: &Path,
    root: &Path,
    memory: Option<&SurfaceMemory>,
) -> Result<usize, FileError> {
    files.create_dir_all(hooks_dir, SHIM_MODE)?;
    let mut written = 0;
    for runtime in SESSION_RUNTIMES {
        for event in &EVENTS {
            let bytes = render(memoryctl, root, runtime, event);
            let path = shim_path(hooks_dir, runtime, event);
            let want = memory::fnv_from(memory::fnv(bytes.as_bytes()), &SHIM_MODE.to_le_bytes());
            let checked_at = SystemTime::now();
            // Followed as the read follows it: a link's target is what runs.
            let stamp = memory.and_then(|_| std::fs::metadata(&path).ok()).map(|meta| Stamp::of(&meta));
            if let (Some(memory), Some(stamp)) = (memory, &stamp)
                && memory.own_unchanged(&path, stamp, want)
            {
                continue;
            }
            let outcome = files.write_if_changed(&path, bytes.as_bytes(), Some(SHIM_MODE))?;
            if outcome == WriteOutcome::Written {
                written += 1;
            }
            if let Some(memory) = memory {
                let right = stamp.filter(|_| outcome == WriteOutcome::Unchanged);
                memory.own_checked(&path, right.map(|stamp| Seen::new(stamp, checked_at)), want);
            }
        }
    }
    Ok(written)
}

/// A word for `sh`: bare when it holds only safe characters, else single
/// quotes (a `'` inside becomes `'\''`).
pub fn sh_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%=,".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;
    use crate::host::egress::Egress;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(sh_quote("/usr/bin/memoryctl"), "/usr/bin/memoryctl");
        assert_eq!(sh_quote("/a b/it's"), r"'/a b/it'\''s'");
    }

    #[test]
    fn a_shim_execs_memoryctl_with_stdin_and_fails_open_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = dir.path().join("hooks dir");
        let fake = dir.path().join("bin/memory ctl");
        std::fs::create_dir_all(fake.parent().unwrap()).unwrap();
        std::fs::write(&fake, "#!/bin/sh\necho \"$@\"\ncat\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let files = FileGuard::live();
        let memory = SurfaceMemory::default();
        let write = |memory| write_all(&files, &hooks, &fake, Path::new("/r oot"), memory).unwrap();
        assert_eq!(write(None), 10);
        assert_eq!(write(None), 0, "unchanged shims stay");
        let shim = shim_path(&hooks, "codex", &EVENTS[1]);
        assert_eq!(std::fs::metadata(&shim).unwrap().permissions().mode() & 0o777, 0o755);
        // Past the racy window a sweep remembers them; a lost exec bit (the
        // ctime moves) is still drift.
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(write(Some(&memory)), 0);
        assert_eq!(write(Some(&memory)), 0);
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(write(Some(&memory)), 1, "a lost exec bit behind a remembered stamp");
        assert_eq!(std::fs::metadata(&shim).unwrap().permissions().mode() & 0o777, 0o755);
        let sh = PathBuf::from("/bin/sh");
        let egress = Egress::refusing(vec![sh.clone()]);
        let arg = [shim.to_str().unwrap()];
        let out = egress.run(&sh, &arg, Some(b"{\"x\":1}"), Duration::from_secs(5)).unwrap();
        assert!(out.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "--root /r oot hook prompt-submit --runtime codex --client-version 1.0\n{\"x\":1}"
        );
        std::fs::remove_file(&fake).unwrap();
        let out = egress.run(&sh, &arg, Some(b"{}"), Duration::from_secs(5)).unwrap();
        assert!(out.success() && out.stdout.is_empty(), "fail-open when memoryctl is missing");
    }
}
