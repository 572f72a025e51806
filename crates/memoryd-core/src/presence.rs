//! Session presence (spec 40): the state machine of runtime-node
//! attachments, as pure functions over the stored document. Time comes in
//! as `now` and process liveness through a probe, so tests drive every
//! transition without sleeping. The store ([`crate::store`]) runs each of
//! these inside one locked read-modify-write.

use crate::config::ClientVersion;
use crate::fleet::FleetMap;
use crate::fleet::names::split_node_id;
use memoryd_proto::status::PresenceCounts;
use memoryd_proto::{ErrorKind, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

pub use memoryd_proto::presence::{AttachParams, Attached, CapabilityUpdated, Health, RosterRow, State};

/// One attachment row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub attachment_id: String,
    pub node_id: String,
    pub session_id: String,
    pub state: State,
    pub health: Health,
    pub client_version: String,
    #[serde(default)]
    pub capabilities: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The recorded pid's start time: the same pid with another start time
    /// is another process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<String>,
    pub attached_at: String,
    pub last_heartbeat_at: String,
    pub updated_at: String,
}

/// A revoked node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    pub revoked_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: String,
}

/// Heartbeat times kept in memory by (node, session): heartbeats that
/// changed nothing but the time (spec 40 soft state), written later.
pub type SoftBeats = HashMap<(String, String), SystemTime>;

/// The stored presence document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub revoked: BTreeMap<String, Revocation>,
}

/// A refusal, with its stable kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub kind: ErrorKind,
    pub message: String,
    pub details: Option<Value>,
}

impl Refusal {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Refusal {
        Refusal { kind, message: message.into(), details: None }
    }
}

/// One event for `S/events.jsonl`.
pub type Event = Value;

/// The thresholds of spec 40 and the version floor in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub degraded_after: Duration,
    pub offline_after: Duration,
    pub floor: Option<ClientVersion>,
}

/// Tells whether a recorded process still runs: its start time, or None.
pub type Probe<'a> = &'a dyn Fn(i32) -> Option<String>;

/// How many ended rows a node keeps (newest first), so the document stays
/// small.
const ENDED_ROWS_KEPT: usize = 3;

pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(text).ok()
}

/// A stored time for the wire. Every stored time was written by
/// [`timestamp`]; one edited by hand into something else shows as the epoch.
fn wire_time(text: &str) -> Timestamp {
    Timestamp(parse_time(text).unwrap_or(SystemTime::UNIX_EPOCH))
}

/// `MAJOR.MINOR` as numbers; None when it is not one.
pub fn parse_version(text: &str) -> Option<ClientVersion> {
    text.parse().ok()
}

/// Whether a client of `version` is below the floor (read-only).
pub fn is_read_only(version: Option<&str>, floor: Option<ClientVersion>) -> bool {
    match (floor, version.and_then(parse_version)) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(min), Some(v)) => v < min,
    }
}

/// The refusal of a write by a read-only node.
pub fn floor_refusal(node: &str, version: Option<&str>, floor: ClientVersion) -> Refusal {
    let min = floor.to_string();
    Refusal {
        kind: ErrorKind::VersionFloorExceeded,
        message: format!(
            "{node} runs client version {} below the floor {min}: it is read-only; upgrade with: memoryctl update",
            version.unwrap_or("unknown")
        ),
        details: Some(
            json!({"attemptedVersion": version, "acceptedRange": {"min": min}, "upgradePath": "memoryctl update"}),
        ),
    }
}

/// Checks a node id by the name rules; the error says so in an
/// operator's words.
pub fn check_node(node: &str) -> Result<(), Refusal> {
    split_node_id(node).map(drop).ok_or_else(|| {
        Refusal::new(
            ErrorKind::RequestInvalid,
            format!(
                "the node {node:?} is not <runtime>-<personality> (such as claude-boris): runtime [a-z][a-z0-9]*, \
                 personality [a-z][a-z0-9-]*"
            ),
        )
    })
}

