//! The migration runner against a real server.

use crate::migrate::{MIGRATIONS, migrate};
use crate::testkit::Cluster;

#[test]
fn a_fresh_schema_is_created_once_and_a_changed_step_is_refused() {
    let Some(cluster) = Cluster::start() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let schema = cluster.fresh_schema();
        let config: tokio_postgres::Config = cluster.url().parse().unwrap();
        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
        let pool = deadpool_postgres::Pool::builder(manager).max_size(2).build().unwrap();
        let mut client = pool.get().await.unwrap();
        let first = migrate(&mut client, &schema, "host-a", MIGRATIONS, false).await.unwrap();
        assert_eq!((first.version, first.applied.clone()), (1, vec![1]));
        let again = migrate(&mut client, &schema, "host-b", MIGRATIONS, false).await.unwrap();
        assert!(again.applied.is_empty(), "{again:?}");
        let mut changed = MIGRATIONS.to_vec();
        changed[0].sql = "SELECT 1";
        let e = migrate(&mut client, &schema, "host-c", &changed, false).await.err().unwrap();
        assert!(e.to_string().contains("does not match"), "{e}");
    });
}
