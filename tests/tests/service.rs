//! `memoryctl service install|uninstall`: the systemd user unit of an
//! install, written into a temp HOME.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use memoryd_e2e::*;
use std::path::Path;
use std::process::{Command, Output};

/// `memoryctl --root R <args>` with no way to reach a user service manager:
/// the runtime dir is the test's own and no session bus is named, so a
/// `systemctl --user` it runs can reach no real manager.
fn service(root: &Root, args: &[&str]) -> Output {
    let runtime = root.dir.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let mut cmd = root.command(&bins().memoryctl);
    cmd.env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .arg("--root")
        .arg(&root.paths.root)
        .args(args);
    output_within(&mut cmd, CHILD_LIMIT)
}

fn analyze_verify(unit: &Path) -> Output {
    output_within(Command::new("/usr/bin/systemd-analyze").arg("verify").arg(unit), CHILD_LIMIT)
}

#[test]
fn service_install_writes_a_unit_systemd_accepts_once_and_uninstall_removes_it() {
    let root = Root::bare();
    let iapeer = root.fake_iapeer();
    let vault = root.dir.path().join("vault");
    let refused = service(&root, &["service", "install"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("there is no memoryd install at"), "{}", stderr(&refused));

    let init = root.ctl(&[
        "init",
        "--vault",
        vault.to_str().unwrap(),
        "--iapeer-bin",
        iapeer.bin.to_str().unwrap(),
        "--mcp-port",
        "0",
    ]);
    assert!(init.status.success(), "{}{}", stdout(&init), stderr(&init));
    // init names the exact next command.
    let next = format!("memoryctl --root {} service install --now", root.paths.root.display());
    assert!(stdout(&init).contains(&next), "{}", stdout(&init));

    let out = service(&root, &["service", "install"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let unit = root.home.join(".config/systemd/user/memoryd.service");
    assert!(stdout(&out).contains(&format!("service definition written: {}", unit.display())), "{}", stdout(&out));
    let text = std::fs::read_to_string(&unit).unwrap();
    // memoryd_bin from the config that init wrote: the memoryd next to memoryctl.
    let exec = format!("ExecStart={} --root {}\n", bins().memoryd.display(), root.paths.root.display());
    assert!(text.contains(&exec), "{text}");
    assert!(!text.contains("%h/.local/bin"), "{text}");
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let verified = analyze_verify(&unit);
        let err = stderr(&verified);
        assert!(verified.status.success() && err.trim().is_empty(), "systemd-analyze verify: {err}");
    } else {
        eprintln!("SKIPPED systemd-analyze verify: not installed");
    }

    // A second install is a no-op: same bytes, same mtime.
    let before = std::fs::metadata(&unit).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = service(&root, &["service", "install"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stdout(&again).contains("service definition unchanged"), "{}", stdout(&again));
    assert_eq!(std::fs::metadata(&unit).unwrap().modified().unwrap(), before);
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), text);

    // No user systemd is reachable here: --now fails with one sentence that
    // says the unit is written and how to start it later.
    let now = service(&root, &["service", "install", "--now"]);
    assert_eq!(now.status.code(), Some(1), "{}", stdout(&now));
    let err = stderr(&now);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("memoryctl service install: "), "{err}");
    for needle in ["is written, but `systemctl --user daemon-reload` failed", "systemctl --user enable --now memoryd"] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(unit.is_file(), "a failed start keeps the unit");

    // A dangling enable link that the manager could not remove goes too.
    let wants = root.home.join(".config/systemd/user/default.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(&unit, wants.join("memoryd.service")).unwrap();
    let gone = service(&root, &["--json", "service", "uninstall"]);
    assert!(gone.status.success(), "{}", stderr(&gone));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&gone)).unwrap();
    assert_eq!(doc["removed"], true, "{doc}");
    assert_eq!(doc["stopped"], false, "no manager to stop it: {doc}");
    assert!(stderr(&gone).contains("warning: `systemctl --user disable --now memoryd` failed"), "{}", stderr(&gone));
    assert!(!unit.exists() && !wants.join("memoryd.service").is_symlink());
    let twice = service(&root, &["service", "uninstall"]);
    assert!(twice.status.success() && stdout(&twice).contains("nothing to remove"), "{}", stdout(&twice));
}
