//! The daemon's side of session presence (spec 40): the `runtimenode.*`
//! methods, the staleness sweep and `events.tail`. The state machine is the
//! domain's; every change is one locked store call on a blocking thread.

use crate::daemon::Daemon;
use crate::server::ProgressSink;
use memoryd_core::host::egress::Egress;
use memoryd_core::presence::{Presence, Refusal, Rules, check_operator_node, floor_refusal, is_read_only};
use memoryd_core::store::StoreError;
use memoryd_core::store::events::{self, Follower};
use memoryd_proto::presence::{
    AttachParams, Attached, CapabilityParams, CapabilityUpdated, DetachParams, Health, HeartbeatParams,
    RevocationParams, RosterRow, TailParams,
};
use memoryd_proto::status::PresenceCounts;
use memoryd_proto::{ErrorKind, RpcError, methods};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How many events `events.tail` returns before following.
const TAIL: usize = 200;
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
        other => RpcError::new(ErrorKind::Internal, other.to_string()),
    }
}

/// The peers whose presence the events changed (their linked peers'
/// fragments show it).
fn moved(events: &[memoryd_core::presence::Event]) -> Vec<String> {
    let mut out: Vec<String> = events
        .iter()
        .filter(|e| e["newState"].is_string())
        .filter_map(|e| {
            e["nodeId"].as_str().and_then(memoryd_core::fleet::names::split_node_id).map(|(_, p)| p.to_owned())
        })
        .collect();
    out.dedup();
    out
}

/// A presence change's outcome: its value and its events.
type Changed<T> = Result<(T, Vec<memoryd_core::presence::Event>), Refusal>;

/// Runs a presence change and keeps the personalities it moved.
fn tracked<T>(
    change: impl FnOnce(&mut Presence) -> Changed<T>,
) -> impl FnOnce(&mut Presence) -> Changed<(T, Vec<String>)> {
    move |p| {
        let (value, events) = change(p)?;
        let moved = moved(&events);
        Ok(((value, moved), events))
    }
}

/// The start time of a live process, for the pid checks.
fn probe(pid: i32) -> Option<String> {
    Egress::refusing(Vec::new()).probe(pid).map(|p| p.start_time)
}

impl Daemon {
    pub fn rules(&self) -> Rules {
        let config = self.config();
        Rules {
            degraded_after: config.presence.degraded_after,
            offline_after: config.presence.offline_after,
            floor: config.presence.min_client_version,
        }
    }

    /// Whether the fleet map has this node (`<runtime>-<personality>`).
    pub fn knows(&self, node: &str) -> bool {
        self.fleet.lock().ok().is_some_and(|fleet| fleet.map().is_some_and(|m| m.has_node(node)))
    }

    /// Runs a store call on a blocking thread.
    async fn with_store<T: Send + 'static>(
        self: &Arc<Self>,
        job: impl FnOnce(&Daemon) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, RpcError> {
        self.blocking(job).await.map_err(rpc_error)
    }

