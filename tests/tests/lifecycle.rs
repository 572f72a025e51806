//! The daemon's life: start, status, single instance, signals, crashes.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::time::Duration;

#[test]
fn status_json_reports_pid_version_uptime_and_heartbeat_age() {
    let root = Root::new();
    let daemon = root.start_daemon();
    let out = root.ctl(&["status", "--json"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["running"], true);
    assert_eq!(s["pid"], daemon.pid());
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptimeSecs"].as_u64().is_some());
    assert!(s["startedAt"].as_str().unwrap().parse::<memoryd_proto::time::Timestamp>().is_ok(), "{s}");
    assert!(s["heartbeatAgeSecs"].as_u64().unwrap() < 60);
    assert_eq!(s["watch"], "on");
    assert_eq!(s["healthy"], true, "{s}");
    assert_eq!(s["root"], root.paths.root.display().to_string());
    let text = root.ctl(&["status"]);
    assert!(text.status.success());
    assert!(stdout(&text).contains(&format!("running (pid {})", daemon.pid())), "{}", stdout(&text));
    // The heartbeat line has the contract's shape.
    let hb = std::fs::read_to_string(&root.paths.heartbeat).unwrap();
    let parts: Vec<_> = hb.trim_end().split(' ').collect();
    assert_eq!(parts.len(), 3, "{hb:?}");
    assert!(parts[0].ends_with('Z') && parts[0].contains('T'), "{hb:?}");
    assert_eq!(parts[2], "watch=on");
    assert!(hb.ends_with('\n'));
}

#[test]
fn a_second_daemon_exits_1_naming_the_first_and_leaves_its_pid_file() {
    let root = Root::new();
    let first = root.start_daemon();
    let mut second = root.spawn_daemon();
    let status = second.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let log = second.log();
    assert!(log.contains(&format!("another memoryd (pid {}) is running", first.pid())), "{log}");
    assert_eq!(std::fs::read_to_string(&root.paths.pid_file).unwrap(), format!("{}\n", first.pid()));
    assert!(root.socket().exists());
    let out = root.ctl(&["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn sigterm_exits_0_and_removes_heartbeat_socket_and_pid_file() {
    let root = Root::new();
    let mut daemon = root.start_daemon();
    assert!(root.paths.heartbeat.exists() && root.paths.pid_file.exists() && root.socket().exists());
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0), "{}", daemon.log());
    assert!(!root.paths.heartbeat.exists());
    assert!(!root.socket().exists());
    assert!(!root.paths.pid_file.exists());
    assert!(root.paths.instance_lock.exists(), "the lock file is never deleted");
    assert!(daemon.log().contains("memoryd up: root="), "{}", daemon.log());
}

#[test]
fn sigint_stops_cleanly_too() {
    let root = Root::new();
    let mut daemon = root.start_daemon();
    daemon.signal(Signal::SIGINT);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(!root.socket().exists());
}

#[test]
fn after_sigkill_the_next_start_succeeds() {
    let root = Root::new();
    let mut daemon = root.start_daemon();
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(Duration::from_secs(10));
    // The dead daemon left its socket and pid file behind.
    assert!(root.socket().exists() && root.paths.pid_file.exists());
    let next = root.start_daemon();
    assert_eq!(std::fs::read_to_string(&root.paths.pid_file).unwrap(), format!("{}\n", next.pid()));
    assert!(next.log().contains("removing the stale socket"), "{}", next.log());
    let out = root.ctl(&["status", "--json"]);
    assert!(out.status.success());
}

#[test]
fn a_panic_leaves_no_socket_or_pid_file() {
    let root = Root::new();
    let mut daemon = root.spawn_daemon_with(|cmd| {
        cmd.env("MEMORYD_TEST_PANIC", "after-ready");
    });
    let status = daemon.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let log = daemon.log();
    assert!(log.contains("memoryd up:") && log.contains("injected panic"), "{log}");
    assert!(!root.socket().exists(), "socket left behind");
    assert!(!root.paths.pid_file.exists(), "pid file left behind");
    // The heartbeat stays: this was not a clean stop.
    assert!(root.paths.heartbeat.exists());
    root.start_daemon();
}

#[test]
fn status_without_a_daemon_exits_1_with_one_sentence() {
    let root = Root::new();
    let out = root.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("memoryd is not running (start it with: memoryctl --root") && err.contains("daemon start"),
        "{err}"
    );
    assert!(stdout(&out).contains("not running"));
    let json = root.ctl(&["status", "--json"]);
    assert_eq!(json.status.code(), Some(1));
    let s: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(s["running"], false);
    assert_eq!(s["healthy"], false);
}

#[test]
fn daemon_start_and_stop_a_detached_daemon() {
    let root = Root::new();
    let out = root.ctl(&["daemon", "start"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let pid: u32 = std::fs::read_to_string(&root.paths.pid_file).unwrap().trim().parse().unwrap();
    assert!(stdout(&out).contains(&format!("memoryd started (pid {pid})")), "{}", stdout(&out));
    // Its own session: setsid made it a session leader.
    assert_eq!(nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap().as_raw(), pid as i32);
    let again = root.ctl(&["daemon", "start"]);
    assert!(again.status.success());
    assert!(stdout(&again).contains("already running"));
    let stop = root.ctl(&["daemon", "stop"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert!(stdout(&stop).contains("stopped"), "{}", stdout(&stop));
    assert!(!root.paths.pid_file.exists() && !root.socket().exists() && !root.paths.heartbeat.exists());
    let none = root.ctl(&["daemon", "stop"]);
    assert!(none.status.success());
    assert!(stdout(&none).contains("not running"));
}

#[test]
fn daemon_start_reports_why_memoryd_did_not_start() {
    let root = Root::bare();
    root.write_config("mcp_port = 0\nsweep_intervl = \"5m\"\n");
    let out = root.ctl(&["daemon", "start"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("memoryctl daemon start: memoryd did not start: config"), "{err}");
    assert!(err.contains("line 2") && err.contains("sweep_intervl"), "{err}");
}

#[test]
fn shutdown_over_the_socket_stops_the_daemon() {
    let root = Root::new();
    let mut daemon = root.start_daemon();
    let out = root.ctl(&["shutdown"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let again = root.ctl(&["shutdown"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).starts_with("memoryctl shutdown: memoryd is not running"), "{}", stderr(&again));
}

#[test]
fn an_unsafe_state_dir_is_refused_with_the_fix() {
    let root = Root::new();
    std::fs::create_dir_all(&root.paths.state).unwrap();
    std::fs::set_permissions(&root.paths.state, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut daemon = root.spawn_daemon();
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(1));
    assert!(daemon.log().contains(&format!("fix with: chmod 700 {}", root.paths.state.display())), "{}", daemon.log());
}