/// Checks the node an operator revokes (`revoke`) or lets back in: it must
/// be a node of the fleet map, or, to be let back in, a revoked one. With
/// `force` a revoke may name a node that will exist later. The refusal
/// lists the nodes it could have meant.
pub fn check_operator_node(
    fleet: Option<&FleetMap>,
    presence: &Presence,
    node: &str,
    revoke: bool,
    force: bool,
) -> Result<(), Refusal> {
    check_node(node)?;
    if (revoke && force) || fleet.is_some_and(|f| f.has_node(node)) || (!revoke && presence.revoked.contains_key(node))
    {
        return Ok(());
    }
    let Some(fleet) = fleet else {
        let fix = if revoke { "; pass --force to revoke it anyway" } else { "" };
        return Err(Refusal::new(
            ErrorKind::FleetUnavailable,
            format!("there is no fleet map to check {node} against (memoryctl status shows why){fix}"),
        ));
    };
    let nodes = crate::fleet::names::listing(&fleet.nodes());
    let message = if revoke {
        format!(
            "{node} is not a node of the fleet (its nodes: {nodes}); pass --force to revoke a node that will exist later"
        )
    } else {
        let revoked: Vec<&String> = presence.revoked.keys().collect();
        format!(
            "{node} is neither a node of the fleet (its nodes: {nodes}) nor revoked (revoked: {})",
            crate::fleet::names::listing(&revoked)
        )
    };
    Err(Refusal::new(ErrorKind::RuntimenodeUnknownNode, message))
}

fn event(now: SystemTime, name: &str, row: Option<&Attachment>, node: &str, extra: Value) -> Event {
    let mut e = json!({"ts": timestamp(now), "event": name, "nodeId": node});
    if let Some(row) = row {
        e["sessionId"] = json!(row.session_id);
    }
    if let (Value::Object(e), Value::Object(extra)) = (&mut e, extra) {
        e.extend(extra);
    }
    e
}

fn transition(
    now: SystemTime,
    row: &mut Attachment,
    to: State,
    name: &str,
    actor: Option<&str>,
    extra: Value,
) -> Event {
    let previous = row.state;
    row.state = to;
    row.updated_at = timestamp(now);
    let mut e = event(now, name, Some(row), &row.node_id.clone(), extra);
    e["previousState"] = json!(previous.as_str());
    e["newState"] = json!(to.as_str());
    if let Some(actor) = actor {
        e["actor"] = json!(actor);
    }
    e
}

/// Ends a session: `offline`, with the last heartbeat and why.
fn go_offline(now: SystemTime, row: &mut Attachment, reason: &str) -> Event {
    let last = row.last_heartbeat_at.clone();
    row.health = Health::Offline;
    transition(
        now,
        row,
        State::Offline,
        "runtime_node.offline",
        None,
        json!({"lastHeartbeatAt": last, "reason": reason}),
    )
}

impl Presence {
    fn active_mut(&mut self, node: &str) -> Option<&mut Attachment> {
        self.attachments.iter_mut().find(|a| a.node_id == node && a.state.is_active())
    }

    pub fn active(&self, node: &str) -> Option<&Attachment> {
        self.attachments.iter().find(|a| a.node_id == node && a.state.is_active())
    }