    /// Runs a tracked presence change on a blocking thread, then (there
    /// too: it reads the links) re-renders the fragments of the peers
    /// linked with those whose presence moved.
    async fn change_tracked<T: Send + 'static>(
        self: &Arc<Self>,
        job: impl FnOnce(&Daemon) -> Result<(T, Vec<String>), StoreError> + Send + 'static,
    ) -> Result<T, RpcError> {
        self.with_store(move |d| {
            let (value, moved) = job(d)?;
            if !moved.is_empty() {
                d.refresh_linked(&moved);
            }
            Ok(value)
        })
        .await
    }

    /// Refuses a write by a node whose client is below the floor in force
    /// now (re-derived at every write).
    pub fn check_floor(&self, node: &str, presence: &Presence) -> Result<(), Refusal> {
        let floor = self.rules().floor;
        let version = presence.active_version(node);
        match floor {
            Some(floor) if is_read_only(version, Some(floor)) => Err(floor_refusal(node, version, floor)),
            _ => Ok(()),
        }
    }

    /// `runtimenode.attach`.
    pub async fn attach(self: &Arc<Self>, req: AttachParams) -> Result<Attached, RpcError> {
        let now = SystemTime::now();
        let known = self.knows(&req.node_id);
        self.change_tracked(move |d| {
            let rules = d.rules();
            d.store.change_presence("attach", tracked(|p| p.attach(&req, known, &rules, now, &probe)))
        })
        .await
    }

    /// `runtimenode.heartbeat`.
    pub async fn heartbeat(self: &Arc<Self>, p: HeartbeatParams) -> Result<(), RpcError> {
        let now = SystemTime::now();
        let health = p.health_state.unwrap_or(Health::Online);
        self.change_tracked(move |d| {
            if d.keep_soft_beat(&p.node_id, p.session_id.as_deref(), health, now)? {
                return Ok(((), Vec::new()));
            }
            d.store.change_presence(
                "heartbeat",
                tracked(|pr| pr.heartbeat(&p.node_id, p.session_id.as_deref(), health, now).map(|e| ((), e))),
            )
        })
        .await
    }

    /// `runtimenode.detach`.
    pub async fn detach(self: &Arc<Self>, p: DetachParams) -> Result<(), RpcError> {
        let now = SystemTime::now();
        self.change_tracked(move |d| {
            d.store.change_presence(
                "detach",
                tracked(|pr| pr.detach(&p.node_id, p.session_id.as_deref(), now).map(|e| ((), e))),
            )
        })
        .await
    }

    /// `runtimenode.capabilityupdate`.
    pub async fn capability_update(self: &Arc<Self>, p: CapabilityParams) -> Result<CapabilityUpdated, RpcError> {
        let now = SystemTime::now();
        self.change_tracked(move |d| {
            d.store.change_presence(
                "capabilityupdate",
                tracked(|pr| {
                    d.check_floor(&p.node_id, pr)?;
                    pr.capability_update(&p.node_id, &p.capabilities, p.health_changes.map(|h| h.state), now)
                }),
            )
        })
        .await
    }

    /// `runtimenode.roster`, with the heartbeats not yet written.
    pub async fn roster(self: &Arc<Self>) -> Result<Vec<RosterRow>, RpcError> {
        let floor = self.rules().floor;
        self.with_store(move |d| {
            let mut presence = Presence::clone(&*d.store.presence()?);
            presence.apply_beats(&d.soft_beats.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            Ok(presence.roster(floor))
        })
        .await
    }

    /// `runtimenode.revoke` (`revoke`) or `runtimenode.unrevoke`.
    pub async fn revocation(self: &Arc<Self>, p: RevocationParams, revoke: bool) -> Result<(), RpcError> {
        let now = SystemTime::now();
        let fleet = self.fleet.lock().ok().and_then(|f| f.map().cloned());
        self.change_tracked(move |d| {
            d.store.change_presence(
                "revocation",
                tracked(|pr| {
                    check_operator_node(fleet.as_ref(), pr, &p.node_id, revoke, p.force)?;
                    let events = if revoke {
                        pr.revoke(&p.node_id, "operator", p.reason.as_deref(), now)?
                    } else {
                        pr.unrevoke(&p.node_id, "operator", now)?
                    };
                    Ok(((), events))
                }),
            )
        })
        .await
    }

    /// Keeps a heartbeat that changes nothing but the time in memory, to
    /// be written by the next presence sweep; false for one that moves a
    /// state, which the caller writes now. The kept beats stay locked from
    /// the check to the insert, and a sweep holds them from its drain to
    /// its write, so a beat is either in a sweep's batch or judged against
    /// what that sweep wrote.
    fn keep_soft_beat(
        &self,
        node: &str,
        session: Option<&str>,
        health: Health,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let mut kept = self.soft_beats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let presence = self.store.presence()?;
        let Some(session) = presence.soft_beat(node, session, health)? else { return Ok(false) };
        kept.insert((node.to_owned(), session.to_owned()), now);
        Ok(true)
    }

    /// One staleness sweep: writes the heartbeats kept in memory, then
    /// demotes silent sessions; live pids count as heartbeats.
    pub async fn presence_sweep(self: &Arc<Self>) {
        let now = SystemTime::now();
        let result = self
            .change_tracked(move |d| {
                let rules = d.rules();
                let mut kept = d.soft_beats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let swept = d.store.change_presence(
                    "presence-sweep",
                    tracked(|p| {
                        p.apply_beats(&kept);
                        Ok(((), p.sweep(&rules, now, &probe)))
                    }),
                );
                // Kept until written: a sweep that failed leaves them for the next.
                if swept.is_ok() {
                    kept.clear();
                }
                swept
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(task = "presence-sweep", error = %e.message, "presence sweep failed");
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
        let (node, follow) = (params.node.clone(), params.follow);
        // The log is up to 10 MiB: read on a blocking thread.
        let (recent, follower) = self
            .blocking(move |d| {
                let recent = events::recent(&d.paths.events, node.as_deref(), TAIL);
                (recent, follow.then(|| Follower::from_end(&d.paths.events)))
            })
            .await;
        let Some(mut follower) = follower else {
            return Ok(Value::Array(recent));
        };
        for event in &recent {
            sink.notify(methods::EVENTS_EVENT, event.clone());
        }
        let (mut sent, mut last_sent) = (recent.len(), Instant::now());
        loop {
            tokio::select! {
                _ = self.shutdown.begun.cancelled() => return Ok(json!({"followed": true, "reason": "memoryd is stopping"})),
                _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            }
            if sink.is_closed() {
                return Ok(Value::Null);
            }
            let new;
            (follower, new) = self
                .blocking(move |_| {
                    let new = follower.poll();
                    (follower, new)
                })
                .await;
            for event in new.into_iter().filter(|e| events::matches(e, params.node.as_deref())) {
                sink.notify(methods::EVENTS_EVENT, event);
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
