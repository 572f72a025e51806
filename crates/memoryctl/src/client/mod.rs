//! The control socket client: connect, `session.hello`, then requests with
//! streamed progress. [`Conversation`] is the part without I/O (ids, the
//! requests queued to be written, what each line read means); [`Client`]
//! drives it on tokio for the commands that need a runtime, and
//! [`BlockingClient`] on plain blocking sockets for the short commands
//! every agent turn and most operators run, which then start no runtime.

mod blocking;
mod tokio_client;

pub use blocking::BlockingClient;
pub use tokio_client::Client;

use memoryd_proto::message::Incoming;
use memoryd_proto::{Command, ErrorKind, Hello, HelloResult, Notification, PROTOCOL_VERSION, RpcError};
use serde_json::value::RawValue;
use std::path::Path;
use std::time::Duration;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The connection broke or the daemon sent something unreadable.
    #[error("{0}")]
    Lost(String),
    /// The daemon sent nothing at all (no answer, no progress) for
    /// `silence` while `method` ran.
    #[error("memoryd sent nothing for {} while running {method}", humantime::format_duration(*.silence))]
    Silent { method: String, silence: Duration },
}

/// Why no conversation with the daemon could start.
#[derive(Debug)]
pub enum ConnectError {
    /// Nothing answered within the connect timeout; the sentence says what
    /// was seen.
    NotAnswering(String),
    /// The daemon answered and refused (another uid, protocol mismatch),
    /// or the socket's file modes keep this user out.
    Refused(RpcError),
}

/// The daemon's answer to one request: its result as the JSON text it came
/// as (decoded once, by the caller, into its type), or its refusal.
pub type Outcome = Result<Box<RawValue>, RpcError>;

/// A request queued on a client: its answer is read by the client's
/// `answer`. The daemon answers a connection's requests in the order they
/// came, so several queued requests cost one round trip.
#[must_use = "a queued request is sent only when an answer is read"]
pub struct Queued {
    id: u64,
    method: &'static str,
}

/// One connection's requests and answers, without the I/O.
#[derive(Default)]
pub struct Conversation {
    next_id: u64,
    /// Request lines queued and not yet written.
    outbox: Vec<u8>,
    /// Answers read while waiting for another (ids of queued requests).
    early: Vec<(u64, Outcome)>,
}

impl Conversation {
    /// A conversation opened by `session.hello`, queued, with `ahead`
    /// queued behind it.
    fn greeting<const N: usize>(ahead: [&Command; N]) -> (Conversation, Queued, [Queued; N]) {
        let mut talk = Conversation { next_id: 1, ..Conversation::default() };
        let hello = Hello { protocol: PROTOCOL_VERSION, client: format!("memoryctl {}", memoryd_core::VERSION) };
        let greeting = talk.queue(&Command::SessionHello(hello));
        let queued = ahead.map(|command| talk.queue(command));
        (talk, greeting, queued)
    }

    fn queue(&mut self, command: &Command) -> Queued {
        let id = self.next_id;
        self.next_id += 1;
        self.outbox.extend_from_slice(&command.request(id).encode());
        Queued { id, method: command.method() }
    }

    /// The queued request lines, to be written now.
    fn take_outbox(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outbox)
    }

    /// The answer to `queued`, if it came while another was awaited.
    fn early(&mut self, queued: &Queued) -> Option<Outcome> {
        let at = self.early.iter().position(|(id, _)| *id == queued.id)?;
        Some(self.early.swap_remove(at).1)
    }

    /// What one line read while awaiting `queued` means: its answer, or
    /// None (a notification, handed on, or another queued request's
    /// answer, kept for its turn).
    fn read(
        &mut self,
        line: &[u8],
        queued: &Queued,
        on_notification: &mut impl FnMut(Notification),
    ) -> Result<Option<Outcome>, CallError> {
        match Incoming::decode(line).map_err(CallError::Lost)? {
            Incoming::Notification(n) => on_notification(n),
            // A refusal sent before any request was read has a null id.
            Incoming::Response(r) if r.id == queued.id || r.id.is_null() => return Ok(Some(r.outcome)),
            Incoming::Response(r) => {
                if let Some(other) = r.id.as_u64().filter(|other| *other < self.next_id) {
                    self.early.push((other, r.outcome));
                }
            }
        }
        Ok(None)
    }
}

/// The end of the stream while `queued` waited for its answer. A daemon
/// that refuses the connection (another uid, too busy) may close it before
/// the request is written: its reason is still there to be read, so a
/// failed write (`unsent`) only ends a call at end of stream.
fn closed(queued: &Queued, unsent: Option<&std::io::Error>) -> CallError {
    let method = queued.method;
    CallError::Lost(match unsent {
        Some(e) => format!("cannot send {method} to memoryd: {e}"),
        None => format!("memoryd closed the connection before answering {method}"),
    })
}

