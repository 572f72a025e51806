//! `memoryctl top` for real: the view open in an 80×24 tmux pane follows a
//! node that attaches, degrades and goes offline, filters and sorts on
//! keys, quits on `q`, and `--once` prints a frame with no terminal.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Thresholds short enough to watch a node go offline, long enough that
/// each state is on screen for a while.
const SLOW_ENOUGH: &str = "[presence]\ndegraded_after = \"2s\"\noffline_after = \"4s\"\nsweep_every = \"100ms\"\n";
/// How long a change may take to show in the pane on a loaded machine.
const SHOWN: Duration = Duration::from_secs(20);

/// A tmux server of the test's own (its socket in the test's temp dir),
/// running one 80×24 session; ended when dropped.
struct Tmux {
    root_dir: PathBuf,
    socket: PathBuf,
}

impl Tmux {
    /// Runs `script` under `sh -c` in a detached 80×24 session, with the
    /// sandbox's environment.
    fn open(root: &Root, script: &str) -> Tmux {
        let tmux = Tmux { root_dir: root.dir.path().to_owned(), socket: root.dir.path().join("tmux.sock") };
        let out = tmux.run(root, &["new-session", "-d", "-x", "80", "-y", "24", "-s", "top", "sh", "-c", script]);
        assert!(out.status.success(), "tmux new-session: {}", stderr(&out));
        tmux
    }

    fn run(&self, root: &Root, args: &[&str]) -> std::process::Output {
        let mut cmd = root.command(Path::new("tmux"));
        cmd.arg("-S").arg(&self.socket).args(["-f", "/dev/null"]).args(args).current_dir(&self.root_dir);
        output_within(&mut cmd, Duration::from_secs(10))
    }

    /// What the pane shows now.
    fn screen(&self, root: &Root) -> String {
        stdout(&self.run(root, &["capture-pane", "-p", "-t", "top"]))
    }

    fn keys(&self, root: &Root, keys: &str) {
        assert!(self.run(root, &["send-keys", "-t", "top", keys]).status.success());
    }

    /// Waits until the pane shows what `probe` looks for; the last screen.
    fn until(&self, root: &Root, what: &str, mut probe: impl FnMut(&str) -> bool) -> String {
        let mut screen = String::new();
        let shown = eventually_within(SHOWN, || {
            screen = self.screen(root);
            probe(&screen)
        });
        assert!(shown, "the pane never showed {what}:\n{screen}");
        screen
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = output_within(
            std::process::Command::new("tmux").arg("-S").arg(&self.socket).arg("kill-server"),
            Duration::from_secs(10),
        );
    }
}

/// The cells of a node's row in the nodes table (the events below name
/// the node too, after a time of day).
fn node_row(screen: &str, node: &str) -> Option<Vec<String>> {
    screen
        .lines()
        .map(|l| l.trim_matches(|c: char| c == '│' || c.is_whitespace()))
        .find(|l| l.split_whitespace().next() == Some(node))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
}

fn state_of(screen: &str, node: &str) -> Option<String> {
    node_row(screen, node).map(|cells| cells[1].clone())
}

/// Seconds of a `top` age (`7s`, `2m`).
fn secs(age: &str) -> u64 {
    let (n, unit) = age.split_at(age.len() - 1);
    n.parse::<u64>().unwrap() * if unit == "m" { 60 } else { 1 }
}

