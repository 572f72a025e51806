//! The supervision contract without a running systemd.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use nix::sys::signal::Signal;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

fn recv(socket: &UnixDatagram, limit: Duration) -> Option<String> {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    socket.recv(&mut buf).ok().map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn notify_socket_sees_ready_then_watchdog_pings_then_stopping() {
    let root = Root::new();
    root.write_config("mcp_port = 0\nheartbeat_interval = \"200ms\"\n");
    let notify_path = root.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut daemon = root.spawn_daemon_with(|cmd| {
        cmd.env("NOTIFY_SOCKET", &notify_path).env("WATCHDOG_USEC", "2000000");
    });
    // STATUS= lines may come first: the start-up sweep runs meanwhile.
    let mut statuses = Vec::new();
    let ready = loop {
        let msg = recv(&notify, Duration::from_secs(20)).expect("READY=1");
        match msg.strip_prefix("STATUS=") {
            Some(status) => statuses.push(status.to_owned()),
            None => break msg,
        }
    };
    assert!(ready.starts_with("READY=1\nSTATUS=serving"), "{ready:?}");
    // The sockets are bound before READY=1.
    assert!(root.socket().exists());
    let mut conn = Conn::open(&root.socket()).unwrap();
    assert!(conn.hello()["result"].is_object());
    let start = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        let msg = recv(&notify, Duration::from_secs(5)).expect("WATCHDOG=1 at the heartbeat cadence");
        match msg.strip_prefix("STATUS=") {
            Some(status) => statuses.push(status.to_owned()),
            None => {
                assert_eq!(msg, "WATCHDOG=1");
                pings += 1;
            }
        }
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    // The start-up sweep says how it went (this root has no fleet map).
    assert!(
        statuses.iter().any(|s| s.starts_with("serving; the last sweep failed: there is no fleet map")),
        "{statuses:?}"
    );
    // A reload is framed by RELOADING=1 and READY=1.
    daemon.signal(Signal::SIGHUP);
    let mut reload = Vec::new();
    while let Some(msg) = recv(&notify, Duration::from_secs(5)) {
        if msg == "RELOADING=1" || msg == "READY=1" {
            reload.push(msg.clone());
        }
        if msg == "READY=1" {
            break;
        }
    }
    assert_eq!(reload, ["RELOADING=1", "READY=1"]);
    daemon.signal(Signal::SIGTERM);
    let mut stopping = false;
    while let Some(msg) = recv(&notify, Duration::from_secs(5)) {
        if msg.starts_with("STOPPING=1\nSTATUS=stopping") {
            stopping = true;
            break;
        }
        assert!(msg == "WATCHDOG=1" || msg.starts_with("STATUS="), "{msg:?}");
    }
    assert!(stopping, "no STOPPING=1:\n{}", daemon.log());
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
    // Under a supervisor, hello names it.
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/memoryd.service")).unwrap();
    for needle in [
        "Type=notify",
        "Restart=always",
        "RestartSec=2",
        "RestartPreventExitStatus=2",
        "StartLimitBurst=5",
        "WatchdogSec=90",
        "NoNewPrivileges=yes",
        "--root",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle}");
    }
    // systemd-analyze checks that ExecStart names an existing executable.
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).expect("ExecStart");
    let program = exec.trim_start_matches("ExecStart=").split_whitespace().next().unwrap();
    let unit = unit.replace(program, &bins().memoryd.display().to_string());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memoryd.service");
    std::fs::write(&path, unit).unwrap();
    let out = output_within(std::process::Command::new(analyze).arg("verify").arg(&path), CHILD_LIMIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.trim().is_empty(), "systemd-analyze warns: {err}");
    // The hardening holds: exposure as a user unit at most 6.5 (it was 9.6).
    let runtime = tempfile::tempdir().unwrap();
    std::fs::set_permissions(runtime.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let out = output_within(
        std::process::Command::new(analyze)
            .env("XDG_RUNTIME_DIR", runtime.path())
            .args(["security", "--offline=true", "--user"])
            .arg(&path),
        CHILD_LIMIT,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("→ Overall exposure level for memoryd.service: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
    assert!(exposure <= 6.5, "systemd-analyze security rates the unit {exposure}:\n{text}");
}

#[test]
fn hello_and_status_name_the_supervisor() {
    let root = Root::new();
    let mut daemon = root.spawn_daemon_with(|cmd| {
        cmd.env("INVOCATION_ID", "e2e");
    });
    daemon.wait_ready(&root);
    let mut conn = Conn::open(&root.socket()).unwrap();
    assert_eq!(conn.hello()["result"]["supervisor"], "systemd");
    let out = root.ctl(&["shutdown"]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("systemd, which will restart it; to keep it down: systemctl --user stop memoryd"),
        "{}",
        stderr(&out)
    );
}