    /// The attach upsert on (nodeId, sessionId). `known` says whether the
    /// fleet map has the node. The one-active-session rule is enforced
    /// here, inside the store's locked write.
    pub fn attach(
        &mut self,
        req: &AttachParams,
        known: bool,
        rules: &Rules,
        now: SystemTime,
        probe: Probe<'_>,
    ) -> Result<(Attached, Vec<Event>), Refusal> {
        check_node(&req.node_id)?;
        if parse_version(&req.client_version).is_none() {
            return Err(Refusal::new(
                ErrorKind::RequestInvalid,
                format!("the client version {:?} is not MAJOR.MINOR (such as 1.0)", req.client_version),
            ));
        }
        if req.session_id.trim().is_empty() {
            return Err(Refusal::new(ErrorKind::RequestInvalid, "the session id must not be empty"));
        }
        if req.health_state == Health::Offline {
            return Err(Refusal::new(ErrorKind::RequestInvalid, "the health state must be online or degraded"));
        }
        if self.revoked.contains_key(&req.node_id) {
            return Err(Refusal::new(
                ErrorKind::RuntimenodeAttachRevoked,
                format!(
                    "{} is revoked; `memoryctl unrevoke {}` or a new birth brings it back",
                    req.node_id, req.node_id
                ),
            ));
        }
        if !known {
            return Err(Refusal::new(
                ErrorKind::RuntimenodeUnknownNode,
                format!("{} is not a peer-runtime of the fleet map", req.node_id),
            ));
        }
        let stamp = timestamp(now);
        let pid_start = req.pid.and_then(probe);
        let read_only = is_read_only(Some(&req.client_version), rules.floor);
        let mut events = Vec::new();
        // The same session, already active: a resumed or compacted session.
        if let Some(row) = self.active_mut(&req.node_id)
            && row.session_id == req.session_id
        {
            row.last_heartbeat_at = stamp.clone();
            if req.pid.is_some() {
                (row.pid, row.pid_start) = (req.pid, pid_start);
            }
            let attached = Attached {
                attachment_id: row.attachment_id.clone(),
                state: row.state,
                read_only,
                attached_at: wire_time(&row.attached_at),
            };
            return Ok((attached, events));
        }
        // Another session of the node is active.
        if let Some(row) = self.active_mut(&req.node_id) {
            let recorded = row.pid.map(|pid| (pid, row.pid_start.clone()));
            // Verifiably dead: gone, or the pid now names another process.
            let dead = recorded.as_ref().is_some_and(|(pid, start)| match probe(*pid) {
                None => true,
                Some(now_start) => start.as_ref().is_some_and(|s| *s != now_start),
            });
            let same_process = recorded
                .as_ref()
                .is_some_and(|(pid, start)| Some(*pid) == req.pid && start.is_some() && *start == pid_start);
            let reason = if same_process {
                "superseded"
            } else if dead {
                "heartbeat_lost"
            } else {
                return Err(Refusal {
                    kind: ErrorKind::RuntimenodeAttachConflict,
                    message: format!(
                        "{} already has an active session {} ({}); a node has one active session at a time",
                        req.node_id,
                        row.session_id,
                        row.pid.map_or("no pid recorded".to_owned(), |p| format!("pid {p} alive")),
                    ),
                    details: Some(json!({"activeSessionId": row.session_id})),
                });
            };
            events.push(go_offline(now, row, reason));
        }
        // A reconnect of an offline session, or a new one.
        let idx = match self.attachments.iter().position(|a| a.node_id == req.node_id && a.session_id == req.session_id)
        {
            Some(idx) => {
                let row = &mut self.attachments[idx];
                events.push(transition(
                    now,
                    row,
                    State::Registering,
                    "runtime_node.registered",
                    None,
                    json!({
                        "capabilities": req.capabilities.keys().collect::<Vec<_>>(),
                        "clientVersion": req.client_version,
                    }),
                ));
                idx
            }
            None => {
                let row = Attachment {
                    attachment_id: format!(
                        "att-{:x}",
                        now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos()
                    ),
                    node_id: req.node_id.clone(),
                    session_id: req.session_id.clone(),
                    state: State::Registering,
                    health: req.health_state,
                    client_version: req.client_version.clone(),
                    capabilities: Map::new(),
                    pid: None,
                    pid_start: None,
                    attached_at: stamp.clone(),
                    last_heartbeat_at: stamp.clone(),
                    updated_at: stamp.clone(),
                };
                let mut e = event(
                    now,
                    "runtime_node.registered",
                    Some(&row),
                    &row.node_id,
                    json!({
                        "capabilities": req.capabilities.keys().collect::<Vec<_>>(),
                        "clientVersion": req.client_version,
                    }),
                );
                e["newState"] = json!("registering");
                events.push(e);
                self.attachments.push(row);
                self.attachments.len() - 1
            }
        };
        let row = &mut self.attachments[idx];
        row.client_version = req.client_version.clone();
        row.health = req.health_state;
        (row.pid, row.pid_start) = (req.pid, pid_start);
        row.last_heartbeat_at = stamp.clone();
        for (key, value) in &req.capabilities {
            events.push(event(
                now,
                "runtime_node.capability_declared",
                Some(row),
                &row.node_id,
                json!({
                    "capability": key, "capabilityDetails": value,
                }),
            ));
        }
        row.capabilities = req.capabilities.clone();
        let to = if req.health_state == Health::Degraded { State::Degraded } else { State::Online };
        let name = if to == State::Online { "runtime_node.online" } else { "runtime_node.degraded" };
        let extra = if to == State::Degraded { json!({"detail": "reported at attach"}) } else { json!({}) };
        events.push(transition(now, row, to, name, None, extra));
        let attached = Attached {
            attachment_id: row.attachment_id.clone(),
            state: row.state,
            read_only,
            attached_at: wire_time(&row.attached_at),
        };
        self.trim(&req.node_id);
        Ok((attached, events))
    }

    /// Keeps the newest ended rows of a node only.
    fn trim(&mut self, node: &str) {
        let mut ended = 0;
        let mut keep = vec![true; self.attachments.len()];
        for (i, row) in self.attachments.iter().enumerate().rev() {
            if row.node_id == node && !row.state.is_active() {
                ended += 1;
                keep[i] = ended <= ENDED_ROWS_KEPT;
            }
        }
        let mut flags = keep.into_iter();
        self.attachments.retain(|_| flags.next().unwrap_or(true));
    }

