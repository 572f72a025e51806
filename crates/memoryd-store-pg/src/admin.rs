//! The operator's side of the fleet database: `memoryctl fleet
//! hosts|settings|release|leave|migrate`, `memoryctl store import`, the
//! per-host sweep record and `verify`'s check.
#![allow(unused_variables)] // TODO(helper): filled in

use crate::db::Db;
use memoryd_core::store::StoreError;
use memoryd_proto::status::SweepStatus;

/// One row of `memoryctl fleet hosts`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRow {}

/// A change of `fleet_settings`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsChange {}

/// What `memoryctl store import` did or would do.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Import {}

pub async fn record_sweep(db: &Db, sweep: &SweepStatus) -> Result<(), StoreError> {
    todo!()
}
pub async fn last_sweep(db: &Db) -> Result<Option<SweepStatus>, StoreError> {
    todo!()
}
pub async fn check(db: &Db) -> Result<String, StoreError> {
    todo!()
}
