//! The wire contract between `memoryd` and its clients (spec 10).
//!
//! JSON-RPC 2.0 messages, one per line (NDJSON), over the control socket.
//! This crate has no I/O: [`framing::LineFramer`] cuts bytes into capped
//! lines, [`message`] decodes and encodes messages, [`error`] lists every
//! stable error kind, [`methods`] every method name, and [`command`] every
//! request as a typed [`Command`]; [`host`], [`presence`] and [`peers`] hold
//! the params and results of their methods, [`status`] the status object.

pub mod command;
pub mod error;
pub mod event;
pub mod framing;
pub mod host;
pub mod message;
pub mod methods;
pub mod peers;
pub mod presence;
pub mod status;
pub mod time;

pub use command::Command;
pub use error::{ErrorKind, RpcError};
pub use message::{
    Hello, HelloResult, Incoming, Notification, PeerProvision, Progress, ProgressStatus, Request, Response,
    UpdateParams, VerifyParams, Working,
};
pub use time::Timestamp;

/// Changes only when an old client could misread a new daemon.
/// `session.hello` and `host.restart` keep their shape across versions.
pub const PROTOCOL_VERSION: u32 = 1;
