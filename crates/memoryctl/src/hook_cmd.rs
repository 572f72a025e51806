//! `memoryctl hook <event>`: what the hook shims run inside an agent's
//! session (spec 40). It always exits 0 and prints nothing unless it has
//! something to deliver: an agent treats exit 2 from a hook as "block this
//! prompt", so a broken memoryd must never stand in an agent's way. It
//! finishes within 2 s (session-end within 1 s); problems go to one line
//! each in `R/logs/memoryd/hook-errors.log`.

use crate::client::{BlockingClient, ConnectError, Outcome, Queued};
use memoryd_core::config;
use memoryd_core::fleet::FleetRead;
use memoryd_core::fleet::names::split_node_id;
use memoryd_core::host::egress::Egress;
use memoryd_core::host::files::FileGuard;
use memoryd_core::host::paths::Paths;
use memoryd_core::peers;
use memoryd_core::surfaces::shims;
use memoryd_proto::peers::{AckParams, InboxParams, Message};
use memoryd_proto::presence::{AttachParams, DetachParams, Health, HeartbeatParams};
use memoryd_proto::{Command, ErrorKind, RpcError};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

/// The most of the agent's hook JSON we read from stdin.
const MAX_STDIN: usize = 1 << 20;

/// A hook event the shims call, by its shim name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    SessionStart,
    PromptSubmit,
    PostTool,
    SessionEnd,
    Stop,
}

impl Event {
    /// In the order of the shims' table.
    pub const ALL: [Event; 5] =
        [Event::SessionStart, Event::PromptSubmit, Event::PostTool, Event::SessionEnd, Event::Stop];

    /// The shim's row: its name and the agents' name of the event.
    fn shim(self) -> &'static shims::HookEvent {
        &shims::EVENTS[self as usize]
    }

    /// The whole budget of the hook: a session end must not hold up the
    /// agent's exit.
    fn budget(self) -> Duration {
        if self == Event::SessionEnd { Duration::from_secs(1) } else { Duration::from_secs(2) }
    }

    /// Which waiting peer messages the hook delivers into the context: all
    /// at a turn's start, urgent ones in the middle of a turn (after a tool)
    /// and at its end (stop), none at a session's end.
    fn delivers(self) -> Option<Delivery> {
        match self {
            Event::SessionStart | Event::PromptSubmit => Some(Delivery::All),
            Event::PostTool | Event::Stop => Some(Delivery::Urgent),
            Event::SessionEnd => None,
        }
    }
}

impl std::str::FromStr for Event {
    type Err = String;

    fn from_str(name: &str) -> Result<Event, String> {
        Event::ALL.into_iter().find(|e| e.shim().shim == name).ok_or_else(|| format!("unknown hook event `{name}`"))
    }
}

/// Which messages a hook delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    All,
    Urgent,
}

/// What a hook may add to the agent's context, in characters (Claude cuts
/// at 10,000, Codex at about 2,500 tokens).
const CONTEXT_BUDGET: usize = 7900;

/// Programs that stand between the agent and its hook command.
const SHELLS: [&str; 7] = ["sh", "bash", "dash", "zsh", "ksh", "fish", "busybox"];

#[derive(Debug, clap::Args)]
pub struct HookArgs {
    /// session-start, prompt-submit, post-tool, session-end or stop
    pub(crate) event: String,
    /// The agent runtime (claude or codex)
    #[arg(long, value_name = "RUNTIME")]
    pub(crate) runtime: Option<String>,
    /// The surfaces contract version of the shim
    #[arg(long, value_name = "MAJOR.MINOR")]
    pub(crate) client_version: Option<String>,
}

/// Everything a hook knows once it has read its input.
struct Hook<'a> {
    args: &'a HookArgs,
    node: String,
    session: String,
}

/// Runs the hook within its time budget (every wait, from stdin to the
/// last answer, ends by its deadline); never fails.
pub fn run(paths: &Paths, args: &HookArgs) {
    let budget = args.event.parse().map_or(Duration::from_secs(2), Event::budget);
    let deadline = Instant::now() + budget - Duration::from_millis(100);
    if let Err(problem) = handle(paths, args, deadline) {
        log_error(paths, &format!("{} ({}): {problem}", args.event, args.runtime.as_deref().unwrap_or("?")));
    }
}

