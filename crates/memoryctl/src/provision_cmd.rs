//! `sweep`, `provision-peer` and `unprovision-peer`: forwarded to the daemon
//! when it answers, run in-process under the same provision lock when it
//! does not (or with `--local`).

use crate::{Ctx, Usage, store_open};
use anyhow::Context as _;
use clap::Args;
use memoryd_core::config::Config;
use memoryd_core::host::files::FileGuard;
use memoryd_core::host::instance;
use memoryd_core::host::lock::ProvisionLock;
use memoryd_core::ops::install::Binaries;
use memoryd_core::ops::provision::{self, PeerReport, PeerRequest, Provisioner, Tools};
use memoryd_core::surfaces::Action;
use memoryd_proto::host::Swept;
use memoryd_proto::{Command, ErrorKind};
use std::path::PathBuf;
use std::process::ExitCode;

/// The arguments of `provision-peer` and `unprovision-peer` (spec 30).
#[derive(Debug, Args)]
pub struct PeerArgs {
    /// The peer's folder (absolute)
    #[arg(long, value_name = "DIR")]
    cwd: PathBuf,
    /// The runtime: claude and codex get surfaces, others have none
    #[arg(long, value_name = "RUNTIME")]
    runtime: String,
    /// The peer's name
    #[arg(long, value_name = "NAME")]
    personality: String,
    /// Why the core calls: birth, remove, sweep-on, off-peer, off-all
    /// [default: sweep-on to provision, off-peer to unprovision]
    #[arg(long, value_name = "OCCASION")]
    occasion: Option<String>,
    /// Run in this process under the provision lock even when the daemon answers
    #[arg(long)]
    local: bool,
}

/// `provision-peer` (`provisioning`) or `unprovision-peer`.
pub async fn peer(ctx: &Ctx, args: PeerArgs, provisioning: bool) -> anyhow::Result<ExitCode> {
    let occasion = args.occasion.unwrap_or_else(|| if provisioning { "sweep-on" } else { "off-peer" }.to_owned());
    let request = PeerRequest { cwd: args.cwd, runtime: args.runtime, personality: args.personality, occasion };
    provision::validate(&request, provisioning).map_err(Usage)?;
    let client = if args.local { None } else { ctx.connect().await? };
    let answered = match client {
        Some(mut client) => {
            let command = if provisioning {
                Command::PeerProvision(request.clone())
            } else {
                Command::PeerUnprovision(request.clone())
            };
            let print = |p| {
                if !ctx.json {
                    println!("{}", ctx.style.progress(&p));
                }
            };
            match ctx.answer_or_run_here::<PeerReport>(&mut client, &command, print).await? {
                Some(Ok(report)) => Some(report),
                Some(Err(e)) if e.kind() == Some(ErrorKind::RequestInvalid) => return Err(Usage(e.message).into()),
                Some(Err(e)) => return Err(e.into()),
                None => None,
            }
        }
        None => {
            if !args.local {
                eprintln!("memoryd not answering: running locally");
            }
            None
        }
    };
    let report = match answered {
        Some(report) => report,
        None => {
            run_locally(ctx, |p| if provisioning { p.provision_peer(&request) } else { p.unprovision_peer(&request) })??
        }
    };
    if ctx.json {
        crate::print_json(&report)?;
    } else {
        print_peer_report(&report, &request, provisioning);
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_peer_report(report: &PeerReport, request: &PeerRequest, provisioning: bool) {
    let pair = format!("{}:{}", request.personality, request.runtime);
    if let Some(nothing) = &report.nothing {
        println!("{pair}: {nothing}");
        return;
    }
    for o in &report.outcomes {
        let mark = if o.action == Action::Failed { "FAIL" } else { "ok  " };
        let detail = o.detail.as_deref().map(|d| format!(" — {d}")).unwrap_or_default();
        println!("{mark}  {:<7} {}{detail} ({})", o.surface, o.action.as_str(), o.path.display());
    }
    let failed = report.outcomes.iter().filter(|o| o.action == Action::Failed).count();
    let verb = if provisioning { "provisioned" } else { "unprovisioned" };
    if failed == 0 {
        println!("{pair} {verb}: {} surface(s) ok", report.outcomes.len());
    } else {
        println!("{pair}: {failed} of {} surface(s) failed", report.outcomes.len());
    }
}

/// Runs `job` in this process, with the provision lock the daemon uses.
pub fn run_locally<T: Send>(ctx: &Ctx, job: impl FnOnce(&Provisioner<'_>) -> T + Send) -> anyhow::Result<T> {
    run_locally_with(ctx, &ctx.config, job)
}

/// [`run_locally`] with another config (`init`'s new one). The job runs
/// off memoryctl's runtime, as the fleet database's calls need.
pub fn run_locally_with<T: Send>(
    ctx: &Ctx,
    config: &Config,
    job: impl FnOnce(&Provisioner<'_>) -> T + Send,
) -> anyhow::Result<T> {
    let files = FileGuard::for_install(&ctx.paths.root, config.vault.as_deref());
    instance::ensure_private_dir(&files, &ctx.paths.state)?;
    let lock = ProvisionLock::open(&files, &ctx.paths.provision_lock)?;
    let running = Binaries::running().context("cannot find this memoryctl binary")?;
    let tools = Tools::new(&ctx.paths, config, &running, files.is_sandboxed());
    let paths = &ctx.paths;
    store_open::off_runtime(|| {
        let store = store_open::open(paths, config, store_open::Access::Provision(&files))?;
        Ok(provide(paths, &files, &tools, config, &*store, &lock, job))
    })
}

/// Builds the provisioner of one local run and runs `job` with it.
fn provide<T>(
    paths: &memoryd_core::host::paths::Paths,
    files: &FileGuard,
    tools: &Tools,
    config: &Config,
    store: &dyn memoryd_core::store::StateStore,
    lock: &ProvisionLock,
    job: impl FnOnce(&Provisioner<'_>) -> T,
) -> T {
    // The fragments list the vault's notes: scan it once for this run.
    let index =
        config.vault.as_deref().and_then(|v| memoryd_core::vault::scan(v).ok()).map(memoryd_core::vault::Index::build);
    let provisioner = Provisioner {
        paths,
        files,
        tools,
        config,
        store,
        index: index.as_ref(),
        lock,
        cancelled: &|| false,
        on_batch: &|_, _, _| {},
        // A one-off run: nothing earlier to remember.
        memory: None,
    };
    job(&provisioner)
}

/// `sweep`: ask the daemon to sweep every peer now.
pub async fn sweep(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let mut client = ctx.require().await?;
    let swept: Swept = ctx.call(&mut client, &Command::HostSweep).await??;
    if ctx.json {
        crate::print_json(&swept)?;
    } else {
        for f in &swept.failed {
            println!("      FAIL {}:{} — {}: {}", f.personality, f.runtime, f.surface, f.detail);
        }
        let summary = format!(
            "{} peer-runtime(s), {} failed, {} peer(s) skipped, {} file(s) written",
            swept.pairs,
            swept.failed.len(),
            swept.skipped.len(),
            swept.writes
        );
        println!("sweep {}: {summary}", if swept.failed.is_empty() { "ok" } else { "FAILED" });
    }
    Ok(if swept.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
