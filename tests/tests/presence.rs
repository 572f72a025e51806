//! Session presence end to end: hooks attach real processes, the sweep
//! demotes dead ones, revocation crosses processes, the floor follows the
//! config, and every hook fails open.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const FAST: &str = "[presence]\ndegraded_after = \"1s\"\noffline_after = \"2s\"\nsweep_every = \"100ms\"\n";

fn shim(root: &Root, event: &str) -> PathBuf {
    root.paths.hooks_dir.join(format!("memoryd.claude.{event}.sh"))
}

fn hook_json(session: &str, cwd: &Path, event: &str) -> String {
    json!({"session_id": session, "cwd": cwd, "hook_event_name": event, "source": "startup"}).to_string()
}

/// Runs a shim as an agent would: JSON on stdin; returns (code, stdout, time).
fn run_hook(root: &Root, event: &str, input: &str) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = root
        .command(Path::new("/bin/sh"))
        .arg(shim(root, event))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = wait_within(&mut child, CHILD_LIMIT);
    (out.status.code(), stdout(&out), started.elapsed())
}

/// `memoryctl attach` of boris's claude node, session s1, version 1.0.
fn attach_boris(root: &Root) {
    let out = root.ctl(&["attach", "--node", "claude-boris", "--session", "s1", "--client-version", "1.0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn roster(root: &Root) -> Vec<Value> {
    let out = root.ctl(&["peers", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["nodes"].as_array().unwrap().clone()
}

fn row(root: &Root, node: &str) -> Option<Value> {
    roster(root).into_iter().find(|r| r["nodeId"] == node)
}

#[test]
fn a_hooked_agent_is_online_and_after_it_dies_degraded_then_offline() {
    let (root, boris) = wired_root(FAST);
    let daemon = root.start_daemon();
    let mut agent = fake_agent(&root, &shim(&root, "session-start"), &hook_json("s1", &boris, "SessionStart"));
    let r = row(&root, "claude-boris").unwrap_or_else(|| panic!("not attached:\n{}", daemon.log()));
    assert_eq!(r["state"], "online", "{r}");
    assert_eq!(r["sessionId"], "s1");
    assert_eq!(r["pid"], agent.id(), "the agent process, not the shell or memoryctl");
    assert_eq!(r["clientVersion"], "1.0");
    assert_eq!(r["readOnly"], false);
    // Alive and silent: its pid keeps it online past the thresholds.
    std::thread::sleep(Duration::from_millis(2500));
    let alive = row(&root, "claude-boris").unwrap();
    assert_eq!(alive["state"], "online", "{alive}\n{}", daemon.log());
    agent.kill().unwrap();
    agent.wait().unwrap();
    let killed = Instant::now();
    assert!(eventually(|| row(&root, "claude-boris").unwrap()["state"] == "degraded"), "{}", daemon.log());
    assert!(eventually(|| row(&root, "claude-boris").unwrap()["state"] == "offline"), "{}", daemon.log());
    // offline_after is 2 s; the rest is slack for a loaded machine.
    assert!(killed.elapsed() < Duration::from_secs(15), "{:?}", killed.elapsed());
    let events: Vec<Value> = std::fs::read_to_string(&root.paths.events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| e["nodeId"] == "claude-boris")
        .collect();
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "runtime_node.registered",
            "runtime_node.capability_declared",
            "runtime_node.online",
            "runtime_node.degraded",
            "runtime_node.offline"
        ]
    );
    assert_eq!(events[4]["reason"], "heartbeat_lost");
    let text = stdout(&root.ctl(&["events", "--node", "claude-boris"]));
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(text.lines().last().unwrap().contains("runtime_node.offline"), "{text}");
}

#[test]
fn prompt_submit_attaches_when_needed_and_session_end_detaches() {
    let (root, boris) = wired_root("");
    let _daemon = root.start_daemon();
    let (code, out, _) = run_hook(&root, "prompt-submit", &hook_json("s2", &boris, "UserPromptSubmit"));
    assert_eq!((code, out.as_str()), (Some(0), ""));
    assert_eq!(row(&root, "claude-boris").unwrap()["state"], "online");
    let (code, _, _) = run_hook(&root, "post-tool", &hook_json("s2", &boris, "PostToolUse"));
    assert_eq!(code, Some(0));
    // Another session's late end cannot detach this one.
    run_hook(&root, "session-end", &hook_json("old", &boris, "SessionEnd"));
    assert_eq!(row(&root, "claude-boris").unwrap()["state"], "online");
    let (code, _, took) = run_hook(&root, "session-end", &hook_json("s2", &boris, "SessionEnd"));
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(1), "session-end took {took:?}");
    assert!(eventually(|| row(&root, "claude-boris").unwrap()["state"] == "offline"));
    let errors = std::fs::read_to_string(root.paths.logs.join("hook-errors.log")).unwrap_or_default();
    assert!(
        errors.contains("stale_session") || errors.contains("not boris") || errors.contains("active session"),
        "{errors}"
    );
}

#[test]
fn with_the_daemon_down_every_hook_exits_0_quickly_and_prints_nothing() {
    let (root, boris) = wired_root("");
    for event in ["session-start", "prompt-submit", "post-tool", "session-end", "stop"] {
        let (code, out, took) = run_hook(&root, event, &hook_json("s1", &boris, "X"));
        assert_eq!(code, Some(0), "{event}");
        assert!(out.is_empty(), "{event}: {out}");
        let limit = if event == "session-end" { 1 } else { 2 };
        assert!(took < Duration::from_secs(limit), "{event} took {took:?}");
    }
    let (code, out, _) = run_hook(&root, "prompt-submit", "this is not json");
    assert_eq!((code, out.as_str()), (Some(0), ""));
    let log = std::fs::read_to_string(root.paths.logs.join("hook-errors.log")).unwrap();
    assert_eq!(log.lines().count(), 6, "{log}");
    assert!(log.contains("memoryd does not answer"), "{log}");
}

#[test]
fn a_hook_whose_stdin_never_ends_or_overflows_exits_0_within_its_budget() {
    let (root, _boris) = wired_root("");
    let hook = |input: Option<usize>| {
        let started = Instant::now();
        let mut child = root
            .command(Path::new("/bin/sh"))
            .arg(shim(&root, "prompt-submit"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // An agent that never closes stdin keeps the pipe; one that sends
        // too much is cut off (the hook stops reading, so the rest fails).
        let (writer, _held) = match input {
            Some(len) => (Some(std::thread::spawn(move || drop(stdin.write_all(&vec![b' '; len])))), None),
            None => (None, Some(stdin)),
        };
        let out = wait_within(&mut child, CHILD_LIMIT);
        if let Some(writer) = writer {
            writer.join().unwrap();
        }
        (out.status.code(), stdout(&out), started.elapsed())
    };
    let (code, out, took) = hook(None);
    assert_eq!((code, out.as_str()), (Some(0), ""));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let (code, out, took) = hook(Some(3 << 20));
    assert_eq!((code, out.as_str()), (Some(0), ""));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let log = std::fs::read_to_string(root.paths.logs.join("hook-errors.log")).unwrap();
    assert!(log.contains("stdin did not end within the hook's budget"), "{log}");
    assert!(log.contains("stdin is longer than 1048576 bytes"), "{log}");
}

#[test]
fn revocation_by_the_core_crosses_processes_and_only_birth_or_unrevoke_lift_it() {
    let (root, boris) = wired_root("");
    let _daemon = root.start_daemon();
    let cwd = boris.to_str().unwrap();
    // The core removes the peer while the daemon runs, from a local run.
    let out = root.ctl(&[
        "unprovision-peer",
        "--local",
        "--cwd",
        cwd,
        "--runtime",
        "claude",
        "--personality",
        "boris",
        "--occasion",
        "remove",
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let attach = |session: &str| {
        root.ctl(&["attach", "--node", "claude-boris", "--session", session, "--client-version", "1.0"])
    };
    let refused = attach("s1");
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("revoked"), "{}", stderr(&refused));
    // The operator's own revoke of another node goes through the daemon; neither change is lost.
    assert!(root.ctl(&["revoke", "codex-boris", "--reason", "test"]).status.success());
    // A new birth lifts the core's revocation.
    let out = root.ctl(&[
        "provision-peer",
        "--local",
        "--cwd",
        cwd,
        "--runtime",
        "claude",
        "--personality",
        "boris",
        "--occasion",
        "birth",
    ]);
    assert!(out.status.success());
    assert!(attach("s1").status.success());
    let still = root.ctl(&["attach", "--node", "codex-boris", "--session", "c1", "--client-version", "1.0"]);
    assert!(stderr(&still).contains("revoked"), "the operator's revoke survived: {}", stderr(&still));
    assert!(root.ctl(&["unrevoke", "codex-boris"]).status.success());
    assert!(
        root.ctl(&["attach", "--node", "codex-boris", "--session", "c1", "--client-version", "1.0"]).status.success()
    );
    let unknown = root.ctl(&["attach", "--node", "claude-nobody", "--session", "x", "--client-version", "1.0"]);
    assert!(stderr(&unknown).contains("not a peer-runtime of the fleet map"), "{}", stderr(&unknown));
}

#[test]
fn the_floor_makes_old_clients_read_only_and_a_reload_changes_it_at_once() {
    let (root, _boris) = wired_root("[presence]\nmin_client_version = \"2.0\"\n");
    let daemon = root.start_daemon();
    let out = root.ctl(&["attach", "--node", "claude-boris", "--session", "s1", "--client-version", "1.9", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let attached: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(attached["readOnly"], true, "admitted, read-only");
    let update = |conn: &mut Conn| {
        conn.request("runtimenode.capabilityupdate", json!({"nodeId": "claude-boris", "capabilities": {"x": 1}}))
    };
    let mut conn = Conn::open(&root.socket()).unwrap();
    conn.hello();
    let refused = update(&mut conn);
    assert_eq!(kind(&refused), "version.floor_exceeded", "{refused}");
    assert_eq!(refused["error"]["data"]["details"]["acceptedRange"]["min"], "2.0");
    assert_eq!(refused["error"]["data"]["details"]["upgradePath"], "memoryctl update");
    // Lowering the floor frees it at once; raising it again flips it back.
    root.write_config("mcp_port = 0\n[presence]\nmin_client_version = \"1.0\"\n");
    assert!(root.ctl(&["reload"]).status.success());
    assert!(update(&mut conn)["result"].is_object(), "{}", daemon.log());
    assert_eq!(row(&root, "claude-boris").unwrap()["readOnly"], false);
    root.write_config("mcp_port = 0\n[presence]\nmin_client_version = \"10.0\"\n");
    assert!(root.ctl(&["reload"]).status.success());
    assert_eq!(kind(&update(&mut conn)), "version.floor_exceeded");
}

#[test]
fn heartbeats_kept_in_memory_hold_a_node_online_and_a_health_change_is_written_at_once() {
    let (root, _boris) = wired_root(FAST);
    let daemon = root.start_daemon();
    attach_boris(&root);
    let mut conn = Conn::open(&root.socket()).unwrap();
    conn.hello();
    let beat = |conn: &mut Conn, health: &str| {
        let answer = conn.request("runtimenode.heartbeat", json!({"nodeId": "claude-boris", "healthState": health}));
        assert!(answer.get("result").is_some(), "{answer}\n{}", daemon.log());
    };
    // Three times past degraded_after, beating: online throughout.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        beat(&mut conn, "online");
        let r = row(&root, "claude-boris").unwrap();
        assert_eq!(r["state"], "online", "{r}\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    // A reported change of health is a transition: in the roster at once.
    beat(&mut conn, "degraded");
    assert_eq!(row(&root, "claude-boris").unwrap()["state"], "degraded");
    beat(&mut conn, "online");
    assert_eq!(row(&root, "claude-boris").unwrap()["state"], "online");
}

#[test]
fn a_heartbeat_kept_in_memory_is_written_when_the_daemon_stops() {
    let (root, _boris) = wired_root("[presence]\nsweep_every = \"1h\"\n");
    let mut daemon = root.start_daemon();
    attach_boris(&root);
    let on_disk = || -> String {
        let doc: Value =
            serde_json::from_slice(&std::fs::read(root.paths.store.join("presence.json")).unwrap()).unwrap();
        doc["attachments"][0]["lastHeartbeatAt"].as_str().unwrap().to_owned()
    };
    let attached = on_disk();
    std::thread::sleep(Duration::from_millis(20));
    let mut conn = Conn::open(&root.socket()).unwrap();
    conn.hello();
    assert!(conn.request("runtimenode.heartbeat", json!({"nodeId": "claude-boris"})).get("result").is_some());
    let seen = row(&root, "claude-boris").unwrap()["lastHeartbeatAt"].as_str().unwrap().to_owned();
    assert!(seen > attached, "the roster shows the kept beat: {seen} vs {attached}");
    assert_eq!(on_disk(), attached, "not yet written: no sweep ran");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(on_disk(), seen, "written on the way out");
}

#[test]
fn the_roster_survives_a_daemon_restart() {
    let (root, _boris) = wired_root("");
    let mut daemon = root.start_daemon();
    attach_boris(&root);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(10));
    let _again = root.start_daemon();
    let r = row(&root, "claude-boris").expect("the row survived");
    assert_eq!(r["sessionId"], "s1");
    assert_eq!(r["state"], "online", "a restart is not a mass disconnect");
    let status: Value = serde_json::from_slice(&root.ctl(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["presence"]["online"], 1, "{status}");
}

#[test]
fn events_follow_streams_new_events_as_they_happen() {
    let (root, _boris) = wired_root("");
    let _daemon = root.start_daemon();
    let mut follower = Reaped(
        root.command(&bins().memoryctl)
            .args(["--root", root.paths.root.to_str().unwrap(), "events", "--follow", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = Lines::new(follower.stdout.take().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    attach_boris(&root);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let line = lines.next_within(Duration::from_secs(20), "events --follow");
        seen.push(serde_json::from_str::<Value>(&line).unwrap()["event"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["runtime_node.registered", "runtime_node.online"]);
    follower.kill().unwrap();
    follower.wait().unwrap();
}
