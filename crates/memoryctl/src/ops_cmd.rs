//! `update` and `verify`: run by the daemon when it answers (its progress
//! printed line by line as it streams in), in this process under the same
//! provision lock when it does not.

use crate::daemon_cmd::{self, Hung, RESTART_LIMIT};
use crate::output::Lines;
use crate::provision_cmd::run_locally;
use crate::{Ctx, Usage};
use anyhow::{Context as _, bail};
use memoryd_core::ops::report::Tally;
use memoryd_core::ops::{update, verify};
use memoryd_proto::host::{Restarting, Updated, Verified};
use memoryd_proto::{Command, ProgressStatus, UpdateParams, VerifyParams};
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

/// `memoryctl verify [--repair]`.
pub async fn verify(ctx: &Ctx, repair: bool, local: bool) -> anyhow::Result<ExitCode> {
    let mut lines = Lines::new(ctx.json, ctx.style, false);
    let client = if local { None } else { ctx.connect().await? };
    let answered = match client {
        Some(mut client) => {
            let command = Command::HostVerify(VerifyParams { repair });
            ctx.answer_or_run_here(&mut client, &command, |p| lines.push(p))
                .await?
                .map(|answer| answer.map(|verified: Verified| verified.ok))
                .transpose()?
        }
        None => {
            if !local {
                eprintln!("memoryd not answering: running locally");
            }
            None
        }
    };
    let ok = match answered {
        Some(ok) => ok,
        // The checks run here from the start: what a silent daemon printed
        // before it stopped is not part of the answer.
        None => {
            lines = Lines::new(ctx.json, ctx.style, false);
            verify_locally(ctx, repair, &mut lines).await?
        }
    };
    if ctx.json {
        crate::print_json(&json!({"ok": ok, "checks": lines.json()}))?;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn verify_locally(ctx: &Ctx, repair: bool, lines: &mut Lines) -> anyhow::Result<bool> {
    let (mut hb_status, mut hb_detail) =
        verify::heartbeat_from_disk(&ctx.paths.heartbeat, &ctx.config, SystemTime::now());
    let (mut sock_status, mut sock_detail) = (ProgressStatus::Fail, ctx.not_answering());
    // A daemon that holds the lock but does not answer is hung: only a
    // memoryctl can end it, by the verified kill.
    if repair {
        match daemon_cmd::end_hung(ctx).await {
            Hung::NotRunning => {}
            Hung::Ended { pid, how } => {
                let done = format!(
                    "memoryd (pid {pid}) did not answer; ended it with {how} (the supervisor, or `{} daemon start`, brings a fresh one)",
                    ctx.ctl()
                );
                (hb_status, hb_detail) = (ProgressStatus::Repaired, done.clone());
                (sock_status, sock_detail) = (ProgressStatus::Repaired, done);
            }
            Hung::Unverified(why) | Hung::Failed(why) => {
                sock_detail = format!("{sock_detail}; nothing was signalled: {why}");
            }
        }
    }
    let config_error = ctx.config_error.as_ref().map(ToString::to_string);
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    // memoryctl's runtime runs nothing else meanwhile: blocking here is fine.
    let ok = run_locally(ctx, |p| {
        let mut sink = |name: &str, status: ProgressStatus, detail: &str| lines.add(name, status, detail);
        let mut tally = Tally::new(&mut sink);
        verify::config(p.config, config_error.as_deref(), &mut tally);
        tally.line("memoryd-heartbeat", hb_status, &hb_detail);
        tally.line("memoryd-socket", sock_status, &sock_detail);
        verify::Verify { p, repair, home, refused_rescan: false, embeddings: None, fleet: None }.rest(&mut tally);
        tally.problems == 0
    })?;
    Ok(ok)
}

/// `memoryctl update [--skip STEP]…`.
pub async fn update(ctx: &Ctx, skip: Vec<String>, local: bool) -> anyhow::Result<ExitCode> {
    update::check_skip(&skip).map_err(Usage)?;
    if !ctx.json {
        println!("memoryd update → v{}", memoryd_core::VERSION);
    }
    let mut lines = Lines::new(ctx.json, ctx.style, true);
    let client = if local { None } else { ctx.connect().await? };
    let problems = match client {
        Some(client) => {
            let mut client = onto_this_version(ctx, client).await?;
            let command = Command::HostUpdate(UpdateParams { skip });
            let updated: Updated = ctx.call_with(&mut client, &command, |p| lines.push(p)).await??;
            updated.problems
        }
        None => {
            if !local {
                eprintln!("memoryd not answering: running locally");
            }
            update_locally(ctx, &skip, &mut lines).await?
        }
    };
    if ctx.json {
        crate::print_json(&json!({"ok": problems == 0, "problems": problems, "steps": lines.json()}))?;
    } else if problems == 0 {
        println!("update complete — confirm: {} verify", ctx.ctl());
    } else {
        println!("update finished with {problems} problem(s) — {} verify --repair", ctx.ctl());
    }
    Ok(if problems == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// When the daemon runs another version, restarts it onto the installed
/// binary first, so the new code runs the update.
async fn onto_this_version(ctx: &Ctx, mut client: crate::client::Client) -> anyhow::Result<crate::client::Client> {
    let running = client.hello.version.clone();
    if running == memoryd_core::VERSION {
        return Ok(client);
    }
    if !ctx.json {
        println!("memoryd v{running} runs; restarting it onto v{} first", memoryd_core::VERSION);
    }
    ctx.call::<Restarting>(&mut client, &Command::HostRestart).await??;
    drop(client);
    let deadline = Instant::now() + RESTART_LIMIT;
    loop {
        if let Some(client) = ctx.connect().await?
            && client.hello.version == memoryd_core::VERSION
        {
            return Ok(client);
        }
        if Instant::now() >= deadline {
            bail!(
                "memoryd still runs v{running} {}s after the restart; check memoryd_bin ({})",
                RESTART_LIMIT.as_secs(),
                ctx.config_file.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn update_locally(ctx: &Ctx, skip: &[String], lines: &mut Lines) -> anyhow::Result<usize> {
    let mut problems = run_locally(ctx, |p| {
        let mut sink = |name: &str, status: ProgressStatus, detail: &str| lines.add(name, status, detail);
        let mut tally = Tally::new(&mut sink);
        update::run(p, skip, update::INIT_STEPS, &mut tally);
        tally.problems
    })
    .context("cannot run the update here")?;
    // Step 8 without a daemon that answers: end a hung one, or say how to
    // start one.
    if skip.iter().any(|s| s == "memoryd") {
        lines.add("memoryd", ProgressStatus::Skip, "skipped on request");
        return Ok(problems);
    }
    let start = format!("start it with: {} daemon start (or systemctl --user start memoryd)", ctx.ctl());
    match daemon_cmd::end_hung(ctx).await {
        Hung::NotRunning => lines.add("memoryd", ProgressStatus::Skip, &format!("memoryd is not running; {start}")),
        Hung::Ended { pid, how } => lines.add(
            "memoryd",
            ProgressStatus::Ok,
            &format!("the hung memoryd (pid {pid}) was ended with {how}; the supervisor restarts it, or {start}"),
        ),
        Hung::Unverified(why) | Hung::Failed(why) => {
            problems += 1;
            lines.add("memoryd", ProgressStatus::Fail, &format!("memoryd does not answer and was not ended: {why}"));
        }
    }
    Ok(problems)
}
