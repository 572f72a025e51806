//! The peer cases of the domain suite (`memoryd_core::store::suite`)
//! against the PostgreSQL store, each on a fresh schema.

use super::support::store;
use crate::testkit::Cluster;
use memoryd_core::store::suite;

fn run(case: suite::Case) {
    let Some(cluster) = Cluster::start() else { return };
    let store = store(&cluster, &cluster.fresh_schema(), "host-a");
    case(&store);
}

/// Every peer case again on a host whose clock is 300 s ahead of the
/// database's: the store keeps the domain and its answers on the host's
/// clock.
#[test]
fn the_peer_cases_with_the_host_clock_300_s_ahead() {
    let Some(cluster) = Cluster::start() else { return };
    let cases: [suite::Case; 9] = [
        suite::send_lease_ack,
        suite::replies_and_threads,
        suite::multi_recipient_capacity_drops,
        suite::rate_limits,
        suite::history_bounds_and_search,
        suite::operator_and_urgent,
        suite::links,
        suite::capacity_drops,
        suite::states_receipts_and_events,
    ];
    for case in cases {
        let store = store(&cluster, &cluster.fresh_schema(), "host-a");
        store.db.set_skew_ms(300_000);
        case(&store);
    }
}

#[test]
fn links() {
    run(suite::links);
}

#[test]
fn send_lease_ack() {
    run(suite::send_lease_ack);
}

#[test]
fn capacity_drops() {
    run(suite::capacity_drops);
}

#[test]
fn states_receipts_and_events() {
    run(suite::states_receipts_and_events);
}

#[test]
fn replies_and_threads() {
    run(suite::replies_and_threads);
}

#[test]
fn multi_recipient_capacity_drops() {
    run(suite::multi_recipient_capacity_drops);
}

#[test]
fn rate_limits() {
    run(suite::rate_limits);
}

#[test]
fn history_bounds_and_search() {
    run(suite::history_bounds_and_search);
}

#[test]
fn operator_and_urgent() {
    run(suite::operator_and_urgent);
}
