//! `attach`, `heartbeat`, `detach` (for scripts), `peers` (the roster),
//! `revoke`, `unrevoke` and `events`.

use crate::Ctx;
use crate::store_open::{Access, off_runtime, open};
use anyhow::Context as _;
use clap::Args;
use memoryd_core::fleet::FleetRead;
use memoryd_core::host::files::FileGuard;
use memoryd_core::presence::Revoker;
use memoryd_core::store::StoreError;
use memoryd_proto::presence::{
    AttachParams, Attached, DetachParams, Health, HeartbeatParams, RevocationParams, RosterRow, TailParams,
};
use memoryd_proto::{Command, RpcError, Timestamp, methods};
use serde_json::{Map, Value, json};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// The node a script reports about.
#[derive(Debug, Args)]
pub struct NodeName {
    /// The node: <runtime>-<personality>, e.g. claude-boris
    #[arg(long, value_name = "NODE")]
    node: String,
}

/// `attach`'s arguments.
#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    name: NodeName,
    /// The agent's session id
    #[arg(long, value_name = "ID")]
    session: String,
    /// The agent's client version (MAJOR.MINOR), checked against the floor
    #[arg(long, value_name = "MAJOR.MINOR")]
    client_version: String,
    /// The agent's pid, which counts as a heartbeat while it lives
    #[arg(long)]
    pid: Option<i32>,
    /// Report the session as degraded rather than online
    #[arg(long)]
    degraded: bool,
}

/// `heartbeat`'s arguments.
#[derive(Debug, Args)]
pub struct HeartbeatArgs {
    #[command(flatten)]
    name: NodeName,
    /// The session the heartbeat is for (refused unless it is the active one)
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// Report the session as degraded rather than online
    #[arg(long)]
    degraded: bool,
}

/// `detach`'s arguments.
#[derive(Debug, Args)]
pub struct DetachArgs {
    #[command(flatten)]
    name: NodeName,
    /// The session to detach (refused unless it is the active one)
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// Why, for the event log
    #[arg(long)]
    reason: Option<String>,
}

fn health(degraded: bool) -> Health {
    if degraded { Health::Degraded } else { Health::Online }
}

/// `attach`, over the socket.
pub async fn attach(ctx: &Ctx, args: AttachArgs) -> anyhow::Result<ExitCode> {
    let node = args.name.node;
    let command = Command::Attach(AttachParams {
        session_id: args.session,
        node_id: node.clone(),
        client_version: args.client_version,
        capabilities: Map::new(),
        health_state: health(args.degraded),
        pid: args.pid,
    });
    let mut client = ctx.require().await?;
    let attached: Attached = ctx.call(&mut client, &command).await??;
    if ctx.json {
        crate::print_json(&attached)?;
    } else {
        let ro = if attached.read_only { ", read-only (below the version floor)" } else { "" };
        println!("{node} attached: {}{ro}", attached.state.as_str());
    }
    Ok(ExitCode::SUCCESS)
}

/// `heartbeat`, over the socket.
pub async fn heartbeat(ctx: &Ctx, args: HeartbeatArgs) -> anyhow::Result<ExitCode> {
    let (node, session, health) = (args.name.node, args.session, health(args.degraded));
    let command = Command::Heartbeat(HeartbeatParams {
        node_id: node.clone(),
        session_id: session.clone(),
        health_state: Some(health),
    });
    let done = json!({"nodeId": node, "sessionId": session, "healthState": health, "recorded": true});
    answered_null(ctx, &command, done, &format!("{node}: heartbeat recorded")).await
}

/// `detach`, over the socket.
pub async fn detach(ctx: &Ctx, args: DetachArgs) -> anyhow::Result<ExitCode> {
    let (node, session) = (args.name.node, args.session);
    let command =
        Command::Detach(DetachParams { node_id: node.clone(), session_id: session.clone(), reason: args.reason });
    let done = json!({"nodeId": node, "sessionId": session, "detached": true});
    answered_null(ctx, &command, done, &format!("{node}: detached")).await
}