fn handle(paths: &Paths, args: &HookArgs, deadline: Instant) -> Result<(), String> {
    let event: Event = args.event.parse()?;
    let input = read_stdin(deadline)?;
    let session = input["session_id"].as_str().filter(|s| !s.is_empty()).ok_or("the hook's JSON has no session_id")?;
    let cwd = input["cwd"].as_str().map(Path::new);
    let node = node_of(paths, args.runtime.as_deref(), cwd)?;
    let socket = lenient_config(paths).socket(paths);
    let hook = Hook { args, node, session: session.to_owned() };
    let presence = match event {
        Event::SessionStart => attach_command(&hook),
        // Sent; the daemon finishes it even after we are gone.
        Event::SessionEnd => Command::Detach(DetachParams {
            node_id: hook.node.clone(),
            session_id: Some(hook.session.clone()),
            reason: Some("session-end".to_owned()),
        }),
        Event::PromptSubmit | Event::PostTool | Event::Stop => Command::Heartbeat(HeartbeatParams {
            node_id: hook.node.clone(),
            session_id: Some(hook.session.clone()),
            health_state: Some(Health::Online),
        }),
    };
    let personality = split_node_id(&hook.node).map(|(_, p)| p.to_owned()).ok_or("bad node")?;
    let lease = event.delivers().map(|which| {
        let urgent = which == Delivery::Urgent;
        Command::PeerInbox(InboxParams { personality: personality.clone(), lease: true, urgent })
    });
    // The presence change and the lease go behind the hello in one write:
    // an agent's turn pays one round trip.
    let (mut client, [presence]) = match BlockingClient::connect_ahead(&socket, remaining(deadline), [&presence]) {
        Ok(connected) => connected,
        Err(ConnectError::NotAnswering(why)) | Err(ConnectError::Refused(RpcError { message: why, .. })) => {
            return Err(format!("memoryd does not answer: {why}"));
        }
    };
    let lease = lease.map(|lease| client.queue(&lease));
    let presence = answer(&mut client, presence, deadline);
    // Messages are delivered even when presence had a problem.
    let leased = lease.map(|lease| answer(&mut client, lease, deadline));
    let attached = match presence {
        // A beating session the daemon does not know (it restarted, or the
        // node was swept offline) attaches again.
        Err(e)
            if e.kind() == Some(ErrorKind::RuntimenodeNotAttached)
                && matches!(event, Event::PromptSubmit | Event::PostTool | Event::Stop) =>
        {
            answer_to(&mut client, &attach_command(&hook), deadline)
        }
        other => other,
    };
    let delivered = match leased {
        Some(leased) => deliver(&mut client, &personality, event, leased, deadline),
        None => Ok(()),
    };
    attached.map(drop).map_err(|e| e.message).and(delivered)
}

/// Prints the leased peer messages as the one JSON object both runtimes
/// add to the model's context, then acknowledges what was printed (a
/// message not acknowledged comes again when its lease ends). A stop hook
/// blocks the stop with the messages as its reason: once per message,
/// since a printed message is acknowledged and never comes again.
fn deliver(
    client: &mut BlockingClient,
    personality: &str,
    event: Event,
    leased: Outcome,
    deadline: Instant,
) -> Result<(), String> {
    let leased = leased.map_err(|e| e.message)?;
    let messages: Vec<Message> = serde_json::from_str(leased.get()).map_err(|e| e.to_string())?;
    if messages.is_empty() {
        return Ok(());
    }
    let (context, printed) = peers::render_for_agent(&messages, CONTEXT_BUDGET);
    let output = if event == Event::Stop {
        json!({"decision": "block", "reason": context})
    } else {
        json!({"hookSpecificOutput": {"hookEventName": event.shim().agent, "additionalContext": context}})
    };
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{output}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot print the messages: {e}"))?;
    let ack = Command::PeerAck(AckParams { personality: personality.to_owned(), ids: printed });
    answer_to(client, &ack, deadline).map(drop).map_err(|e| e.message)
}

fn attach_command(hook: &Hook<'_>) -> Command {
    let version = hook.args.client_version.clone().unwrap_or_else(|| "0.0".to_owned());
    let mut capabilities = Map::new();
    capabilities.insert("hooks".to_owned(), serde_json::to_value(Event::ALL).unwrap_or_default());
    Command::Attach(AttachParams {
        session_id: hook.session.clone(),
        node_id: hook.node.clone(),
        client_version: version,
        capabilities,
        health_state: Health::Online,
        pid: agent_pid(),
    })
}

fn answer_to(client: &mut BlockingClient, command: &Command, deadline: Instant) -> Outcome {
    let queued = client.queue(command);
    answer(client, queued, deadline)
}

