//! Peer links and peer messages end to end, including crashes.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// A root with peers `ada`, `bob`, `cyd` (claude), wired, a daemon-ready config.
fn fleet_root(names: &[&str], config: &str) -> (Root, Vec<PathBuf>) {
    let root = Root::bare();
    root.write_config(&format!("mcp_port = 0\n{config}"));
    let dirs: Vec<PathBuf> = names.iter().map(|n| root.peer_dir(n)).collect();
    let peers: Vec<(&str, &Path, &[&str])> =
        names.iter().zip(&dirs).map(|(n, d)| (*n, d.as_path(), &["claude"][..])).collect();
    root.write_fleet_map(&peers);
    let out = root.ctl(&[
        "provision-peer",
        "--cwd",
        dirs[1].to_str().unwrap(),
        "--runtime",
        "claude",
        "--personality",
        names[1],
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    (root, dirs)
}

fn request(root: &Root, method: &str, params: Value) -> Value {
    let mut conn = Conn::open(&root.socket()).unwrap();
    conn.hello();
    conn.request(method, params)
}

/// Runs bob's hook as Claude would; its stdout.
fn hook(root: &Root, event: &str, session: &str, cwd: &Path) -> String {
    let shim = root.paths.hooks_dir.join(format!("memoryd.claude.{event}.sh"));
    let mut child =
        root.command(Path::new("/bin/sh")).arg(shim).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let input = json!({"session_id": session, "cwd": cwd, "hook_event_name": "x"}).to_string();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = wait_within(&mut child, CHILD_LIMIT);
    assert_eq!(out.status.code(), Some(0));
    stdout(&out)
}

fn names(visible: &Value) -> Vec<(String, String)> {
    visible
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["personality"].as_str().unwrap().to_owned(), v["reason"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn a_message_survives_a_restart_and_arrives_once_at_session_start() {
    let (root, dirs) = fleet_root(&["ada", "bob", "cyd"], "");
    let mut daemon = root.start_daemon();
    let out = root.ctl(&["peer", "link", "ada", "bob"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("are linked"));
    assert!(stdout(&root.ctl(&["peer", "link", "bob", "ada"])).contains("already linked"));
    let seen = |p: &str| names(&serde_json::from_slice(&root.ctl(&["peer", "visible", p, "--json"]).stdout).unwrap());
    assert_eq!(seen("ada"), [("ada".to_owned(), "self".to_owned()), ("bob".to_owned(), "peer".to_owned())]);
    assert_eq!(seen("bob"), [("bob".to_owned(), "self".to_owned()), ("ada".to_owned(), "peer".to_owned())]);
    let sent = root.ctl(&["peer", "send", "--from", "ada", "bob", "The build is green; take the release.", "--json"]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    let result: Value = serde_json::from_slice(&sent.stdout).unwrap();
    assert_eq!(
        (result["to"].as_str(), result["queued"].as_bool(), result["queueDepth"].as_u64()),
        (Some("bob"), Some(true), Some(1))
    );
    assert!(result.get("deliveredTo").is_none(), "a queued message is not delivered yet: {result}");
    assert_eq!(result["dropped"], 0);
    assert!(result["ts"].is_string());

    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(10));
    let _daemon = root.start_daemon();
    let printed = hook(&root, "session-start", "s1", &dirs[1]);
    assert_eq!(printed.lines().count(), 1, "exactly one JSON object: {printed}");
    let object: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(object["hookSpecificOutput"]["hookEventName"], "SessionStart");
    let context = object["hookSpecificOutput"]["additionalContext"].as_str().unwrap();
    assert!(context.starts_with("[Peer message from `ada` at "), "{context}");
    assert!(context.contains("\nThe build is green; take the release."), "{context}");
    assert_eq!(hook(&root, "session-start", "s1", &dirs[1]), "", "delivered once");
    assert_eq!(hook(&root, "prompt-submit", "s1", &dirs[1]), "");
}

#[test]
fn two_hooks_at_once_deliver_each_message_once() {
    let (root, dirs) = fleet_root(&["ada", "bob"], "");
    let _daemon = root.start_daemon();
    assert!(root.ctl(&["peer", "link", "ada", "bob"]).status.success());
    for n in 0..5 {
        assert!(root.ctl(&["peer", "send", "--from", "ada", "bob", &format!("message number {n}")]).status.success());
    }
    let outputs: Vec<String> = std::thread::scope(|s| {
        let a = s.spawn(|| hook(&root, "session-start", "s1", &dirs[1]));
        let b = s.spawn(|| hook(&root, "prompt-submit", "s1", &dirs[1]));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let all = outputs.join("\n");
    for n in 0..5 {
        assert_eq!(all.matches(&format!("message number {n}")).count(), 1, "{all}");
    }
    assert!(stdout(&root.ctl(&["peer", "inbox", "bob"])).contains("no message waits"));
}

#[test]
fn bad_sends_fail_with_their_kinds_and_a_full_inbox_drops_the_oldest() {
    // 130 sends at once: above the default rate, which has its own test.
    let (root, _dirs) = fleet_root(&["ada", "bob", "cyd"], "[presence]\npeer_send_rate = 1000\n");
    let _daemon = root.start_daemon();
    assert!(root.ctl(&["peer", "link", "ada", "bob"]).status.success());
    let send = |to: &str, text: &str| request(&root, "peer.send", json!({"from": "ada", "to": to, "message": text}));
    assert_eq!(kind(&send("cyd", "hi")), "peer.not_visible");
    assert_eq!(kind(&send("ada", "hi")), "peer.self");
    assert_eq!(kind(&send("bob", "")), "peer.message_empty");
    assert_eq!(kind(&send("bob", &"x".repeat(7001))), "peer.message_too_long");
    assert_eq!(kind(&request(&root, "peer.link", json!({"a": "ada", "b": "zed"}))), "peer.missing");
    assert_eq!(kind(&request(&root, "peer.link", json!({"a": "ada", "b": "ada"}))), "peer.self");
    let mut conn = Conn::open(&root.socket()).unwrap();
    conn.hello();
    let mut dropped = 0;
    for n in 0..130 {
        let r = conn.request("peer.send", json!({"from": "ada", "to": "bob", "message": format!("m{n}")}));
        dropped += r["result"]["dropped"].as_u64().unwrap();
    }
    assert_eq!(dropped, 2);
    let inbox = request(&root, "peer.inbox", json!({"personality": "bob"}));
    let texts: Vec<&str> = inbox["result"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts.len(), 128);
    assert_eq!((texts[0], texts[127]), ("m2", "m129"));
    let log = std::fs::read_to_string(&root.paths.events).unwrap();
    assert_eq!(log.matches("\"peer.message_dropped\"").count(), 2, "{log}");
}

/// A small deterministic generator (xorshift), seeded per run.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn sigkill_during_links_and_sends_leaves_no_one_sided_link_and_loses_no_acknowledged_message() {
    let iterations: usize = std::env::var("MEMORYD_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let names = ["ada", "bob", "cyd", "dan"];
    let (root, _dirs) = fleet_root(&names, "[presence]\ninbox_capacity = 100000\n");
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    let mut acked: Vec<(String, String)> = Vec::new();
    for iteration in 0..iterations {
        let mut daemon = root.start_daemon();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let worker_seed = rng.next(u64::MAX) | 1;
        let new_acks = std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let mut rng = Rng(worker_seed);
                let mut acks = Vec::new();
                let Ok(mut conn) = Conn::open(&root.socket()) else { return acks };
                conn.hello();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (a, b) = (names[rng.next(4) as usize], names[rng.next(4) as usize]);
                    if a == b {
                        continue;
                    }
                    let method = match rng.next(3) {
                        0 => "peer.link",
                        1 => "peer.unlink",
                        _ => "peer.send",
                    };
                    let text = format!("i{iteration}-{}", rng.next(1 << 40));
                    let params = if method == "peer.send" {
                        json!({"from": a, "to": b, "message": text})
                    } else {
                        json!({"a": a, "b": b})
                    };
                    let reply = conn.request(method, params);
                    if reply.is_null() {
                        break; // the daemon died
                    }
                    if method == "peer.send" && reply["result"]["queued"] == true {
                        acks.push((b.to_owned(), text));
                    }
                }
                acks
            });
            std::thread::sleep(Duration::from_millis(20 + rng.next(200)));
            daemon.signal(Signal::SIGKILL);
            daemon.wait_exit(Duration::from_secs(5));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            worker.join().unwrap()
        });
        acked.extend(new_acks);
        drop(daemon);
        // After the restart: every link is seen from both sides, and every
        // acknowledged message waits in its inbox.
        let _daemon = root.start_daemon();
        let visible = |p: &str| -> Vec<String> {
            let v = request(&root, "peer.visible", json!({"personality": p}));
            v["result"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["reason"] == "peer")
                .map(|x| x["personality"].as_str().unwrap().to_owned())
                .collect()
        };
        for a in names {
            for b in visible(a) {
                assert!(visible(&b).contains(&a.to_owned()), "seed {seed}: {a} sees {b} but not the reverse");
            }
        }
        for p in names {
            let inbox = request(&root, "peer.inbox", json!({"personality": p}));
            let texts: Vec<&str> =
                inbox["result"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
            for (_, text) in acked.iter().filter(|(to, _)| to == p) {
                assert!(texts.contains(&text.as_str()), "seed {seed}: acknowledged message {text} to {p} was lost");
            }
        }
    }
    assert!(!acked.is_empty(), "the crash test sent nothing (seed {seed})");
}
