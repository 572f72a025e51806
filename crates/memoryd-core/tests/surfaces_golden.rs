//! Golden-file tests of every surface: a peer folder is laid out from
//! `golden/<case>.before`, provisioned, compared with `<case>.after`,
//! provisioned again (nothing may change), then unprovisioned and compared
//! with `<case>.unprovisioned`. `UPDATE_GOLDEN=1` rewrites the expected
//! files, to be reviewed by hand.
//!
//! A snapshot is a text file of entries: `### <path> <mode>` followed by the
//! file's content, or `### <path>/` for a directory. `@TMP@` stands for the
//! test's temp dir.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // tests lay out their fixtures directly

use memoryd_core::host::egress::Egress;
use memoryd_core::host::files::FileGuard;
use memoryd_core::host::lock::ProvisionLock;
use memoryd_core::surfaces::{Outcome, Settings, SurfaceMemory, SurfaceState, Surfaces};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

struct Case {
    name: &'static str,
    runtime: &'static str,
    mcp_port: u16,
    /// Makes `.claude` or `.codex` a symlink to a dir outside the folder.
    escape: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case { name: "claude-fresh", runtime: "claude", mcp_port: 8766, escape: None },
    Case { name: "claude-foreign", runtime: "claude", mcp_port: 8766, escape: None },
    Case { name: "claude-stale-duplicates-mixed", runtime: "claude", mcp_port: 8766, escape: None },
    Case { name: "claude-unparseable", runtime: "claude", mcp_port: 8766, escape: None },
    Case { name: "claude-symlink-escape", runtime: "claude", mcp_port: 8766, escape: Some(".claude") },
    Case { name: "claude-mcp-off", runtime: "claude", mcp_port: 0, escape: None },
    Case { name: "claude-user-empty-object", runtime: "claude", mcp_port: 8766, escape: None },
    Case { name: "claude-permissions", runtime: "claude", mcp_port: 8766, escape: None },
    Case { name: "claude-mcp-off-permissions", runtime: "claude", mcp_port: 0, escape: None },
    Case { name: "claude-permissions-not-a-list", runtime: "claude", mcp_port: 8766, escape: None },
    Case { name: "codex-fresh", runtime: "codex", mcp_port: 8766, escape: None },
    Case { name: "codex-foreign", runtime: "codex", mcp_port: 8766, escape: None },
    Case { name: "codex-table-quoted", runtime: "codex", mcp_port: 8766, escape: None },
    Case { name: "codex-table-single-quoted", runtime: "codex", mcp_port: 8766, escape: None },
    Case { name: "codex-dotted-root", runtime: "codex", mcp_port: 8766, escape: None },
    Case { name: "codex-dotted-in-table", runtime: "codex", mcp_port: 8766, escape: None },
    Case { name: "codex-inline-entry", runtime: "codex", mcp_port: 8766, escape: None },
    Case { name: "codex-inline-servers", runtime: "codex", mcp_port: 8766, escape: None },
    Case { name: "codex-twice-defined", runtime: "codex", mcp_port: 8766, escape: None },
    Case { name: "codex-unparseable", runtime: "codex", mcp_port: 8766, escape: None },
    Case { name: "codex-symlink-escape", runtime: "codex", mcp_port: 8766, escape: Some(".codex") },
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

type Tree = BTreeMap<String, Option<(u32, String)>>;

fn parse_snapshot(text: &str, tmp: &str) -> Tree {
    let mut tree = Tree::new();
    let mut current: Option<(String, u32, String)> = None;
    let flush = |entry: Option<(String, u32, String)>, tree: &mut Tree| {
        if let Some((path, mode, content)) = entry {
            tree.insert(path, Some((mode, content)));
        }
    };
    for line in text.split_inclusive('\n') {
        if let Some(header) = line.strip_prefix("### ") {
            flush(current.take(), &mut tree);
            let header = header.trim_end();
            if let Some(dir) = header.strip_suffix('/') {
                tree.insert(dir.to_owned(), None);
            } else {
                let (path, mode) = header.rsplit_once(' ').unwrap();
                current = Some((path.to_owned(), u32::from_str_radix(mode, 8).unwrap(), String::new()));
            }
        } else if let Some((_, _, content)) = current.as_mut() {
            content.push_str(&line.replace("@TMP@", tmp));
        }
    }
    flush(current, &mut tree);
    tree
}

fn render_snapshot(tree: &Tree, tmp: &str) -> String {
    let mut out = String::new();
    for (path, entry) in tree {
        match entry {
            None => out.push_str(&format!("### {path}/\n")),
            Some((mode, content)) => {
                out.push_str(&format!("### {path} {mode:o}\n"));
                out.push_str(&content.replace(tmp, "@TMP@"));
            }
        }
    }
    out
}

fn lay_out(root: &Path, tree: &Tree) {
    for (path, entry) in tree {
        let full = root.join(path);
        match entry {
            None => std::fs::create_dir_all(&full).unwrap(),
            Some((mode, content)) => {
                std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                std::fs::write(&full, content).unwrap();
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(*mode)).unwrap();
            }
        }
    }
}