#[test]
fn the_live_view_follows_a_node_from_attach_to_offline_filters_and_quits_on_q() {
    let (root, _boris) = wired_root(SLOW_ENOUGH);
    let daemon = root.start_daemon();
    let ctl = bins().memoryctl.to_str().unwrap().to_owned();
    let script = format!("'{ctl}' --root '{}' top; echo \"top exited $?\"; sleep 120", root.paths.root.display());
    let tmux = Tmux::open(&root, &script);
    tmux.until(&root, "an empty fleet", |s| s.contains("no agent session has attached yet"));

    let attach = ["attach", "--node", "claude-boris", "--session", "s1", "--client-version", "1.0"];
    assert!(root.ctl(&attach).status.success());
    // Heartbeats hold the node online until the view has shown it so.
    let online = tmux.until(&root, "claude-boris online", |s| {
        root.ctl(&["heartbeat", "--node", "claude-boris", "--session", "s1"]);
        state_of(s, "claude-boris").as_deref() == Some("online")
    });
    let cells = node_row(&online, "claude-boris").unwrap();
    assert_eq!((cells[2].as_str(), cells[4].as_str()), ("online", "1.0"), "{online}");
    assert!(online.contains("nodes 1 of 1 · state: all · sort: node"), "{online}");
    assert!(online.contains("claude-boris registering→online") || online.contains("claude-boris →online"), "{online}");
    // The frame fits the terminal: 24 lines, none past 80 columns.
    assert_eq!(online.lines().count(), 24, "{online}");
    assert!(online.lines().all(|l| l.chars().count() <= 80), "{online}");
    assert!(
        online.lines().last().unwrap().starts_with("q quit · s sort (node) · f state (all) · ↑↓ scroll"),
        "{online}"
    );

    tmux.until(&root, "claude-boris degraded", |s| state_of(s, "claude-boris").as_deref() == Some("degraded"));
    let offline =
        tmux.until(&root, "claude-boris offline", |s| state_of(s, "claude-boris").as_deref() == Some("offline"));
    assert!(offline.contains("claude-boris degraded→offline heartbeat_lost"), "{offline}");
    // The age ticks here with no event to redraw for.
    let age = secs(&node_row(&offline, "claude-boris").unwrap()[3]);
    tmux.until(&root, "a heartbeat age that grows", |s| {
        node_row(s, "claude-boris").is_some_and(|cells| secs(&cells[3]) >= age + 2)
    });
    println!("a frame of memoryctl top:\n{}", tmux.screen(&root));

    // f: only the active nodes, and boris is not one now; s: by state.
    tmux.keys(&root, "f");
    tmux.until(&root, "the active filter", |s| {
        s.contains("nodes 0 of 1 · state: active")
            && s.contains("no node is active")
            && node_row(s, "claude-boris").is_none()
    });
    tmux.keys(&root, "f");
    tmux.keys(&root, "s");
    tmux.until(&root, "the online filter, sorted by state", |s| s.contains("state: online · sort: state"));

    tmux.keys(&root, "q");
    let after = tmux.until(&root, "top's exit", |s| s.contains("top exited"));
    assert!(after.contains("top exited 0"), "{after}");
    assert!(!after.contains("newest events"), "the terminal is given back as it was:\n{after}");
    drop(daemon);
}

#[test]
fn once_prints_one_frame_without_a_terminal_and_a_stopped_daemon_is_one_sentence() {
    let (root, _boris) = wired_root("[presence]\nmin_client_version = \"1.0\"\n");
    let mut daemon = root.start_daemon();
    let attach = ["attach", "--node", "claude-boris", "--session", "s1", "--client-version", "0.9"];
    assert!(root.ctl(&attach).status.success());
    let out = root.ctl(&["top", "--once"]);
    let frame = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    let cells = node_row(&frame, "claude-boris").unwrap_or_else(|| panic!("no row:\n{frame}"));
    // State, health, heartbeat age, version, the read-only mark (0.9 is
    // below the floor), no pid.
    assert_eq!(cells[1..3], ["online", "online"], "{frame}");
    assert_eq!(cells[4..], ["0.9", "ro", "-"], "{frame}");
    assert!(frame.contains("nodes 1 of 1"), "{frame}");
    assert!(frame.contains("healthy") && frame.contains("messages waiting"), "{frame}");
    assert!(frame.contains("claude-boris registering→online"), "{frame}");
    assert!(frame.lines().all(|l| l.chars().count() <= 80), "{frame}");
    assert!(!frame.contains('\x1b') && !frame.contains("q quit"), "no escapes, no keys:\n{frame}");
    // --state filters here too.
    let offline = stdout(&root.ctl(&["top", "--once", "--state", "offline"]));
    assert!(offline.contains("nodes 0 of 1 · state: offline") && node_row(&offline, "claude-boris").is_none());
    // The live view needs a terminal, and says what to use instead.
    let live = root.ctl(&["top"]);
    assert_eq!(live.status.code(), Some(2), "{}", stderr(&live));
    assert!(stderr(&live).contains("memoryctl top --once"), "{}", stderr(&live));

    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(10));
    let down = root.ctl(&["top", "--once"]);
    assert_eq!(down.status.code(), Some(1));
    assert!(stdout(&down).is_empty(), "{}", stdout(&down));
    assert_eq!(stderr(&down).lines().count(), 1, "{}", stderr(&down));
    assert!(stderr(&down).contains("memoryd is not running (start it with:"), "{}", stderr(&down));
}

#[test]
fn a_daemon_that_stops_under_the_view_ends_it_with_one_sentence() {
    let (root, _boris) = wired_root("");
    let mut daemon = root.start_daemon();
    let ctl = bins().memoryctl.to_str().unwrap().to_owned();
    let script = format!("'{ctl}' --root '{}' top; echo \"top exited $?\"; sleep 120", root.paths.root.display());
    let tmux = Tmux::open(&root, &script);
    tmux.until(&root, "the view", |s| s.contains("no agent session has attached yet"));
    assert!(root.ctl(&["shutdown"]).status.success());
    daemon.wait_exit(Duration::from_secs(10));
    let after = tmux.until(&root, "top's exit", |s| s.contains("top exited"));
    assert!(after.contains("top exited 1"), "{after}");
    assert!(after.contains("memoryctl top: memoryd stopped while top was watching (start it again with:"), "{after}");
}
