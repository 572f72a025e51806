//! memoryd's domain: plain code that tests can call directly.
//!
//! No sockets and no timers live here. Every touch of the live host goes
//! through one of two doors: [`files::FileGuard`] (every write, rename and
//! delete) and [`egress::Egress`] (spawning commands, probing and signalling
//! processes). Both refuse what the test sandbox forbids.

pub mod config;
pub mod egress;
pub mod events;
pub mod files;
pub mod fleet;
pub mod fragment;
pub mod heartbeat;
pub mod install;
pub mod instance;
pub mod lock;
pub mod memory;
pub mod names;
pub mod paths;
pub mod peers;
pub mod presence;
pub mod provision;
pub mod report;
pub mod slot;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod surfaces;
pub mod update;
pub mod vault;
pub mod verify;

/// The crate version, which is memoryd's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Whether the test sandbox is armed (`MEMORYD_TEST_SANDBOX=1` or
/// `IAPEER_TEST_SANDBOX=1`). Read once at start-up by whoever builds the
/// file guard and the egress.
pub fn sandbox_armed() -> bool {
    ["MEMORYD_TEST_SANDBOX", "IAPEER_TEST_SANDBOX"].iter().any(|var| std::env::var_os(var).is_some_and(|v| v == "1"))
}
