//! The daemon's main job end to end: every peer's surfaces appear, a new
//! peer is wired without waiting for the timer, drift is repaired, a no-op
//! sweep touches nothing, and `provision-peer` works with and without the
//! daemon, under the provision lock it shares with the daemon.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

const EVENTS: [&str; 5] = ["SessionStart", "UserPromptSubmit", "PostToolUse", "SessionEnd", "Stop"];

fn config(iapeer: &FakeIapeer, port: u16, extra: &str) -> String {
    format!("mcp_port = {port}\niapeer_bin = \"{}\"\n{extra}", iapeer.bin.display())
}

/// The surface files of a peer-runtime.
fn surface_files(cwd: &Path, runtime: &str) -> Vec<PathBuf> {
    match runtime {
        "claude" => {
            vec![cwd.join(".claude/settings.json"), cwd.join(".mcp.json"), cwd.join(".claude/skills/memoryd/SKILL.md")]
        }
        _ => vec![cwd.join(".codex/config.toml"), cwd.join(".codex/hooks.json")],
    }
}

fn wired(cwd: &Path, runtime: &str) -> bool {
    surface_files(cwd, runtime).iter().all(|f| f.is_file()) && cwd.join(".iapeer/fragments/memoryd.md").is_file()
}

fn our_hooks(file: &Path, event: &str) -> usize {
    hook_commands(file, event).iter().filter(|c| c.contains("/memoryd.") && c.ends_with(".sh")).count()
}

