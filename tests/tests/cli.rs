//! memoryctl as people expect a CLI to be: completions that load, a man
//! page that renders, `daemon restart`.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

#[test]
fn bash_loads_the_completions_and_man_renders_the_page() {
    let root = Root::new();
    let script = root.dir.path().join("memoryctl.bash");
    let out = root.ctl(&["completions", "bash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(&script, &out.stdout).unwrap();
    let loaded = output_within(
        Command::new("bash").arg("-c").arg(format!("source {} && complete -p memoryctl", script.display())),
        CHILD_LIMIT,
    );
    assert!(loaded.status.success(), "{}", stderr(&loaded));
    assert!(stdout(&loaded).contains("memoryctl"), "{}", stdout(&loaded));
    for shell in ["zsh", "fish"] {
        let out = root.ctl(&["completions", shell]);
        assert!(out.status.success() && out.stdout.len() > 100, "{shell}: {}", stderr(&out));
    }

    let page = root.dir.path().join("memoryctl.1");
    let out = root.ctl(&["manpage"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(&page, &out.stdout).unwrap();
    if !Path::new("/usr/bin/man").exists() {
        eprintln!("SKIPPED the rendering: man is not installed");
        return;
    }
    let rendered = output_within(
        Command::new("/usr/bin/man").env("MANPAGER", "cat").env("MANWIDTH", "80").arg("-l").arg(&page),
        CHILD_LIMIT,
    );
    assert!(rendered.status.success(), "{}", stderr(&rendered));
    let text = stdout(&rendered);
    assert!(text.contains("NAME") && text.contains("SYNOPSIS") && text.contains("memoryctl"), "{text}");
}

#[test]
fn daemon_restart_restarts_in_place_or_starts_one() {
    let root = Root::new();
    // None runs: restart starts one.
    let out = root.ctl(&["daemon", "restart"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("memoryd started (pid "), "{}", stdout(&out));
    let pid = std::fs::read_to_string(&root.paths.pid_file).unwrap().trim().to_owned();
    let before: Value = serde_json::from_slice(&root.ctl(&["status", "--json"]).stdout).unwrap();
    // One runs (started within the second, so its uptime says nothing): it
    // restarts in place, keeping its pid.
    let out = root.ctl(&["--json", "daemon", "restart"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["restarted"], true, "{done}");
    assert_eq!(done["pid"].to_string(), pid, "{done}");
    let status: Value = serde_json::from_slice(&root.ctl(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["pid"].to_string(), pid);
    assert_eq!(status["running"], true);
    assert_ne!(status["startedAt"], before["startedAt"], "a new image: {status}");
}

#[test]
fn events_show_the_last_n_and_those_since_a_time_from_the_daemon_or_the_log() {
    let root = Root::new();
    let boris = root.peer_dir("boris");
    root.write_fleet_map(&[("boris", &boris, &["claude"])]);
    let mut daemon = root.start_daemon();
    let out = root.ctl(&["attach", "--node", "claude-boris", "--session", "s1", "--client-version", "1.0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events = |args: &[&str]| -> Vec<Value> {
        let out = root.ctl(&[&["--json", "events"][..], args].concat());
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    };
    for source in ["daemon", "log"] {
        let all = events(&[]);
        assert!(all.len() >= 2, "{source}: {all:?}");
        let last = events(&["-n", "1"]);
        assert_eq!(last, all[all.len() - 1..], "{source}");
        assert_eq!(events(&["--since", "1h"]), all, "{source}");
        assert!(events(&["--since", "2999-01-01T00:00:00Z"]).is_empty(), "{source}");
        let first_ts = all[0]["ts"].as_str().unwrap();
        assert_eq!(events(&["--since", first_ts]).len(), all.len(), "{source}: at or after");
        if source == "daemon" {
            daemon.signal(nix::sys::signal::Signal::SIGTERM);
            daemon.wait_exit(std::time::Duration::from_secs(10));
        }
    }
    let bad = root.ctl(&["events", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("neither an RFC 3339 time"), "{}", stderr(&bad));
}

#[test]
fn the_commands_memoryctl_prints_can_be_pasted_for_a_root_with_a_space() {
    let root = Root::new();
    let spaced = root.dir.path().join("a root");
    std::fs::create_dir_all(&spaced).unwrap();
    let out = output_within(root.command(&bins().memoryctl).arg("--root").arg(&spaced).arg("status"), CHILD_LIMIT);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("memoryctl --root '{}' init --vault DIR", spaced.display())),
        "{}",
        stderr(&out)
    );
}
