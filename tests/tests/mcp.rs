//! The memory MCP endpoint as a real client speaks it, and the fragments.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

struct World {
    root: Root,
    port: u16,
    vault: PathBuf,
    dirs: Vec<PathBuf>,
}

/// Peers ada, bob, cyd (claude), a vault with one shared note, a floor of
/// 1.0, and the daemon's MCP endpoint on a free port.
fn world() -> World {
    let root = Root::bare();
    let port = free_port();
    let vault = root.dir.path().join("vault");
    std::fs::create_dir_all(vault.join("ops")).unwrap();
    std::fs::write(vault.join("ops/kafka.md"), "---\ntitle: Kafka tuning\nauthor: ops\n---\nBatch sizes and linger.\n")
        .unwrap();
    root.write_config(&format!(
        "mcp_port = {port}\nvault = \"{}\"\n[presence]\nmin_client_version = \"1.0\"\n",
        vault.display()
    ));
    let names = ["ada", "bob", "cyd"];
    let dirs = root.claude_fleet(&names);
    World { root, port, vault, dirs }
}

fn attach(root: &Root, node: &str, version: &str) {
    let out = root.ctl(&["attach", "--node", node, "--session", &format!("s-{node}"), "--client-version", version]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn paths_of(text: &str) -> Vec<String> {
    let found: Value = serde_json::from_str(text).unwrap();
    found["results"].as_array().unwrap().iter().map(|h| h["path"].as_str().unwrap().to_owned()).collect()
}

fn fragment(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(".iapeer/fragments/memoryd.md")).unwrap_or_default()
}

#[test]
fn an_mcp_client_searches_reads_writes_and_messages_within_its_zones() {
    let w = world();
    let daemon = w.root.start_daemon();
    let port = w.port;
    attach(&w.root, "claude-ada", "1.0");
    attach(&w.root, "claude-bob", "1.2");
    attach(&w.root, "claude-cyd", "0.9");

    let init = mcp(
        port,
        "claude-ada",
        "initialize",
        json!({
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"},
        }),
    );
    assert_eq!(init["result"]["serverInfo"]["name"], "memoryd", "{init}");
    let list = mcp(port, "claude-ada", "tools/list", json!({}));
    let mut names: Vec<&str> =
        list["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "memory_read",
            "memory_search",
            "memory_write",
            "peer_ack",
            "peer_messages_search",
            "peer_outbox",
            "peer_reply",
            "peer_send",
            "peer_thread",
            "peers_list"
        ]
    );

    // Ada writes in her zone; she and (once linked) Bob find it, Cyd not.
    let (err, text) = mcp_tool(
        port,
        "claude-ada",
        "memory_write",
        json!({"title": "Deploy checklist", "body": "Canary first, then the fleet.", "tags": ["ops"]}),
    );
    assert!(!err, "{text}");
    let written: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(written["path"], "peers/ada/deploy-checklist.md");
    assert_eq!(written["created"], true);
    let note = std::fs::read_to_string(w.vault.join("peers/ada/deploy-checklist.md")).unwrap();
    assert!(note.starts_with("---\ntitle: \"Deploy checklist\"\nauthor: ada\n"), "{note}");
    let search = |node: &str, q: &str| paths_of(&mcp_tool(port, node, "memory_search", json!({"query": q})).1);
    assert_eq!(search("claude-ada", "canary"), ["peers/ada/deploy-checklist.md"]);
    assert!(search("claude-bob", "canary").is_empty(), "not linked yet");
    assert!(w.root.ctl(&["peer", "link", "ada", "bob"]).status.success());
    assert_eq!(search("claude-bob", "canary"), ["peers/ada/deploy-checklist.md"]);
    assert!(search("claude-cyd", "canary").is_empty());
    assert_eq!(search("claude-cyd", "kafka"), ["ops/kafka.md"], "shared notes are for everyone");

    // Reads: within the vault and the caller's zones only.
    let (err, text) = mcp_tool(port, "claude-bob", "memory_read", json!({"path": "peers/ada/deploy-checklist.md"}));
    assert!(!err && text.contains("Canary first"), "{text}");
    let (err, _) = mcp_tool(port, "claude-cyd", "memory_read", json!({"path": "peers/ada/deploy-checklist.md"}));
    assert!(err, "an unlinked peer's note is refused");
    let (err, text) = mcp_tool(port, "claude-ada", "memory_read", json!({"path": "../../etc/passwd"}));
    assert!(err && !text.contains("root:"), "{text}");

    // A read-only node (client below the floor) cannot write.
    let (err, text) = mcp_tool(port, "claude-cyd", "memory_write", json!({"title": "x", "body": "y"}));
    assert!(err && text.contains("version.floor_exceeded"), "{text}");
    let (err, text) = mcp_tool(port, "claude-cyd", "peer_send", json!({"to": "ada", "message": "hi"}));
    assert!(err && text.contains("version.floor_exceeded"), "{text}");

    // Peers and messages.
    let (_, text) = mcp_tool(port, "claude-ada", "peers_list", json!({}));
    let visible: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(visible["peers"][1]["personality"], "bob");
    assert_eq!(visible["peers"][1]["reason"], "peer");
    assert_eq!(visible["peers"][1]["state"], "online");
    let (err, text) =
        mcp_tool(port, "claude-ada", "peer_send", json!({"to": "bob", "message": "The checklist is in the vault."}));
    assert!(!err, "{text}");
    let (err, text) = mcp_tool(port, "claude-ada", "peer_send", json!({"to": "cyd", "message": "hi"}));
    assert!(err && text.contains("peer.not_visible"), "{text}");
    let printed = session_start(&w.root, &w.dirs[1]);
    assert!(
        printed.contains("[Peer message from `ada` at ") && printed.contains("The checklist is in the vault."),
        "{printed}"
    );
    drop(daemon);
}

