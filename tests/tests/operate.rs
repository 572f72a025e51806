//! What operators live in: `update`, `verify [--repair]`, `init`,
//! `uninstall`, with the daemon and without it, end to end.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const FOREIGN_SETTINGS: &str =
    r#"{"model":"opus","hooks":{"Stop":[{"hooks":[{"type":"command","command":"bye.sh"}]}]},"env":{"Z":"1","A":"2"}}"#;
const FOREIGN_TOML: &str = "# team\nmodel = \"o4\" # pinned\n\n[mcp_servers.github]\ncommand = \"gh\"\n";

struct Fleet {
    iapeer: FakeIapeer,
    peers: Vec<PathBuf>,
}

/// Three peers with foreign content, a fake iapeer listing them, a config
/// naming it and `boris` as the registrant.
fn fleet(root: &Root, extra_config: &str) -> Fleet {
    let iapeer = root.fake_iapeer();
    let (boris, vera, olga) = (root.peer_dir("boris"), root.peer_dir("vera"), root.peer_dir("olga"));
    std::fs::create_dir_all(boris.join(".claude")).unwrap();
    std::fs::write(boris.join(".claude/settings.json"), FOREIGN_SETTINGS).unwrap();
    std::fs::create_dir_all(vera.join(".codex")).unwrap();
    std::fs::write(vera.join(".codex/config.toml"), FOREIGN_TOML).unwrap();
    iapeer.set_listing(&[
        ("boris", &boris, &["claude"]),
        ("vera", &vera, &["codex"]),
        ("olga", &olga, &["claude", "codex"]),
    ]);
    root.write_config(&format!(
        "mcp_port = 0\niapeer_bin = \"{}\"\nregistrant = \"boris\"\n{extra_config}",
        iapeer.bin.display()
    ));
    Fleet { iapeer, peers: vec![boris, vera, olga] }
}

/// Every file under `paths` (or the file itself): bytes, mtime and mode.
fn snapshot(paths: &[&Path]) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime, u32)> {
    let mut out = BTreeMap::new();
    for path in paths {
        let mut stack = vec![path.to_path_buf()];
        while let Some(p) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&p) else { continue };
            if meta.is_dir() {
                stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if meta.is_file() {
                out.insert(
                    p.clone(),
                    (std::fs::read(&p).unwrap(), meta.modified().unwrap(), meta.permissions().mode()),
                );
            }
        }
    }
    out
}

fn line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{text}"))
}

#[test]
fn update_reports_every_step_then_changes_nothing_the_second_time() {
    let root = Root::bare();
    let fleet = fleet(&root, "");
    let daemon = root.start_daemon();
    let out = root.ctl(&["update"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}\n{}", stderr(&out), daemon.log());
    assert!(text.starts_with(&format!("memoryd update → v{}\n", env!("CARGO_PKG_VERSION"))), "{text}");
    let names: Vec<&str> = text.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).take(8).collect();
    assert_eq!(
        names,
        ["binary", "fleet", "surfaces", "slot", "launcher", "triggers", "fragments", "memoryd"],
        "{text}"
    );
    for step in ["binary", "fleet", "surfaces", "slot", "launcher", "triggers", "fragments", "memoryd"] {
        assert!(line(&text, step).starts_with("ok    "), "{step}: {text}");
    }
    assert!(text.contains("update complete — confirm: memoryctl"), "{text}");
    // The watcher was registered as the registrant's default runtime.
    let sent = std::fs::read_to_string(&fleet.iapeer.send_log).unwrap();
    assert!(sent.contains("send watcher --from claude-boris --stdin"), "{sent}");
    let body: Value = serde_json::from_str(sent.lines().nth(1).unwrap()).unwrap();
    assert_eq!(body["cmd"], "register");
    assert_eq!(body["id"], "memoryd");
    assert_eq!(body["target"], "boris");
    assert_eq!(body["script"], root.paths.launcher.display().to_string());
    let launcher = std::fs::read_to_string(&root.paths.launcher).unwrap();
    assert!(launcher.contains(&bins().memoryd.display().to_string()) && launcher.contains("--root"), "{launcher}");
    let slot: Value = serde_json::from_slice(&std::fs::read(&root.paths.slot).unwrap()).unwrap();
    assert_eq!(slot["provider"], "memoryd");
    assert_eq!(slot["provision"]["command"], bins().memoryctl.display().to_string());
    assert!(eventually(|| Conn::open(&root.socket()).is_ok_and(|mut c| c.hello()["result"]["pid"] == daemon.pid())));

    let watched: Vec<&Path> = fleet
        .peers
        .iter()
        .map(PathBuf::as_path)
        .chain([root.paths.slot.as_path(), root.paths.default_config.as_path(), root.paths.hooks_dir.as_path()])
        .chain([root.paths.launcher.as_path(), root.paths.fleet_map.as_path()])
        .collect();
    let before = snapshot(&watched);
    let again = root.ctl(&["update"]);
    let text = stdout(&again);
    assert!(again.status.success(), "{text}{}", stderr(&again));
    assert!(line(&text, "surfaces").contains(" 0 file(s) written"), "{text}");
    assert!(line(&text, "slot").ends_with("identical"), "{text}");
    assert!(line(&text, "launcher").ends_with("already"), "{text}");
    assert!(line(&text, "fragments").contains("0 written"), "{text}");
    assert_eq!(before, snapshot(&watched), "a second update changed bytes or mtimes");
}

