//! memoryd's domain: plain code that tests can call directly.
//!
//! No sockets and no timers live here. Every touch of the live host goes
//! through one of two doors: [`host::files::FileGuard`] (every write, rename
//! and delete) and [`host::egress::Egress`] (spawning commands, probing and signalling
//! processes). Both refuse what the test sandbox forbids.

// The folders are the architecture: `host` is what touches the machine
// (and the only doors to it), `fleet` who the peers are, `surfaces` what
// memoryd writes into their folders, `presence` and `peers` the state
// machines of sessions and of links and messages, `store` where that state
// lasts, `vault` the notes and what is made of them, `ops` the operations
// an operator runs.
pub mod config;
pub mod fleet;
pub mod host;
pub mod ops;
pub mod peers;
pub mod presence;
pub mod store;
pub mod surfaces;
pub mod vault;

/// The crate version, which is memoryd's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Whether the test sandbox is armed (`MEMORYD_TEST_SANDBOX=1` or
/// `IAPEER_TEST_SANDBOX=1`). Read once at start-up by whoever builds the
/// file guard and the egress.
pub fn sandbox_armed() -> bool {
    ["MEMORYD_TEST_SANDBOX", "IAPEER_TEST_SANDBOX"].iter().any(|var| std::env::var_os(var).is_some_and(|v| v == "1"))
}
