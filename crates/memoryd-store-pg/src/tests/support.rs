//! A daemon's store on a fresh schema of the test cluster, once `up`, with
//! generous call deadlines (two cores run several test processes at once),
//! and raw SQL for the checks.

use crate::PgStore;
use crate::testkit::Cluster;
use std::time::Duration;

pub fn store(cluster: &Cluster, schema: &str, host: &str) -> PgStore {
    let mut options = super::presence::options(cluster, schema, host, true);
    options.settings.call_timeout = Duration::from_secs(10);
    super::presence::open_with(options)
}

/// Runs one SQL statement on the store's database, returning the rows.
pub fn sql(store: &PgStore, query: &str) -> Vec<tokio_postgres::Row> {
    store.block(async { store.db.pool.get().await.unwrap().query(query, &[]).await.unwrap() })
}
