//! Failures that keep their stable kind (spec 10) on the way to `main`,
//! which prints one sentence on stderr and, with `--json`, the document
//! `{"error": {"kind", "message", "details"?}}` on stdout.

use crate::{Silent, Usage};
use memoryd_proto::{ErrorKind, RpcError};
use serde_json::{Value, json};
use std::process::ExitCode;

/// A failure of memoryctl's own (the daemon's refusals travel as
/// [`RpcError`]). Build one with [`Failure::new`] and return it through
/// anyhow: `return Err(Failure::new(kind, sentence).into())`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: ErrorKind,
    /// One sentence: what is wrong and how to fix it.
    pub message: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Failure {
        Failure { kind, message: message.into() }
    }
}

/// How a failed command ends: its kind, any details the daemon sent, and
/// its exit code (2 for a usage error, 1 for every other failure). The
/// first cause in the chain that carries a kind decides.
pub fn classify(e: &anyhow::Error) -> (ErrorKind, Option<Value>, ExitCode) {
    for cause in e.chain() {
        if cause.is::<Usage>() {
            return (ErrorKind::RequestInvalid, None, ExitCode::from(2));
        }
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return (f.kind, None, ExitCode::FAILURE);
        }
        if cause.is::<Silent>() {
            return (ErrorKind::DaemonNotAnswering, None, ExitCode::FAILURE);
        }
        if let Some(r) = cause.downcast_ref::<RpcError>() {
            let details = r.data.as_ref().and_then(|d| d.details.clone());
            return (r.kind().unwrap_or(ErrorKind::Internal), details, ExitCode::FAILURE);
        }
    }
    (ErrorKind::Internal, None, ExitCode::FAILURE)
}

/// The `--json` document of a failure.
pub fn document(kind: ErrorKind, message: &str, details: Option<Value>) -> Value {
    let mut error = json!({"kind": kind.as_str(), "message": message});
    if let Some(details) = details {
        error["details"] = details;
    }
    json!({"error": error})
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn the_first_cause_with_a_kind_decides_and_usage_exits_2() {
        let usage = anyhow::Error::new(Usage("bad".into())).context("while parsing");
        assert_eq!(classify(&usage).0, ErrorKind::RequestInvalid);
        assert_eq!(classify(&usage).2, ExitCode::from(2));
        let failure: anyhow::Error = Failure::new(ErrorKind::DaemonNotRunning, "down").into();
        assert_eq!(classify(&failure).0, ErrorKind::DaemonNotRunning);
        assert_eq!(classify(&failure).2, ExitCode::FAILURE);
        let refused =
            Err::<(), _>(RpcError::new(ErrorKind::LockBusy, "busy").with_details(json!({"holder": "1 sweep"})))
                .context("memoryd refused")
                .unwrap_err();
        let (kind, details, _) = classify(&refused);
        assert_eq!((kind, details), (ErrorKind::LockBusy, Some(json!({"holder": "1 sweep"}))));
        assert_eq!(classify(&anyhow::anyhow!("plain")).0, ErrorKind::Internal);
        let doc = document(ErrorKind::PeerMissing, "no zed", None);
        assert_eq!(doc, json!({"error": {"kind": "peer.missing", "message": "no zed"}}));
    }
}