#[test]
fn the_restart_at_the_end_of_update_refuses_no_connection_and_keeps_the_pid() {
    let root = Root::bare();
    fleet(&root, "");
    let port = free_port();
    let config = std::fs::read_to_string(&root.paths.default_config).unwrap();
    root.write_config(&config.replace("mcp_port = 0", &format!("mcp_port = {port}")));
    let daemon = root.start_daemon();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (refused, tried) = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            let (mut refused, mut tried) = (Vec::new(), 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                tried += 1;
                if let Err(e) = std::os::unix::net::UnixStream::connect(root.socket()) {
                    refused.push(format!("control socket: {e}"));
                }
                if let Err(e) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    refused.push(format!("MCP port: {e}"));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (refused, tried)
        });
        let out = root.ctl(&["update"]);
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        // Keep probing through the hand-off and the new image's start.
        assert!(eventually(|| daemon.log().matches("memoryd up:").count() == 2), "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(300));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        prober.join().unwrap()
    });
    assert!(tried > 50, "only {tried} probes");
    assert!(refused.is_empty(), "{} of {tried} connections refused: {:?}", refused.len(), refused.first());
    assert!(daemon.log().contains("restarted in place"), "{}", daemon.log());
    let mut conn = Conn::open(&root.socket()).unwrap();
    assert_eq!(conn.hello()["result"]["pid"], daemon.pid(), "same pid after the exec");
    // The new image serves MCP on the listener it inherited.
    let init = mcp(
        port,
        "claude-boris",
        "initialize",
        serde_json::json!({
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"},
        }),
    );
    assert_eq!(init["result"]["serverInfo"]["name"], "memoryd", "{init}");
}

/// A hash-free comparison: every byte of every file under these paths.
fn contents(paths: &[&Path]) -> BTreeMap<PathBuf, Vec<u8>> {
    snapshot(paths).into_iter().map(|(p, (bytes, _, _))| (p, bytes)).collect()
}

