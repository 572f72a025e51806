//! The event log on the fleet database: every host's spec 40/50 events,
//! written in the transaction of their change.
#![allow(unused_variables)] // TODO(helper): filled in

use crate::db::Db;
use memoryd_core::presence::Event;
use memoryd_core::store::{Cursor, StoreError};

pub async fn recent(db: &Db, node: Option<&str>, limit: usize) -> Result<(Vec<Event>, Cursor), StoreError> {
    todo!()
}
pub async fn follow(db: &Db, cursor: &mut Cursor, node: Option<&str>) -> Result<Vec<Event>, StoreError> {
    todo!()
}