/// Calls one MCP tool; the whole result.
fn call(port: u16, identity: &str, tool: &str, arguments: Value) -> Value {
    let v = mcp(port, identity, "tools/call", json!({"name": tool, "arguments": arguments}));
    assert!(v["result"].is_object(), "{tool}: {v}");
    v["result"].clone()
}

#[test]
fn every_tool_declares_an_output_schema_and_answers_structured_content_with_links_within_zones() {
    let w = world();
    std::fs::write(
        w.vault.join("ops/deploy.md"),
        "# Deploy\nTune [[kafka]] first; bob's notes: [plan](../peers/bob/plan.md).\n",
    )
    .unwrap();
    std::fs::create_dir_all(w.vault.join("peers/bob")).unwrap();
    std::fs::write(w.vault.join("peers/bob/plan.md"), "# Bob's plan\nAfter [the deploy](../../ops/deploy.md).\n")
        .unwrap();
    let daemon = w.root.start_daemon();
    let port = w.port;
    attach(&w.root, "claude-ada", "1.0");

    let list = mcp(port, "claude-ada", "tools/list", json!({}));
    let mut required = std::collections::HashMap::new();
    for tool in list["result"]["tools"].as_array().unwrap() {
        let name = tool["name"].as_str().unwrap();
        assert_eq!(tool["outputSchema"]["type"], "object", "{name}: {tool}");
        let reads =
            ["memory_search", "memory_read", "peers_list", "peer_outbox", "peer_thread", "peer_messages_search"]
                .contains(&name);
        assert_eq!(tool["annotations"]["readOnlyHint"], reads, "{name}: {tool}");
        required.insert(name.to_owned(), tool["outputSchema"]["required"].clone());
    }
    // A call as ada whose structured content holds what its schema requires.
    let call = |tool: &str, arguments: Value| {
        let result = call(port, "claude-ada", tool, arguments);
        for key in required[tool].as_array().unwrap() {
            let key = key.as_str().unwrap();
            assert!(result["structuredContent"].get(key).is_some(), "{tool} lacks {key}: {result}");
        }
        result
    };

    // Each answer: an object as structured content, its JSON as the text.
    let found = call("memory_search", json!({"query": "tuning kafka"}));
    assert_eq!(found["structuredContent"]["mode"], "lexical", "{found}");
    assert_eq!(found["structuredContent"]["results"][0]["path"], "ops/kafka.md", "{found}");
    let text: Value = serde_json::from_str(found["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(text, found["structuredContent"]);
    let peers = call("peers_list", json!({}));
    assert_eq!(peers["structuredContent"]["peers"][0]["personality"], "ada", "{peers}");

    // The graph: links and backlinks, each only if the caller may read it.
    let paths = |v: &Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|l| l["path"].as_str().unwrap().to_owned()).collect()
    };
    let read = call("memory_read", json!({"path": "ops/deploy.md"}));
    let note = &read["structuredContent"];
    assert!(note["text"].as_str().unwrap().contains("Tune [[kafka]]"), "{read}");
    assert_eq!(paths(&note["links"]), ["ops/kafka.md"], "bob's plan is not ada's to see: {read}");
    assert!(paths(&note["backlinks"]).is_empty(), "{read}");
    assert!(read["content"][0]["text"].as_str().unwrap().starts_with("# Deploy"), "the note's own text first");
    assert_eq!(read["content"][1]["text"], "Links to: `ops/kafka.md`");
    assert!(w.root.ctl(&["peer", "link", "ada", "bob"]).status.success());
    let read = call("memory_read", json!({"path": "ops/deploy.md"}));
    assert_eq!(paths(&read["structuredContent"]["links"]), ["ops/kafka.md", "peers/bob/plan.md"], "{read}");
    assert_eq!(paths(&read["structuredContent"]["backlinks"]), ["peers/bob/plan.md"], "{read}");
    let kafka = call("memory_read", json!({"path": "ops/kafka.md"}));
    assert_eq!(paths(&kafka["structuredContent"]["backlinks"]), ["ops/deploy.md"], "{kafka}");

    // A write answers its own links, and what links to it already.
    let written = call("memory_write", json!({"title": "Kafka", "body": "Mine; see [[deploy]]."}));
    let sent = call("peer_send", json!({"to": "bob", "message": "see ops/deploy.md"}));
    assert_eq!(sent["structuredContent"]["queued"], true, "{sent}");
    let outbox = call("peer_outbox", json!({}));
    assert_eq!(outbox["structuredContent"]["messages"][0]["id"], sent["structuredContent"]["id"], "{outbox}");
    let thread = call("peer_thread", json!({"thread": sent["structuredContent"]["thread"]}));
    assert!(thread["structuredContent"]["messages"].is_array(), "{thread}");
    let written = &written["structuredContent"];
    assert_eq!(written["path"], "peers/ada/kafka.md", "{written}");
    assert_eq!(paths(&written["links"]), ["ops/deploy.md"], "{written}");
    assert!(written["similar"].is_array(), "{written}");
    // A refusal is a tool error without structured content.
    let refused =
        mcp(port, "claude-ada", "tools/call", json!({"name": "memory_read", "arguments": {"path": "../x.md"}}));
    let refused = &refused["result"];
    assert_eq!((refused["isError"].as_bool(), refused.get("structuredContent")), (Some(true), None), "{refused}");
    drop(daemon);
}

