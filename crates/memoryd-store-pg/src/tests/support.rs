//! A store on a fresh schema of the test cluster, made `up` by hand: the
//! schema migrated and the host's row inserted as the supervisor does at
//! connect.
// TODO(merge): once H1's supervisor connects by itself, this only waits
// for `up`.

use crate::db::StoreState;
use crate::migrate::{MIGRATIONS, migrate};
use crate::testkit::Cluster;
use crate::{Options, PgStore};
use memoryd_core::config::PostgresConfig;
use std::time::{Duration, SystemTime};

pub fn store(cluster: &Cluster, schema: &str, host: &str) -> PgStore {
    let settings = PostgresConfig {
        url: Some(cluster.url()),
        schema: schema.to_owned(),
        // Generous: two cores run several test processes at once.
        call_timeout: Duration::from_secs(10),
        ..PostgresConfig::default()
    };
    let options = Options { settings, host_id: host.to_owned(), daemon_version: "0.1.0".into(), daemon: true };
    let store = PgStore::open(options).unwrap();
    store.block(async {
        let mut c = store.db.pool.get().await.unwrap();
        migrate(&mut c, schema, host, MIGRATIONS, false).await.unwrap();
        c.execute(
            "INSERT INTO hosts (host_id, boot_id, daemon_version, schema_version) VALUES ($1, gen_random_uuid()::text, '0.1.0', 1)
             ON CONFLICT (host_id) DO NOTHING",
            &[&host],
        )
        .await
        .unwrap();
    });
    store.db.set_state(StoreState::Up { since: SystemTime::now() });
    store
}

/// Runs one SQL statement on the store's database, returning the rows.
pub fn sql(store: &PgStore, query: &str) -> Vec<tokio_postgres::Row> {
    store.block(async { store.db.pool.get().await.unwrap().query(query, &[]).await.unwrap() })
}
