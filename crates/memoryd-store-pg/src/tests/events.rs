//! Following the fleet's event log while transactions commit out of seq
//! order.

use super::presence::open;
use crate::testkit::Cluster;
use memoryd_core::presence::Revoker;
use memoryd_core::store::{EventLog, PresenceStore};
use std::time::SystemTime;

#[test]
fn a_follower_waits_at_a_gap_an_open_transaction_may_fill() {
    let Some(cluster) = Cluster::start() else { return };
    let schema = cluster.fresh_schema();
    let store = open(&cluster, &schema, "host-a");
    let (_, mut cursor) = store.recent(None, 10).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (mut client, conn) = rt.block_on(tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)).unwrap();
    rt.spawn(conn);
    // A slow writer takes seq n and holds it uncommitted.
    let slow = rt.block_on(async {
        let tx = client.transaction().await.unwrap();
        tx.execute(
            &format!(
                "INSERT INTO \"{schema}\".events (ts, host_id, event, node_id, body)
                 VALUES (now(), 'slow', 'runtime_node.revoked', 'claude-slow',
                   jsonb_build_object('ts', '2026-12-02T10:00:00.000Z', 'event', 'runtime_node.revoked',
                     'nodeId', 'claude-slow', 'revokedBy', 'core', 'reason', null, 'newState', 'revoked', 'actor', 'core'))"
            ),
            &[],
        )
        .await
        .unwrap();
        tx
    });
    // A fast one takes n + 1 and commits first.
    store.revoke("claude-fast", Revoker::Core, None, SystemTime::now()).unwrap();
    assert!(store.follow(&mut cursor, None).unwrap().is_empty(), "the follower moved past an open transaction's seq");
    rt.block_on(slow.commit()).unwrap();
    let events = store.follow(&mut cursor, None).unwrap();
    let nodes: Vec<&str> = events.iter().filter_map(|e| e.node_id()).collect();
    assert_eq!(nodes, ["claude-slow", "claude-fast"], "both, in seq order, once the gap is filled");
    assert!(store.follow(&mut cursor, None).unwrap().is_empty(), "nothing twice");
    let (recent, _) = store.recent(Some("claude-fast"), 10).unwrap();
    assert_eq!(recent.len(), 1);
}
