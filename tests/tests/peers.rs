//! Peer links and peer messages end to end, including crashes.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A root with peers `ada`, `bob`, `cyd` (claude), wired, a daemon-ready config.
fn fleet_root(names: &[&str], config: &str) -> (Root, Vec<PathBuf>) {
    fleet_root_on(names, 0, config)
}

/// The same with the MCP endpoint on `port` (0: off).
fn fleet_root_on(names: &[&str], port: u16, config: &str) -> (Root, Vec<PathBuf>) {
    let root = Root::bare();
    root.write_config(&format!("mcp_port = {port}\n{config}"));
    let dirs = root.claude_fleet(names);
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

/// The context a hook's output adds (or the reason a stop hook gives), and
/// the event it names; None when it printed nothing.
fn delivered(printed: &str) -> Option<(String, String)> {
    if printed.is_empty() {
        return None;
    }
    assert_eq!(printed.lines().count(), 1, "one JSON object: {printed}");
    let v: Value = serde_json::from_str(printed).unwrap();
    if v["decision"] == "block" {
        return Some(("Stop".to_owned(), v["reason"].as_str().unwrap().to_owned()));
    }
    let out = &v["hookSpecificOutput"];
    Some((out["hookEventName"].as_str().unwrap().to_owned(), out["additionalContext"].as_str().unwrap().to_owned()))
}

/// An MCP tool's JSON answer, which must not be an error.
fn tool(port: u16, node: &str, name: &str, arguments: Value) -> Value {
    let (err, text) = mcp_tool(port, node, name, arguments);
    assert!(!err, "{name}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// The states of a message in its sender's outbox, by recipient.
fn states(port: u16, node: &str, id: &str) -> Vec<String> {
    let rows = tool(port, node, "peer_outbox", json!({}));
    let row =
        rows["messages"].as_array().unwrap().iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("{id} in {rows}"));
    row["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("{}:{}", d["to"].as_str().unwrap(), d["state"].as_str().unwrap()))
        .collect()
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

/// Runs `work` against a fresh daemon, SIGKILLs the daemon 20 to 220 ms
/// in, then sets the flag `work` watches; what `work` returned.
fn kill_during<T: Send>(root: &Root, rng: &mut Rng, work: impl FnOnce(&AtomicBool) -> T + Send) -> T {
    let mut daemon = root.start_daemon();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let worker = s.spawn(|| work(&stop));
        std::thread::sleep(Duration::from_millis(20 + rng.next(200)));
        daemon.signal(Signal::SIGKILL);
        daemon.wait_exit(Duration::from_secs(5));
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap()
    })
}

#[test]
fn sigkill_during_links_and_sends_leaves_no_one_sided_link_and_loses_no_acknowledged_message() {
    let iterations: usize = std::env::var("MEMORYD_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let names = ["ada", "bob", "cyd", "dan"];
    let (root, _dirs) = fleet_root(&names, "[presence]\ninbox_capacity = 100000\n");
    let mut rng = Rng::seeded();
    let seed = rng.0;
    let mut acked: Vec<(String, String)> = Vec::new();
    for iteration in 0..iterations {
        let worker_seed = rng.next(u64::MAX) | 1;
        let new_acks = kill_during(&root, &mut rng, |stop| {
            let mut rng = Rng(worker_seed);
            let mut acks = Vec::new();
            let Ok(mut conn) = Conn::open(&root.socket()) else { return acks };
            conn.hello();
            while !stop.load(Ordering::Relaxed) {
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
        acked.extend(new_acks);
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

#[test]
fn a_conversation_through_the_real_shims_and_tools() {
    let port = free_port();
    let (root, dirs) = fleet_root_on(&["ada", "bob", "cyd"], port, "[presence]\npeer_send_rate = 5\n");
    let _daemon = root.start_daemon();
    assert!(root.ctl(&["peer", "link", "ada", "bob"]).status.success());
    let (ada, bob) = ("claude-ada", "claude-bob");
    assert_eq!(hook(&root, "session-start", "s1", &dirs[1]), "", "bob's turn starts with nothing waiting");

    // Mid-turn, ada asks for a confirmed review, then sends something urgent.
    let review = tool(
        port,
        ada,
        "peer_send",
        json!({"to": "bob", "subject": "Release notes", "ackRequired": true,
        "message": "Please check the canary rollout section."}),
    );
    let urgent =
        tool(port, ada, "peer_send", json!({"to": ["bob"], "importance": "urgent", "message": "Stop the deploy now."}));
    assert_eq!(states(port, ada, review["id"].as_str().unwrap()), ["bob:queued"]);
    // bob's next tool use brings the urgent one only, once.
    let (event, context) = delivered(&hook(&root, "post-tool", "s1", &dirs[1])).expect("the urgent message arrives");
    assert_eq!(event, "PostToolUse");
    assert!(context.contains(", urgent]\nStop the deploy now."), "{context}");
    assert!(!context.contains("canary"), "a normal message waits for the next turn: {context}");
    assert_eq!(hook(&root, "post-tool", "s1", &dirs[1]), "", "delivered once");
    assert_eq!(states(port, ada, urgent["id"].as_str().unwrap()), ["bob:delivered"]);
    assert_eq!(states(port, ada, review["id"].as_str().unwrap()), ["bob:queued"]);
    // The next turn brings the rest, labelled with its subject, thread and ask.
    let (_, context) = delivered(&hook(&root, "prompt-submit", "s1", &dirs[1])).unwrap();
    let thread = review["thread"].as_str().unwrap();
    assert!(context.contains(&format!("thread {thread}]\nSubject: Release notes\n")), "{context}");
    assert!(context.contains("call peer_ack") && context.contains("canary rollout"), "{context}");
    assert_eq!(states(port, ada, review["id"].as_str().unwrap()), ["bob:delivered"]);
    // bob confirms and replies: acknowledged, a receipt, the same thread.
    let review_id = review["id"].as_str().unwrap();
    assert_eq!(tool(port, bob, "peer_ack", json!({"messageId": review_id}))["receipt"], true);
    assert_eq!(states(port, ada, review_id), ["bob:acknowledged"]);
    let cli: Value = serde_json::from_slice(&root.ctl(&["peer", "outbox", "ada", "--json"]).stdout).unwrap();
    assert_eq!(cli[1]["deliveries"][0]["state"], "acknowledged", "{cli}");
    let reply = tool(port, bob, "peer_reply", json!({"messageId": review_id, "body": "The canary section is fine."}));
    assert_eq!(reply["thread"], thread);
    let (_, context) = delivered(&hook(&root, "prompt-submit", "s2", &dirs[0])).unwrap();
    assert!(context.contains("[Receipt] bob acknowledged \"Release notes\""), "{context}");
    assert!(
        context.contains(&format!("thread {thread}]\nSubject: Release notes\nThe canary section is fine.")),
        "{context}"
    );
    let rows = tool(port, ada, "peer_thread", json!({"thread": thread}));
    let ids: Vec<&str> = rows["messages"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!((ids.first(), ids.last()), (Some(&review_id), Some(&reply["id"].as_str().unwrap())), "{rows}");
    // History search finds the delivered message by a word of its body.
    let hits = tool(port, bob, "peer_messages_search", json!({"query": "rollout"}));
    let hits = &hits["messages"];
    assert_eq!(hits[0]["id"], review_id, "{hits}");
    assert_eq!(hits[0]["direction"], "received");
    let history: Value =
        serde_json::from_slice(&root.ctl(&["peer", "history", "bob", "--with", "ada", "--json"]).stdout).unwrap();
    assert!(
        history.as_array().unwrap().iter().any(|r| r["id"] == reply["id"] && r["direction"] == "sent"),
        "{history}"
    );

    // An urgent message waiting as bob's turn ends blocks the stop once.
    let last = tool(port, ada, "peer_send", json!({"to": "bob", "importance": "urgent", "message": "One more thing."}));
    let (event, reason) = delivered(&hook(&root, "stop", "s1", &dirs[1])).expect("the stop is blocked");
    assert_eq!(event, "Stop");
    assert!(reason.contains("One more thing."), "{reason}");
    assert_eq!(hook(&root, "stop", "s1", &dirs[1]), "", "never twice for one message");
    assert_eq!(states(port, ada, last["id"].as_str().unwrap()), ["bob:delivered"]);
    // ada has sent 3 messages this minute; the limit is 5: the sixth is refused.
    for text in ["four", "five"] {
        tool(port, ada, "peer_send", json!({"to": "bob", "message": text}));
    }
    let (err, text) = mcp_tool(port, ada, "peer_send", json!({"to": "bob", "message": "six"}));
    assert!(
        err && text.contains("presence.peer_send_rate (5 per minute)") && text.contains("peer.rate_limited"),
        "{text}"
    );

    // The operator writes to peers without a link, urgently, as a group.
    let out = root.ctl(&["peer", "send", "--from", "operator", "--urgent", "ada", "cyd", "Freeze all merges."]);
    assert!(out.status.success(), "{}", stderr(&out));
    for dir in [&dirs[0], &dirs[2]] {
        let (_, context) = delivered(&hook(&root, "post-tool", "s3", dir)).unwrap();
        assert!(
            context.starts_with("[Message from the operator at ") && context.contains("Freeze all merges."),
            "{context}"
        );
    }
}

/// What a mailbox file holds: each message id by its state (0 queued,
/// 1 delivered, 2 acknowledged), and how often each receipt appears.
fn mailbox_states(root: &Root, peer: &str) -> (std::collections::BTreeMap<String, u8>, Vec<String>) {
    let path = root.paths.store.join(format!("inbox/{peer}.json"));
    let doc: Value = std::fs::read(&path).map(|b| serde_json::from_slice(&b).unwrap()).unwrap_or(Value::Null);
    let mut states = std::collections::BTreeMap::new();
    let mut receipts = Vec::new();
    for m in doc["messages"].as_array().into_iter().flatten() {
        let id = m["id"].as_str().unwrap().to_owned();
        if m.get("receiptFor").is_some() {
            receipts.push(id.clone());
        }
        assert!(states.insert(id, 0).is_none(), "a message twice in {peer}'s inbox");
    }
    for k in doc["received"].as_array().into_iter().flatten() {
        let id = k["id"].as_str().unwrap().to_owned();
        if k.get("receiptFor").is_some() {
            receipts.push(id.clone());
        }
        let state = if k.get("acknowledgedAt").is_some() { 2 } else { 1 };
        // Waiting and delivered at once: re-delivery of a delivered message.
        assert!(states.insert(id.clone(), state).is_none(), "{id} is both waiting and delivered for {peer}");
    }
    (states, receipts)
}

#[test]
fn sigkill_while_sending_delivering_and_acknowledging_loses_repeats_and_reverses_nothing() {
    let iterations: usize = std::env::var("MEMORYD_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let config = "[presence]\ninbox_capacity = 100000\npeer_send_rate = 100000\nhistory_max = 100000\n";
    let (root, _dirs) = fleet_root(&["ada", "bob"], config);
    let mut rng = Rng::seeded();
    let seed = rng.0;
    {
        let _daemon = root.start_daemon();
        assert!(root.ctl(&["peer", "link", "ada", "bob"]).status.success());
    }
    // What a reply confirmed: sends, deliveries (leases acknowledged) and
    // acknowledgements; and every state seen so far.
    let (mut sent, mut delivered, mut confirmed) = (Vec::new(), Vec::new(), Vec::new());
    let mut seen: std::collections::BTreeMap<String, u8> = std::collections::BTreeMap::new();
    for _ in 0..iterations {
        let worker_seed = rng.next(u64::MAX) | 1;
        let known = delivered.clone();
        let (new_sent, new_delivered, new_confirmed) = kill_during(&root, &mut rng, |stop| {
            let mut rng = Rng(worker_seed);
            let (mut sent, mut delivered, mut confirmed) = (Vec::new(), known, Vec::new());
            let mut new_delivered = Vec::new();
            let Ok(mut conn) = Conn::open(&root.socket()) else { return (sent, new_delivered, confirmed) };
            conn.hello();
            while !stop.load(Ordering::Relaxed) {
                let reply = match rng.next(3) {
                    0 => {
                        let r = conn.request(
                            "peer.send",
                            json!({"from": "ada", "to": "bob", "message": "m", "ackRequired": true}),
                        );
                        if let Some(id) = r["result"]["id"].as_str() {
                            sent.push(id.to_owned());
                        }
                        r
                    }
                    1 => {
                        let r = conn.request("peer.inbox", json!({"personality": "bob", "lease": true}));
                        let ids: Vec<String> = r["result"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|m| m["id"].as_str().unwrap().to_owned())
                            .collect();
                        if ids.is_empty() {
                            r
                        } else {
                            let a = conn.request("peer.ack", json!({"personality": "bob", "ids": ids}));
                            if a["result"]["acked"].is_u64() {
                                delivered.extend(ids.iter().cloned());
                                new_delivered.extend(ids);
                            }
                            a
                        }
                    }
                    _ => match delivered.get(rng.next(delivered.len().max(1) as u64) as usize).cloned() {
                        Some(id) => {
                            let r = conn.request("peer.acknowledge", json!({"personality": "bob", "messageId": id}));
                            if r["result"]["messageId"].is_string() {
                                confirmed.push(id);
                            }
                            r
                        }
                        None => continue,
                    },
                };
                if reply.is_null() {
                    break; // the daemon died
                }
            }
            (sent, new_delivered, confirmed)
        });
        sent.extend(new_sent);
        delivered.extend(new_delivered);
        confirmed.extend(new_confirmed);
        let (bob, _) = mailbox_states(&root, "bob");
        let (_, receipts) = mailbox_states(&root, "ada");
        for id in &sent {
            assert!(bob.contains_key(id), "seed {seed}: acknowledged send {id} was lost");
        }
        for id in &delivered {
            assert!(bob.get(id).is_some_and(|s| *s >= 1), "seed {seed}: {id} waits again after its delivery");
        }
        for id in &confirmed {
            assert_eq!(bob.get(id), Some(&2), "seed {seed}: the acknowledgement of {id} was lost");
        }
        for (id, state) in &bob {
            let receipt = format!("rcpt-{id}-bob");
            let copies = receipts.iter().filter(|r| **r == receipt).count();
            if *state == 2 {
                assert_eq!(copies, 1, "seed {seed}: the receipt of {id} is lost or doubled");
            }
            if let Some(before) = seen.insert(id.clone(), *state) {
                assert!(*state >= before, "seed {seed}: {id} went back from {before} to {state}");
            }
        }
    }
    assert!(
        !sent.is_empty() && !delivered.is_empty() && !confirmed.is_empty(),
        "the crash test did too little (seed {seed})"
    );
}