#[test]
fn the_daemon_wires_every_peer_heals_drift_and_leaves_settled_files_alone() {
    let root = Root::bare();
    let iapeer = root.fake_iapeer();
    let port = free_port();
    root.write_config(&config(&iapeer, port, ""));
    let (boris, vera, olga) = (root.peer_dir("boris"), root.peer_dir("vera"), root.peer_dir("olga"));
    // Foreign content that must survive.
    std::fs::create_dir_all(olga.join(".claude")).unwrap();
    std::fs::write(
        olga.join(".claude/settings.json"),
        r#"{"model":"opus","hooks":{"SessionStart":[{"hooks":[{"type":"command","command":"team.sh"}]}]}}"#,
    )
    .unwrap();
    std::fs::create_dir_all(vera.join(".codex")).unwrap();
    std::fs::write(
        vera.join(".codex/config.toml"),
        "# team settings\nmodel = \"o4\"\n\n[mcp_servers.github]\ncommand = \"gh\"\n",
    )
    .unwrap();
    iapeer.set_listing(&[
        ("boris", &boris, &["claude"]),
        ("vera", &vera, &["codex", "telegram"]),
        ("olga", &olga, &["claude", "codex"]),
    ]);
    let daemon = root.start_daemon();

    assert!(
        eventually(|| wired(&boris, "claude")
            && wired(&vera, "codex")
            && wired(&olga, "claude")
            && wired(&olga, "codex")),
        "surfaces did not appear:\n{}",
        daemon.log()
    );
    // The shims exist, executable, and every entry points at one.
    for runtime in ["claude", "codex"] {
        for event in ["session-start", "prompt-submit", "post-tool", "session-end", "stop"] {
            let shim = root.paths.hooks_dir.join(format!("memoryd.{runtime}.{event}.sh"));
            let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&shim).unwrap().permissions());
            assert_eq!(mode & 0o777, 0o755, "{}", shim.display());
        }
    }
    let settings = olga.join(".claude/settings.json");
    for event in EVENTS {
        assert_eq!(our_hooks(&settings, event), 1, "{event}");
    }
    assert!(hook_commands(&settings, "SessionStart").contains(&"team.sh".to_owned()), "foreign hook kept");
    let mcp: Value = serde_json::from_slice(&std::fs::read(olga.join(".mcp.json")).unwrap()).unwrap();
    assert_eq!(mcp["mcpServers"]["memoryd"]["url"], format!("http://127.0.0.1:{port}/mcp"));
    assert_eq!(mcp["mcpServers"]["memoryd"]["headers"]["X-IAPeer-Identity"], "${PEER_IDENTITY:-claude-olga}");
    let toml = std::fs::read_to_string(vera.join(".codex/config.toml")).unwrap();
    assert!(toml.starts_with("# team settings\nmodel = \"o4\"\n\n[mcp_servers.github]"), "{toml}");
    assert!(toml.contains("[mcp_servers.memoryd]") && toml.contains("\"codex-vera\""), "{toml}");
    assert!(std::fs::read_to_string(&root.paths.fleet_map).unwrap().contains("\"olga\""));
    assert!(eventually(|| iapeer.trust_calls() == 2), "codex hooks trusted once per folder");

    // A new peer in the map is wired without waiting for the timer.
    let newt = root.peer_dir("newt");
    root.write_fleet_map(&[
        ("boris", &boris, &["claude"]),
        ("vera", &vera, &["codex", "telegram"]),
        ("olga", &olga, &["claude", "codex"]),
        ("newt", &newt, &["codex"]),
    ]);
    assert!(eventually(|| wired(&newt, "codex")), "the newborn was not wired:\n{}", daemon.log());

    // Drift is repaired by the next sweep.
    std::fs::write(
        boris.join(".mcp.json"),
        r#"{"mcpServers":{"memoryd":{"type":"http","url":"http://127.0.0.1:1/mcp"}}}"#,
    )
    .unwrap();
    std::fs::remove_file(boris.join(".claude/skills/memoryd/SKILL.md")).unwrap();
    let out = root.ctl(&["sweep"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(std::fs::read_to_string(boris.join(".mcp.json")).unwrap().contains(&format!(":{port}/mcp")));
    assert!(boris.join(".claude/skills/memoryd/SKILL.md").is_file());

    // A sweep with nothing to do writes nothing and spawns nothing.
    let trusts = iapeer.trust_calls();
    let before: Vec<_> =
        [root.dir.path().join("peers"), root.paths.plugin_dir.clone()].iter().map(|d| mtimes(d)).collect();
    let map_before = std::fs::read(&root.paths.fleet_map).unwrap();
    let out = root.ctl(&["sweep", "--json"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["writes"], 0, "{result}");
    assert_eq!(result["pairs"], 5, "{result}");
    let after: Vec<_> =
        [root.dir.path().join("peers"), root.paths.plugin_dir.clone()].iter().map(|d| mtimes(d)).collect();
    assert_eq!(before, after, "a no-op sweep touched files");
    assert_eq!(std::fs::read(&root.paths.fleet_map).unwrap(), map_before);
    assert_eq!(iapeer.trust_calls(), trusts, "a no-op sweep spawned iapeer");

    let status: Value = serde_json::from_slice(&root.ctl(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["lastSweep"]["ok"], 5, "{status}");
    assert_eq!(status["lastSweep"]["failed"], 0, "{status}");
    assert_eq!(status["fleet"]["peers"], 4, "{status}");
}

#[test]
fn a_map_that_vanishes_is_not_an_empty_fleet_and_a_gone_peer_is_not_unprovisioned() {
    let root = Root::new();
    let a = root.peer_dir("a");
    root.write_fleet_map(&[("a", &a, &["claude"])]);
    let daemon = root.start_daemon();
    assert!(eventually(|| a.join(".claude/settings.json").is_file()), "{}", daemon.log());
    std::fs::write(&root.paths.fleet_map, "{ torn").unwrap();
    assert!(eventually(|| daemon.log().contains("keeping the last good map")), "{}", daemon.log());
    let out = root.ctl(&["sweep", "--json"]);
    assert!(out.status.success(), "the sweep runs on the last good map: {}{}", stdout(&out), stderr(&out));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["pairs"], 1);
    root.write_fleet_map(&[]);
    assert!(eventually(|| daemon.log().contains("peer left the fleet map")), "{}", daemon.log());
    assert!(a.join(".claude/settings.json").is_file(), "a gone peer keeps its surfaces");
}

#[test]
fn provision_peer_runs_locally_without_a_daemon_and_through_it_with_one() {
    let root = Root::bare();
    let iapeer = root.fake_iapeer();
    root.write_config(&config(&iapeer, free_port(), ""));
    let cwd = root.peer_dir("zed");
    let cwd_s = cwd.to_str().unwrap();
    let provision =
        |extra: &[&str]| root.ctl(&[&["provision-peer", "--cwd", cwd_s, "--personality", "zed"][..], extra].concat());

    // Bad input exits 2 with the reason.
    for (args, why) in [
        (vec!["provision-peer", "--cwd", "rel/dir", "--runtime", "claude", "--personality", "zed"], "absolute"),
        (vec!["provision-peer", "--cwd", cwd_s, "--runtime", "claude", "--personality", "Zed"], "name rule"),
        (
            vec!["provision-peer", "--cwd", "/nonexistent/x", "--runtime", "claude", "--personality", "zed"],
            "does not exist",
        ),
    ] {
        let out = root.ctl(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
    }
    let out = provision(&["--runtime", "telegram"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("nothing to provision"), "{}", stdout(&out));

    // No daemon: in-process, saying so; a birth puts the peer in the map.
    let out = provision(&["--runtime", "claude", "--occasion", "birth"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("memoryd not answering: running locally"), "{}", stderr(&out));
    let text = stdout(&out);
    for surface in ["hooks  ", "approve", "mcp    ", "skill  "] {
        assert!(text.contains(&format!("ok    {surface} written (")), "{surface}: {text}");
    }
    assert!(text.contains("zed:claude provisioned: 4 surface(s) ok"), "{text}");
    let map = std::fs::read_to_string(&root.paths.fleet_map).unwrap();
    assert!(map.contains("\"zed\"") && map.contains("\"claude\""), "{map}");
    let again = provision(&["--runtime", "claude"]);
    assert!(stdout(&again).contains("ok    hooks   already ("), "{}", stdout(&again));

    // With a daemon: forwarded (no local line), same lines.
    let daemon = root.start_daemon();
    let out = provision(&["--runtime", "codex", "--occasion", "birth"]);
    assert!(out.status.success(), "{}{}\n{}", stdout(&out), stderr(&out), daemon.log());
    assert!(!stderr(&out).contains("running locally"), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok    trust   written ("), "{}", stdout(&out));
    assert!(daemon.log().contains("provision-peer"), "{}", daemon.log());

    // Unprovision mirrors it: the folder is empty again.
    for runtime in ["claude", "codex"] {
        let out = root.ctl(&["unprovision-peer", "--cwd", cwd_s, "--runtime", runtime, "--personality", "zed"]);
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    }
    let left = || -> Vec<_> { std::fs::read_dir(&cwd).unwrap().map(|e| e.unwrap().file_name()).collect() };
    assert!(left().is_empty(), "left behind: {:?}", left());
    // Memory stays off for the peer: a sweep and a repair leave it alone,
    // and verify does not count it as drift.
    let swept = root.ctl(&["sweep"]);
    assert!(swept.status.success(), "{}{}", stdout(&swept), stderr(&swept));
    let verified = root.ctl(&["verify", "--repair"]);
    assert!(stdout(&verified).contains("peer-surfaces"), "{}", stdout(&verified));
    assert!(!stdout(&verified).contains("peer-surfaces[zed"), "{}", stdout(&verified));
    assert!(left().is_empty(), "a sweep wired a peer turned off: {:?}\n{}", left(), daemon.log());
    // provision-peer turns it on again, and the sweep keeps it wired.
    let on = provision(&["--runtime", "claude"]);
    assert!(stdout(&on).contains("ok    hooks   written ("), "{}", stdout(&on));
    assert!(root.ctl(&["sweep"]).status.success());
    assert!(cwd.join(".claude/settings.json").is_file());
    let gone =
        root.ctl(&["unprovision-peer", "--cwd", "/nonexistent/zed", "--runtime", "claude", "--personality", "zed"]);
    assert!(gone.status.success() && stdout(&gone).contains("absent"), "{}", stdout(&gone));
}

#[test]
fn a_busy_provision_lock_fails_with_the_holder_after_lock_timeout() {
    let root = Root::bare();
    let iapeer = root.fake_iapeer();
    root.write_config(&config(&iapeer, 0, "lock_timeout = \"300ms\"\n"));
    let cwd = root.peer_dir("zed");
    root.make_state_dir();
    let lock =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&root.paths.provision_lock).unwrap();
    lock.try_lock().unwrap();
    std::fs::write(&root.paths.provision_lock, "4242 a test holding it\n").unwrap();
    let out = root.ctl(&[
        "provision-peer",
        "--local",
        "--cwd",
        cwd.to_str().unwrap(),
        "--runtime",
        "claude",
        "--personality",
        "zed",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("busy") && stderr(&out).contains("4242 a test holding it"), "{}", stderr(&out));
    assert!(!cwd.join(".claude").exists(), "nothing written without the lock");
    drop(lock);
}

#[test]
fn the_daemon_sweeping_and_a_local_provision_at_once_leave_one_hook_per_event_and_all_foreign_ones() {
    let root = Root::bare();
    let iapeer = root.fake_iapeer();
    root.write_config(&config(&iapeer, 0, "sweep_interval = \"20ms\"\n"));
    let names = ["p1", "p2", "p3"];
    let dirs: Vec<PathBuf> = names.iter().map(|n| root.peer_dir(n)).collect();
    for dir in &dirs {
        std::fs::create_dir_all(dir.join(".claude")).unwrap();
        std::fs::create_dir_all(dir.join(".codex")).unwrap();
        std::fs::write(
            dir.join(".claude/settings.json"),
            r#"{"hooks":{"SessionStart":[{"hooks":[{"type":"command","command":"mine.sh"}]}],"Stop":[{"hooks":[{"type":"command","command":"bye.sh"}]}]},"env":{"A":"1"}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join(".codex/hooks.json"),
            r#"{"hooks":{"UserPromptSubmit":[{"hooks":[{"type":"command","command":"lint.sh"}]}]}}"#,
        )
        .unwrap();
    }
    let listing: Vec<(&str, &Path, &[&str])> =
        names.iter().zip(&dirs).map(|(n, d)| (*n, d.as_path(), &["claude", "codex"][..])).collect();
    iapeer.set_listing(&listing);
    let daemon = root.start_daemon();
    let timer_sweeps = || daemon.log().matches("sweep done why=\"timer\"").count();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let rounds = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for (name, dir) in names.iter().zip(&dirs) {
            let (stop, rounds, root) = (&stop, &rounds, &root);
            s.spawn(move || {
                let mut round = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let runtime = if round % 2 == 0 { "claude" } else { "codex" };
                    round += 1;
                    let out = root.ctl(&[
                        "provision-peer",
                        "--local",
                        "--cwd",
                        dir.to_str().unwrap(),
                        "--runtime",
                        runtime,
                        "--personality",
                        name,
                    ]);
                    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
                    rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Gaps let the daemon's polled lock waits in too.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            });
        }
        // Run until the daemon swept on its timer several times meanwhile.
        let baseline = timer_sweeps();
        let interleaved =
            eventually(|| timer_sweeps() >= baseline + 3 && rounds.load(std::sync::atomic::Ordering::Relaxed) >= 18);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(interleaved, "the daemon did not sweep while provisioning ran:\n{}", daemon.log());
    });
    for dir in &dirs {
        let settings = dir.join(".claude/settings.json");
        let hooks = dir.join(".codex/hooks.json");
        for event in EVENTS {
            assert_eq!(our_hooks(&settings, event), 1, "{} {event}", settings.display());
            assert_eq!(our_hooks(&hooks, event), 1, "{} {event}", hooks.display());
        }
        assert!(hook_commands(&settings, "SessionStart").contains(&"mine.sh".to_owned()));
        assert_eq!(hook_commands(&settings, "Stop")[0], "bye.sh", "the foreign Stop hook stays first");
        assert!(hook_commands(&hooks, "UserPromptSubmit").contains(&"lint.sh".to_owned()));
        let v: Value = serde_json::from_slice(&std::fs::read(&settings).unwrap()).unwrap();
        assert_eq!(v["env"]["A"], "1");
        let stray: Vec<_> = std::fs::read_dir(dir.join(".claude")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(stray.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")), "{stray:?}");
    }
}

#[test]
fn the_shims_run_memoryctl_hook_which_never_fails_an_agent() {
    let root = Root::new();
    let cwd = root.peer_dir("zed");
    let out =
        root.ctl(&["provision-peer", "--cwd", cwd.to_str().unwrap(), "--runtime", "claude", "--personality", "zed"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let shim = root.paths.hooks_dir.join("memoryd.claude.prompt-submit.sh");
    assert!(std::fs::read_to_string(&shim).unwrap().contains(&bins().memoryctl.display().to_string()));
    for stdin in [&br#"{"session_id":"s1","cwd":"/x","hook_event_name":"UserPromptSubmit"}"#[..], b"not json"] {
        let mut child = root
            .command(Path::new("/bin/sh"))
            .arg(&shim)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin).unwrap();
        let out = wait_within(&mut child, CHILD_LIMIT);
        assert_eq!(out.status.code(), Some(0));
        assert!(out.stdout.is_empty(), "{}", stdout(&out));
    }
    let bad = root.ctl(&["hook", "prompt-submit", "--no-such-flag"]);
    assert_eq!(bad.status.code(), Some(0), "a bad flag must not fail a hook");
    let log = std::fs::read_to_string(root.paths.logs.join("hook-errors.log")).unwrap();
    assert!(log.contains("not JSON") && log.contains("bad hook arguments"), "{log}");
}

/// The line of a `verify` check (or row) by its name.
fn check_line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{text}"))
}

/// A JSON file's content, keys in file order.
fn json_text(path: &Path) -> String {
    let value: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    serde_json::to_string(&value).unwrap()
}

#[test]
fn a_wired_claude_peer_allows_memoryds_tools_and_unprovision_takes_only_that_rule_away() {
    let root = Root::bare();
    let iapeer = root.fake_iapeer();
    root.write_config(&config(&iapeer, free_port(), ""));
    let cwd = root.peer_dir("boris");
    let cwd_s = cwd.to_str().unwrap();
    let settings = cwd.join(".claude/settings.json");
    std::fs::create_dir_all(cwd.join(".claude")).unwrap();
    // The operator's own rules, one of them denying a memoryd tool.
    let original = r#"{"model":"opus","permissions":{"allow":["Bash(git:*)"],"deny":["mcp__memoryd__peer_send"],"defaultMode":"default"}}"#;
    std::fs::write(&settings, original).unwrap();
    let wire =
        |verb: &str| root.ctl(&[verb, "--local", "--cwd", cwd_s, "--runtime", "claude", "--personality", "boris"]);

    let out = wire("provision-peer");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("ok    approve written ("), "{}", stdout(&out));
    let wired: Value = serde_json::from_slice(&std::fs::read(&settings).unwrap()).unwrap();
    assert_eq!(wired["permissions"]["allow"], serde_json::json!(["Bash(git:*)", "mcp__memoryd"]));
    assert_eq!(wired["permissions"]["deny"], serde_json::json!(["mcp__memoryd__peer_send"]));
    assert_eq!(wired["permissions"]["defaultMode"], "default");
    assert_eq!(wired["enabledMcpjsonServers"], serde_json::json!(["memoryd"]));
    assert!(stdout(&wire("provision-peer")).contains("ok    approve already ("), "never duplicated");

    // verify names the operator's deny rule as a warning and keeps it.
    iapeer.set_listing(&[("boris", &cwd, &["claude"])]);
    root.write_fleet_map(&[("boris", &cwd, &["claude"])]);
    let text = stdout(&root.ctl(&["verify"]));
    let denied = format!(
        "warn     peer-trust[boris:claude]  `mcp__memoryd__peer_send` in permissions.deny of {} keep a headless Claude session from calling memoryd's tools",
        settings.display()
    );
    assert!(text.lines().any(|l| l.starts_with(&denied)), "{text}");
    assert!(check_line(&text, "peer-trust").starts_with("warn"), "{text}");
    assert!(check_line(&text, "peer-surfaces").starts_with("ok"), "{text}");

    // Our rule taken away by hand is drift that verify names and --repair restores.
    let mut drifted = wired.clone();
    drifted["permissions"]["allow"] = serde_json::json!(["Bash(git:*)"]);
    std::fs::write(&settings, serde_json::to_vec(&drifted).unwrap()).unwrap();
    let text = stdout(&root.ctl(&["verify"]));
    assert!(
        text.contains("FAIL     peer-surfaces[boris:claude]  approve: not as memoryd writes it: it needs `memoryd` in enabledMcpjsonServers and `mcp__memoryd` in permissions.allow"),
        "{text}"
    );
    let text = stdout(&root.ctl(&["verify", "--repair"]));
    assert!(check_line(&text, "peer-surfaces").starts_with("repaired"), "{text}");
    assert_eq!(json_text(&settings), serde_json::to_string(&wired).unwrap());
    assert_eq!(
        serde_json::from_slice::<Value>(&std::fs::read(&settings).unwrap()).unwrap()["permissions"]["deny"],
        serde_json::json!(["mcp__memoryd__peer_send"]),
        "the repair removed the operator's deny rule"
    );

    // Unprovision takes our parts out and nothing else.
    let out = wire("unprovision-peer");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("ok    approve removed ("), "{}", stdout(&out));
    let before: Value = serde_json::from_str(original).unwrap();
    assert_eq!(json_text(&settings), serde_json::to_string(&before).unwrap());
}

#[test]
fn a_sweep_that_changes_hooks_json_reseeds_trust_then_fails_loudly_if_codex_would_still_skip_them() {
    let root = Root::bare();
    let iapeer = root.fake_iapeer();
    root.write_config(&config(&iapeer, free_port(), ""));
    let cwd = root.peer_dir("vera");
    let cwd_s = cwd.to_str().unwrap();
    let hooks = cwd.join(".codex/hooks.json");
    let provision =
        || root.ctl(&["provision-peer", "--local", "--cwd", cwd_s, "--runtime", "codex", "--personality", "vera"]);
    let out = provision();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("ok    trust   written ("), "{}", stdout(&out));
    let codex_config = std::fs::read_to_string(root.home.join(".codex/config.toml")).unwrap();
    assert!(
        codex_config.contains(&format!("[hooks.state.\"{}:session_start:0:0\"]", hooks.display())),
        "{codex_config}"
    );

    // The user puts a hook of their own before ours: our hook moves, and
    // Codex keys trust by position.
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&hooks).unwrap()).unwrap();
    let mine = serde_json::json!({"hooks": [{"type": "command", "command": "echo hi"}]});
    doc["hooks"]["SessionStart"].as_array_mut().unwrap().insert(0, mine);
    std::fs::write(&hooks, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    // A core whose trust-hooks says yes but records nothing Codex reads.
    std::fs::write(&iapeer.bin, format!("#!/bin/sh\necho \"$*\" >> '{}'\necho trusted\n", iapeer.trust_log.display()))
        .unwrap();
    let calls = iapeer.trust_calls();
    let out = provision();
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(iapeer.trust_calls(), calls + 1, "the changed hooks.json was not re-seeded");
    let want = format!(
        "FAIL  trust   failed — iapeer trust-hooks succeeded, but Codex would skip memoryd's hooks SessionStart (untrusted) in {}; run `iapeer trust-hooks {}`",
        hooks.display(),
        hooks.display()
    );
    assert!(stdout(&out).contains(&want), "{}", stdout(&out));

    // The real core: seeded at the new position, checked, and then left alone.
    let iapeer = root.fake_iapeer();
    let out = provision();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("ok    trust   written ("), "{}", stdout(&out));
    let codex_config = std::fs::read_to_string(root.home.join(".codex/config.toml")).unwrap();
    assert!(
        codex_config.contains(&format!("[hooks.state.\"{}:session_start:1:0\"]", hooks.display())),
        "{codex_config}"
    );
    let calls = iapeer.trust_calls();
    assert!(stdout(&provision()).contains("ok    trust   already ("));
    assert_eq!(iapeer.trust_calls(), calls, "an unchanged hooks.json was trusted again");
}
