//! The operations: provisioning and sweeps, `update`, `verify`, the install
//! paths, `status` and the report lines they all print.

pub mod install;
pub mod provision;
pub mod report;
pub mod status;
pub mod update;
pub mod verify;
