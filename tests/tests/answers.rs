//! memoryctl's answers are true: `--json` is a contract, a socket closed
//! by its modes is reported as such, the store is read from disk when the
//! daemon is down, a root with no install says so, and names are checked
//! against the fleet.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

/// A root with peers `ada` and `bob` (claude), both wired, a fake iapeer
/// that lists them, and a daemon-ready config.
fn fleet_root() -> (Root, FakeIapeer, Vec<PathBuf>) {
    let root = Root::bare();
    let iapeer = root.fake_iapeer();
    root.write_config(&format!("mcp_port = 0\niapeer_bin = {:?}\n", iapeer.bin.to_str().unwrap()));
    let dirs: Vec<PathBuf> = ["ada", "bob"].iter().map(|n| root.peer_dir(n)).collect();
    let peers: Vec<(&str, &Path, &[&str])> =
        vec![("ada", dirs[0].as_path(), &["claude"][..]), ("bob", dirs[1].as_path(), &["claude"][..])];
    iapeer.set_listing(&peers);
    root.write_fleet_map(&peers);
    for (name, dir) in ["ada", "bob"].iter().zip(&dirs) {
        let out =
            root.ctl(&["provision-peer", "--cwd", dir.to_str().unwrap(), "--runtime", "claude", "--personality", name]);
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    }
    (root, iapeer, dirs)
}

/// stdout as exactly one JSON document (trailing text fails the parse).
fn document(args: &[&str], out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("memoryctl {}: stdout is not one JSON document ({e}):\n{}{}", args.join(" "), stdout(out), stderr(out))
    })
}

/// Runs a command with `--json` that must succeed; its document.
fn ok(root: &Root, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = root.ctl(&all);
    assert!(out.status.success(), "memoryctl {}: {}{}", all.join(" "), stdout(&out), stderr(&out));
    let doc = document(&all, &out);
    assert!(doc.get("error").is_none(), "{doc}");
    doc
}