fn read_tree(root: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                tree.insert(rel, Some((0, format!("-> {}\n", std::fs::read_link(&path).unwrap().display()))));
            } else if meta.is_dir() {
                tree.insert(rel, None);
                stack.push(path);
            } else {
                let content = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
                tree.insert(rel, Some((meta.permissions().mode() & 0o777, content)));
            }
        }
    }
    tree
}

fn mtimes(root: &Path) -> BTreeMap<PathBuf, SystemTime> {
    read_tree(root)
        .keys()
        .map(|rel| (root.join(rel), std::fs::symlink_metadata(root.join(rel)).unwrap().modified().unwrap()))
        .collect()
}

fn outcome_lines(outcomes: &[Outcome], tmp: &str) -> String {
    outcomes
        .iter()
        .map(|o| {
            let detail = o.detail.as_deref().map(|d| format!(" — {}", d.replace(tmp, "@TMP@"))).unwrap_or_default();
            format!("{} {}{detail}\n", o.surface, o.action.as_str())
        })
        .collect()
}

/// Compares `actual` with the golden file, or rewrites it under UPDATE_GOLDEN.
fn check_golden(file: &str, actual: &str, failures: &mut Vec<String>) {
    let path = golden_dir().join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        failures.push(format!("{file} differs:\n--- expected\n{expected}\n--- actual\n{actual}"));
    }
}

