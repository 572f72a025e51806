//! `update` (spec 30): the steps that bring a host to this version, each
//! reported as soon as it finishes, every one run even after an earlier one
//! failed. The last step (restarting the daemon) belongs to the caller: the
//! daemon restarts itself after its reply, an offline `memoryctl` ends a
//! hung daemon or says how to start one.

use crate::fleet::slot::{Declared, SlotState};
use crate::fleet::{FleetPeer, FleetRead};
use crate::ops::install::check_executable;
use crate::ops::provision::Provisioner;
use crate::ops::report::Tally;
use memoryd_proto::ProgressStatus::{self, Fail, Ok as Good, Skip};
use serde_json::json;
use std::time::Duration;

/// The steps, in order.
pub const STEPS: [&str; 8] = ["binary", "fleet", "surfaces", "slot", "launcher", "triggers", "fragments", "memoryd"];

/// How long `iapeer send watcher` may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Refuses a `--skip` that names no step.
pub fn check_skip(skip: &[String]) -> Result<(), String> {
    match skip.iter().find(|s| !STEPS.contains(&s.as_str())) {
        Some(bad) => Err(format!("unknown step `{bad}` to skip; the steps are {}", STEPS.join(", "))),
        None => Ok(()),
    }
}

/// The steps `init` runs too (all but the restart).
pub const INIT_STEPS: usize = 7;

/// Runs steps 1 to `until` (7 for `init` and `update`), skipping the named
/// ones; the caller runs step 8 itself.
pub fn run(p: &Provisioner<'_>, skip: &[String], until: usize, out: &mut Tally<'_>) {
    for step in STEPS.iter().take(until) {
        if skip.iter().any(|s| s == step) {
            out.line(step, Skip, "skipped on request");
            continue;
        }
        let (status, detail) = match *step {
            "binary" => binary(p),
            "fleet" => fleet(p),
            "surfaces" => {
                surfaces(p, out);
                continue;
            }
            "slot" => slot(p),
            "launcher" => launcher(p),
            "triggers" => triggers(p),
            _ => fragments(p),
        };
        out.line(step, status, &detail);
    }
}

fn binary(p: &Provisioner<'_>) -> (ProgressStatus, String) {
    let b = &p.tools.binaries;
    match (check_executable(&b.memoryctl), check_executable(&b.memoryd)) {
        (Ok(()), Ok(())) => (Good, format!("memoryctl {}, memoryd {}", b.memoryctl.display(), b.memoryd.display())),
        (Err(e), _) | (_, Err(e)) => {
            (Fail, format!("{e}; build or install memoryd, or set memoryd_bin / memoryctl_bin"))
        }
    }
}

fn fleet(p: &Provisioner<'_>) -> (ProgressStatus, String) {
    match p.refresh_fleet() {
        Ok(r) => {
            (Good, format!("{} peers, {}", r.map.peers.len(), if r.changed { "map written" } else { "unchanged" }))
        }
        Err(e) => (Fail, format!("{e}; the sweep runs on the last map")),
    }
}

/// The map's peers, or the sentence saying why there are none.
pub fn map_peers(p: &Provisioner<'_>) -> Result<Vec<FleetPeer>, String> {
    match FleetRead::load(&p.paths.fleet_map) {
        FleetRead::Map(map) => Ok(map.peers),
        other => Err(other.describe()),
    }
}

