//! What the changes of the registry, links and mailboxes share inside
//! their transaction: the one lock order on `peers` rows.

use crate::db::Failure;
use memoryd_core::store::StoreError;
use memoryd_proto::ErrorKind;

pub type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// Locks the `peers` rows of `names` `FOR NO KEY UPDATE` (the mailbox
/// owner's lock: foreign-key checks still pass), always in byte order of
/// the names, so two changes that lock overlapping sets (a send and a send
/// the other way, an acknowledgement and its receipt, a publish) wait for
/// each other instead of deadlocking. Returns (personality, present) of
/// the rows that exist.
pub async fn lock_peers(tx: &Tx<'_>, names: &[&str]) -> Result<Vec<(String, bool)>, Failure> {
    let rows = tx
        .query(
            "SELECT personality, present FROM peers WHERE personality = ANY($1)
              ORDER BY personality COLLATE \"C\" FOR NO KEY UPDATE",
            &[&names],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A failure that is this build's fault, not the database's.
pub fn internal(message: String) -> Failure {
    Failure::Store(StoreError::Unavailable { kind: ErrorKind::Internal, message: format!("fleet database: {message}") })
}
