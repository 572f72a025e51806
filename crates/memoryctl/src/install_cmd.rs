//! `init` and `uninstall`: always run in memoryctl (spec 30). They talk to
//! a daemon only to ask it to reload or to stop it.

use crate::daemon_cmd::{self, Ended};
use crate::output::Lines;
use crate::provision_cmd::run_locally_with;
use crate::{Ctx, Usage};
use anyhow::{Context as _, bail};
use clap::Args;
use memoryd_core::config::{self, Setting};
use memoryd_core::fleet::FleetRead;
use memoryd_core::host::files::FileGuard;
use memoryd_core::ops::install::{self, Binaries};
use memoryd_core::ops::provision::PeerRequest;
use memoryd_core::ops::report::Tally;
use memoryd_core::ops::update;
use memoryd_core::surfaces::{Action, StateFile, shims::SESSION_RUNTIMES};
use memoryd_proto::host::Reloaded;
use memoryd_proto::{Command, ProgressStatus};
use serde_json::json;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The vault of Markdown notes (created if missing)
    #[arg(long, value_name = "DIR")]
    vault: PathBuf,
    /// The fleet peer that registers the notifier watcher relaunching memoryd
    #[arg(long, value_name = "PEER")]
    registrant: Option<String>,
    /// Port of the MCP endpoint written into every peer's surfaces (0 = off)
    #[arg(long, value_name = "PORT")]
    mcp_port: Option<u16>,
    /// Absolute path of the iapeer binary [default: PATH, then ~/.local/bin/iapeer]
    #[arg(long, value_name = "PATH")]
    iapeer_bin: Option<PathBuf>,
    /// Change the vault of an existing install (its notes stay where they are)
    #[arg(long)]
    force: bool,
}

