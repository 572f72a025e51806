//! The daemon's side of session presence (spec 40): the `runtimenode.*`
//! methods, the staleness sweep and `events.tail`. The state machine is the
//! domain's; every change is one store call on a blocking thread.

use crate::daemon::Daemon;
use crate::server::ProgressSink;
use crate::tasks::every;
use memoryd_core::host::clock;
use memoryd_core::host::egress::Egress;
use memoryd_core::presence::{Event, Refusal, Revoker, Rules};
use memoryd_core::store::StoreError;
use memoryd_proto::presence::{
    AttachParams, Attached, CapabilityParams, CapabilityUpdated, DetachParams, Health, HeartbeatParams,
    RevocationParams, RosterRow, TailParams,
};
use memoryd_proto::status::PresenceCounts;
use memoryd_proto::{ErrorKind, RpcError, Timestamp, methods};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a follower looks for new events.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// How long a follower stays silent before it sends a `host.working` beat
/// (well under the client's silence limit).
const FOLLOW_BEAT: Duration = Duration::from_secs(5);

pub fn rpc_error(e: StoreError) -> RpcError {
    match e {
        StoreError::Refused(Refusal { kind, message, details }) => {
            let error = RpcError::new(kind, message);
            match details {
                Some(d) => error.with_details(d),
                None => error,
            }
        }
        StoreError::Lock(e) => RpcError::new(ErrorKind::LockBusy, e.to_string()),
        StoreError::Unavailable { kind, message } => RpcError::new(kind, message),
        other => RpcError::new(ErrorKind::Internal, other.to_string()),
    }
}

/// The peers whose presence the events changed (their linked peers'
/// fragments show it).
fn moved(events: &[Event]) -> Vec<String> {
    let mut out: Vec<String> = events
        .iter()
        .filter(|e| e.new_state().is_some())
        .filter_map(|e| e.node_id().and_then(memoryd_core::fleet::names::split_node_id).map(|(_, p)| p.to_owned()))
        .collect();
    out.dedup();
    out
}

/// The start time of a live process, for the pid checks.
fn probe(pid: i32) -> Option<String> {
    Egress::refusing(Vec::new()).probe(pid).map(|p| p.start_time)
}

impl Daemon {
    /// The presence rules in force (the fleet's, with the fleet database).
    pub fn rules(&self) -> Rules {
        let presence = self.presence_config();
        Rules {
            degraded_after: presence.degraded_after,
            offline_after: presence.offline_after,
            floor: presence.min_client_version,
        }
    }

    /// Whether the fleet map has this node (`<runtime>-<personality>`).
    pub fn knows(&self, node: &str) -> bool {
        self.fleet.map.lock().ok().is_some_and(|fleet| fleet.map().is_some_and(|m| m.has_node(node)))
    }

    /// Runs a store call on a blocking thread.
    async fn with_store<T: Send + 'static>(
        self: &Arc<Self>,
        job: impl FnOnce(&Daemon) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, RpcError> {
        self.blocking(job).await.map_err(rpc_error)
    }

