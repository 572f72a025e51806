//! memoryd's log: priorities for journald, no colour where none belongs,
//! rotation by size, and `memoryctl logs`.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn under_journald_every_line_carries_its_priority_and_no_time_of_its_own() {
    let root = Root::new();
    // journald names the stream it gave as stderr; here stderr is this file.
    let log = root.dir.path().join("journal-stream");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let mut daemon = root.spawn_daemon_with(|cmd| {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())).stderr(file);
    });
    daemon.wait_ready(&root);
    // The start-up sweep finds no fleet map: a warning.
    assert!(eventually(|| std::fs::read_to_string(&log).unwrap().contains("no fleet map to sweep")));
    let text = std::fs::read_to_string(&log).unwrap();
    let up = text.lines().find(|l| l.contains("memoryd up")).unwrap_or_else(|| panic!("{text}"));
    assert!(up.starts_with("<6>memoryd up"), "{up:?}");
    let warn = text.lines().find(|l| l.contains("no fleet map to sweep")).unwrap();
    assert!(warn.starts_with("<4>"), "{warn:?}");
    assert!(text.lines().all(|l| l.starts_with('<')), "a line without its priority:\n{text}");
    assert!(!text.contains("\x1b["), "colour in the journal:\n{text}");
    assert!(!text.contains(" INFO ") && !text.contains("Z "), "a time or level of its own:\n{text}");
}

#[test]
fn no_colour_reaches_a_pipe_or_a_file() {
    let root = Root::new();
    // memoryctl -v logs to stderr, a pipe here (no daemon: it logs why).
    let out = root.ctl(&["-v", "status"]);
    assert!(!stderr(&out).is_empty(), "-v logs nothing");
    assert!(!stderr(&out).contains("\x1b["), "{:?}", stderr(&out));
    let daemon = root.start_daemon();
    assert!(!daemon.log().contains("\x1b["), "colour in a log file:\n{}", daemon.log());
}

#[test]
fn memoryd_rotates_its_own_log_file_and_goes_on_writing_to_a_fresh_one() {
    let root = Root::new();
    root.write_config("mcp_port = 0\nheartbeat_interval = \"100ms\"\nlog_max_bytes = 1024\nlog_keep = 2\n");
    // `daemon start` sends the daemon's stderr to R/logs/memoryd/memoryd.log;
    // debug logging fills it quickly.
    let out = output_within(
        root.command(&bins().memoryctl)
            .env("RUST_LOG", "debug")
            .arg("--root")
            .arg(&root.paths.root)
            .args(["daemon", "start"]),
        CHILD_LIMIT,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let log = root.paths.logs.join("memoryd.log");
    let generation = |n: usize| root.paths.logs.join(format!("memoryd.log.{n}"));
    // Each connection is a debug line; the heartbeat checks the size.
    assert!(
        eventually_within(Duration::from_secs(60), || {
            root.ctl(&["status"]);
            generation(2).exists()
        }),
        "no second generation"
    );
    assert!(!generation(3).exists(), "log_keep = 2");
    // The daemon writes into the fresh file, not into a rotated one.
    assert!(eventually(|| std::fs::read_to_string(&log).unwrap_or_default().contains("log rotated")));
}

#[test]
fn hook_errors_rotate_too() {
    let root = Root::new();
    root.write_config("mcp_port = 0\nlog_max_bytes = 1024\nlog_keep = 1\n");
    for _ in 0..40 {
        // A bad flag is logged, never fails the agent.
        let out = root.ctl(&["hook", "session-start", "--no-such-flag"]);
        assert_eq!(out.status.code(), Some(0));
    }
    let log = root.paths.logs.join("hook-errors.log");
    let rotated = root.paths.logs.join("hook-errors.log.1");
    assert!(rotated.exists(), "no rotation");
    assert!(!root.paths.logs.join("hook-errors.log.2").exists(), "log_keep = 1");
    let size = std::fs::metadata(&log).unwrap().len() + std::fs::metadata(&rotated).unwrap().len();
    assert!(size < 4096, "{size} bytes kept");
}

#[test]
fn memoryctl_logs_prints_the_last_lines_and_follows_across_a_rotation() {
    let root = Root::new();
    std::fs::create_dir_all(&root.paths.logs).unwrap();
    let log = root.paths.logs.join("memoryd.log");
    let text: String = (1..=100).map(|n| format!("line {n}\n")).collect();
    std::fs::write(&log, text).unwrap();
    let out = root.ctl(&["logs", "-n", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "line 98\nline 99\nline 100\n");
    let out = root.ctl(&["--json", "logs"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));

    let mut follower = Reaped(
        root.command(&bins().memoryctl)
            .arg("--root")
            .arg(&root.paths.root)
            .args(["logs", "-f", "-n", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = Lines::new(follower.stdout.take().unwrap());
    let limit = Duration::from_secs(20);
    assert_eq!(lines.next_within(limit, "logs -f"), "line 100");
    std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"line 101\n").unwrap();
    assert_eq!(lines.next_within(limit, "logs -f"), "line 101");
    // Rotated as memoryd rotates it: a rename, then a fresh file.
    std::fs::rename(&log, root.paths.logs.join("memoryd.log.1")).unwrap();
    std::fs::write(&log, "line 1 of the new file\n").unwrap();
    assert_eq!(lines.next_within(limit, "logs -f"), "line 1 of the new file");
}

#[test]
fn on_a_terminal_the_log_is_coloured_unless_no_color_is_set() {
    let script = std::path::Path::new("/usr/bin/script");
    if !script.exists() {
        eprintln!("SKIPPED: script(1) from util-linux gives the pseudo-terminal and is not installed");
        return;
    }
    let root = Root::new();
    // memoryctl -v with no daemon logs why, to stderr: here a terminal.
    let line = format!("{} --root {} -v status", bins().memoryctl.display(), root.paths.root.display());
    let on_a_terminal = |no_color: Option<&str>| {
        let mut cmd = root.command(script);
        cmd.args(["-qec", &line, "/dev/null"]);
        match no_color {
            Some(v) => cmd.env("NO_COLOR", v),
            None => cmd.env_remove("NO_COLOR"),
        };
        stdout(&output_within(&mut cmd, CHILD_LIMIT))
    };
    let log_line = |text: &str| text.lines().find(|l| l.contains("memoryd is not answering")).map(str::to_owned);
    let coloured = on_a_terminal(None);
    assert!(log_line(&coloured).is_some_and(|l| l.contains("\x1b[")), "{coloured:?}");
    let plain = on_a_terminal(Some("1"));
    assert!(log_line(&plain).is_some(), "{plain:?}");
    assert!(!plain.contains("\x1b["), "colour with NO_COLOR set: {plain:?}");
}
