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
/// each other instead of deadlocking. A name without a row locks
/// nothing (it has no mailbox either).
pub async fn lock_peers(tx: &Tx<'_>, names: &[&str]) -> Result<(), Failure> {
    tx.execute(
        "SELECT 1 FROM peers WHERE personality = ANY($1) ORDER BY personality COLLATE \"C\" FOR NO KEY UPDATE",
        &[&names],
    )
    .await?;
    Ok(())
}

/// A failure that is this build's fault, not the database's.
pub fn internal(message: String) -> Failure {
    Failure::Store(StoreError::Unavailable { kind: ErrorKind::Internal, message: format!("fleet database: {message}") })
}
