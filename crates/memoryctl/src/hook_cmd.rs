//! `memoryctl hook <event>`: what the hook shims run inside an agent's
//! session. It always exits 0 and prints nothing unless it has something
//! to deliver: an agent treats exit 2 from a hook as "block this prompt",
//! so a broken memoryd must never stand in an agent's way. Problems go to
//! one line in `R/logs/memoryd/hook-errors.log`.

use memoryd_core::files::FileGuard;
use memoryd_core::paths::Paths;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::SystemTime;

/// The most of the agent's hook JSON we read from stdin.
const MAX_STDIN: u64 = 1 << 20;

/// The hook events the shims call.
pub const EVENTS: [&str; 4] = ["session-start", "prompt-submit", "post-tool", "session-end"];

#[derive(Debug, clap::Args)]
pub struct HookArgs {
    /// session-start, prompt-submit, post-tool or session-end
    event: String,
    /// The agent runtime (claude or codex)
    #[arg(long, value_name = "RUNTIME")]
    runtime: Option<String>,
    /// The surfaces contract version of the shim
    #[arg(long, value_name = "MAJOR.MINOR")]
    client_version: Option<String>,
}

/// Runs the hook: reads the agent's hook JSON and checks it. Session
/// presence and message delivery build on this (spec 40, 50).
pub fn run(paths: &Paths, args: &HookArgs) {
    let mut input = Vec::new();
    let read = std::io::stdin().take(MAX_STDIN).read_to_end(&mut input);
    let problem = if !EVENTS.contains(&args.event.as_str()) {
        Some(format!("unknown hook event `{}`", args.event))
    } else if let Err(e) = read {
        Some(format!("cannot read the hook's stdin: {e}"))
    } else if !input.iter().all(u8::is_ascii_whitespace)
        && let Err(e) = serde_json::from_slice::<serde_json::Value>(&input)
    {
        Some(format!("the hook's stdin is not JSON: {e}"))
    } else {
        None
    };
    if let Some(problem) = problem {
        log_error(paths, &format!("{} ({:?}, runtime {:?})", problem, args.event, args.runtime));
    }
}

/// Appends one line to `hook-errors.log`; failing that, says nothing.
pub fn log_error(paths: &Paths, line: &str) {
    let files = FileGuard::from_env(&[&paths.root]);
    let log: PathBuf = paths.logs.join("hook-errors.log");
    if files.create_dir_all(&paths.logs, 0o700).is_err() {
        return;
    }
    if let Ok(mut file) = files.open_append(&log) {
        let at = humantime::format_rfc3339_seconds(SystemTime::now());
        let _ = writeln!(file, "{at} {line}");
    }
}
