//! Peer links on the fleet database: one row per pair, `a < b`, made or
//! removed by one statement.
#![allow(unused_variables)] // TODO(helper): filled in

use crate::db::Db;
use memoryd_core::peers::Links;
use memoryd_core::store::StoreError;

pub async fn link(db: &Db, a: &str, b: &str) -> Result<bool, StoreError> {
    todo!()
}
pub async fn unlink(db: &Db, a: &str, b: &str) -> Result<bool, StoreError> {
    todo!()
}
pub async fn links(db: &Db) -> Result<Links, StoreError> {
    todo!()
}
