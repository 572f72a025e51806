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
    let ready = recv(&notify, Duration::from_secs(20)).expect("READY=1");
    assert_eq!(ready, "READY=1");
    // The sockets are bound before READY=1.
    assert!(root.socket().exists());
    let mut conn = Conn::open(&root.socket()).unwrap();
    assert!(conn.hello()["result"].is_object());
    let start = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        let msg = recv(&notify, Duration::from_secs(5)).expect("WATCHDOG=1 at the heartbeat cadence");
        assert_eq!(msg, "WATCHDOG=1");
        pings += 1;
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    daemon.signal(Signal::SIGTERM);
    let mut stopping = false;
    while let Some(msg) = recv(&notify, Duration::from_secs(5)) {
        if msg == "STOPPING=1" {
            stopping = true;
            break;
        }
        assert_eq!(msg, "WATCHDOG=1");
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
    for needle in ["Type=notify", "Restart=always", "RestartSec=2", "WatchdogSec=90", "NoNewPrivileges=yes", "--root"] {
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