/// Runs a command with `--json` that must fail with this exit code and
/// kind; its message.
fn fails(root: &Root, args: &[&str], code: i32, kind: &str) -> String {
    let mut all = args.to_vec();
    all.push("--json");
    let out = root.ctl(&all);
    assert_eq!(out.status.code(), Some(code), "memoryctl {}: {}{}", all.join(" "), stdout(&out), stderr(&out));
    let doc = document(&all, &out);
    assert_eq!(doc["error"]["kind"], kind, "memoryctl {}: {doc}", all.join(" "));
    let message = doc["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(!message.is_empty() && stderr(&out).contains(&message), "{doc}\n{}", stderr(&out));
    message
}

#[test]
fn every_command_with_json_prints_one_json_document_on_success_and_on_failure() {
    let (root, iapeer, dirs) = fleet_root();
    let (ada, bob) = (dirs[0].to_str().unwrap(), dirs[1].to_str().unwrap());
    let vault = root.dir.path().join("vault");
    let init = ["init", "--vault", vault.to_str().unwrap(), "--iapeer-bin", iapeer.bin.to_str().unwrap()];

    // Daemon down: what needs it fails with a kind; the rest answer.
    for args in [
        &["reload"][..],
        &["sweep"],
        &["shutdown"],
        &["heartbeat", "--node", "claude-ada"],
        &["detach", "--node", "claude-ada"],
        &["peer", "visible", "ada"],
    ] {
        fails(&root, args, 1, "daemon.not_running");
    }
    assert_eq!(ok(&root, &["daemon", "stop"])["how"], "none");
    assert_eq!(ok(&root, &["events"]), Value::Array(Vec::new()));
    assert_eq!(ok(&root, &["config", "check"])["ok"], true);
    assert_eq!(ok(&root, &init)["ok"], true);
    let verify = root.ctl(&["verify", "--json"]);
    assert!(document(&["verify"], &verify)["checks"].is_array());

    // Usage errors exit 2 with the kind request.invalid.
    fails(&root, &["status", "--no-such-flag"], 2, "request.invalid");
    fails(&root, &["attach", "--node", "claude-ada"], 2, "request.invalid");
    fails(&root, &["uninstall"], 2, "request.invalid");
    fails(&root, &["update", "--skip", "no-such-step"], 2, "request.invalid");
    fails(
        &root,
        &["provision-peer", "--cwd", "relative", "--runtime", "claude", "--personality", "ada"],
        2,
        "request.invalid",
    );
    fails(
        &root,
        &["init", "--vault", vault.to_str().unwrap(), "--iapeer-bin", "relative/iapeer"],
        2,
        "request.invalid",
    );
    fails(&root, &["events", "--follow", "--no-such-flag"], 2, "request.invalid");

    let started = ok(&root, &["daemon", "start"]);
    assert_eq!(started["started"], true, "{started}");
    let pid = started["pid"].clone();
    let again = ok(&root, &["daemon", "start"]);
    assert_eq!((again["started"].clone(), again["pid"].clone()), (Value::Bool(false), pid.clone()), "{again}");
    assert_eq!(ok(&root, &["status"])["running"], true);
    assert_eq!(ok(&root, &["reload"])["reloaded"], true);
    assert!(ok(&root, &["sweep"])["ok"].is_boolean());
    assert!(ok(&root, &["verify"])["checks"].is_array());
    assert!(ok(&root, &["update", "--skip", "memoryd"])["steps"].is_array());
    ok(&root, &["provision-peer", "--cwd", ada, "--runtime", "claude", "--personality", "ada"]);

    // Presence: heartbeat and detach say what they did, not `null`.
    let attached = ok(&root, &["attach", "--node", "claude-ada", "--session", "s1", "--client-version", "1.0"]);
    assert_eq!(attached["state"], "online", "{attached}");
    let beat = ok(&root, &["heartbeat", "--node", "claude-ada"]);
    assert_eq!((beat["nodeId"].as_str(), beat["recorded"].as_bool()), (Some("claude-ada"), Some(true)), "{beat}");
    fails(&root, &["heartbeat", "--node", "claude-ada", "--session", "old"], 1, "runtimenode.stale_session");
    ok(&root, &["peers"]);
    let events = ok(&root, &["events", "--node", "claude-ada"]);
    assert!(events.as_array().is_some_and(|e| !e.is_empty()), "{events}");
    let detached = ok(&root, &["detach", "--node", "claude-ada"]);
    assert_eq!(detached["detached"], true, "{detached}");
    fails(&root, &["detach", "--node", "claude-ada"], 1, "runtimenode.not_attached");
    ok(&root, &["revoke", "claude-bob"]);
    ok(&root, &["unrevoke", "claude-bob"]);

    // Peers: a message that waits is `queued`, not `deliveredTo`.
    fails(&root, &["peer", "send", "--from", "ada", "bob", "hi"], 1, "peer.not_visible");
    ok(&root, &["peer", "link", "ada", "bob"]);
    assert_eq!(ok(&root, &["peer", "visible", "ada"]).as_array().map(Vec::len), Some(2));
    let sent = ok(&root, &["peer", "send", "--from", "ada", "bob", "hi"]);
    assert_eq!((sent["queued"].as_bool(), sent["to"].as_str()), (Some(true), Some("bob")), "{sent}");
    assert!(sent.get("deliveredTo").is_none(), "{sent}");
    assert_eq!(ok(&root, &["peer", "inbox", "bob"]).as_array().map(Vec::len), Some(1));
    assert_eq!(ok(&root, &["peer", "unlink", "ada", "bob"])["unlinked"], true);
    ok(&root, &["unprovision-peer", "--cwd", bob, "--runtime", "claude", "--personality", "bob"]);

    // The one stream: one JSON object per line.
    let mut follow = root
        .command(&bins().memoryctl)
        .arg("--root")
        .arg(&root.paths.root)
        .args(["events", "--follow", "--json", "--node", "claude-ada"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = std::io::BufReader::new(follow.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    ok(&root, &["attach", "--node", "claude-ada", "--session", "s2", "--client-version", "1.0"]);
    let mut streamed = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        let event: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        assert!(event.is_object(), "{line}");
        streamed.push(event);
        if streamed.iter().any(|e| e["sessionId"] == "s2") {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(streamed.iter().any(|e| e["sessionId"] == "s2"), "{streamed:?}");

    // A command that ran and found problems prints its own document.
    let config = std::fs::read_to_string(&root.paths.default_config).unwrap();
    root.write_config(&format!("{config}sweep_intervl = \"5m\"\n"));
    let out = root.ctl(&["config", "check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(document(&["config", "check"], &out)["ok"], false);
    fails(&root, &["reload"], 1, "config.invalid");
    root.write_config(&config);

    let stopped = ok(&root, &["shutdown"]);
    assert_eq!((stopped["stopped"].as_bool(), stopped["pid"].clone()), (Some(true), pid), "{stopped}");
    let uninstalled = ok(&root, &["uninstall", "--yes"]);
    assert_eq!(uninstalled["ok"], true, "{uninstalled}");
}

/// Runs memoryctl as `nobody` against `root`.
fn ctl_as_nobody(root: &Root, args: &[&str]) -> Output {
    root.command(Path::new("/usr/bin/setpriv"))
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bins().memoryctl)
        .arg("--root")
        .arg(&root.paths.root)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_socket_closed_by_its_modes_is_reported_as_permission_denied_with_its_path() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to run a client as nobody");
        return;
    }
    let root = Root::new();
    let _daemon = root.start_daemon();
    // Every directory down to the socket opened, the socket left 0600 as
    // the daemon made it: connect() itself gets EACCES.
    let top = root.dir.path().parent().unwrap();
    for dir in root.paths.state.ancestors().take_while(|d| *d != top) {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let socket = root.socket().display().to_string();
    let out = ctl_as_nobody(&root, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("os error 13"), "not a real EACCES: {err}");
    assert!(!err.contains("not running") && !err.contains("not answering"), "{err}");
    assert!(err.contains(&format!("permission denied on memoryd's control socket {socket} (owned by uid 0")), "{err}");
    assert!(err.contains("run memoryctl as uid 0"), "{err}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["kind"], "connection.permission_denied", "{doc}");
    // The state dir closed again: the directory is what keeps us out.
    std::fs::set_permissions(&root.paths.state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let out = ctl_as_nobody(&root, &["peers"]);
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("os error 13") && err.contains("a directory on its path is closed to this user"), "{err}");
    assert!(root.ctl(&["status"]).status.success(), "the owner is still served");
}

#[test]
fn with_the_daemon_down_status_and_peers_read_the_store_and_leave_unread_facts_unknown() {
    let (root, _iapeer, _dirs) = fleet_root();
    let vault = root.dir.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    let config = std::fs::read_to_string(&root.paths.default_config).unwrap();
    root.write_config(&format!("{config}vault = {:?}\n", vault.to_str().unwrap()));
    let mut daemon = root.start_daemon();
    ok(&root, &["attach", "--node", "claude-ada", "--session", "s1", "--client-version", "1.0"]);
    ok(&root, &["peer", "link", "ada", "bob"]);
    ok(&root, &["peer", "send", "--from", "ada", "bob", "the build is green"]);
    let mut up = Value::Null;
    assert!(
        eventually(|| {
            up = ok(&root, &["status"]);
            up["lastSweep"].is_object()
        }),
        "no sweep recorded: {up}\n{}",
        daemon.log()
    );
    assert_eq!((up["presence"]["online"].as_u64(), up["waitingMessages"].as_u64()), (Some(1), Some(1)), "{up}");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(20));

    let out = root.ctl(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "status exits 1 while memoryd is not running");
    let down = document(&["status"], &out);
    assert_eq!(down["running"], false);
    assert_eq!(down["presence"], serde_json::json!({"online": 1, "degraded": 0, "offline": 0}), "{down}");
    assert_eq!(down["waitingMessages"], 1, "{down}");
    assert_eq!(down["lastSweep"], up["lastSweep"], "the last sweep as the daemon recorded it");
    assert_eq!(down["fleet"]["peers"], 2, "{down}");
    for unread in [
        &down["mcp"]["listening"],
        &down["vault"]["notes"],
        &down["vault"]["watching"],
        &down["uptimeSecs"],
        &down["startedAt"],
    ] {
        assert!(unread.is_null(), "a fact nobody read is unknown, not a value: {down}");
    }
    let text = stdout(&root.ctl(&["status"]));
    assert!(text.contains("1 online, 0 degraded, 0 offline (as stored)"), "{text}");
    assert!(text.contains("1 waiting") && text.contains("index unknown"), "{text}");
    assert!(!text.contains("0 notes") && !text.contains("none yet"), "{text}");

    let out = root.ctl(&["peers", "--json"]);
    assert!(out.status.success(), "peers answers from disk: {}", stderr(&out));
    assert!(stderr(&out).contains("read from disk"), "{}", stderr(&out));
    let roster = document(&["peers"], &out);
    assert_eq!(roster["source"], "disk", "{roster}");
    assert_eq!(roster["waiting"], serde_json::json!({"bob": 1}), "{roster}");
    let nodes = roster["nodes"].as_array().unwrap();
    assert!(nodes.iter().any(|n| n["nodeId"] == "claude-ada" && n["state"] == "online"), "{roster}");
    let text = stdout(&root.ctl(&["peers"]));
    assert!(text.contains("claude-ada") && text.contains("peer messages waiting: bob 1"), "{text}");
}

#[test]
fn a_root_with_no_install_is_not_healthy_and_daemon_start_says_how_to_make_one() {
    let root = Root::bare();
    let where_ = format!("there is no memoryd install at {}", root.paths.root.display());
    let out = root.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&where_) && err.contains("init --vault DIR") && err.contains("check --root"), "{err}");
    assert!(!err.contains("daemon start"), "a root with no install is not a stopped daemon: {err}");
    assert!(stdout(&out).contains("healthy         no"), "{}", stdout(&out));
    let status = document(&["status"], &root.ctl(&["status", "--json"]));
    assert_eq!((status["installed"].as_bool(), status["healthy"].as_bool()), (Some(false), Some(false)), "{status}");
    assert!(status["problems"][0].as_str().unwrap().contains(&where_), "{status}");

    let message = fails(&root, &["daemon", "start"], 1, "install.missing");
    assert!(message.contains(&where_) && message.contains("init --vault DIR"), "{message}");
    fails(&root, &["reload"], 1, "install.missing");
    assert!(!root.paths.root.exists(), "a mistyped --root is left as it was");

    // A daemon started by hand on such a root answers, and is not healthy.
    let _daemon = root.spawn_daemon_with(|c| {
        c.env("MEMORYD_MCP_PORT", "0");
    });
    let mut seen = Value::Null;
    assert!(
        eventually(|| {
            let out = root.ctl(&["status", "--json"]);
            seen = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            seen["running"] == true
        }),
        "{seen}"
    );
    assert_eq!((seen["installed"].as_bool(), seen["healthy"].as_bool()), (Some(false), Some(false)), "{seen}");
    assert!(seen["problems"][0].as_str().unwrap().contains(&where_), "{seen}");
    // The config written, the same daemon is an install's.
    root.write_config("mcp_port = 0\n");
    assert!(eventually(|| root.ctl(&["status"]).status.success()), "{}", stdout(&root.ctl(&["status"])));
}

#[test]
fn names_are_checked_against_the_fleet_and_errors_speak_an_operators_words() {
    let (root, _iapeer, _dirs) = fleet_root();
    for daemon_up in [true, false] {
        let daemon = daemon_up.then(|| root.start_daemon());
        let message = fails(&root, &["revoke", "claude-nobody"], 1, "runtimenode.unknown_node");
        assert!(message.contains("its nodes: claude-ada, claude-bob") && message.contains("--force"), "{message}");
        ok(&root, &["revoke", "claude-nobody", "--force"]);
        ok(&root, &["unrevoke", "claude-nobody"]);
        let message = fails(&root, &["unrevoke", "claude-zed"], 1, "runtimenode.unknown_node");
        assert!(message.contains("its nodes: claude-ada, claude-bob") && message.contains("nor revoked"), "{message}");
        let message = fails(&root, &["revoke", "claude_bad"], 2, "request.invalid");
        assert!(message.contains("the node \"claude_bad\" is not <runtime>-<personality>"), "{message}");
        drop(daemon);
    }
    let _daemon = root.start_daemon();
    for args in [
        &["peer", "inbox", "zed"][..],
        &["peer", "visible", "zed"],
        &["peer", "link", "ada", "zed"],
        &["peer", "unlink", "zed", "ada"],
        &["peer", "send", "--from", "ada", "zed", "hi"],
        &["peer", "send", "--from", "zed", "ada", "hi"],
    ] {
        let message = fails(&root, args, 1, "peer.missing");
        assert!(message.contains("`zed` is not a peer of the fleet (its peers: ada, bob)"), "{args:?}: {message}");
    }
    let message = fails(&root, &["peer", "inbox", "Zed"], 1, "request.invalid");
    assert!(message.contains("the peer name \"Zed\""), "{message}");
    let message = fails(
        &root,
        &["attach", "--node", "claude-ada", "--session", "s", "--client-version", "1.01"],
        1,
        "request.invalid",
    );
    assert!(message.contains("the client version \"1.01\" is not MAJOR.MINOR"), "{message}");
    let message = fails(&root, &["heartbeat", "--node", "claude_ada"], 1, "request.invalid");
    for internal in ["field", "nodeId", "clientVersion", "personality`"] {
        assert!(!message.contains(internal), "an internal name in {message}");
    }
    drop(_daemon);

    // A big fleet is listed in part.
    let dirs: Vec<PathBuf> = (0..30).map(|i| root.peer_dir(&format!("p{i:02}"))).collect();
    let names: Vec<String> = (0..30).map(|i| format!("p{i:02}")).collect();
    let peers: Vec<(&str, &Path, &[&str])> =
        names.iter().zip(&dirs).map(|(n, d)| (n.as_str(), d.as_path(), &["claude"][..])).collect();
    root.write_fleet_map(&peers);
    let message = fails(&root, &["revoke", "claude-nobody"], 1, "runtimenode.unknown_node");
    assert!(message.contains("claude-p00, claude-p01") && message.contains("claude-p09 and 20 more"), "{message}");
}