#[test]
fn a_symlink_in_the_vault_opens_no_zone_to_a_tool() {
    let w = world();
    std::fs::create_dir_all(w.vault.join("peers/bob")).unwrap();
    std::fs::write(w.vault.join("peers/bob/secret.md"), "# Bob secret\nthe launch code\n").unwrap();
    std::os::unix::fs::symlink("../peers/bob/secret.md", w.vault.join("ops/alias.md")).unwrap();
    std::os::unix::fs::symlink(w.vault.join("peers/bob/secret.md"), w.vault.join("ops/absolute.md")).unwrap();
    let outside = w.root.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, w.vault.join("peers/ada")).unwrap();
    let daemon = w.root.start_daemon();
    attach(&w.root, "claude-ada", "1.0");

    // Ada is not linked with Bob: a link in the shared zone does not reach his note.
    for path in ["ops/alias.md", "ops/absolute.md"] {
        let (err, text) = mcp_tool(w.port, "claude-ada", "memory_read", json!({"path": path}));
        assert!(err && !text.contains("launch"), "{path}: {text}");
    }
    let (err, text) = mcp_tool(w.port, "claude-ada", "memory_search", json!({"query": "launch"}));
    assert!(!err && paths_of(&text).is_empty(), "{text}");
    // Bob reads his own note through the link.
    let (err, text) = mcp_tool(w.port, "claude-bob", "memory_read", json!({"path": "ops/alias.md"}));
    assert!(!err && text.contains("launch code"), "{text}");

    // Ada's zone is a link out of the vault: her write is refused and lands nowhere.
    let (err, text) = mcp_tool(w.port, "claude-ada", "memory_write", json!({"title": "Escape", "body": "out"}));
    assert!(err && text.contains("peers/ada") && text.contains("symbolic link"), "{text}\n{}", daemon.log());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn a_tool_argument_of_the_wrong_type_or_missing_is_a_tool_error_naming_it() {
    let w = world();
    let _daemon = w.root.start_daemon();
    attach(&w.root, "claude-ada", "1.0");
    for (tool, arguments, named) in [
        ("memory_read", json!({"path": 7}), "`path`"),
        ("memory_read", json!({}), "`path`"),
        ("memory_read", json!({"path": null}), "`path`"),
        ("memory_read", json!({"path": "ops/kafka.md", "pth": "x"}), "`pth`"),
        ("memory_search", json!({"query": "kafka", "limit": -1}), "`limit`"),
        ("memory_search", json!({"query": "kafka", "limit": "5"}), "`limit`"),
        ("memory_search", json!({"query": "kafka", "limit": 1.5}), "`limit`"),
        ("memory_search", json!({"query": "kafka", "limit": 0}), "`limit`"),
        ("memory_search", json!({"query": "kafka", "limit": 51}), "`limit`"),
        ("memory_search", json!({"query": ["kafka"]}), "`query`"),
        ("memory_search", json!({"query": "kafka", "scope": 2}), "`scope`"),
        ("memory_search", json!({"query": "kafka", "scope": "mine"}), "`scope`"),
        ("memory_write", json!({"title": "T"}), "`body`"),
        ("memory_write", json!({"title": "T", "body": "b", "tags": "ops"}), "`tags`"),
        ("memory_write", json!({"title": "T", "body": "b", "tags": ["ops", 1]}), "`tags`"),
        ("memory_write", json!({"title": "T", "body": "b", "replace": "yes"}), "`replace`"),
        ("memory_write", json!({"title": "Line\nauthor: bob", "body": "b"}), "`title`"),
        ("peer_send", json!({"to": 1, "message": "hi"}), "`to`"),
        ("peer_send", json!({"to": "bob"}), "`message`"),
    ] {
        let (err, text) = mcp_tool(w.port, "claude-ada", tool, arguments.clone());
        assert!(err && text.contains(named), "{tool} {arguments}: {text}");
        assert!(text.ends_with(|c: char| c.is_alphanumeric() || ")`\"".contains(c)), "one sentence: {text}");
    }
    // `arguments` itself must be an object.
    for arguments in [json!("ops/kafka.md"), json!(["ops/kafka.md"]), json!(3)] {
        let v = mcp(w.port, "claude-ada", "tools/call", json!({"name": "memory_read", "arguments": arguments}));
        let result = &v["result"];
        let text = result["content"][0]["text"].as_str().unwrap_or("");
        assert!(result["isError"] == true && text.contains("`arguments`"), "{arguments}: {v}");
    }
    // Nothing was written by the refused calls, and a right call still works.
    assert!(!w.vault.join("peers/ada").exists());
    let (err, text) = mcp_tool(w.port, "claude-ada", "memory_search", json!({"query": "kafka", "limit": 1}));
    assert!(!err && paths_of(&text) == ["ops/kafka.md"], "{text}");
}

