//! The host: its paths, the two doors every effect goes through (the file
//! guard and the egress), the locks, the single instance and its heartbeat,
//! and the supervisor memoryd may run under.

pub mod clock;
pub mod egress;
pub mod files;
pub mod heartbeat;
pub mod instance;
pub mod lock;
pub mod paths;
pub mod stamp;
pub mod supervisor;
