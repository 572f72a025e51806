//! The fleet registry (`hosts`, `peers`): a host publishes its map, claims
//! its personalities, and checks links and sends against every present peer
//! of every host.
#![allow(unused_variables)] // TODO(helper): filled in

use crate::db::Db;
use crate::supervisor::Shared;
use memoryd_core::fleet::FleetMap;
use memoryd_core::store::StoreError;

pub async fn publish(db: &Db, shared: &Shared, local: &FleetMap) -> Result<(), StoreError> {
    todo!()
}
pub async fn registry(db: &Db, shared: &Shared, local: &FleetMap) -> Result<FleetMap, StoreError> {
    todo!()
}
