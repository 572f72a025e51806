//! Mailboxes on the fleet database (`mail`): each change locks the owner's
//! `peers` row `FOR NO KEY UPDATE`, loads the mailbox into the domain's
//! `Inbox`, runs the domain function and writes the difference.
#![allow(unused_variables)] // TODO(helper): filled in

use crate::db::Db;
use memoryd_core::peers::{Draft, Inbox, Limits, Message, OutboxRow};
use memoryd_core::store::StoreError;
use memoryd_proto::peers::{Acknowledged, ReplyParams, Sent};
use std::collections::BTreeMap;
use std::time::SystemTime;

pub async fn send(db: &Db, draft: &Draft, limits: &Limits, now: SystemTime) -> Result<Sent, StoreError> {
    todo!()
}
pub async fn reply(db: &Db, p: &ReplyParams, limits: &Limits, now: SystemTime) -> Result<Sent, StoreError> {
    todo!()
}
pub async fn inbox(db: &Db, p: &str, now: SystemTime) -> Result<Vec<Message>, StoreError> {
    todo!()
}
pub async fn lease(db: &Db, p: &str, urgent_only: bool, now: SystemTime) -> Result<Vec<Message>, StoreError> {
    todo!()
}
pub async fn ack(db: &Db, p: &str, ids: &[String], limits: &Limits, now: SystemTime) -> Result<usize, StoreError> {
    todo!()
}
pub async fn acknowledge(
    db: &Db,
    p: &str,
    id: &str,
    limits: &Limits,
    now: SystemTime,
) -> Result<Acknowledged, StoreError> {
    todo!()
}
pub async fn outbox(db: &Db, p: &str, limit: Option<usize>) -> Result<Vec<OutboxRow>, StoreError> {
    todo!()
}
pub async fn mailbox(db: &Db, p: &str) -> Result<Inbox, StoreError> {
    todo!()
}
pub async fn waiting(db: &Db) -> Result<BTreeMap<String, usize>, StoreError> {
    todo!()
}