    /// The index of the node's active row, refusing a `sessionId` that is
    /// not it.
    fn session_index(&self, node: &str, session: Option<&str>) -> Result<usize, Refusal> {
        check_node(node)?;
        let Some(i) = self.attachments.iter().position(|a| a.node_id == node && a.state.is_active()) else {
            return Err(Refusal::new(
                ErrorKind::RuntimenodeNotAttached,
                format!("{node} has no active session; attach first"),
            ));
        };
        let active = &self.attachments[i].session_id;
        if let Some(session) = session
            && session != active
        {
            return Err(Refusal::new(
                ErrorKind::RuntimenodeStaleSession,
                format!("session {session} is not {node}'s active session ({active})"),
            ));
        }
        Ok(i)
    }

    fn session_mut(&mut self, node: &str, session: Option<&str>) -> Result<&mut Attachment, Refusal> {
        let i = self.session_index(node, session)?;
        Ok(&mut self.attachments[i])
    }

    /// A heartbeat: the daemon's clock, the reported health; a degraded
    /// row comes back online without passing through offline.
    pub fn heartbeat(
        &mut self,
        node: &str,
        session: Option<&str>,
        health: Health,
        now: SystemTime,
    ) -> Result<Vec<Event>, Refusal> {
        if health == Health::Offline {
            return Err(Refusal::new(ErrorKind::RequestInvalid, "the health state must be online or degraded"));
        }
        let row = self.session_mut(node, session)?;
        row.last_heartbeat_at = timestamp(now);
        row.health = health;
        Ok(match (row.state, health) {
            (State::Degraded, Health::Online) => {
                vec![transition(now, row, State::Online, "runtime_node.online", None, json!({}))]
            }
            (State::Online, Health::Degraded) => {
                vec![transition(
                    now,
                    row,
                    State::Degraded,
                    "runtime_node.degraded",
                    None,
                    json!({"detail": "reported by the node"}),
                )]
            }
            _ => Vec::new(),
        })
    }

    /// Checks a heartbeat without writing: the refusal `heartbeat` would
    /// give, or, when it would change nothing but the time, the session it
    /// beats for (that time alone is soft state the caller may keep in
    /// memory and apply later).
    pub fn soft_beat(&self, node: &str, session: Option<&str>, health: Health) -> Result<Option<&str>, Refusal> {
        if health == Health::Offline {
            return Err(Refusal::new(ErrorKind::RequestInvalid, "the health state must be online or degraded"));
        }
        let row = &self.attachments[self.session_index(node, session)?];
        let transition =
            matches!((row.state, health), (State::Degraded, Health::Online) | (State::Online, Health::Degraded));
        Ok((!transition && row.health == health).then_some(row.session_id.as_str()))
    }

    /// Applies heartbeat times kept in memory: each moves its session's
    /// `lastHeartbeatAt` forward, never back.
    pub fn apply_beats(&mut self, beats: &SoftBeats) {
        for ((node, session), &at) in beats {
            if let Some(row) = self.active_mut(node).filter(|r| r.session_id == *session)
                && parse_time(&row.last_heartbeat_at).is_none_or(|t| t < at)
            {
                row.last_heartbeat_at = timestamp(at);
            }
        }
    }

    /// `runtimenode.detach`: the active session goes offline.
    pub fn detach(&mut self, node: &str, session: Option<&str>, now: SystemTime) -> Result<Vec<Event>, Refusal> {
        let row = self.session_mut(node, session)?;
        Ok(vec![go_offline(now, row, "explicit_shutdown")])
    }

    /// `runtimenode.capabilityupdate` (a write: the caller checks the floor).
    pub fn capability_update(
        &mut self,
        node: &str,
        capabilities: &Map<String, Value>,
        health: Option<Health>,
        now: SystemTime,
    ) -> Result<(CapabilityUpdated, Vec<Event>), Refusal> {
        let row = self.session_mut(node, None)?;
        let mut events = Vec::new();
        for (key, value) in capabilities {
            let previous = row.capabilities.get(key).cloned();
            if previous.as_ref() == Some(value) {
                continue;
            }
            events.push(event(
                now,
                "runtime_node.capability_updated",
                Some(row),
                node,
                json!({
                    "capability": key, "previousValue": previous, "newValue": value,
                }),
            ));
            row.capabilities.insert(key.clone(), value.clone());
        }
        match (health, row.state) {
            (Some(Health::Degraded), State::Online) => events.push(transition(
                now,
                row,
                State::Degraded,
                "runtime_node.degraded",
                None,
                json!({"detail": "capability update"}),
            )),
            (Some(Health::Online), State::Degraded) => {
                events.push(transition(now, row, State::Online, "runtime_node.online", None, json!({})))
            }
            (Some(Health::Offline), _) => {
                return Err(Refusal::new(
                    ErrorKind::RequestInvalid,
                    "the health a capability update reports must be online or degraded",
                ));
            }
            _ => {}
        }
        row.updated_at = timestamp(now);
        let updated =
            CapabilityUpdated { node_id: node.to_owned(), state: row.state, updated_at: wire_time(&row.updated_at) };
        Ok((updated, events))
    }

