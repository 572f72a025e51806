//! The migration runner against a real server.

use crate::migrate::{MIGRATIONS, migrate};
use crate::testkit::Cluster;

/// Runs `test` with a pooled connection and a fresh schema of a throwaway
/// cluster (nothing without a server).
fn with_client(test: impl AsyncFnOnce(&mut deadpool_postgres::ClientWrapper, &str)) {
    let Some(cluster) = Cluster::start() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let config: tokio_postgres::Config = cluster.url().parse().unwrap();
        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
        let pool = deadpool_postgres::Pool::builder(manager).max_size(2).build().unwrap();
        let mut client = pool.get().await.unwrap();
        test(&mut client, &cluster.fresh_schema()).await;
    });
}

#[test]
fn a_fresh_schema_is_created_once_and_a_changed_step_is_refused() {
    with_client(async |client, schema| {
        let first = migrate(client, schema, "host-a", MIGRATIONS, false).await.unwrap();
        assert_eq!((first.version, first.applied.clone()), (1, vec![1]));
        let again = migrate(client, schema, "host-b", MIGRATIONS, false).await.unwrap();
        assert!(again.applied.is_empty(), "{again:?}");
        let mut changed = MIGRATIONS.to_vec();
        changed[0].sql = "SELECT 1";
        let e = migrate(client, schema, "host-c", &changed, false).await.err().unwrap();
        assert!(e.to_string().contains("does not match"), "{e}");
    });
}

#[test]
fn expand_steps_keep_old_binaries_working_and_a_contract_step_shuts_them_out() {
    with_client(async |client, schema| {
        let old = MIGRATIONS.to_vec();
        let new: Vec<_> = MIGRATIONS.iter().chain(crate::migrate::TEST_STEPS).copied().collect();
        migrate(client, schema, "old", &old, false).await.unwrap();
        let expanded = migrate(client, schema, "new", &new, false).await.unwrap();
        assert_eq!((expanded.version, expanded.compat_floor, expanded.pending_contract.clone()), (2, 1, vec![3]));
        let still = migrate(client, schema, "old", &old, false).await.unwrap();
        assert_eq!((still.version, still.compat_floor), (2, 1), "the old binary runs on the expanded schema");
        let contracted = migrate(client, schema, "new", &new, true).await.unwrap();
        assert_eq!((contracted.version, contracted.compat_floor), (3, 3));
        let e = migrate(client, schema, "old", &old, false).await.err().unwrap();
        assert!(e.to_string().contains("older than the fleet database"), "{e}");
    });
}
