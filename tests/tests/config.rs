//! Configuration: layering, errors that name the key, reload.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use nix::sys::signal::Signal;
use serde_json::json;
use std::time::Duration;

#[test]
fn a_bad_config_exits_2_naming_key_file_and_line() {
    let root = Root::bare();
    root.write_config("mcp_port = 0\n\n[presence]\noffline_after = \"soon\"\n");
    let mut daemon = root.spawn_daemon();
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(2));
    let log = daemon.log();
    let line = log.lines().find(|l| l.starts_with("memoryd: ")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(&root.paths.default_config.display().to_string()), "{line}");
    assert!(line.contains("line 4") && line.contains("presence.offline_after"), "{line}");
    assert!(!root.paths.pid_file.exists());
    let check = root.ctl(&["config", "check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(stderr(&check).contains("presence.offline_after"));
}

#[test]
fn a_bad_flag_or_env_value_is_named_too() {
    let root = Root::new();
    let mut by_flag = root.spawn_daemon_with(|cmd| {
        cmd.args(["--mcp-port", "99999"]);
    });
    assert_eq!(by_flag.wait_exit(Duration::from_secs(10)).code(), Some(2));
    assert!(by_flag.log().contains("flag --mcp-port: `mcp_port`: 99999 is not a port"), "{}", by_flag.log());
    let mut by_env = root.spawn_daemon_with(|cmd| {
        cmd.env("MEMORYD_HEARTBEAT_INTERVAL", "often");
    });
    assert_eq!(by_env.wait_exit(Duration::from_secs(10)).code(), Some(2));
    assert!(by_env.log().contains("environment variable MEMORYD_HEARTBEAT_INTERVAL"), "{}", by_env.log());
    let bad_usage = root.ctl(&["status", "--connect-timeout", "soon"]);
    assert_eq!(bad_usage.status.code(), Some(2));
}

#[test]
fn config_check_prints_the_effective_values_with_env_over_file() {
    let root = Root::new();
    root.write_config("mcp_port = 0\nsweep_interval = \"2m\"\n[presence]\nmin_client_version = \"1.2\"\n");
    let out = output_within(
        root.command(&bins().memoryctl)
            .env("MEMORYD_SWEEP_INTERVAL", "3m")
            .arg("--root")
            .arg(&root.paths.root)
            .args(["config", "check", "--json"]),
        CHILD_LIMIT,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["config"]["sweep_interval"], "3m");
    assert_eq!(v["config"]["presence.min_client_version"], "1.2");
    assert_eq!(v["config"]["heartbeat_interval"], "30s");
}

/// Whether, with one client served, a second one is refused as busy.
fn busy_at_two(root: &Root) -> bool {
    let mut a = Conn::open(&root.socket()).unwrap();
    if a.hello().get("result").is_none() {
        // A connection from the previous probe is still being released.
        return false;
    }
    let mut b = Conn::open(&root.socket()).unwrap();
    kind(&b.hello()) == "server.busy"
}

#[test]
fn reload_applies_a_good_config_and_keeps_the_old_one_when_bad() {
    let root = Root::new();
    let daemon = root.start_daemon();
    assert!(!busy_at_two(&root));
    std::thread::sleep(Duration::from_millis(100));
    // memoryctl reload applies a new limit at once.
    root.write_config("mcp_port = 0\nmax_connections = 1\n");
    let out = root.ctl(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("config reloaded from"));
    assert!(eventually(|| busy_at_two(&root)));
    // A bad config is refused by name and the running one kept.
    root.write_config("mcp_port = 0\nmax_connections = 0\n");
    let out = root.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("max_connections") && stderr(&out).contains("the running configuration is kept"),
        "{}",
        stderr(&out)
    );
    assert!(eventually(|| busy_at_two(&root)), "the old limit still holds");
    // SIGHUP re-reads it the same way.
    daemon.signal(Signal::SIGHUP);
    assert!(eventually(|| daemon.log().contains("SIGHUP: the new config is refused")), "{}", daemon.log());
    root.write_config("mcp_port = 0\nmax_connections = 8\n");
    daemon.signal(Signal::SIGHUP);
    assert!(eventually(|| !busy_at_two(&root)), "{}", daemon.log());
    let mut conn = Conn::open(&root.socket()).unwrap();
    conn.hello();
    assert_eq!(conn.request("host.reload", json!({}))["result"]["reloaded"], true);
}