    /// The staleness sweep: only demotes. A live recorded pid (same start
    /// time) counts as a heartbeat.
    pub fn sweep(&mut self, rules: &Rules, now: SystemTime, probe: Probe<'_>) -> Vec<Event> {
        let mut events = Vec::new();
        for row in self.attachments.iter_mut().filter(|r| r.state.is_active()) {
            let alive = row.pid.is_some_and(|pid| row.pid_start.is_some() && probe(pid) == row.pid_start);
            if alive {
                row.last_heartbeat_at = timestamp(now);
                if row.state == State::Degraded && row.health != Health::Degraded {
                    events.push(transition(now, row, State::Online, "runtime_node.online", None, json!({})));
                }
                continue;
            }
            let age = parse_time(&row.last_heartbeat_at).and_then(|t| now.duration_since(t).ok()).unwrap_or_default();
            if age > rules.offline_after {
                events.push(go_offline(now, row, "heartbeat_lost"));
            } else if age > rules.degraded_after && row.state != State::Degraded {
                row.health = Health::Degraded;
                events.push(transition(
                    now,
                    row,
                    State::Degraded,
                    "runtime_node.degraded",
                    None,
                    json!({
                        "detail": format!("no heartbeat for {}s", age.as_secs()),
                    }),
                ));
            }
        }
        events
    }

