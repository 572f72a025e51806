//! The daemon's answers about itself stay prompt and true: a stuck store
//! write does not stall the control socket or the MCP endpoint, and
//! `status` and `verify` name what holds the MCP port when it is not us.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Peers ada and bob (claude) and the MCP endpoint on a free port.
fn world() -> (Root, u16) {
    let root = Root::bare();
    let port = free_port();
    root.write_config(&format!("mcp_port = {port}\n"));
    let (ada, bob) = (root.peer_dir("ada"), root.peer_dir("bob"));
    root.write_fleet_map(&[("ada", &ada, &["claude"]), ("bob", &bob, &["claude"])]);
    (root, port)
}

#[test]
fn status_and_mcp_answer_promptly_while_store_writes_wait_for_the_store_lock() {
    let (root, port) = world();
    let daemon = root.start_daemon();
    assert!(root.ctl(&["peer", "link", "ada", "bob"]).status.success());
    // Another process holds the store lock: every store write waits for it.
    let lock = std::fs::File::open(root.paths.store.join("store.lock")).unwrap();
    lock.try_lock().unwrap();
    // More stuck writes than the daemon has async workers (two).
    let stuck: Vec<_> = (0..4)
        .map(|n| {
            std::thread::spawn(move || {
                mcp_tool(port, "claude-ada", "peer_send", json!({"to": "bob", "message": format!("note {n}")}))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let status = root.ctl(&["status", "--json"]);
    let took = started.elapsed();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["running"], true, "status was not answered by the daemon: {status}\n{}", daemon.log());
    assert!(took < Duration::from_secs(2), "status took {took:?} while store writes waited:\n{}", daemon.log());
    let started = Instant::now();
    let init = mcp(
        port,
        "claude-bob",
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}),
    );
    assert_eq!(init["result"]["serverInfo"]["name"], "memoryd", "{init}");
    let list = mcp(port, "claude-bob", "tools/list", json!({}));
    assert_eq!(list["result"]["tools"].as_array().map(Vec::len), Some(5), "{list}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "MCP initialize and tools/list took {took:?}:\n{}", daemon.log());
    assert!(stuck.iter().all(|t| !t.is_finished()), "the store writes were still waiting meanwhile");

    // Released, the waiting writes go through.
    drop(lock);
    for t in stuck {
        let (err, text) = t.join().unwrap();
        assert!(!err, "{text}");
        assert!(text.contains("\"deliveredTo\":\"bob\""), "{text}");
    }
}