    /// Runs a presence change on a blocking thread, then (there too: it
    /// reads the links) re-renders the fragments of the peers linked with
    /// those whose presence moved.
    async fn change_tracked<T: Send + 'static>(
        self: &Arc<Self>,
        job: impl FnOnce(&Daemon) -> Result<(T, Vec<Event>), StoreError> + Send + 'static,
    ) -> Result<T, RpcError> {
        self.with_store(move |d| {
            let (value, events) = job(d)?;
            let moved = moved(&events);
            if !moved.is_empty() {
                d.refresh_linked(&moved);
            }
            Ok(value)
        })
        .await
    }

    /// `runtimenode.attach`.
    pub async fn attach(self: &Arc<Self>, req: AttachParams) -> Result<Attached, RpcError> {
        let now = clock::now();
        let known = self.knows(&req.node_id);
        self.change_tracked(move |d| d.store.attach(&req, known, &d.rules(), now, &probe)).await
    }

    /// A `runtimenode.heartbeat` that changes nothing but the time, kept
    /// by the store until the presence sweep writes it (memory only: the
    /// store re-checks its file at most once per sweep interval, on the
    /// blocking path); false for any other, which takes
    /// [`Daemon::heartbeat`].
    pub fn soft_heartbeat(&self, p: &HeartbeatParams) -> bool {
        let health = p.health_state.unwrap_or(Health::Online);
        let recheck = self.config().presence.sweep_every;
        self.store.soft_heartbeat(&p.node_id, p.session_id.as_deref(), health, clock::now(), recheck)
    }

    /// `runtimenode.heartbeat` that [`Daemon::soft_heartbeat`] did not
    /// keep (a change of state or health, a refusal, an overdue re-check):
    /// on the blocking path, written at once.
    pub async fn heartbeat(self: &Arc<Self>, p: HeartbeatParams) -> Result<(), RpcError> {
        let now = clock::now();
        let health = p.health_state.unwrap_or(Health::Online);
        self.change_tracked(move |d| Ok(((), d.store.heartbeat(&p.node_id, p.session_id.as_deref(), health, now)?)))
            .await
    }

    /// `runtimenode.detach`.
    pub async fn detach(self: &Arc<Self>, p: DetachParams) -> Result<(), RpcError> {
        let now = clock::now();
        self.change_tracked(move |d| Ok(((), d.store.detach(&p.node_id, p.session_id.as_deref(), now)?))).await
    }

    /// `runtimenode.capabilityupdate`, refused to a node below the floor.
    pub async fn capability_update(self: &Arc<Self>, p: CapabilityParams) -> Result<CapabilityUpdated, RpcError> {
        let now = clock::now();
        self.change_tracked(move |d| {
            let health = p.health_changes.map(|h| h.state);
            d.store.capability_update(&p.node_id, &p.capabilities, health, d.rules().floor, now)
        })
        .await
    }

    /// `runtimenode.roster`, with the heartbeats not yet written.
    pub async fn roster(self: &Arc<Self>) -> Result<Vec<RosterRow>, RpcError> {
        let floor = self.rules().floor;
        self.with_store(move |d| d.store.roster(floor)).await
    }

    /// `runtimenode.revoke` (`revoke`) or `runtimenode.unrevoke`, by the
    /// operator: the node must be in the fleet unless forced.
    pub async fn revocation(self: &Arc<Self>, p: RevocationParams, revoke: bool) -> Result<(), RpcError> {
        let now = clock::now();
        let fleet = self.fleet.map.lock().ok().and_then(|f| f.map().cloned());
        self.change_tracked(move |d| {
            let by = Revoker::Operator { fleet: fleet.as_ref(), force: p.force };
            let events = if revoke {
                d.store.revoke(&p.node_id, by, p.reason.as_deref(), now)?
            } else {
                d.store.unrevoke(&p.node_id, by, now)?
            };
            Ok(((), events))
        })
        .await
    }

    /// One staleness sweep: writes the heartbeats kept in memory, then
    /// demotes silent sessions; live pids count as heartbeats.
    pub async fn presence_sweep(self: &Arc<Self>) {
        let now = clock::now();
        let result = self.change_tracked(move |d| Ok(((), d.store.sweep(&d.rules(), now, &probe)?))).await;
        match result {
            Ok(()) => {}
            // Said once per outage by the store; not once per sweep.
            Err(e)
                if matches!(
                    e.kind(),
                    Some(ErrorKind::StoreUnavailable | ErrorKind::StoreIncompatible | ErrorKind::StoreHostTaken)
                ) =>
            {
                tracing::debug!(task = "presence-sweep", error = %e.message, "presence sweep waits for the fleet database");
            }
            Err(e) => tracing::warn!(task = "presence-sweep", error = %e.message, "presence sweep failed"),
        }
    }

    /// Node counts by state for `status`; None when the store does not
    /// load (never zeros for counts not read).
    pub fn presence_counts(&self) -> Option<PresenceCounts> {
        self.store.presence().ok().map(|p| p.counts())
    }

    /// `events.tail {follow?, node?}`: the recent events; with `follow`,
    /// new ones stream as `events.event` notifications until the client
    /// goes or the daemon stops.
    pub async fn events_tail(self: &Arc<Self>, params: TailParams, sink: ProgressSink) -> Result<Value, RpcError> {
        let (node, follow, limit, since) =
            (params.node.clone(), params.follow, params.limit, params.since.map(Timestamp::time));
        // The log is up to 10 MiB: read on a blocking thread. One read gives
        // the recent events and the cursor after them, so following misses
        // nothing written meanwhile.
        let (recent, mut cursor) =
            self.with_store(move |d| d.store.recent_since(node.as_deref(), limit, since)).await?;
        if !follow {
            return serde_json::to_value(recent).map_err(|e| RpcError::new(ErrorKind::Internal, e.to_string()));
        }
        for event in &recent {
            sink.notify(methods::EVENTS_EVENT, serde_json::to_value(event).unwrap_or_default());
        }
        let (mut sent, mut last_sent) = (recent.len(), Instant::now());
        loop {
            tokio::select! {
                _ = self.host.shutdown.begun.cancelled() => return Ok(json!({"followed": true, "reason": "memoryd is stopping"})),
                _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            }
            if sink.is_closed() {
                return Ok(Value::Null);
            }
            let node = params.node.clone();
            let new;
            (cursor, new) = self
                .blocking(move |d| {
                    let new = d.store.follow(&mut cursor, node.as_deref());
                    (cursor, new)
                })
                .await;
            let new = new.unwrap_or_else(|e| {
                tracing::warn!(task = "events-follow", error = %e, "cannot read the event log");
                Vec::new()
            });
            for event in new {
                sink.notify(methods::EVENTS_EVENT, serde_json::to_value(event).unwrap_or_default());
                (sent, last_sent) = (sent + 1, Instant::now());
            }
            // A quiet log is not a hung daemon: the beat tells the client
            // which one it is.
            if last_sent.elapsed() >= FOLLOW_BEAT {
                sink.working("events", sent, None);
                last_sent = Instant::now();
            }
        }
    }
}

/// Demotes silent sessions every `presence.sweep_every`.
pub async fn presence_sweep(daemon: Arc<Daemon>) {
    every(&daemon, |c| c.presence.sweep_every, || daemon.presence_sweep()).await;
    // Stopping (or restarting): the heartbeats kept in memory go to disk.
    daemon.presence_sweep().await;
}