    /// Revokes a node (terminal): its active row goes `revoked`.
    pub fn revoke(
        &mut self,
        node: &str,
        by: &str,
        reason: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<Event>, Refusal> {
        check_node(node)?;
        if self.revoked.contains_key(node) {
            return Ok(Vec::new());
        }
        self.revoked.insert(
            node.to_owned(),
            Revocation { revoked_by: by.to_owned(), reason: reason.map(str::to_owned), at: timestamp(now) },
        );
        let extra = json!({"revokedBy": by, "reason": reason});
        Ok(vec![match self.active_mut(node) {
            Some(row) => {
                row.health = Health::Offline;
                transition(now, row, State::Revoked, "runtime_node.revoked", Some(by), extra)
            }
            None => {
                let mut e = event(now, "runtime_node.revoked", None, node, extra);
                e["newState"] = json!("revoked");
                e["actor"] = json!(by);
                e
            }
        }])
    }

    /// Lifts a revocation (`by` is `birth` or `operator`).
    pub fn unrevoke(&mut self, node: &str, by: &str, now: SystemTime) -> Result<Vec<Event>, Refusal> {
        check_node(node)?;
        if self.revoked.remove(node).is_none() {
            return Ok(Vec::new());
        }
        let mut e = event(now, "runtime_node.unrevoked", None, node, json!({"by": by}));
        e["previousState"] = json!("revoked");
        e["newState"] = json!("offline");
        for row in self.attachments.iter_mut().filter(|r| r.node_id == node && r.state == State::Revoked) {
            row.state = State::Offline;
        }
        Ok(vec![e])
    }

    /// One row per node: its active session, else its newest row.
    pub fn roster(&self, floor: Option<ClientVersion>) -> Vec<RosterRow> {
        let mut by_node: BTreeMap<&str, &Attachment> = BTreeMap::new();
        for row in &self.attachments {
            let better = match by_node.get(row.node_id.as_str()) {
                None => true,
                Some(current) => {
                    row.state.is_active() || (!current.state.is_active() && row.updated_at >= current.updated_at)
                }
            };
            if better {
                by_node.insert(&row.node_id, row);
            }
        }
        by_node
            .into_values()
            .map(|row| {
                let (runtime, personality) = split_node_id(&row.node_id).unwrap_or(("", ""));
                let state = if self.revoked.contains_key(&row.node_id) { State::Revoked } else { row.state };
                RosterRow {
                    node_id: row.node_id.clone(),
                    personality: personality.to_owned(),
                    runtime: runtime.to_owned(),
                    session_id: row.session_id.clone(),
                    state,
                    health: row.health,
                    read_only: is_read_only(Some(&row.client_version), floor),
                    client_version: row.client_version.clone(),
                    last_heartbeat_at: wire_time(&row.last_heartbeat_at),
                    attached_at: wire_time(&row.attached_at),
                    pid: row.pid,
                }
            })
            .collect()
    }

    /// How many nodes the roster shows online, degraded and offline.
    pub fn counts(&self) -> PresenceCounts {
        let roster = self.roster(None);
        let count = |s: State| roster.iter().filter(|r| r.state == s).count();
        PresenceCounts {
            online: count(State::Online),
            degraded: count(State::Degraded),
            offline: count(State::Offline),
        }
    }

    /// The client version of the node's active session, if any.
    pub fn active_version(&self, node: &str) -> Option<&str> {
        self.active(node).map(|a| a.client_version.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    fn v(major: u32, minor: u32) -> Option<ClientVersion> {
        Some(ClientVersion { major, minor })
    }

    fn rules(floor: Option<ClientVersion>) -> Rules {
        Rules { degraded_after: Duration::from_secs(30), offline_after: Duration::from_secs(60), floor }
    }

    fn req(session: &str, version: &str, pid: Option<i32>) -> AttachParams {
        let mut capabilities = Map::new();
        capabilities.insert("hooks".into(), json!(["session-start"]));
        AttachParams {
            session_id: session.into(),
            node_id: "claude-boris".into(),
            client_version: version.into(),
            capabilities,
            health_state: Health::Online,
            pid,
        }
    }

    fn names(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e["event"].as_str().unwrap()).collect()
    }

    /// Process 100 runs (start "a"), 200 runs (start "b"); others are gone.
    fn probe(pid: i32) -> Option<String> {
        match pid {
            100 => Some("a".into()),
            200 => Some("b".into()),
            _ => None,
        }
    }

    #[test]
    fn attach_registers_then_online_with_its_events() {
        let mut p = Presence::default();
        let (a, events) = p.attach(&req("s1", "1.0", None), true, &rules(None), at(0), &probe).unwrap();
        assert_eq!(a.state, State::Online);
        assert!(!a.read_only);
        assert_eq!(
            names(&events),
            ["runtime_node.registered", "runtime_node.capability_declared", "runtime_node.online"]
        );
        assert_eq!(events[2]["previousState"], "registering");
        assert_eq!(events[2]["newState"], "online");
        assert_eq!(events[0]["clientVersion"], "1.0");
        // Idempotent re-attach of the active session.
        let (again, events) = p.attach(&req("s1", "1.0", None), true, &rules(None), at(5), &probe).unwrap();
        assert_eq!(again.attachment_id, a.attachment_id);
        assert!(events.is_empty());
        assert_eq!(p.attachments.len(), 1);
    }

    #[test]
    fn heartbeats_and_the_sweep_move_between_online_degraded_and_offline() {
        let mut p = Presence::default();
        p.attach(&req("s1", "1.0", None), true, &rules(None), at(0), &probe).unwrap();
        assert!(p.sweep(&rules(None), at(20), &probe).is_empty());
        let e = p.sweep(&rules(None), at(31), &probe);
        assert_eq!(names(&e), ["runtime_node.degraded"]);
        assert_eq!(p.active("claude-boris").unwrap().state, State::Degraded);
        // A heartbeat in the degraded band: back online, not via offline.
        let e = p.heartbeat("claude-boris", Some("s1"), Health::Online, at(40)).unwrap();
        assert_eq!(names(&e), ["runtime_node.online"]);
        assert_eq!(e[0]["previousState"], "degraded");
        // Silent past offline_after.
        p.sweep(&rules(None), at(71), &probe);
        let e = p.sweep(&rules(None), at(101), &probe);
        assert_eq!(names(&e), ["runtime_node.offline"]);
        assert_eq!(e[0]["reason"], "heartbeat_lost");
        assert!(p.active("claude-boris").is_none());
        assert!(p.sweep(&rules(None), at(500), &probe).is_empty(), "offline rows are left alone");
        let refused = p.heartbeat("claude-boris", None, Health::Online, at(501)).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::RuntimenodeNotAttached);
        // A reconnect of the offline session.
        let (a, e) = p.attach(&req("s1", "1.0", None), true, &rules(None), at(502), &probe).unwrap();
        assert_eq!(a.state, State::Online);
        assert_eq!(e[0]["previousState"], "offline");
        assert_eq!(p.attachments.len(), 1);
    }

    #[test]
    fn a_live_pid_counts_as_a_heartbeat() {
        let mut p = Presence::default();
        p.attach(&req("s1", "1.0", Some(100)), true, &rules(None), at(0), &probe).unwrap();
        assert!(p.sweep(&rules(None), at(500), &probe).is_empty());
        assert_eq!(p.active("claude-boris").unwrap().state, State::Online);
        // The same pid with another start time is another process.
        p.attachments[0].pid_start = Some("old".into());
        assert_eq!(names(&p.sweep(&rules(None), at(540), &probe)), ["runtime_node.degraded"]);
    }

    #[test]
    fn one_active_session_per_node_with_takeover_and_supersession() {
        let mut p = Presence::default();
        p.attach(&req("s1", "1.0", Some(100)), true, &rules(None), at(0), &probe).unwrap();
        // Another live process: conflict, naming the active session.
        let conflict = p.attach(&req("s2", "1.0", Some(200)), true, &rules(None), at(1), &probe).unwrap_err();
        assert_eq!(conflict.kind, ErrorKind::RuntimenodeAttachConflict);
        assert!(conflict.message.contains("s1"));
        // The same live process starts a new session: supersedes.
        let (_, e) = p.attach(&req("s3", "1.0", Some(100)), true, &rules(None), at(2), &probe).unwrap();
        assert_eq!(e[0]["event"], "runtime_node.offline");
        assert_eq!(e[0]["reason"], "superseded");
        assert_eq!(p.active("claude-boris").unwrap().session_id, "s3");
        // Its process dies (pid 100 now gone): a new session takes over.
        p.attachments.iter_mut().find(|a| a.session_id == "s3").unwrap().pid = Some(300);
        let (_, e) = p.attach(&req("s4", "1.0", Some(200)), true, &rules(None), at(3), &probe).unwrap();
        assert_eq!(e[0]["reason"], "heartbeat_lost");
        assert_eq!(p.attachments.iter().filter(|a| a.state.is_active()).count(), 1);
        // The old session's late detach is refused; the right one works.
        let stale = p.detach("claude-boris", Some("s3"), at(4)).unwrap_err();
        assert_eq!(stale.kind, ErrorKind::RuntimenodeStaleSession);
        let e = p.detach("claude-boris", Some("s4"), at(5)).unwrap();
        assert_eq!(e[0]["reason"], "explicit_shutdown");
        assert!(p.active("claude-boris").is_none());
    }

    #[test]
    fn revocation_is_terminal_until_unrevoked_and_unknown_nodes_are_refused() {
        let mut p = Presence::default();
        p.attach(&req("s1", "1.0", None), true, &rules(None), at(0), &probe).unwrap();
        let e = p.revoke("claude-boris", "core", Some("removed"), at(1)).unwrap();
        assert_eq!(e[0]["event"], "runtime_node.revoked");
        assert_eq!(e[0]["newState"], "revoked");
        assert_eq!(e[0]["revokedBy"], "core");
        assert_eq!(p.roster(None)[0].state, State::Revoked);
        let refused = p.attach(&req("s2", "1.0", None), true, &rules(None), at(2), &probe).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::RuntimenodeAttachRevoked);
        assert!(p.sweep(&rules(None), at(900), &probe).is_empty(), "nothing automatic leads out");
        let e = p.unrevoke("claude-boris", "birth", at(3)).unwrap();
        assert_eq!(e[0]["by"], "birth");
        p.attach(&req("s2", "1.0", None), true, &rules(None), at(4), &probe).unwrap();
        let unknown = p.attach(&req("s9", "1.0", None), false, &rules(None), at(5), &probe).unwrap_err();
        assert_eq!(unknown.kind, ErrorKind::RuntimenodeUnknownNode);
        let mut bad = req("s9", "1.0", None);
        bad.node_id = "claude_boris".into();
        let refused = p.attach(&bad, true, &rules(None), at(6), &probe).unwrap_err().message;
        assert!(refused.starts_with("the node \"claude_boris\" is not <runtime>-<personality>"), "{refused}");
        let bad_version = p.attach(&req("s9", "1.01", None), true, &rules(None), at(6), &probe).unwrap_err();
        assert!(bad_version.message.contains("the client version \"1.01\""), "{}", bad_version.message);
    }