/// The daemon's answer to `session.hello`.
fn greeted(answer: Result<Outcome, CallError>) -> Result<HelloResult, ConnectError> {
    let result = match answer {
        Ok(Ok(result)) => result,
        Ok(Err(refusal)) => return Err(ConnectError::Refused(refusal)),
        Err(e) => return Err(ConnectError::NotAnswering(e.to_string())),
    };
    serde_json::from_str(result.get())
        .map_err(|e| ConnectError::NotAnswering(format!("memoryd sent a malformed hello: {e}")))
}

/// Why connecting to `socket` failed: a socket whose modes keep this user
/// out is a refusal (a daemon may well run), anything else "not answering".
fn connect_failed(socket: &Path, e: &std::io::Error) -> ConnectError {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            ConnectError::Refused(RpcError::new(ErrorKind::ConnectionPermissionDenied, denied(socket, e)))
        }
        _ => ConnectError::NotAnswering(format!("cannot connect to {}: {e}", socket.display())),
    }
}

/// No answer on `socket` within `timeout`.
fn no_answer(socket: &Path, timeout: Duration) -> ConnectError {
    ConnectError::NotAnswering(format!(
        "no answer on {} within {}",
        socket.display(),
        humantime::format_duration(timeout)
    ))
}

/// The sentence for a socket this user may not connect to: whose it is
/// when that can be seen, and what to do.
fn denied(socket: &Path, e: &std::io::Error) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(socket) {
        Ok(meta) => format!(
            "permission denied on memoryd's control socket {} (owned by uid {}, mode {:o}: {e}); run memoryctl as \
             uid {}, the user memoryd runs as, or pass --root for an install of your own",
            socket.display(),
            meta.uid(),
            meta.mode() & 0o7777,
            meta.uid()
        ),
        Err(_) => format!(
            "permission denied on memoryd's control socket {} (a directory on its path is closed to this user: \
             {e}); run memoryctl as the user memoryd runs as, or pass --root for an install of your own",
            socket.display()
        ),
    }
}

/// Stands in for the hello until its answer is read.
fn placeholder_hello() -> HelloResult {
    HelloResult { protocol: PROTOCOL_VERSION, version: String::new(), pid: 0, root: String::new(), supervisor: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memoryd_proto::message::{Notification, Response};
    use serde_json::{Value, json};

    fn line(id: Value, outcome: Result<Value, RpcError>) -> Vec<u8> {
        Response { id, outcome }.encode()
    }

    #[test]
    fn queued_requests_go_in_one_write_and_each_answer_reaches_its_own_turn() {
        let (mut talk, hello, [status, roster]) = Conversation::greeting([&Command::HostStatus, &Command::Roster]);
        let written = String::from_utf8(talk.take_outbox()).unwrap();
        let methods: Vec<Value> =
            written.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["method"].clone()).collect();
        assert_eq!(methods, [json!("session.hello"), json!("host.status"), json!("runtimenode.roster")]);
        assert!(talk.take_outbox().is_empty());

        let mut seen = Vec::new();
        let mut note = |n: Notification| seen.push(n.method);
        // The roster's answer comes while the hello is awaited: kept.
        assert!(talk.read(&line(json!(3), Ok(json!("roster"))), &hello, &mut note).unwrap().is_none());
        let progress = Notification { method: "host.progress".to_owned(), params: json!({}) }.encode();
        assert!(talk.read(&progress, &hello, &mut note).unwrap().is_none());
        // An id nobody asked for is dropped.
        assert!(talk.read(&line(json!(99), Ok(json!("stray"))), &hello, &mut note).unwrap().is_none());
        let answer = talk.read(&line(json!(1), Ok(json!("hi"))), &hello, &mut note).unwrap();
        assert_eq!(answer.unwrap().unwrap().get(), r#""hi""#);
        assert_eq!(seen, ["host.progress"]);
        assert_eq!(talk.early(&roster).unwrap().unwrap().get(), r#""roster""#);
        assert!(talk.early(&status).is_none());
        // A refusal before any request was read (null id) answers whoever waits.
        let busy = RpcError::new(ErrorKind::ServerBusy, "busy");
        let refused = talk.read(&line(Value::Null, Err(busy)), &status, &mut |_| {}).unwrap();
        assert_eq!(refused.unwrap().unwrap_err().kind(), Some(ErrorKind::ServerBusy));
        assert!(matches!(talk.read(b"not json\n", &status, &mut |_| {}), Err(CallError::Lost(_))));
    }
}