#[test]
fn a_request_body_over_max_request_bytes_is_refused_with_a_sentence() {
    let w = world();
    w.root.write_config(&format!(
        "mcp_port = {}\nvault = \"{}\"\nmax_request_bytes = \"1KiB\"\n",
        w.port,
        w.vault.display()
    ));
    let _daemon = w.root.start_daemon();
    let query = "kafka ".repeat(200);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "memory_search", "arguments": {"query": query}}})
    .to_string();
    let headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("X-IAPeer-Identity", "claude-ada"),
    ];
    let answer = http_post(w.port, "/mcp", &headers, &body);
    assert_eq!(answer.status, 413, "{}", answer.body);
    let sentence: Value = serde_json::from_str(&answer.body).unwrap();
    assert!(sentence["error"].as_str().unwrap().contains("max_request_bytes (1024 bytes)"), "{sentence}");
    let (err, text) = mcp_tool(w.port, "claude-ada", "memory_search", json!({"query": "kafka"}));
    assert!(!err && text.contains("ops/kafka.md"), "a small request still passes: {text}");
}

/// The endpoint's bounds (constants in crates/memoryd/src/mcp.rs).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 256;

fn connect(port: u16, first_bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(first_bytes).unwrap();
    stream.set_nonblocking(true).unwrap();
    stream
}