    #[test]
    fn an_operator_names_a_node_of_the_fleet_or_forces_it() {
        let fleet = FleetMap {
            updated_at: "x".into(),
            peers: ["ada", "bob"]
                .iter()
                .map(|n| crate::fleet::FleetPeer {
                    personality: (*n).into(),
                    cwd: format!("/p/{n}").into(),
                    default_runtime: None,
                    runtimes: vec!["claude".into(), "codex".into()],
                    description: String::new(),
                })
                .collect(),
        };
        let mut p = Presence::default();
        let check = |p: &Presence, node, revoke, force| check_operator_node(Some(&fleet), p, node, revoke, force);
        assert!(check(&p, "codex-bob", true, false).is_ok());
        let unknown = check(&p, "claude-nobody", true, false).unwrap_err();
        assert_eq!(unknown.kind, ErrorKind::RuntimenodeUnknownNode);
        assert!(
            unknown.message.contains("its nodes: claude-ada, claude-bob, codex-ada, codex-bob")
                && unknown.message.contains("--force"),
            "{}",
            unknown.message
        );
        assert!(check(&p, "claude-nobody", true, true).is_ok(), "forced");
        assert_eq!(check(&p, "claude_x", true, true).unwrap_err().kind, ErrorKind::RequestInvalid, "never forced");
        assert!(check(&p, "claude-nobody", false, false).unwrap_err().message.contains("nor revoked (revoked: none)"));
        p.revoke("claude-gone", "core", None, at(0)).unwrap();
        assert!(check(&p, "claude-gone", false, false).is_ok(), "a revoked node can be let back in");
        let no_map = check_operator_node(None, &p, "claude-ada", true, false).unwrap_err();
        assert_eq!(no_map.kind, ErrorKind::FleetUnavailable);
    }

