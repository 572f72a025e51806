//! Peer links on the fleet database: one row per pair, `a < b`, made or
//! removed by one statement, so a link is whole or absent whatever
//! happens.
//!
//! The refusals are the domain's ([`Links::link`], [`Links::unlink`]), run
//! against the registry (every present peer of every host) read in the
//! change's transaction.

use crate::db::{Db, Failure};
use crate::registry;
use crate::supervisor::Hint;
use crate::tx::Tx;
use memoryd_core::peers::Links;
use memoryd_core::store::StoreError;
use tokio_postgres::GenericClient;

/// Rows of (a, b) as the domain's pairs. The table's `a < b` is in the
/// database's collation, which may order a hyphen unlike bytes do; the
/// domain's pairs are in byte order.
fn pairs(rows: &[tokio_postgres::Row]) -> Links {
    let pair = |a: String, b: String| if a <= b { (a, b) } else { (b, a) };
    Links { pairs: rows.iter().map(|r| pair(r.get(0), r.get(1))).collect() }
}

/// The links of the named peers (all links of each).
async fn links_of(client: &impl GenericClient, names: &[&str]) -> Result<Links, Failure> {
    Ok(pairs(&client.query("SELECT a, b FROM links WHERE a = ANY($1) OR b = ANY($1)", &[&names]).await?))
}

async fn notify(tx: &Tx<'_>, db: &Db, a: &str, b: &str) -> Result<(), Failure> {
    crate::supervisor::notify(tx, &db.settings.schema, &Hint::Link { a: a.to_owned(), b: b.to_owned() }).await
}

pub async fn link(db: &Db, a: &str, b: &str) -> Result<bool, StoreError> {
    db.call(db.settings.operator_timeout, async |c| -> Result<bool, Failure> {
        let tx = c.transaction().await?;
        let fleet = registry::in_tx(&tx, &db.host_id, None).await?;
        // The domain's checks and sentences; whether the pair is new is
        // the insert's answer.
        Links::default().link(&fleet, a, b)?;
        let new = tx
            .execute(
                "INSERT INTO links (a, b) VALUES (least($1, $2), greatest($1, $2)) ON CONFLICT DO NOTHING",
                &[&a, &b],
            )
            .await?
            == 1;
        if new {
            notify(&tx, db, a, b).await?;
        }
        crate::db::pause_point("link").await;
        tx.commit().await?;
        Ok(new)
    })
    .await
}

/// A peer that left the fleet keeps its links and may be unlinked.
pub async fn unlink(db: &Db, a: &str, b: &str) -> Result<bool, StoreError> {
    db.call(db.settings.operator_timeout, async |c| -> Result<bool, Failure> {
        let tx = c.transaction().await?;
        let fleet = registry::in_tx(&tx, &db.host_id, None).await?;
        links_of(&*tx, &[a, b]).await?.unlink(Some(&fleet), a, b)?;
        let removed =
            tx.execute("DELETE FROM links WHERE a = least($1, $2) AND b = greatest($1, $2)", &[&a, &b]).await? == 1;
        if removed {
            notify(&tx, db, a, b).await?;
        }
        tx.commit().await?;
        Ok(removed)
    })
    .await
}

pub async fn links(db: &Db) -> Result<Links, StoreError> {
    db.call(db.settings.call_timeout, async |c| -> Result<Links, Failure> {
        Ok(pairs(&c.query("SELECT a, b FROM links", &[]).await?))
    })
    .await
}

/// The links between `from` and any of `to`, locked `FOR SHARE` (an
/// unlink waits for the send that checked it).
pub async fn between_locked(tx: &Tx<'_>, from: &str, to: &[&str]) -> Result<Links, Failure> {
    let rows = tx
        .query(
            "SELECT a, b FROM links WHERE (a = $1 AND b = ANY($2)) OR (b = $1 AND a = ANY($2))
              ORDER BY a, b FOR SHARE",
            &[&from, &to],
        )
        .await?;
    Ok(pairs(&rows))
}
