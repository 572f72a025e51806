//! The store's tests, against a throwaway cluster (`testkit`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cache;
mod events;
mod fleet;
mod migrate;
mod peers;
mod presence;
mod support;