/// `memoryctl init`: writes the config, then runs update's steps 1 to 7.
pub async fn init(ctx: &Ctx, args: InitArgs) -> anyhow::Result<ExitCode> {
    let files = FileGuard::for_install(&ctx.paths.root, Some(&args.vault));
    let vault = memoryd_core::host::paths::absolute(&args.vault);
    if let (Some(current), false) = (&ctx.config.vault, args.force)
        && *current != vault
    {
        return Err(Usage(format!(
            "the config already names the vault {}; a second vault splits the fleet's memory in two. \
             Pass --force to switch to {}",
            current.display(),
            vault.display()
        ))
        .into());
    }
    let iapeer = match &args.iapeer_bin {
        Some(bin) if !bin.is_absolute() => {
            return Err(Usage(format!("--iapeer-bin {} is not absolute", bin.display())).into());
        }
        Some(bin) => bin.clone(),
        None => install::iapeer_bin(&ctx.config, files.is_sandboxed()).map_err(Usage)?,
    };
    if let Some(registrant) = &args.registrant
        && !memoryd_core::fleet::names::is_personality(registrant)
    {
        return Err(Usage(format!("--registrant {registrant:?} breaks the name rule ^[a-z][a-z0-9-]{{0,31}}$")).into());
    }
    files.create_dir_all(&vault, 0o700).context("cannot create the vault")?;
    let running = Binaries::running().context("cannot find this memoryctl binary")?;
    let binaries = Binaries::resolve(&memoryd_core::config::Config::default(), &running);
    let mut settings = vec![
        ("vault", Setting::Text(vault.display().to_string())),
        ("iapeer_bin", Setting::Text(iapeer.display().to_string())),
        ("memoryd_bin", Setting::Text(binaries.memoryd.display().to_string())),
        ("memoryctl_bin", Setting::Text(binaries.memoryctl.display().to_string())),
    ];
    if let Some(registrant) = &args.registrant {
        settings.push(("registrant", Setting::Text(registrant.clone())));
    }
    if let Some(port) = args.mcp_port {
        settings.push(("mcp_port", Setting::Number(i64::from(port))));
    }
    // A fleet host keeps the name it joined with, whatever its hostname
    // becomes later.
    let pg = &ctx.config.store.postgres;
    if ctx.config.store.backend == config::Backend::Postgres && pg.host_id.is_none() {
        let host_id = pg.host_id_or(&memoryd_core::host::heartbeat::hostname());
        settings.push(("postgres.host_id", Setting::Text(host_id)));
    }
    let text = std::fs::read_to_string(&ctx.config_file).unwrap_or_default();
    let new_text = config::with_settings(&ctx.config_file, &text, &settings)?;
    if let Some(dir) = ctx.config_file.parent() {
        files.create_dir_all(dir, 0o755)?;
    }
    let wrote = files.write_if_changed(&ctx.config_file, new_text.as_bytes(), None)?;
    let env = |k: &str| std::env::var_os(k);
    let loaded = config::load(&ctx.config_file, true, env, &Vec::new())?.config;
    if !ctx.json {
        let verb = if wrote == memoryd_core::host::files::WriteOutcome::Written { "written" } else { "unchanged" };
        println!("config {verb}: {}", ctx.config_file.display());
    }

    let mut lines = Lines::new(ctx.json, ctx.style, true);
    let problems = run_locally_with(ctx, &loaded, |p| {
        let mut sink = |name: &str, status: ProgressStatus, detail: &str| lines.add(name, status, detail);
        let mut tally = Tally::new(&mut sink);
        update::run(p, &[], update::INIT_STEPS, &mut tally);
        tally.problems
    })?;

    let reloaded = match ctx.connect().await? {
        // The install is done by now: a daemon that does not take the
        // reload is reported, not a reason to fail what already ran.
        Some(mut client) => match ctx.call::<Reloaded>(&mut client, &Command::HostReload).await {
            Ok(answer) => answer.is_ok(),
            Err(e) => {
                eprintln!("memoryctl init: warning: the running memoryd did not reload: {e:#}");
                false
            }
        },
        None => false,
    };
    if ctx.json {
        crate::print_json(
            &json!({"ok": problems == 0, "problems": problems, "steps": lines.json(), "reloaded": reloaded}),
        )?;
    } else {
        if reloaded {
            println!("the running memoryd reloaded its config");
        } else {
            println!("start memoryd with one of:");
            println!("  {} service install --now    (a systemd user unit; a launchd agent on macOS)", ctx.ctl());
            println!("  {} daemon start", ctx.ctl());
        }
        if problems > 0 {
            println!("init finished with {problems} problem(s) — {} verify --repair", ctx.ctl());
        }
    }
    Ok(if problems == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `memoryctl uninstall [--yes]`.
pub async fn uninstall(ctx: &Ctx, yes: bool) -> anyhow::Result<ExitCode> {
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(Usage("uninstall removes memoryd from every peer folder; pass --yes to confirm".into()).into());
        }
        // With --json stdout holds the document alone; the question goes to stderr.
        let question = format!("Remove memoryd from every peer folder of {}? [y/N] ", ctx.paths.root.display());
        if ctx.json {
            eprint!("{question}");
        } else {
            print!("{question}");
            std::io::stdout().flush()?;
        }
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            if ctx.json {
                crate::print_json(&json!({"ok": true, "problems": 0, "steps": [], "cancelled": true}))?;
            } else {
                println!("nothing changed");
            }
            return Ok(ExitCode::SUCCESS);
        }
    }
    let mut lines = Lines::new(ctx.json, ctx.style, true);

    // 1. The notifier watcher.
    match &ctx.config.registrant {
        None => lines.add("triggers", ProgressStatus::Skip, "no registrant configured"),
        Some(registrant) => {
            let body = json!({"cmd": "unregister", "role": "event", "id": "memoryd", "target": registrant});
            match run_locally_with(ctx, &ctx.config, |p| update::send_to_watcher(p, registrant, &body))? {
                Ok(from) => lines.add("triggers", ProgressStatus::Ok, &format!("watcher unregistered (from {from})")),
                Err(e) => lines.add("triggers", ProgressStatus::Fail, &e),
            }
        }
    }
    // 2. The daemon: asked to stop, else ended by the verified kill. A
    // supervised daemon would come back and rewire every peer meanwhile.
    if let Some(client) = ctx.connect().await?
        && let Some(sup) = &client.hello.supervisor
    {
        bail!(
            "memoryd runs under {sup}, which would restart it and rewire every peer; stop and disable it first \
             ({}, and disable its unit), then run uninstall again",
            memoryd_core::host::supervisor::stop_command(sup)
        );
    }
    match daemon_cmd::end(ctx).await {
        Ok(Ended::NotRunning) => lines.add("memoryd", ProgressStatus::Ok, "not running"),
        Ok(Ended::Stopped { pid, .. }) => lines.add("memoryd", ProgressStatus::Ok, &format!("stopped (pid {pid})")),
        Ok(Ended::Killed { pid, how }) => {
            lines.add("memoryd", ProgressStatus::Ok, &format!("pid {pid} did not answer; ended with {how}"))
        }
        Err(e) => {
            lines.add("memoryd", ProgressStatus::Fail, &format!("a memoryd holds the lock and was not ended: {e:#}"));
            return Ok(ExitCode::FAILURE);
        }
    }
    let unit = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/systemd/user/memoryd.service"));
    if unit.is_some_and(|u| u.exists()) && !ctx.json {
        println!("a systemd unit is installed; also run: systemctl --user disable --now memoryd");
    }
    // 3. Every peer, under the lock; then the slot, the shims, the launcher.
    let (failures, removed) = run_locally_with(ctx, &ctx.config, |p| {
        let mut pairs: Vec<(String, PathBuf, String)> = Vec::new();
        if let FleetRead::Map(map) = FleetRead::load(&ctx.paths.fleet_map) {
            for peer in &map.peers {
                for runtime in peer.session_runtimes() {
                    pairs.push((peer.personality.clone(), peer.cwd.clone(), runtime.to_owned()));
                }
            }
        }
        // Folders memoryd wired that the map no longer lists.
        for (folder, record) in StateFile::load(&ctx.paths.surface_state).state.folders() {
            for runtime in record.runtimes.iter().filter(|r| SESSION_RUNTIMES.contains(&r.as_str())) {
                let known =
                    pairs.iter().any(|(_, cwd, r)| r == runtime && cwd.canonicalize().ok().as_deref() == Some(folder));
                if !known {
                    pairs.push(("unknown".to_owned(), folder.to_path_buf(), runtime.clone()));
                }
            }
        }
        let mut failures = Vec::new();
        for (personality, cwd, runtime) in &pairs {
            let request = PeerRequest {
                cwd: cwd.clone(),
                runtime: runtime.clone(),
                personality: personality.clone(),
                occasion: "off-all".to_owned(),
            };
            match p.unprovision_peer(&request) {
                Ok(report) => {
                    for o in report.outcomes.iter().filter(|o| o.action == Action::Failed) {
                        failures.push(format!(
                            "{personality}:{runtime} — {}: {}",
                            o.surface,
                            o.detail.as_deref().unwrap_or("failed")
                        ));
                    }
                }
                Err(e) => failures.push(format!("{personality}:{runtime} — {e}")),
            }
        }
        (failures, p.remove_install().map(|removed| (pairs.len(), removed)))
    })?;
    match &failures[..] {
        [] => lines.add("surfaces", ProgressStatus::Ok, "every peer unprovisioned"),
        _ => {
            lines.add("surfaces", ProgressStatus::Fail, &format!("{} surface(s) could not be removed", failures.len()));
            for f in &failures {
                let (pair, detail) = f.split_once(" — ").unwrap_or((f, ""));
                lines.push(memoryd_proto::Progress {
                    id: serde_json::Value::Null,
                    name: pair.to_owned(),
                    status: ProgressStatus::Fail,
                    detail: detail.to_owned(),
                });
            }
        }
    }
    match removed {
        Ok((pairs, removed)) => lines.add(
            "install",
            ProgressStatus::Ok,
            &format!(
                "{pairs} peer-runtime(s) done; removed {}",
                if removed.is_empty() { "nothing".to_owned() } else { removed.join(", ") }
            ),
        ),
        Err(e) => lines.add("install", ProgressStatus::Fail, &e.to_string()),
    }
    let kept = format!(
        "kept: the vault{}, the config ({}) and the state dir ({})",
        ctx.config.vault.as_ref().map(|v| format!(" ({})", v.display())).unwrap_or_default(),
        ctx.config_file.display(),
        ctx.paths.state.display()
    );
    let problems = lines.problems();
    if ctx.json {
        crate::print_json(&json!({"ok": problems == 0, "problems": problems, "steps": lines.json(), "kept": kept}))?;
    } else {
        println!("{kept}");
    }
    Ok(if problems == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