/// Whether the server closed `stream` (end of stream or reset), draining
/// what it sent.
fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn initialize(port: u16) -> Value {
    let params =
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}});
    mcp(port, "claude-ada", "initialize", params)
}

#[test]
fn slow_clients_are_cut_off_at_the_header_deadline_and_a_good_client_is_still_served() {
    let w = world();
    let _daemon = w.root.start_daemon();
    let opened = Instant::now();
    // A partial request, then a byte every 250 ms: headers that never end.
    let mut drips: Vec<TcpStream> =
        (0..150).map(|_| connect(w.port, b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: ")).collect();
    let mut silent: Vec<TcpStream> = (0..50).map(|_| connect(w.port, b"")).collect();
    assert_eq!(initialize(w.port)["result"]["serverInfo"]["name"], "memoryd", "served while 200 clients stall");
    let bound = opened + HEADER_READ_TIMEOUT + Duration::from_secs(3);
    loop {
        for d in &mut drips {
            let _ = d.write_all(b"x");
        }
        let open = drips.iter_mut().chain(&mut silent).map(|s| !closed(s)).filter(|&o| o).count();
        if open == 0 {
            break;
        }
        assert!(Instant::now() < bound, "{open} slow connections still open after {:?}", opened.elapsed());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(opened.elapsed() >= HEADER_READ_TIMEOUT - Duration::from_millis(500), "closed before the deadline");
    assert_eq!(initialize(w.port)["result"]["serverInfo"]["name"], "memoryd", "served after they are gone");
}

#[test]
fn a_connection_over_the_limit_is_closed_at_once() {
    let w = world();
    let _daemon = w.root.start_daemon();
    let _held: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect(w.port, b"")).collect();
    let mut over = connect(w.port, b"");
    let refused_by = Instant::now() + Duration::from_secs(2);
    while !closed(&mut over) {
        assert!(Instant::now() < refused_by, "a connection over the limit of {MAX_CONNECTIONS} was kept open");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs bob's session-start hook; its stdout.
fn session_start(root: &Root, cwd: &Path) -> String {
    let shim = root.paths.hooks_dir.join("memoryd.claude.session-start.sh");
    let mut child =
        root.command(Path::new("/bin/sh")).arg(shim).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let input = json!({"session_id": "s-claude-bob", "cwd": cwd}).to_string();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    stdout(&wait_within(&mut child, CHILD_LIMIT))
}

#[test]
fn the_http_guard_refuses_foreign_origins_hosts_and_identities_before_mcp() {
    let w = world();
    let _daemon = w.root.start_daemon();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}})
    .to_string();
    let base = [("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream")];
    let with = |extra: &[(&str, &str)]| {
        let headers: Vec<(&str, &str)> = base.iter().chain(extra).copied().collect();
        http_post(w.port, "/mcp", &headers, &init)
    };
    let ok = with(&[("X-IAPeer-Identity", "claude-ada"), ("Origin", "http://localhost:3000")]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    for (extra, why) in [
        (vec![("X-IAPeer-Identity", "claude-ada"), ("Origin", "https://evil.example")], "Origin"),
        (vec![("X-IAPeer-Identity", "claude-ada"), ("Host", "evil.example:80")], "Host"),
        (vec![], "no identity"),
        (vec![("X-IAPeer-Identity", "claude-nobody")], "unknown identity"),
    ] {
        let refused = with(&extra);
        assert_eq!(refused.status, 403, "{why}: {}", refused.body);
        let sentence: Value = serde_json::from_str(&refused.body).unwrap();
        assert!(
            sentence["error"].as_str().unwrap().ends_with(|c: char| c.is_alphanumeric() || c == ')' || c == '"'),
            "{why}"
        );
    }
    let probe = http(w.port, "GET", "/.well-known/oauth-authorization-server", &[], "");
    assert_eq!(probe.status, 404);
    let status: Value = serde_json::from_slice(&w.root.ctl(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["mcp"]["listening"], true, "{status}");
    assert_eq!(status["vault"]["notes"], 1, "{status}");
    assert_eq!(status["vault"]["watching"], true, "{status}");
    let verify = w.root.ctl(&["verify"]);
    let text = stdout(&verify);
    assert!(text.lines().any(|l| l.starts_with("ok       mcp-endpoint")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("ok       vault") && l.contains("1 notes indexed")), "{text}");
}

#[test]
fn an_edited_note_reaches_search_and_the_fragments_that_can_read_it_without_a_restart() {
    let w = world();
    let daemon = w.root.start_daemon();
    assert!(w.root.ctl(&["peer", "link", "ada", "bob"]).status.success());
    let (ada, bob, cyd) = (&w.dirs[0], &w.dirs[1], &w.dirs[2]);
    assert!(eventually(|| fragment(bob).contains("- `ada` (")), "{}\n{}", fragment(bob), daemon.log());
    assert!(
        eventually(|| fragment(cyd).contains("## Recent notes\n\n- Kafka tuning by `ops` — `ops/kafka.md`")),
        "{}",
        fragment(cyd)
    );
    for section in ["## memoryd", "## Linked peers", "## Recent notes", "## Peer messages"] {
        assert!(fragment(ada).contains(section), "{section}");
    }
    assert!(fragment(ada).contains(&format!("http://127.0.0.1:{}/mcp", w.port)));

    // Edit the shared note on disk: search and every fragment follow.
    std::fs::write(w.vault.join("ops/kafka.md"), "---\ntitle: Kafka retention\n---\nRetention is seven days.\n")
        .unwrap();
    assert!(
        eventually(|| mcp_tool(w.port, "claude-cyd", "memory_search", json!({"query": "retention"}))
            .1
            .contains("Kafka retention")),
        "{}",
        daemon.log()
    );
    assert!(eventually(|| fragment(ada).contains("Kafka retention") && fragment(cyd).contains("Kafka retention")));

    // A note in Ada's zone: Bob's fragment lists it, Cyd's keeps its mtime.
    std::thread::sleep(Duration::from_millis(600));
    let cyd_before = std::fs::metadata(cyd.join(".iapeer/fragments/memoryd.md")).unwrap().modified().unwrap();
    std::fs::create_dir_all(w.vault.join("peers/ada")).unwrap();
    std::fs::write(w.vault.join("peers/ada/plan.md"), "# Ada's plan\nship it\n").unwrap();
    assert!(eventually(|| fragment(bob).contains("Ada's plan")), "{}", fragment(bob));
    std::thread::sleep(Duration::from_millis(600));
    assert!(!fragment(cyd).contains("Ada's plan"));
    let cyd_after = std::fs::metadata(cyd.join(".iapeer/fragments/memoryd.md")).unwrap().modified().unwrap();
    assert_eq!(cyd_before, cyd_after, "a fragment whose inputs did not change keeps its mtime");
}

#[test]
fn edits_renames_deletes_and_moved_directories_update_only_their_notes_and_the_fuse_still_holds() {
    let w = world();
    std::fs::create_dir_all(w.vault.join("area")).unwrap();
    for i in 0..30 {
        std::fs::write(w.vault.join(format!("area/n{i}.md")), format!("# Note {i}\nfiller text {i}\n")).unwrap();
    }
    let daemon = w.root.start_daemon();
    let search = |q: &str| paths_of(&mcp_tool(w.port, "claude-ada", "memory_search", json!({"query": q})).1);
    assert!(eventually(|| search("kafka") == ["ops/kafka.md"]), "{}", daemon.log());
    let rescans = || daemon.log().matches("vault indexed").count();
    assert_eq!(rescans(), 1, "the start-up scan:\n{}", daemon.log());

    // Edit: the new words are found at once, the old ones no more; the
    // stem finds a relative of the word.
    std::fs::write(w.vault.join("ops/kafka.md"), "# Kafka\nStabilized the consumers.\n").unwrap();
    assert!(eventually(|| search("stabilizing") == ["ops/kafka.md"]), "{}", daemon.log());
    assert!(search("linger").is_empty());
    // Rename and delete: the old path goes.
    std::fs::rename(w.vault.join("ops/kafka.md"), w.vault.join("ops/streams.md")).unwrap();
    assert!(eventually(|| search("consumers") == ["ops/streams.md"]), "{}", daemon.log());
    std::fs::remove_file(w.vault.join("ops/streams.md")).unwrap();
    assert!(eventually(|| search("consumers").is_empty()), "{}", daemon.log());
    // A burst of edits to many notes: the last version of each counts.
    for round in 0..3 {
        for i in 0..30 {
            std::fs::write(w.vault.join(format!("area/n{i}.md")), format!("# Note {i}\nround{round} text\n")).unwrap();
        }
    }
    assert!(eventually(|| search("round2").len() == 10 && search("round0").is_empty()), "{}", daemon.log());

    // A directory moved in brings its notes, moved out takes them along.
    let outside = w.root.dir.path().join("small");
    std::fs::create_dir_all(outside.join("deeper")).unwrap();
    std::fs::write(outside.join("deeper/one.md"), "# One\nsmallish words\n").unwrap();
    std::fs::rename(&outside, w.vault.join("small")).unwrap();
    assert!(eventually(|| search("smallish") == ["small/deeper/one.md"]), "{}", daemon.log());
    std::fs::rename(w.vault.join("small"), &outside).unwrap();
    assert!(eventually(|| search("smallish").is_empty()), "{}", daemon.log());
    assert_eq!(rescans(), 1, "no change above needed a rescan:\n{}", daemon.log());
    // Most of the vault gone at once: the rescan's fuse keeps the index.
    std::fs::rename(w.vault.join("area"), w.root.dir.path().join("area-out")).unwrap();
    assert!(eventually(|| daemon.log().contains("a rescan would drop most of the vault")), "{}", daemon.log());
    assert_eq!(search("round2").len(), 10, "the old index stays");
}
