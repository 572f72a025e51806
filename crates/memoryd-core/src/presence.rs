//! Session presence (spec 40): the state machine of runtime-node
//! attachments, as pure functions over the stored document. Time comes in
//! as `now` and process liveness through a probe, so tests drive every
//! transition without sleeping. The store ([`crate::store`]) runs each of
//! these inside one locked read-modify-write.

use crate::config::ClientVersion;
use crate::fleet::FleetMap;
use crate::fleet::names::split_node_id;
use memoryd_proto::event::rfc3339;
use memoryd_proto::status::PresenceCounts;
use memoryd_proto::{ErrorKind, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

pub use memoryd_proto::event::{Actor, Event, EventKind, OfflineReason};
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
    #[serde(with = "rfc3339")]
    pub attached_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub last_heartbeat_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub updated_at: SystemTime,
}

/// A revoked node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    pub revoked_by: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
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

/// A state change's outcome: its value and the events it records.
pub type Changed<T> = Result<(T, Vec<Event>), Refusal>;

/// Who revokes or lets a node back in. An operator names a node that is
/// checked against the fleet map inside the change (see
/// [`check_operator_node`]); the iapeer core and a birth name their own.
#[derive(Debug, Clone, Copy)]
pub enum Revoker<'a> {
    Operator { fleet: Option<&'a FleetMap>, force: bool },
    Core,
    Birth,
}

impl Revoker<'_> {
    pub fn actor(self) -> Actor {
        match self {
            Revoker::Operator { .. } => Actor::Operator,
            Revoker::Core => Actor::Core,
            Revoker::Birth => Actor::Birth,
        }
    }

    /// An operator's node must be one the fleet map lists (or, to be let
    /// back in, a revoked one).
    fn check(self, presence: &Presence, node: &str, revoke: bool) -> Result<(), Refusal> {
        match self {
            Revoker::Operator { fleet, force } => check_operator_node(fleet, presence, node, revoke, force),
            Revoker::Core | Revoker::Birth => check_node(node),
        }
    }
}

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

/// Moves a row to `to`: the state and the update time; what moved, for
/// the event.
fn moved_to(now: SystemTime, row: &mut Attachment, to: State) -> (String, String, State) {
    let previous = row.state;
    row.state = to;
    row.updated_at = now;
    (row.node_id.clone(), row.session_id.clone(), previous)
}

fn online(now: SystemTime, row: &mut Attachment) -> Event {
    let (node_id, session_id, previous_state) = moved_to(now, row, State::Online);
    Event { ts: now, kind: EventKind::Online { node_id, session_id, previous_state, new_state: State::Online } }
}

fn degraded(now: SystemTime, row: &mut Attachment, detail: String) -> Event {
    let (node_id, session_id, previous_state) = moved_to(now, row, State::Degraded);
    Event {
        ts: now,
        kind: EventKind::Degraded { node_id, session_id, detail, previous_state, new_state: State::Degraded },
    }
}