/// A call the daemon answers with null: what was done, said in JSON or in
/// a line.
async fn answered_null(ctx: &Ctx, command: &Command, done: Value, line: &str) -> anyhow::Result<ExitCode> {
    let mut client = ctx.require().await?;
    ctx.call::<()>(&mut client, command).await??;
    if ctx.json {
        crate::print_json(&done)?;
    } else {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `peers`: the roster, from the daemon, or as stored when it does not
/// answer (said on stderr, and by `source` in JSON), with the messages
/// waiting for each peer.
pub fn peers(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    // No runtime runs here (see `Ctx::ask`), so the store is opened on this
    // thread.
    let open_store = || open(&ctx.paths, &ctx.config, Access::Read);
    let (rows, source, store) = match ctx.ask(&Command::Roster)? {
        Some(answer) => (answer?, "memoryd", None),
        None => {
            eprintln!(
                "{}; the roster below is read from disk, as memoryd last stored it",
                ctx.not_answering().trim_end_matches('.')
            );
            let store = open_store()?;
            let rows: Vec<RosterRow> = store.roster(ctx.config.presence.min_client_version)?;
            (rows, "disk", Some(store))
        }
    };
    // Read from the store itself (with the fleet database, a connection of
    // this process's own, opened once); a store that cannot be read leaves
    // the counts unknown, not the roster unshown.
    let waiting = store.map_or_else(open_store, Ok).and_then(|s| Ok(s.waiting()?));
    if ctx.json {
        let waiting = waiting.ok();
        crate::print_json(&json!({"source": source, "nodes": rows, "waiting": waiting}))?;
        return Ok(ExitCode::SUCCESS);
    }
    // Written at once: stdout is line-buffered.
    let mut text = String::new();
    if rows.is_empty() {
        text.push_str("no agent session has attached yet\n");
    } else {
        text.push_str(&format!(
            "{:<28} {:<10} {:<11} {:<9} {:<9} {:<8} {:<10} PID\n",
            "NODE", "SESSION", "STATE", "HEALTH", "READONLY", "VERSION", "HEARTBEAT"
        ));
    }
    let now = SystemTime::now();
    for r in rows {
        let age =
            now.duration_since(r.last_heartbeat_at.time()).map_or("?".to_owned(), |d| format!("{}s ago", d.as_secs()));
        let session: String = r.session_id.chars().take(8).collect();
        text.push_str(&format!(
            "{:<28} {:<10} {:<11} {:<9} {:<9} {:<8} {:<10} {}\n",
            r.node_id,
            session,
            r.state.as_str(),
            r.health.as_str(),
            if r.read_only { "yes" } else { "-" },
            r.client_version,
            age,
            r.pid.map_or("-".to_owned(), |p| p.to_string()),
        ));
    }
    match waiting {
        Ok(w) if w.is_empty() => text.push_str("no peer message waits\n"),
        Ok(w) => {
            let each: Vec<String> = w.iter().map(|(peer, n)| format!("{peer} {n}")).collect();
            text.push_str(&format!("peer messages waiting: {}\n", each.join(", ")));
        }
        Err(e) => text.push_str(&format!("peer messages waiting: unknown ({e:#})\n")),
    }
    std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes()).context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// What an operator does to a node.
pub enum Revocation {
    /// `force`: the node need not be in the fleet map (yet).
    Revoke {
        reason: Option<String>,
        force: bool,
    },
    Unrevoke,
}

/// `revoke` / `unrevoke`: through the daemon, or on the store directly when
/// it does not answer (both lock the store, so neither loses the other's
/// change). Either way the node is checked against the fleet map.
pub async fn revocation(ctx: &Ctx, node: &str, what: Revocation) -> anyhow::Result<ExitCode> {
    memoryd_core::presence::check_node(node).map_err(|r| crate::Usage(r.message))?;
    let (revoke, reason, force) = match what {
        Revocation::Revoke { reason, force } => (true, reason, force),
        Revocation::Unrevoke => (false, None, false),
    };
    match ctx.connect().await? {
        Some(mut client) => {
            let params = RevocationParams { node_id: node.to_owned(), reason: reason.clone(), force };
            let command = if revoke { Command::Revoke(params) } else { Command::Unrevoke(params) };
            ctx.call::<()>(&mut client, &command).await??;
        }
        None => {
            // A mistyped --root gets no store created in it.
            if !ctx.installed {
                return Err(ctx.absent().into());
            }
            eprintln!("memoryd not answering: running locally");
            let fleet = FleetRead::load(&ctx.paths.fleet_map);
            let files = FileGuard::for_install(&ctx.paths.root, ctx.config.vault.as_deref());
            memoryd_core::host::instance::ensure_private_dir(&files, &ctx.paths.state)?;
            let now = SystemTime::now();
            let by = Revoker::Operator { fleet: fleet.map(), force };
            let changed = off_runtime(|| {
                let store = open(&ctx.paths, &ctx.config, Access::Write(&files))?;
                anyhow::Ok(if revoke {
                    store.revoke(node, by, reason.as_deref(), now)
                } else {
                    store.unrevoke(node, by, now)
                })
            })?;
            if let Err(StoreError::Refused(r)) = changed {
                return Err(RpcError::new(r.kind, r.message).into());
            }
            changed?;
        }
    }
    if ctx.json {
        crate::print_json(&json!({"nodeId": node, "revoked": revoke}))?;
    } else {
        println!("{node} {}", if revoke { "revoked" } else { "unrevoked" });
    }
    Ok(ExitCode::SUCCESS)
}

/// `events [--follow] [--node N]`. With `--json` the recent events are one
/// JSON array; `--follow` prints one JSON object per line instead, each as
/// it happens.
/// `--since WHEN`: an RFC 3339 time, or a duration meaning that long ago.
pub fn parse_since(text: &str) -> Result<SystemTime, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    let ago = humantime::parse_duration(text)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time (2026-12-02T10:00:00Z) nor a duration (10m)"))?;
    SystemTime::now().checked_sub(ago).ok_or_else(|| format!("{text} ago is before the epoch"))
}

/// `events [-n N] [--since WHEN] [--follow] [--node N]`: from the daemon,
/// or the store's log when none answers.
pub async fn events(ctx: &Ctx, params: TailParams) -> anyhow::Result<ExitCode> {
    let follow = params.follow;
    let mut batch = Vec::new();
    let mut print = |event: Value| {
        if !ctx.json {
            println!("{}", event_line(&event));
        } else if follow {
            println!("{event}");
        } else {
            batch.push(event);
        }
    };
    if let Some(mut client) = ctx.connect().await? {
        let command = Command::EventsTail(params);
        let result: Value = ctx
            .call_raw(&mut client, &command, |n| {
                if n.method == methods::EVENTS_EVENT {
                    print(n.params);
                }
            })
            .await??;
        for event in result.as_array().into_iter().flatten() {
            print(event.clone());
        }
    } else {
        // No daemon: read (and follow) the store's log here, as the daemon
        // would.
        let store = off_runtime(|| open(&ctx.paths, &ctx.config, Access::Read))?;
        let node = params.node.as_deref();
        let since = params.since.map(Timestamp::time);
        let (recent, mut cursor) = off_runtime(|| store.recent_since(node, params.limit, since))?;
        for event in recent {
            print(serde_json::to_value(event)?);
        }
        if follow {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                for event in off_runtime(|| store.follow(&mut cursor, node))? {
                    print(serde_json::to_value(event)?);
                }
            }
        }
    }
    if ctx.json && !follow {
        crate::print_json(&batch)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `<ts> <event> <node> [session] prev→new, extras`.
pub fn event_line(e: &Value) -> String {
    let mut line = format!(
        "{} {:<34} {}",
        e["ts"].as_str().unwrap_or(&Timestamp(SystemTime::now()).to_string()),
        e["event"].as_str().unwrap_or("?"),
        e["nodeId"].as_str().unwrap_or("-")
    );
    if let Some(s) = e["sessionId"].as_str() {
        line.push_str(&format!(" session={s}"));
    }
    match (e["previousState"].as_str(), e["newState"].as_str()) {
        (Some(p), Some(n)) => line.push_str(&format!(" {p}→{n}")),
        (None, Some(n)) => line.push_str(&format!(" →{n}")),
        _ => {}
    }
    if let Value::Object(map) = e {
        for (k, v) in map {
            if !["ts", "event", "nodeId", "sessionId", "previousState", "newState"].contains(&k.as_str())
                && !v.is_null()
            {
                line.push_str(&format!(" {k}={v}"));
            }
        }
    }
    line
}