#[test]
fn verify_reports_each_drifted_pair_writes_nothing_and_repair_fixes_it() {
    let root = Root::bare();
    let fleet = fleet(&root, "");
    let vault = root.dir.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    let daemon = root.start_daemon();
    assert!(root.ctl(&["update"]).status.success());
    // The restarted daemon's own start-up sweep is done.
    assert!(eventually(|| daemon.log().matches("sweep done why=\"start-up\"").count() == 2), "{}", daemon.log());
    let clean = root.ctl(&["verify"]);
    assert!(clean.status.success(), "{}{}", stdout(&clean), stderr(&clean));

    // Hand-made drift in two peers.
    let (boris, vera) = (&fleet.peers[0], &fleet.peers[1]);
    std::fs::write(boris.join(".claude/settings.json"), FOREIGN_SETTINGS).unwrap();
    std::fs::write(vera.join(".codex/hooks.json"), r#"{"hooks":{"Stop":[]}}"#).unwrap();

    let watched: Vec<&Path> = fleet
        .peers
        .iter()
        .map(PathBuf::as_path)
        .chain([root.paths.slot.as_path(), root.paths.default_config.as_path(), vault.as_path()])
        .collect();
    let state_files = |s: &BTreeMap<PathBuf, Vec<u8>>| -> BTreeMap<PathBuf, Vec<u8>> {
        // The daemon's own heartbeat goes on, of course.
        s.iter().filter(|(p, _)| !p.ends_with("memoryd.heartbeat")).map(|(p, b)| (p.clone(), b.clone())).collect()
    };
    let before = (contents(&watched), state_files(&contents(&[&root.paths.state])));
    let out = root.ctl(&["verify"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    let rows: Vec<&str> = text.lines().filter(|l| l.contains("peer-surfaces[")).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows.iter().any(|r| r.starts_with("FAIL     peer-surfaces[boris:claude]  hooks:")), "{text}");
    assert!(rows.iter().any(|r| r.starts_with("FAIL     peer-surfaces[vera:codex]  hooks:")), "{text}");
    let after = (contents(&watched), state_files(&contents(&[&root.paths.state])));
    assert!(before == after, "a plain verify wrote something");

    let out = root.ctl(&["verify", "--repair"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(line(&text, "peer-surfaces").starts_with("repaired"), "{text}");
    let out = root.ctl(&["verify", "--json"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    let names: Vec<&str> = v["checks"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    for check in [
        "config",
        "memoryd-heartbeat",
        "memoryd-socket",
        "memory-slot",
        "fleet-map",
        "peer-surfaces",
        "peer-trust",
        "hook-trust",
        "launcher",
        "mcp-endpoint",
        "vault",
        "provision-lock",
        "store",
    ] {
        assert!(names.contains(&check), "{check} missing from {names:?}");
    }
    // A store document that does not load is named, and kept.
    let presence = root.paths.store.join("presence.json");
    std::fs::write(&presence, "{ torn").unwrap();
    let out = root.ctl(&["verify", "--repair"]);
    assert_eq!(out.status.code(), Some(1));
    let store = line(&stdout(&out), "store").to_owned();
    assert!(store.starts_with("FAIL") && store.contains("presence.json does not load"), "{store}");
    assert_eq!(std::fs::read_to_string(&presence).unwrap(), "{ torn");
}

/// Edits the user's Codex config as a person or Codex itself would
/// (`toml_edit` keeps the rest as it is).
fn edit_codex_config(root: &Root, edit: impl FnOnce(&mut toml_edit::Table)) {
    let path = root.home.join(".codex/config.toml");
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    edit(doc["hooks"]["state"].as_table_mut().unwrap());
    std::fs::write(&path, doc.to_string()).unwrap();
}

#[test]
fn verify_says_whether_codex_would_run_memoryds_hooks_and_repair_reseeds_their_trust() {
    let root = Root::bare();
    let fleet = fleet(&root, "");
    let out = root.ctl(&["update", "--skip", "memoryd"]);
    assert!(line(&stdout(&out), "surfaces").starts_with("ok"), "{}{}", stdout(&out), stderr(&out));
    // The core recorded trust as Codex reads it: per hook, in the user's config.
    let (vera, olga) = (fleet.peers[1].join(".codex/hooks.json"), fleet.peers[2].join(".codex/hooks.json"));
    let key = |hooks: &Path, event: &str| format!("{}:{event}:0:0", hooks.display());
    let config = root.home.join(".codex/config.toml");
    let recorded = std::fs::read_to_string(&config).unwrap();
    assert!(recorded.contains(&format!("[hooks.state.\"{}\"]", key(&vera, "session_start"))), "{recorded}");
    let text = stdout(&root.ctl(&["verify"]));
    assert!(line(&text, "hook-trust").starts_with("ok"), "{text}");
    assert!(line(&text, "hook-trust").ends_with("Codex runs all 10 memoryd hooks of 2 Codex peer(s)"), "{text}");

    // Codex trusted vera's SessionStart hook as it was before memoryd's
    // hooks.json changed, and olga's UserPromptSubmit hook never.
    edit_codex_config(&root, |state| {
        state[&key(&vera, "session_start")]["trusted_hash"] =
            toml_edit::value("sha256:9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab");
        state.remove(&key(&olga, "user_prompt_submit"));
    });
    let watched: Vec<&Path> = [config.as_path()].into_iter().chain(fleet.peers.iter().map(PathBuf::as_path)).collect();
    let before = contents(&watched);
    let out = root.ctl(&["verify"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let vera_row = format!(
        "FAIL     hook-trust[vera:codex]  Codex would skip memoryd's hooks SessionStart (changed since it was trusted) in {}; run `iapeer trust-hooks {}` (or `memoryctl verify --repair`)",
        vera.display(),
        vera.display()
    );
    assert!(text.lines().any(|l| l == vera_row), "{text}");
    assert!(
        text.contains(
            "FAIL     hook-trust[olga:codex]  Codex would skip memoryd's hooks UserPromptSubmit (untrusted) in"
        ),
        "{text}"
    );
    assert!(line(&text, "hook-trust").starts_with("FAIL"), "{text}");
    assert!(line(&text, "peer-surfaces").starts_with("ok"), "the hooks themselves are in place: {text}");
    assert!(contents(&watched) == before, "a plain verify wrote something");

    // --repair runs the trust step for those two folders, then checks again.
    let calls = fleet.iapeer.trust_calls();
    let text = stdout(&root.ctl(&["verify", "--repair"]));
    assert!(line(&text, "hook-trust").starts_with("repaired"), "{text}");
    assert!(line(&text, "hook-trust").contains("for 2 folder(s)"), "{text}");
    assert_eq!(fleet.iapeer.trust_calls(), calls + 2);
    assert!(line(&stdout(&root.ctl(&["verify"])), "hook-trust").starts_with("ok"));

    // A hook the user turned off is the user's choice: a warning, no re-seed.
    edit_codex_config(&root, |state| state[&key(&vera, "session_end")]["enabled"] = toml_edit::value(false));
    let text = stdout(&root.ctl(&["verify", "--repair"]));
    assert!(text.contains("warn     hook-trust[vera:codex]  memoryd's hooks SessionEnd in "), "{text}");
    assert!(line(&text, "hook-trust").starts_with("warn"), "{text}");
    assert_eq!(fleet.iapeer.trust_calls(), calls + 2, "a repair re-seeded a hook the user turned off");

    // A core that refuses: the repair fails with the core's own words.
    edit_codex_config(&root, |state| {
        state.remove(&key(&olga, "post_tool_use"));
    });
    std::fs::write(&fleet.iapeer.untrusted, "").unwrap();
    let out = root.ctl(&["verify", "--repair"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL     hook-trust[olga:codex]  iapeer trust-hooks exited with 1: the core refuses to trust"),
        "{text}"
    );
}

#[test]
fn a_foreign_slot_fails_update_and_verify_loudly_and_is_never_touched() {
    let root = Root::bare();
    fleet(&root, "");
    let foreign = br#"{"provider":"mem0","version":"9"}"#;
    std::fs::create_dir_all(&root.paths.root).unwrap();
    std::fs::write(&root.paths.slot, foreign).unwrap();
    let out = root.ctl(&["update", "--skip", "memoryd"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(line(&text, "slot").starts_with("FAIL") && line(&text, "slot").contains("`mem0`"), "{text}");
    assert!(line(&text, "surfaces").starts_with("skip"), "{text}");
    assert!(text.contains("update finished with 1 problem(s)"), "{text}");
    let out = root.ctl(&["verify", "--repair"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(line(&stdout(&out), "memory-slot").starts_with("FAIL"), "{}", stdout(&out));
    assert_eq!(std::fs::read(&root.paths.slot).unwrap(), foreign);
}

#[test]
fn a_stopped_daemon_is_reported_and_ended_only_when_proven_ours() {
    let root = Root::bare();
    fleet(&root, "heartbeat_interval = \"100ms\"\nheartbeat_stale_after = \"1s\"\n");
    let mut daemon = root.start_daemon();
    // Stopped between sweeps, so it does not hold the provision lock.
    assert!(eventually(|| daemon.log().contains("sweep done why=\"start-up\"")), "{}", daemon.log());
    daemon.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    let out = root.ctl(&["verify", "--connect-timeout", "300ms"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(stderr(&out).contains("memoryd not answering: running locally"));
    assert!(
        line(&text, "memoryd-heartbeat").starts_with("FAIL") && text.contains("past heartbeat_stale_after"),
        "{text}"
    );
    assert!(line(&text, "memoryd-socket").starts_with("FAIL"), "{text}");

    // A pid file naming an unrelated live process: nothing is signalled.
    let mut bystander = std::process::Command::new("/bin/sleep").arg("300").spawn().unwrap();
    std::fs::write(&root.paths.pid_file, format!("{}\n", bystander.id())).unwrap();
    let out = root.ctl(&["verify", "--repair", "--connect-timeout", "300ms"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(line(&text, "memoryd-socket").contains("nothing was signalled"), "{text}");
    assert!(bystander.try_wait().unwrap().is_none(), "the bystander was signalled");
    assert!(daemon.child.try_wait().unwrap().is_none(), "the daemon was signalled");
    bystander.kill().unwrap();
    bystander.wait().unwrap();

    // The real pid back: the verified kill ends it.
    std::fs::write(&root.paths.pid_file, format!("{}\n", daemon.pid())).unwrap();
    let out = root.ctl(&["verify", "--repair", "--connect-timeout", "300ms"]);
    let text = stdout(&out);
    assert!(line(&text, "memoryd-heartbeat").starts_with("repaired"), "{text}");
    assert!(line(&text, "memoryd-socket").starts_with("repaired"), "{text}");
    daemon.wait_exit(Duration::from_secs(5));
}

#[test]
fn status_exit_code_follows_the_daemon_and_json_carries_the_text_facts() {
    let root = Root::bare();
    fleet(&root, "");
    let down = root.ctl(&["status"]);
    assert_eq!(down.status.code(), Some(1));
    let daemon = root.start_daemon();
    // Healthy from its first heartbeat; the fleet map comes with the
    // start-up refresh, which a quick status can beat.
    let with_map = || {
        let out = root.ctl(&["status", "--json"]);
        out.status.success() && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v["fleet"]["peers"].is_u64())
    };
    assert!(eventually(with_map), "{}", daemon.log());
    let text = stdout(&root.ctl(&["status"]));
    let json: Value = serde_json::from_slice(&root.ctl(&["status", "--json"]).stdout).unwrap();
    assert!(text.contains(&format!("running (pid {})", json["pid"])), "{text}");
    assert!(text.contains(&format!("{} peers", json["fleet"]["peers"])), "{text}");
    let update = root.ctl(&["update", "--json", "--skip", "memoryd"]);
    let v: Value = serde_json::from_slice(&update.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["steps"].as_array().unwrap().len(), 8, "{v}");
    assert_eq!(v["steps"][7]["status"], "skip");
}

/// A folder's files as parsed content (JSON keeps its key order).
fn content_of(dir: &Path) -> BTreeMap<PathBuf, String> {
    snapshot(&[dir])
        .into_iter()
        .map(|(path, (bytes, _, _))| {
            let text = String::from_utf8(bytes).unwrap();
            let canonical = match path.extension().and_then(|e| e.to_str()) {
                Some("json") => serde_json::from_str::<Value>(&text).unwrap().to_string(),
                _ => text,
            };
            (path, canonical)
        })
        .collect()
}

#[test]
fn init_then_uninstall_leaves_every_peer_folder_as_it_was() {
    let root = Root::bare();
    let fleet = fleet(&root, "");
    let vault = root.dir.path().join("vault");
    let before: Vec<_> = fleet.peers.iter().map(|p| content_of(p)).collect();
    let port = free_port().to_string();
    let iapeer = fleet.iapeer.bin.to_str().unwrap();
    let out = root.ctl(&["init", "--vault", vault.to_str().unwrap(), "--iapeer-bin", iapeer, "--mcp-port", &port]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("start memoryd with one of:"), "{text}");
    let config = std::fs::read_to_string(&root.paths.default_config).unwrap();
    for key in ["vault", "iapeer_bin", "memoryd_bin", "memoryctl_bin", "mcp_port", "registrant"] {
        assert!(config.contains(&format!("{key} = ")), "{key}: {config}");
    }
    assert!(fleet.peers[0].join(".mcp.json").is_file() && fleet.peers[1].join(".codex/hooks.json").is_file());
    assert!(root.paths.slot.is_file() && root.paths.launcher.is_file());

    // The split-brain guard.
    let other = root.dir.path().join("vault2");
    let out = root.ctl(&["init", "--vault", other.to_str().unwrap(), "--iapeer-bin", iapeer]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));

    let refused = root.ctl(&["uninstall"]);
    assert_eq!(refused.status.code(), Some(2), "no --yes on a non-TTY");
    let out = root.ctl(&["uninstall", "--yes"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    let after: Vec<_> = fleet.peers.iter().map(|p| content_of(p)).collect();
    assert_eq!(before, after, "{text}");
    let left: Vec<_> = std::fs::read_dir(&fleet.peers[2]).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "olga had nothing before init: {left:?}");
    assert!(!root.paths.slot.exists() && !root.paths.launcher.exists() && !root.paths.hooks_dir.exists());
    assert!(vault.is_dir() && root.paths.default_config.is_file() && root.paths.state.is_dir(), "{text}");
    assert!(text.contains("kept: the vault"), "{text}");
    let sent = std::fs::read_to_string(&fleet.iapeer.send_log).unwrap();
    assert!(sent.contains("\"unregister\""), "{sent}");
}

#[test]
fn host_restart_moves_the_daemon_onto_the_installed_binary_in_place() {
    let root = Root::bare();
    fleet(&root, "");
    let daemon = root.start_daemon();
    // Allowed before session.hello: an old client can always move a daemon.
    let mut conn = Conn::open(&root.socket()).unwrap();
    let reply = conn.request("host.restart", serde_json::json!({}));
    assert_eq!(reply["result"]["restarting"], true, "{reply}");
    assert_eq!(reply["result"]["binary"], bins().memoryd.display().to_string());
    assert!(eventually(|| daemon.log().matches("memoryd up:").count() == 2), "{}", daemon.log());
    let mut conn = Conn::open(&root.socket()).unwrap();
    assert_eq!(conn.hello()["result"]["pid"], daemon.pid());
}