/// Ends a session: `offline`, with the last heartbeat and why.
fn go_offline(now: SystemTime, row: &mut Attachment, reason: OfflineReason) -> Event {
    let last_heartbeat_at = row.last_heartbeat_at;
    row.health = Health::Offline;
    let (node_id, session_id, previous_state) = moved_to(now, row, State::Offline);
    Event {
        ts: now,
        kind: EventKind::Offline {
            node_id,
            session_id,
            last_heartbeat_at,
            reason,
            previous_state,
            new_state: State::Offline,
        },
    }
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
    /// here, inside the store's change.
    pub fn attach(
        &mut self,
        req: &AttachParams,
        known: bool,
        rules: &Rules,
        now: SystemTime,
        probe: Probe<'_>,
    ) -> Changed<Attached> {
        let now = rfc3339::millis(now);
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
        let pid_start = req.pid.and_then(probe);
        let read_only = is_read_only(Some(&req.client_version), rules.floor);
        let mut events = Vec::new();
        // The same session, already active: a resumed or compacted session.
        if let Some(row) = self.active_mut(&req.node_id)
            && row.session_id == req.session_id
        {
            row.last_heartbeat_at = now;
            if req.pid.is_some() {
                (row.pid, row.pid_start) = (req.pid, pid_start);
            }
            let attached = Attached {
                attachment_id: row.attachment_id.clone(),
                state: row.state,
                read_only,
                attached_at: Timestamp(row.attached_at),
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
                OfflineReason::Superseded
            } else if dead {
                OfflineReason::HeartbeatLost
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
        let capabilities: Vec<String> = req.capabilities.keys().cloned().collect();
        // A reconnect of an offline session, or a new one.
        let idx = match self.attachments.iter().position(|a| a.node_id == req.node_id && a.session_id == req.session_id)
        {
            Some(idx) => {
                let row = &mut self.attachments[idx];
                let (node_id, session_id, previous) = moved_to(now, row, State::Registering);
                events.push(Event {
                    ts: now,
                    kind: EventKind::Registered {
                        node_id,
                        session_id,
                        capabilities,
                        client_version: req.client_version.clone(),
                        previous_state: Some(previous),
                        new_state: State::Registering,
                    },
                });
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
                    attached_at: now,
                    last_heartbeat_at: now,
                    updated_at: now,
                };
                events.push(Event {
                    ts: now,
                    kind: EventKind::Registered {
                        node_id: row.node_id.clone(),
                        session_id: row.session_id.clone(),
                        capabilities,
                        client_version: req.client_version.clone(),
                        previous_state: None,
                        new_state: State::Registering,
                    },
                });
                self.attachments.push(row);
                self.attachments.len() - 1
            }
        };
        let row = &mut self.attachments[idx];
        row.client_version = req.client_version.clone();
        row.health = req.health_state;
        (row.pid, row.pid_start) = (req.pid, pid_start);
        row.last_heartbeat_at = now;
        for (key, value) in &req.capabilities {
            events.push(Event {
                ts: now,
                kind: EventKind::CapabilityDeclared {
                    node_id: row.node_id.clone(),
                    session_id: row.session_id.clone(),
                    capability: key.clone(),
                    capability_details: value.clone(),
                },
            });
        }
        row.capabilities = req.capabilities.clone();
        events.push(if req.health_state == Health::Degraded {
            degraded(now, row, "reported at attach".to_owned())
        } else {
            online(now, row)
        });
        let attached = Attached {
            attachment_id: row.attachment_id.clone(),
            state: row.state,
            read_only,
            attached_at: Timestamp(row.attached_at),
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
        let now = rfc3339::millis(now);
        if health == Health::Offline {
            return Err(Refusal::new(ErrorKind::RequestInvalid, "the health state must be online or degraded"));
        }
        let row = self.session_mut(node, session)?;
        row.last_heartbeat_at = now;
        row.health = health;
        Ok(match (row.state, health) {
            (State::Degraded, Health::Online) => vec![online(now, row)],
            (State::Online, Health::Degraded) => vec![degraded(now, row, "reported by the node".to_owned())],
            _ => Vec::new(),
        })
    }

    /// Checks a heartbeat without writing: the refusal `heartbeat` would
    /// give, or, when it would change nothing but the time, the session it
    /// beats for (that time alone is soft state the store may keep in
    /// memory and apply later).
    pub fn soft_beat(&self, node: &str, session: Option<&str>, health: Health) -> Result<Option<&str>, Refusal> {
        if health == Health::Offline {
            return Err(Refusal::new(ErrorKind::RequestInvalid, "the health state must be online or degraded"));
        }
        Ok(self.kept_beat(self.session_index(node, session)?, health))
    }

    /// [`soft_beat`](Self::soft_beat) for the row `i` found by
    /// [`active_rows`](Self::active_rows): None unless that row is still
    /// `node`'s active session (`session`'s, when given) and a beat in
    /// `health` changes nothing but its time.
    pub fn soft_beat_at(&self, i: usize, node: &str, session: Option<&str>, health: Health) -> Option<&str> {
        let row = self.attachments.get(i)?;
        let ours = row.node_id == node && row.state.is_active() && session.is_none_or(|s| s == row.session_id);
        if !ours || health == Health::Offline {
            return None;
        }
        self.kept_beat(i, health)
    }

    /// Where each node's active session is, by node: a lookup per beat
    /// instead of a scan of every row.
    pub fn active_rows(&self) -> HashMap<String, usize> {
        let active = self.attachments.iter().enumerate().filter(|(_, a)| a.state.is_active());
        active.map(|(i, a)| (a.node_id.clone(), i)).collect()
    }

    /// The session a beat of the active row `i` in `health` keeps, when it
    /// changes nothing but the time.
    fn kept_beat(&self, i: usize, health: Health) -> Option<&str> {
        let row = &self.attachments[i];
        let transition =
            matches!((row.state, health), (State::Degraded, Health::Online) | (State::Online, Health::Degraded));
        (!transition && row.health == health).then_some(row.session_id.as_str())
    }

    /// Applies heartbeat times kept in memory: each moves its session's
    /// `lastHeartbeatAt` forward, never back.
    pub fn apply_beats(&mut self, beats: &SoftBeats) {
        for ((node, session), &at) in beats {
            if let Some(row) = self.active_mut(node).filter(|r| r.session_id == *session)
                && row.last_heartbeat_at < rfc3339::millis(at)
            {
                row.last_heartbeat_at = rfc3339::millis(at);
            }
        }
    }

    /// `runtimenode.detach`: the active session goes offline.
    pub fn detach(&mut self, node: &str, session: Option<&str>, now: SystemTime) -> Result<Vec<Event>, Refusal> {
        let row = self.session_mut(node, session)?;
        Ok(vec![go_offline(rfc3339::millis(now), row, OfflineReason::ExplicitShutdown)])
    }

    /// `runtimenode.capabilityupdate`: a write, refused to a node whose
    /// client is below the floor in force now.
    pub fn capability_update(
        &mut self,
        node: &str,
        capabilities: &Map<String, Value>,
        health: Option<Health>,
        floor: Option<ClientVersion>,
        now: SystemTime,
    ) -> Changed<CapabilityUpdated> {
        let now = rfc3339::millis(now);
        self.check_floor(node, floor)?;
        let row = self.session_mut(node, None)?;
        let mut events = Vec::new();
        for (key, value) in capabilities {
            let previous = row.capabilities.get(key).cloned();
            if previous.as_ref() == Some(value) {
                continue;
            }
            events.push(Event {
                ts: now,
                kind: EventKind::CapabilityUpdated {
                    node_id: node.to_owned(),
                    session_id: row.session_id.clone(),
                    capability: key.clone(),
                    previous_value: previous,
                    new_value: value.clone(),
                },
            });
            row.capabilities.insert(key.clone(), value.clone());
        }
        match (health, row.state) {
            (Some(Health::Degraded), State::Online) => events.push(degraded(now, row, "capability update".to_owned())),
            (Some(Health::Online), State::Degraded) => events.push(online(now, row)),
            (Some(Health::Offline), _) => {
                return Err(Refusal::new(
                    ErrorKind::RequestInvalid,
                    "the health a capability update reports must be online or degraded",
                ));
            }
            _ => {}
        }
        row.updated_at = now;
        let updated =
            CapabilityUpdated { node_id: node.to_owned(), state: row.state, updated_at: Timestamp(row.updated_at) };
        Ok((updated, events))
    }

    /// Refuses a write by a node whose client is below `floor` (re-derived
    /// at every write).
    pub fn check_floor(&self, node: &str, floor: Option<ClientVersion>) -> Result<(), Refusal> {
        let version = self.active_version(node);
        match floor {
            Some(floor) if is_read_only(version, Some(floor)) => Err(floor_refusal(node, version, floor)),
            _ => Ok(()),
        }
    }

    /// The staleness sweep: only demotes. A live recorded pid (same start
    /// time) counts as a heartbeat.
    pub fn sweep(&mut self, rules: &Rules, now: SystemTime, probe: Probe<'_>) -> Vec<Event> {
        let now = rfc3339::millis(now);
        let mut events = Vec::new();
        for row in self.attachments.iter_mut().filter(|r| r.state.is_active()) {
            let alive = row.pid.is_some_and(|pid| row.pid_start.is_some() && probe(pid) == row.pid_start);
            if alive {
                row.last_heartbeat_at = now;
                if row.state == State::Degraded && row.health != Health::Degraded {
                    events.push(online(now, row));
                }
                continue;
            }
            let age = now.duration_since(row.last_heartbeat_at).unwrap_or_default();
            if age > rules.offline_after {
                events.push(go_offline(now, row, OfflineReason::HeartbeatLost));
            } else if age > rules.degraded_after && row.state != State::Degraded {
                row.health = Health::Degraded;
                events.push(degraded(now, row, format!("no heartbeat for {}s", age.as_secs())));
            }
        }
        events
    }

    /// Revokes a node (terminal): its active row goes `revoked`.
    pub fn revoke(
        &mut self,
        node: &str,
        by: Revoker<'_>,
        reason: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<Event>, Refusal> {
        let now = rfc3339::millis(now);
        by.check(self, node, true)?;
        if self.revoked.contains_key(node) {
            return Ok(Vec::new());
        }
        let actor = by.actor();
        self.revoked
            .insert(node.to_owned(), Revocation { revoked_by: actor, reason: reason.map(str::to_owned), at: now });
        let (session_id, previous_state) = match self.active_mut(node) {
            Some(row) => {
                row.health = Health::Offline;
                let (_, session, previous) = moved_to(now, row, State::Revoked);
                (Some(session), Some(previous))
            }
            None => (None, None),
        };
        Ok(vec![Event {
            ts: now,
            kind: EventKind::Revoked {
                node_id: node.to_owned(),
                session_id,
                revoked_by: actor,
                reason: reason.map(str::to_owned),
                previous_state,
                new_state: State::Revoked,
                actor,
            },
        }])
    }

    /// Lifts a revocation.
    pub fn unrevoke(&mut self, node: &str, by: Revoker<'_>, now: SystemTime) -> Result<Vec<Event>, Refusal> {
        by.check(self, node, false)?;
        if self.revoked.remove(node).is_none() {
            return Ok(Vec::new());
        }
        for row in self.attachments.iter_mut().filter(|r| r.node_id == node && r.state == State::Revoked) {
            row.state = State::Offline;
        }
        Ok(vec![Event {
            ts: rfc3339::millis(now),
            kind: EventKind::Unrevoked {
                node_id: node.to_owned(),
                by: by.actor(),
                previous_state: State::Revoked,
                new_state: State::Offline,
            },
        }])
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
                    last_heartbeat_at: Timestamp(row.last_heartbeat_at),
                    attached_at: Timestamp(row.attached_at),
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
    // The transitions are tested through the store, by the domain suite
    // (`crate::store::suite`); these are the pure checks.
    use super::*;

    fn v(major: u32, minor: u32) -> Option<ClientVersion> {
        Some(ClientVersion { major, minor })
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
        p.revoke("claude-gone", Revoker::Core, None, SystemTime::UNIX_EPOCH).unwrap();
        assert!(check(&p, "claude-gone", false, false).is_ok(), "a revoked node can be let back in");
        let no_map = check_operator_node(None, &p, "claude-ada", true, false).unwrap_err();
        assert_eq!(no_map.kind, ErrorKind::FleetUnavailable);
    }

    #[test]
    fn the_version_floor_compares_numbers() {
        assert_eq!(parse_version("10.0"), v(10, 0));
        assert!(parse_version("10.0") > parse_version("9.0"));
        assert_eq!(parse_version("01.0"), None);
        assert_eq!(parse_version("1"), None);
        assert!(!is_read_only(Some("9.0"), None));
        assert!(is_read_only(Some("9.9"), v(10, 0)));
        assert!(!is_read_only(Some("10.0"), v(10, 0)));
        assert!(is_read_only(None, v(1, 0)), "no known version under a floor is read-only");
        let refusal = floor_refusal("claude-boris", Some("1.0"), ClientVersion { major: 2, minor: 0 });
        assert_eq!(refusal.kind, ErrorKind::VersionFloorExceeded);
        assert_eq!(refusal.details.unwrap()["acceptedRange"]["min"], "2.0");
    }
}