fn answer(client: &mut BlockingClient, queued: Queued, deadline: Instant) -> Outcome {
    match client.answer(queued, remaining(deadline)) {
        Ok(outcome) => outcome,
        Err(e) => Err(RpcError::new(ErrorKind::Internal, e.to_string())),
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The hook's JSON, read by `deadline`: each read waits (poll) only as
/// long as the budget allows, so an agent that never closes stdin costs
/// its budget and no thread.
fn read_stdin(deadline: Instant) -> Result<Value, String> {
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    let (mut input, mut chunk) = (Vec::new(), [0u8; 16 * 1024]);
    loop {
        let wait = nix::poll::PollTimeout::try_from(remaining(deadline)).unwrap_or(nix::poll::PollTimeout::MAX);
        let mut fds = [nix::poll::PollFd::new(stdin.as_fd(), nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, wait) {
            Ok(0) => return Err("the hook's stdin did not end within the hook's budget".to_owned()),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("cannot wait for the hook's stdin: {e}")),
        }
        match stdin.lock().read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if input.len() + n > MAX_STDIN => {
                return Err(format!("the hook's stdin is longer than {MAX_STDIN} bytes"));
            }
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read the hook's stdin: {e}")),
        }
    }
    serde_json::from_slice(&input).map_err(|e| format!("the hook's stdin is not JSON: {e}"))
}

/// The node: `PEER_IDENTITY`, else `<runtime>-<personality>` of the fleet
/// peer whose folder is the hook's cwd.
fn node_of(paths: &Paths, runtime: Option<&str>, cwd: Option<&Path>) -> Result<String, String> {
    if let Ok(identity) = std::env::var("PEER_IDENTITY")
        && split_node_id(&identity).is_some()
    {
        return Ok(identity);
    }
    let runtime = runtime.ok_or("no --runtime and no PEER_IDENTITY")?;
    let cwd = cwd.ok_or("the hook's JSON has no cwd and PEER_IDENTITY is not set")?;
    let real = cwd.canonicalize().unwrap_or_else(|_| cwd.to_path_buf());
    let FleetRead::Map(map) = FleetRead::load(&paths.fleet_map) else {
        return Err("there is no fleet map to find the peer in".to_owned());
    };
    map.peers
        .iter()
        .find(|p| p.cwd == cwd || p.cwd.canonicalize().is_ok_and(|c| c == real))
        .map(|p| format!("{runtime}-{}", p.personality))
        .ok_or_else(|| format!("no fleet peer lives in {}", cwd.display()))
}

/// The agent process: the nearest ancestor that is not a shell.
fn agent_pid() -> Option<i32> {
    let egress = Egress::refusing(Vec::new());
    let mut pid = i32::try_from(std::os::unix::process::parent_id()).ok()?;
    for _ in 0..8 {
        let info = egress.probe(pid)?;
        let name = Path::new(&info.argv0).file_name().map(|n| n.to_string_lossy().trim_start_matches('-').to_owned());
        if !name.is_some_and(|n| SHELLS.contains(&n.as_str())) {
            return Some(pid);
        }
        pid = egress.parent_of(pid)?;
    }
    None
}

/// The config as a hook reads it: a bad or missing file gives the
/// defaults, since nothing may fail an agent's hook.
fn lenient_config(paths: &Paths) -> config::Config {
    let env = |k: &str| std::env::var_os(k);
    let (file, required) = paths.config_file(env);
    config::load(&file, required, env, &Vec::new()).map(|l| l.config).unwrap_or_default()
}

/// Appends one line to `hook-errors.log`; failing that, says nothing.
pub fn log_error(paths: &Paths, line: &str) {
    let files = FileGuard::from_env(&[&paths.root]);
    if files.create_dir_all(&paths.logs, 0o700).is_err() {
        return;
    }
    let log = paths.logs.join("hook-errors.log");
    let config = lenient_config(paths);
    // Hooks of many sessions may rotate at once: a rename that lost the
    // race is no loss, the line still lands in the new file.
    let _ = files.rotate_log(&log, config.log_max_bytes as u64, config.log_keep);
    if let Ok(mut file) = files.open_append(&log) {
        let at = humantime::format_rfc3339_seconds(SystemTime::now());
        let _ = writeln!(file, "{at} {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_events_are_the_shims_events_by_name() {
        for event in Event::ALL {
            let name = event.shim().shim;
            assert_eq!(name.parse::<Event>(), Ok(event));
            assert_eq!(serde_json::to_value(event).unwrap(), json!(name));
        }
        assert_eq!(Event::ALL.len(), shims::EVENTS.len());
        assert_eq!(Event::PromptSubmit.shim().agent, "UserPromptSubmit");
        assert_eq!("session-stop".parse::<Event>(), Err("unknown hook event `session-stop`".to_owned()));
    }
}
