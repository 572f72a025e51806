//! The control socket client: connect, `session.hello`, then requests with
//! streamed progress.

use memoryd_proto::message::Incoming;
use memoryd_proto::{Command, ErrorKind, Hello, HelloResult, Notification, PROTOCOL_VERSION, RpcError};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

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

pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    /// Request lines queued and not yet written (see [`Client::queue`]).
    outbox: Vec<u8>,
    /// The first write's failure: the answers already sent may still be
    /// read, so it ends a call only at end of stream.
    unsent: Option<std::io::Error>,
    /// Answers read while waiting for another (ids of queued requests).
    early: Vec<(u64, Result<Value, RpcError>)>,
    pub hello: HelloResult,
}

/// A request queued on a client: its answer is read by [`Client::answer`].
/// The daemon answers a connection's requests in the order they came, so
/// several queued requests cost one round trip.
#[must_use = "a queued request is sent only when an answer is read"]
pub struct Queued {
    id: u64,
    method: &'static str,
}

impl Queued {
    pub fn method(&self) -> &'static str {
        self.method
    }
}

impl Client {
    /// Connects and says hello, both within `timeout`.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Client, ConnectError> {
        Client::connect_ahead(socket, timeout, []).await.map(|(client, [])| client)
    }

    /// Connects and says hello within `timeout`, with `ahead` sent in the
    /// same write behind the hello; their answers are read in that order
    /// by [`Client::answer`]. A short command then costs one round trip
    /// (a refused hello fails the requests behind it, unread).
    pub async fn connect_ahead<const N: usize>(
        socket: &Path,
        timeout: Duration,
        ahead: [&Command; N],
    ) -> Result<(Client, [Queued; N]), ConnectError> {
        match tokio::time::timeout(timeout, Client::connect_inner(socket, ahead)).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::NotAnswering(format!(
                "no answer on {} within {}",
                socket.display(),
                humantime::format_duration(timeout)
            ))),
        }
    }

    async fn connect_inner<const N: usize>(
        socket: &Path,
        ahead: [&Command; N],
    ) -> Result<(Client, [Queued; N]), ConnectError> {
        let stream = UnixStream::connect(socket).await.map_err(|e| match e.kind() {
            // The modes keep us out: a daemon may well run, so this is no
            // "not answering".
            std::io::ErrorKind::PermissionDenied => {
                ConnectError::Refused(RpcError::new(ErrorKind::ConnectionPermissionDenied, denied(socket, &e)))
            }
            _ => ConnectError::NotAnswering(format!("cannot connect to {}: {e}", socket.display())),
        })?;
        let (reader, writer) = stream.into_split();
        let mut client = Client {
            reader: BufReader::new(reader),
            writer,
            next_id: 1,
            outbox: Vec::new(),
            unsent: None,
            early: Vec::new(),
            hello: placeholder_hello(),
        };
        let hello = Hello { protocol: PROTOCOL_VERSION, client: format!("memoryctl {}", memoryd_core::VERSION) };
        let greeting = client.queue(&Command::SessionHello(hello));
        let queued = ahead.map(|command| client.queue(command));
        // `connect` bounds the whole handshake; the hello itself needs no
        // second limit.
        let result = match client.answer(greeting, Duration::MAX, |_| {}).await {
            Ok(Ok(result)) => result,
            Ok(Err(refusal)) => return Err(ConnectError::Refused(refusal)),
            Err(e) => return Err(ConnectError::NotAnswering(e.to_string())),
        };
        client.hello = serde_json::from_value(result)
            .map_err(|e| ConnectError::NotAnswering(format!("memoryd sent a malformed hello: {e}")))?;
        Ok((client, queued))
    }

    /// Sends one request and reads until its response, passing each
    /// notification to `on_notification` as it arrives. The outer error is
    /// a broken connection or a daemon that sent nothing for `silence`
    /// (every notification proves it alive, so a long request that keeps
    /// reporting progress is never cut off); the inner one the daemon's
    /// answer.
    pub async fn call(
        &mut self,
        command: &Command,
        silence: Duration,
        on_notification: impl FnMut(Notification),
    ) -> Result<Result<Value, RpcError>, CallError> {
        let queued = self.queue(command);
        self.answer(queued, silence, on_notification).await
    }

    /// Queues a request, to be sent with the next [`Client::answer`].
    pub fn queue(&mut self, command: &Command) -> Queued {
        let id = self.next_id;
        self.next_id += 1;
        self.outbox.extend_from_slice(&command.request(id).encode());
        Queued { id, method: command.method() }
    }

    /// Sends what is queued, then reads until the answer to `queued`, as
    /// [`Client::call`] does. Answers to other queued requests that come
    /// first are kept for their own turn.
    pub async fn answer(
        &mut self,
        queued: Queued,
        silence: Duration,
        mut on_notification: impl FnMut(Notification),
    ) -> Result<Result<Value, RpcError>, CallError> {
        let Queued { id, method } = queued;
        if let Some(at) = self.early.iter().position(|(early, _)| *early == id) {
            return Ok(self.early.swap_remove(at).1);
        }
        if !self.outbox.is_empty() && self.unsent.is_none() {
            // A daemon that refuses the connection (another uid, too busy)
            // may close it before the request is written: its reason is
            // still there to be read, so a failed write only ends the call
            // at end of stream.
            self.unsent = self.writer.write_all(&self.outbox).await.err();
            self.outbox.clear();
        }
        let mut buf = String::new();
        loop {
            buf.clear();
            let n = match tokio::time::timeout(silence, self.reader.read_line(&mut buf)).await {
                Ok(read) => read.map_err(|e| CallError::Lost(format!("lost the connection to memoryd: {e}")))?,
                Err(_) => return Err(CallError::Silent { method: method.to_owned(), silence }),
            };
            if n == 0 {
                return Err(CallError::Lost(match &self.unsent {
                    Some(e) => format!("cannot send {method} to memoryd: {e}"),
                    None => format!("memoryd closed the connection before answering {method}"),
                }));
            }
            match Incoming::decode(buf.as_bytes()).map_err(CallError::Lost)? {
                Incoming::Notification(n) => on_notification(n),
                // A refusal sent before any request was read has a null id.
                Incoming::Response(r) if r.id == id || r.id.is_null() => {
                    return Ok(r.outcome);
                }
                Incoming::Response(r) => {
                    if let Some(other) = r.id.as_u64().filter(|other| *other < self.next_id) {
                        self.early.push((other, r.outcome));
                    }
                }
            }
        }
    }
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

fn placeholder_hello() -> HelloResult {
    HelloResult { protocol: PROTOCOL_VERSION, version: String::new(), pid: 0, root: String::new(), supervisor: None }
}