/// Step 3 reports its own line, then one sub-line per failed peer-runtime.
fn surfaces(p: &Provisioner<'_>, out: &mut Tally<'_>) {
    if let Some(refusal) = SlotState::read(&p.paths.slot).refusal(&p.paths.slot) {
        return out.line("surfaces", Skip, &refusal);
    }
    let peers = match map_peers(p) {
        Ok(peers) => peers,
        Err(why) => return out.line("surfaces", Fail, &format!("there is no fleet map to sweep: {why}")),
    };
    let report = match p.sweep(&peers) {
        Ok(report) => report,
        Err(e) => return out.line("surfaces", Fail, &e.to_string()),
    };
    let summary = format!(
        "{} peer-runtime(s), {} file(s) written, {} peer(s) skipped",
        report.pairs.len(),
        report.writes,
        report.skipped.len()
    );
    let failed: Vec<_> = report.pairs.iter().filter(|pair| !pair.ok()).collect();
    if failed.is_empty() {
        return out.line("surfaces", Good, &summary);
    }
    out.line("surfaces", Fail, &format!("{} failed of {summary}", failed.len()));
    for pair in failed {
        let detail: Vec<String> = pair
            .outcomes
            .iter()
            .filter(|o| o.action == crate::surfaces::Action::Failed)
            .map(|o| format!("{}: {}", o.surface, o.detail.as_deref().unwrap_or("failed")))
            .collect();
        out.sub(&format!("{}:{}", pair.personality, pair.runtime), &detail.join("; "));
    }
}

fn slot(p: &Provisioner<'_>) -> (ProgressStatus, String) {
    match p.declare_slot() {
        Ok(Declared::Identical) => (Good, "identical".to_owned()),
        Ok(Declared::Written) => (Good, format!("written ({})", p.paths.slot.display())),
        Err(e) => (Fail, e.to_string()),
    }
}

fn launcher(p: &Provisioner<'_>) -> (ProgressStatus, String) {
    match p.write_launcher_and_shims() {
        Ok(0) => (Good, "already".to_owned()),
        Ok(n) => (Good, format!("written ({n} file(s): launcher and hook shims)")),
        Err(e) => (Fail, e.to_string()),
    }
}

/// Registers the notifier watcher that relaunches memoryd, as the
/// configured registrant (`--from <defaultRuntime>-<registrant>`).
fn triggers(p: &Provisioner<'_>) -> (ProgressStatus, String) {
    let Some(registrant) = &p.config.registrant else {
        return (Skip, "no registrant configured".to_owned());
    };
    match send_to_watcher(
        p,
        registrant,
        &json!({
            "cmd": "register",
            "role": "event",
            "id": "memoryd",
            "script": p.paths.launcher,
            "target": registrant,
        }),
    ) {
        Ok(from) => (Good, format!("watcher registered (from {from})")),
        Err(e) => (Fail, e),
    }
}

/// Sends one command to the notifier watcher; the `--from` node it used.
pub fn send_to_watcher(p: &Provisioner<'_>, registrant: &str, body: &serde_json::Value) -> Result<String, String> {
    let peers = map_peers(p).map_err(|why| format!("cannot find registrant `{registrant}`: {why}"))?;
    let peer = peers
        .iter()
        .find(|peer| peer.personality == registrant)
        .ok_or_else(|| format!("registrant `{registrant}` is not in the fleet map; fix `registrant` in the config"))?;
    let runtime = peer
        .default_runtime
        .clone()
        .or_else(|| peer.runtimes.first().cloned())
        .ok_or_else(|| format!("registrant `{registrant}` has no runtime in the fleet map"))?;
    let from = format!("{runtime}-{registrant}");
    let iapeer = p.tools.settings.iapeer.clone()?;
    let args = ["send", "watcher", "--from", from.as_str(), "--stdin"];
    let out = p
        .tools
        .egress
        .run(&iapeer, &args, Some(body.to_string().as_bytes()), SEND_TIMEOUT)
        .map_err(|e| e.to_string())?;
    if out.success() {
        Ok(from)
    } else {
        Err(format!(
            "`iapeer send watcher` exited with {}: {}",
            out.code.map_or("a signal".to_owned(), |c| c.to_string()),
            String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("no message")
        ))
    }
}

fn fragments(p: &Provisioner<'_>) -> (ProgressStatus, String) {
    let peers = match map_peers(p) {
        Ok(peers) => peers,
        Err(why) => return (Fail, format!("there is no fleet map: {why}")),
    };
    match p.render_fragments(&peers) {
        Ok((written, unchanged, 0)) => (Good, format!("{written} written, {unchanged} unchanged")),
        Ok((written, unchanged, failed)) => {
            (Fail, format!("{failed} failed, {written} written, {unchanged} unchanged (see the daemon log)"))
        }
        Err(e) => (Fail, e.to_string()),
    }
}