#[test]
fn every_surface_matches_its_golden_files() {
    let mut failures = Vec::new();
    for case in CASES {
        // As memoryctl runs it (every file read), and as the daemon does
        // (remembering what its sweeps found): the same outcomes.
        run_case(case, None, &mut failures);
        run_case(case, Some(&SurfaceMemory::default()), &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn run_case(case: &Case, memory: Option<&SurfaceMemory>, failures: &mut Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let tmp_path = tmp.path().canonicalize().unwrap();
    let tmp_str = tmp_path.to_string_lossy().into_owned();
    let root = tmp_path.join("root");
    let peer = tmp_path.join("peer");
    std::fs::create_dir_all(&peer).unwrap();
    let before_text = std::fs::read_to_string(golden_dir().join(format!("{}.before", case.name))).unwrap();
    let before = parse_snapshot(&before_text, &tmp_str);
    lay_out(&peer, &before);
    if let Some(link) = case.escape {
        let outside = tmp_path.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, peer.join(link)).unwrap();
    }
    let iapeer = tmp_path.join("bin/iapeer");
    std::fs::create_dir_all(iapeer.parent().unwrap()).unwrap();
    let trust_log = tmp_path.join("trust.log");
    std::fs::write(&iapeer, format!("#!/bin/sh\necho \"$@\" >> '{}'\necho trusted\n", trust_log.display())).unwrap();
    std::fs::set_permissions(&iapeer, std::fs::Permissions::from_mode(0o755)).unwrap();

    let settings = Settings {
        root: root.clone(),
        hooks_dir: root.join("plugins/memoryd/hooks"),
        memoryctl: PathBuf::from("/opt/memoryd/bin/memoryctl"),
        mcp_port: case.mcp_port,
        iapeer: Ok(iapeer.clone()),
        // Trust is checked against a Codex config in the unit and end-to-end
        // tests; here the fake iapeer records nothing.
        codex_config: None,
    };
    let files = FileGuard::refusing(&[&root]);
    let egress = Egress::refusing(vec![iapeer]);
    let surfaces = Surfaces { settings: &settings, files: &files, egress: &egress, memory };
    std::fs::create_dir_all(&root).unwrap();
    let lock = ProvisionLock::open(&files, &root.join("provision.lock")).unwrap();
    let guard = lock.acquire("test", Duration::from_secs(1), &|| false).unwrap();
    let mut state = SurfaceState::default();

    // Inspecting changes nothing, and predicts every write.
    let laid_out = (read_tree(&peer), mtimes(&peer));
    let predicted = surfaces.inspect(&state, "boris", &peer, case.runtime).unwrap();
    if (read_tree(&peer), mtimes(&peer)) != laid_out {
        failures.push(format!("{}: inspect changed the folder", case.name));
    }
    let first = surfaces.provision(&guard, &mut state, "boris", &peer, case.runtime).unwrap();
    for o in first.iter().filter(|o| o.action.as_str() == "written" && o.surface != "trust") {
        if !predicted.iter().any(|p| p.surface == o.surface && p.action.as_str() == "written") {
            failures.push(format!("{}: inspect did not predict the write of {}", case.name, o.surface));
        }
    }
    let settled = surfaces.inspect(&state, "boris", &peer, case.runtime).unwrap();
    if let Some(o) = settled.iter().find(|o| o.action.as_str() == "written") {
        failures.push(format!("{}: inspect after provision still sees drift: {o:?}", case.name));
    }
    check_golden(&format!("{}.outcomes", case.name), &outcome_lines(&first, &tmp_str), failures);
    check_golden(&format!("{}.after", case.name), &render_snapshot(&read_tree(&peer), &tmp_str), failures);

    // A second provision changes nothing and spawns nothing.
    let stamps = mtimes(&peer);
    let trusts = std::fs::read_to_string(&trust_log).unwrap_or_default();
    let mut second = surfaces.provision(&guard, &mut state, "boris", &peer, case.runtime).unwrap();
    if memory.is_some() {
        // Past the racy window the files are remembered, then not read.
        std::thread::sleep(Duration::from_millis(60));
        for _ in 0..2 {
            let again = surfaces.provision(&guard, &mut state, "boris", &peer, case.runtime).unwrap();
            if outcome_lines(&again, &tmp_str) != outcome_lines(&second, &tmp_str) {
                failures.push(format!("{}: a remembered provision said {again:?}", case.name));
            }
            second = again;
        }
    }
    for (a, b) in first.iter().zip(&second) {
        let settled = matches!(b.action.as_str(), "already" | "absent")
            || (a.action == b.action && matches!(b.action.as_str(), "failed" | "skipped"));
        if !settled {
            failures.push(format!("{}: second provision of {} was {:?}", case.name, b.surface, b));
        }
    }
    if mtimes(&peer) != stamps {
        failures.push(format!("{}: the second provision touched files", case.name));
    }
    if std::fs::read_to_string(&trust_log).unwrap_or_default() != trusts {
        failures.push(format!("{}: the second provision ran iapeer trust-hooks again", case.name));
    }
    if case.escape.is_some() && !read_tree(&tmp_path.join("outside")).is_empty() {
        failures.push(format!("{}: something was written outside the peer folder", case.name));
    }

    let removed = surfaces.unprovision(&guard, &mut state, "boris", &peer, case.runtime).unwrap();
    check_golden(&format!("{}.unprovision-outcomes", case.name), &outcome_lines(&removed, &tmp_str), failures);
    check_golden(&format!("{}.unprovisioned", case.name), &render_snapshot(&read_tree(&peer), &tmp_str), failures);
}