    #[test]
    fn the_version_floor_compares_numbers_and_is_derived_at_read_time() {
        assert_eq!(parse_version("10.0"), v(10, 0));
        assert!(parse_version("10.0") > parse_version("9.0"));
        assert_eq!(parse_version("01.0"), None);
        assert_eq!(parse_version("1"), None);
        assert!(!is_read_only(Some("9.0"), None));
        assert!(is_read_only(Some("9.9"), v(10, 0)));
        assert!(!is_read_only(Some("10.0"), v(10, 0)));
        assert!(is_read_only(None, v(1, 0)), "no known version under a floor is read-only");
        let mut p = Presence::default();
        let (a, _) = p.attach(&req("s1", "1.0", None), true, &rules(v(2, 0)), at(0), &probe).unwrap();
        assert!(a.read_only, "admitted, read-only");
        assert!(p.roster(v(2, 0))[0].read_only);
        assert!(!p.roster(v(1, 0))[0].read_only, "lowering the floor frees it");
        let refusal =
            floor_refusal("claude-boris", p.active_version("claude-boris"), ClientVersion { major: 2, minor: 0 });
        assert_eq!(refusal.kind, ErrorKind::VersionFloorExceeded);
        assert_eq!(refusal.details.unwrap()["acceptedRange"]["min"], "2.0");
    }

    #[test]
    fn capability_updates_record_changes() {
        let mut p = Presence::default();
        p.attach(&req("s1", "1.0", None), true, &rules(None), at(0), &probe).unwrap();
        let mut caps = Map::new();
        caps.insert("hooks".into(), json!(["all"]));
        let (result, e) = p.capability_update("claude-boris", &caps, Some(Health::Degraded), at(1)).unwrap();
        assert_eq!(names(&e), ["runtime_node.capability_updated", "runtime_node.degraded"]);
        assert_eq!(result.state, State::Degraded);
    }

    #[test]
    fn soft_heartbeats_are_told_apart_and_applied_forward_only() {
        let mut p = Presence::default();
        p.attach(&req("s1", "1.0", None), true, &rules(None), at(0), &probe).unwrap();
        assert_eq!(p.soft_beat("claude-boris", Some("s1"), Health::Online), Ok(Some("s1")));
        assert_eq!(p.soft_beat("claude-boris", None, Health::Online), Ok(Some("s1")), "the active session");
        assert_eq!(p.soft_beat("claude-boris", None, Health::Degraded), Ok(None), "a health change is a transition");
        assert_eq!(
            p.soft_beat("claude-boris", Some("old"), Health::Online).unwrap_err().kind,
            ErrorKind::RuntimenodeStaleSession
        );
        let kept = |t| SoftBeats::from([(("claude-boris".to_owned(), "s1".to_owned()), t)]);
        p.apply_beats(&kept(at(40)));
        assert!(p.sweep(&rules(None), at(60), &probe).is_empty(), "the kept beat counts");
        p.apply_beats(&kept(at(10)));
        assert_eq!(p.active("claude-boris").unwrap().last_heartbeat_at, timestamp(at(40)), "never back");
    }
}
