//! Presence on the fleet database (spec 40 through spec 80): each change
//! locks the node's presence row, loads the node's rows into the domain's
//! `Presence`, runs the domain function and writes the difference with its
//! events; heartbeats that change nothing but the time are kept in memory
//! and flushed once per sweep; the fleet-wide demotion runs under a
//! try-advisory-lock.
#![allow(unused_variables, clippy::too_many_arguments)] // TODO(helper): filled in

use crate::db::Db;
use crate::supervisor::Shared;
use memoryd_core::config::ClientVersion;
use memoryd_core::presence::{AttachParams, Attached, Event, Health, Presence, Probe, Revoker, RosterRow, Rules};
use memoryd_core::store::StoreError;
use memoryd_proto::presence::CapabilityUpdated;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub async fn attach(
    db: &Db,
    shared: &Shared,
    req: &AttachParams,
    known: bool,
    rules: &Rules,
    now: SystemTime,
    probe: Probe<'_>,
) -> Result<(Attached, Vec<Event>), StoreError> {
    todo!()
}
pub async fn heartbeat(
    db: &Db,
    shared: &Shared,
    node: &str,
    session: Option<&str>,
    health: Health,
    now: SystemTime,
) -> Result<Vec<Event>, StoreError> {
    todo!()
}
pub fn soft_heartbeat(
    shared: &Shared,
    node: &str,
    session: Option<&str>,
    health: Health,
    now: SystemTime,
    recheck: Duration,
) -> bool {
    false
}
pub async fn detach(
    db: &Db,
    shared: &Shared,
    node: &str,
    session: Option<&str>,
    now: SystemTime,
) -> Result<Vec<Event>, StoreError> {
    todo!()
}
pub async fn capability_update(
    db: &Db,
    shared: &Shared,
    node: &str,
    capabilities: &Map<String, Value>,
    health: Option<Health>,
    floor: Option<ClientVersion>,
    now: SystemTime,
) -> Result<(CapabilityUpdated, Vec<Event>), StoreError> {
    todo!()
}
pub async fn revoke(
    db: &Db,
    shared: &Shared,
    node: &str,
    by: Revoker<'_>,
    reason: Option<&str>,
    now: SystemTime,
) -> Result<Vec<Event>, StoreError> {
    todo!()
}
pub async fn unrevoke(
    db: &Db,
    shared: &Shared,
    node: &str,
    by: Revoker<'_>,
    now: SystemTime,
) -> Result<Vec<Event>, StoreError> {
    todo!()
}
pub async fn sweep(
    db: &Db,
    shared: &Shared,
    rules: &Rules,
    now: SystemTime,
    probe: Probe<'_>,
) -> Result<Vec<Event>, StoreError> {
    todo!()
}
pub async fn roster(db: &Db, shared: &Shared, floor: Option<ClientVersion>) -> Result<Vec<RosterRow>, StoreError> {
    todo!()
}
pub async fn presence(db: &Db, shared: &Shared) -> Result<Arc<Presence>, StoreError> {
    todo!()
}
