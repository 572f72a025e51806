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
    // The daemon takes it briefly itself (a presence sweep, a sweep's
    // record): wait for a free moment, bounded.
    let lock = std::fs::File::open(root.paths.store.join("store.lock")).unwrap();
    assert!(eventually(|| lock.try_lock().is_ok()), "the daemon never let go of the store lock");
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
    assert_eq!(list["result"]["tools"].as_array().map(Vec::len), Some(10), "{list}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "MCP initialize and tools/list took {took:?}:\n{}", daemon.log());
    assert!(stuck.iter().all(|t| !t.is_finished()), "the store writes were still waiting meanwhile");

    // Released, the waiting writes go through.
    drop(lock);
    for t in stuck {
        let (err, text) = t.join().unwrap();
        assert!(!err, "{text}");
        assert!(text.contains("\"to\":\"bob\"") && text.contains("\"queued\":true"), "{text}");
    }
}

/// Any web server on the MCP port: a python3 program that answers every
/// request with HTTP 200 and `{}` (with SO_REUSEADDR, as web servers set
/// it, so the port is free again once it is killed). Killed when dropped.
struct StandIn(std::process::Child);

impl StandIn {
    fn start(root: &Root, port: u16) -> StandIn {
        let script = "import socket, sys, threading\n\
                      s = socket.socket()\n\
                      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                      s.bind(('127.0.0.1', int(sys.argv[1])))\n\
                      s.listen(16)\n\
                      def answer(c):\n\
                      \x20   c.settimeout(5)\n\
                      \x20   try:\n\
                      \x20       data = b''\n\
                      \x20       while b'\\r\\n\\r\\n' not in data:\n\
                      \x20           chunk = c.recv(65536)\n\
                      \x20           if not chunk:\n\
                      \x20               break\n\
                      \x20           data += chunk\n\
                      \x20       c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\n{}')\n\
                      \x20   except OSError:\n\
                      \x20       pass\n\
                      \x20   c.close()\n\
                      while True:\n\
                      \x20   c, _ = s.accept()\n\
                      \x20   threading.Thread(target=answer, args=(c,), daemon=True).start()\n";
        let child = root
            .command(std::path::Path::new("/usr/bin/python3"))
            .args(["-c", script, &port.to_string()])
            .spawn()
            .unwrap();
        let mut stand_in = StandIn(child);
        let listening = eventually(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(listening && stand_in.0.try_wait().unwrap().is_none(), "the python3 stand-in does not listen");
        stand_in
    }

    /// How `status` and `verify` must name it.
    fn named(&self) -> String {
        format!("python3 (pid {})", self.0.id())
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `mcp-endpoint` line of `verify`.
fn endpoint_line(root: &Root) -> String {
    let out = root.ctl(&["verify"]);
    let text = stdout(&out);
    text.lines().find(|l| l.contains("mcp-endpoint")).unwrap_or_else(|| panic!("{text}{}", stderr(&out))).to_owned()
}

#[test]
fn verify_proves_the_mcp_endpoint_is_this_daemon_not_any_program_answering_200() {
    let (root, port) = world();
    let stand_in = StandIn::start(&root, port);
    // No daemon: verify runs here and finds the stand-in on the port.
    let line = endpoint_line(&root);
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(line.contains(&format!("port {port} is held by {}, not by memoryd", stand_in.named())), "{line}");
    drop(stand_in);

    let daemon = root.start_daemon();
    let line = endpoint_line(&root);
    assert!(line.starts_with("ok "), "{line}\n{}", daemon.log());
    assert!(line.contains(&format!("as memoryd (pid {})", daemon.pid())), "{line}");
    let status: Value = serde_json::from_slice(&root.ctl(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["mcp"]["listening"], true, "{status}");
    assert_eq!(status["mcp"]["error"], Value::Null, "{status}");
    assert_eq!(status["mcp"]["uidCheck"], true, "{status}");
    assert_eq!(status["mcp"]["uidCheckReason"], Value::Null, "{status}");
}

#[test]
fn status_and_verify_name_the_program_that_took_the_mcp_port() {
    let (root, port) = world();
    let stand_in = StandIn::start(&root, port);
    let daemon = root.start_daemon();
    let taken = format!("port {port} is taken by {}", stand_in.named());

    let out = root.ctl(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["mcp"]["listening"], false, "{status}");
    let error = status["mcp"]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with(&taken), "{status}\n{}", daemon.log());
    assert!(status["problems"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().contains(&taken)), "{status}");
    let text = stdout(&root.ctl(&["status"]));
    assert!(text.lines().any(|l| l.starts_with("mcp") && l.contains(&format!("not listening: {taken}"))), "{text}");

    let line = endpoint_line(&root);
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(line.contains(&format!("held by {}, not by memoryd", stand_in.named())), "{line}");
}
