//! The host's copy of the fleet's presence (attachment rows and
//! revocations, times in this host's clock), so heartbeats are checked and
//! rosters served without a round trip (spec 80). Transactions never trust
//! it: each change reads its node's rows under the node's lock.
//!
//! Keeping it right while several changes, reloads and notifications
//! overlap: a change stages its node's new rows just before its `COMMIT`
//! and finishes them after (a node with a change in flight is never
//! overwritten by a reload), and every staging, finish and dirty mark takes
//! a new generation number; a reload that started before a node's latest
//! generation leaves that node alone. Another host's change arrives as a
//! notification that marks its node dirty (reloaded before it is trusted
//! again); a listener (re)connect, a resync tick or a failed commit marks
//! the whole copy stale.

use memoryd_core::presence::{Attachment, Presence, Revocation};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

/// One attachment row and the host whose daemon recorded its pid.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub host: String,
    pub att: Attachment,
}

/// One node's rows (oldest first) and its revocation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeState {
    pub rows: Vec<Row>,
    pub revoked: Option<Revocation>,
}

impl NodeState {
    fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.revoked.is_none()
    }
}

#[derive(Debug, Default)]
struct Entry {
    state: NodeState,
    /// The generation of the last staging, finish or dirty mark.
    generation: u64,
    /// Changes staged and not finished.
    in_flight: u32,
    /// Marked dirty at this generation: reloaded before it is trusted.
    dirty: Option<u64>,
}

/// What a reader must reload first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    Nothing,
    All,
    Nodes(Vec<String>),
}

/// The presence built from the copy, kept until the next change.
#[derive(Debug, Clone)]
pub struct Built {
    pub presence: Arc<Presence>,
    /// Each node's active row in `presence`.
    pub active: Arc<HashMap<String, usize>>,
}

#[derive(Debug, Default)]
pub struct RosterCache {
    nodes: BTreeMap<String, Entry>,
    generation: u64,
    /// Whether a whole load ever completed.
    loaded: bool,
    /// Marked stale as a whole at this generation.
    stale: Option<u64>,
    /// When the copy was last known to match the database.
    checked: Option<Instant>,
    built: Option<Built>,
}

impl RosterCache {
    fn next(&mut self) -> u64 {
        self.generation += 1;
        self.built = None;
        self.generation
    }

    /// What a reader must reload before it trusts the copy.
    pub fn reload_needed(&self) -> Reload {
        if !self.loaded || self.stale.is_some() {
            return Reload::All;
        }
        let dirty: Vec<String> = self.nodes.iter().filter(|(_, e)| e.dirty.is_some()).map(|(n, _)| n.clone()).collect();
        if dirty.is_empty() { Reload::Nothing } else { Reload::Nodes(dirty) }
    }

    /// Whether the copy was ever loaded.
    pub fn loaded(&self) -> bool {
        self.loaded
    }

    /// The generation a reload starting now stands at.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Installs a reload of every node (`nodes: None`) or of the named
    /// ones, read after generation `at`.
    pub fn install(&mut self, at: u64, names: Option<&[String]>, mut loaded: BTreeMap<String, NodeState>) {
        let whole = names.is_none();
        let names: Vec<String> = match names {
            Some(names) => names.to_vec(),
            None => {
                let mut all: Vec<String> = self.nodes.keys().cloned().collect();
                all.extend(loaded.keys().cloned());
                all.sort();
                all.dedup();
                all
            }
        };
        for name in names {
            let entry = self.nodes.entry(name.clone()).or_default();
            if entry.in_flight > 0 || entry.generation > at {
                continue;
            }
            entry.state = loaded.remove(&name).unwrap_or_default();
            entry.dirty = None;
            if entry.state.is_empty() {
                self.nodes.remove(&name);
            }
        }
        if whole {
            // A staleness marked while this reload ran stays.
            if self.stale.is_none_or(|s| s <= at) {
                self.stale = None;
            }
            self.loaded = true;
            self.checked = Some(Instant::now());
        }
        self.next();
    }

    /// A change is about to commit `state` for `node`.
    pub fn stage(&mut self, node: &str, state: NodeState) {
        let generation = self.next();
        let entry = self.nodes.entry(node.to_owned()).or_default();
        entry.state = state;
        entry.in_flight += 1;
        entry.generation = generation;
    }

    /// The change staged for `node` committed (`ok`) or not (then the
    /// node is reloaded before it is trusted again).
    pub fn finish(&mut self, node: &str, ok: bool) {
        let generation = self.next();
        let entry = self.nodes.entry(node.to_owned()).or_default();
        entry.in_flight = entry.in_flight.saturating_sub(1);
        entry.generation = generation;
        if !ok {
            entry.dirty = Some(generation);
        }
    }

    /// Another host changed `node`.
    pub fn mark_dirty(&mut self, node: &str) {
        let generation = self.next();
        let entry = self.nodes.entry(node.to_owned()).or_default();
        entry.generation = generation;
        entry.dirty = Some(generation);
    }

    /// Anything may have changed: reload everything before trusting it.
    pub fn mark_stale(&mut self) {
        let generation = self.next();
        self.stale = Some(generation);
    }

    /// Whether beats for `node` may be checked in memory: the copy is
    /// loaded, not stale, the node not dirty, and the copy was known right
    /// within `recheck` or is kept current by a live listener.
    pub fn trusted(&self, node: &str, listening: bool, recheck: std::time::Duration) -> bool {
        self.loaded
            && self.stale.is_none()
            && self.nodes.get(node).is_none_or(|e| e.dirty.is_none())
            && (listening || self.checked.is_some_and(|c| c.elapsed() < recheck))
    }

    /// One node's rows as copied.
    pub fn node(&self, node: &str) -> NodeState {
        self.nodes.get(node).map(|e| e.state.clone()).unwrap_or_default()
    }

    /// The copy as the domain's presence (built once per change).
    pub fn built(&mut self) -> Built {
        if let Some(built) = &self.built {
            return built.clone();
        }
        let mut presence = Presence::default();
        for (name, entry) in &self.nodes {
            presence.attachments.extend(entry.state.rows.iter().map(|r| r.att.clone()));
            if let Some(revoked) = &entry.state.revoked {
                presence.revoked.insert(name.clone(), revoked.clone());
            }
        }
        let active = Arc::new(presence.active_rows());
        let built = Built { presence: Arc::new(presence), active };
        self.built = Some(built.clone());
        built
    }

    /// This host's active sessions with a recorded pid and start time:
    /// (node, session, pid, start).
    pub fn own_pids(&self, host: &str) -> Vec<(String, String, i32, String)> {
        self.nodes
            .values()
            .flat_map(|e| e.state.rows.iter())
            .filter(|r| r.host == host && r.att.state.is_active())
            .filter_map(|r| {
                let start = r.att.pid_start.clone()?;
                Some((r.att.node_id.clone(), r.att.session_id.clone(), r.att.pid?, start))
            })
            .collect()
    }
}
