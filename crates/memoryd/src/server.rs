//! The control socket: one task per connection, NDJSON JSON-RPC, peer
//! credentials checked before a byte is read, a capped line length, an idle
//! limit, a connection limit, and streamed progress.
//!
//! The server knows nothing of the methods: a [`Service`] answers them, so
//! the connection handling can be tested on its own.

use memoryd_proto::framing::LineFramer;
use memoryd_proto::message::DecodeError;
use memoryd_proto::{ErrorKind, Progress, Request, Response, RpcError, methods};
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A connection that sends no complete line for this long, with nothing in
/// flight, is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// A client that does not take a reply within this long is dropped.
const WRITE_LIMIT: Duration = Duration::from_secs(10);

/// Answers the methods.
pub trait Service: Send + Sync + 'static {
    /// `max_connections` and `max_request_bytes` in force now.
    fn limits(&self) -> (usize, usize);
    /// Answers `session.hello` (run inline: it must never wait).
    fn hello(&self, request: &Request) -> Result<Value, RpcError>;
    /// Answers on the connection's own task what needs no waiting and no
    /// progress (a heartbeat that changes nothing but the time); None:
    /// the request runs as a task of its own ([`Service::call`]).
    fn answer_now(&self, request: &Request) -> Option<Result<Value, RpcError>>;
    /// Runs any other method; progress lines go to `progress`.
    fn call(
        self: Arc<Self>,
        request: Request,
        progress: ProgressSink,
    ) -> impl Future<Output = Result<Value, RpcError>> + Send + 'static;
    /// Runs after the successful reply to `method` was written.
    fn after_reply(&self, method: &str);
}

/// Stops and drains the server.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Set when shutdown begins: stop accepting, close idle connections.
    pub begun: CancellationToken,
    /// Set when the grace is over: answer what still runs with
    /// `daemon.shutting_down`.
    pub grace_over: CancellationToken,
    /// Connection tasks.
    pub connections: TaskTracker,
    /// Request tasks (they outlive a client that hung up).
    pub requests: TaskTracker,
}

/// Where a running request sends its progress lines.
#[derive(Clone)]
pub struct ProgressSink {
    id: Value,
    tx: Option<mpsc::UnboundedSender<Vec<u8>>>,
}

impl ProgressSink {
    /// A sink that drops every line (work started without a client).
    pub fn discard() -> ProgressSink {
        ProgressSink { id: Value::Null, tx: None }
    }

    /// Sends any notification (`events.event`, …) on the request's
    /// connection.
    pub fn notify(&self, method: &str, params: Value) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(memoryd_proto::Notification { method: method.to_owned(), params }.encode());
        }
    }

    /// Whether the client of this request is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.as_ref().is_none_or(|tx| tx.is_closed())
    }

    /// Tells the client the request moved on (`done` of `total` items).
    pub fn working(&self, what: &str, done: usize, total: Option<usize>) {
        let working = memoryd_proto::Working { what: what.to_owned(), done, total };
        self.notify(methods::HOST_WORKING, serde_json::to_value(working).unwrap_or(Value::Null));
    }

    pub fn send(&self, name: &str, status: memoryd_proto::ProgressStatus, detail: impl Into<String>) {
        if let Some(tx) = &self.tx {
            let progress = Progress { id: self.id.clone(), name: name.to_owned(), status, detail: detail.into() };
            // A client that hung up does not stop the request.
            let _ = tx.send(progress.notification().encode());
        }
    }
}

/// Accepts connections until shutdown begins.
pub async fn serve<S: Service>(listener: UnixListener, service: Arc<S>, shutdown: Shutdown) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.begun.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let (max_connections, _) = service.limits();
                match Slot::take(&open, max_connections) {
                    Some(slot) => {
                        shutdown.connections.spawn(connection(stream, service.clone(), shutdown.clone(), slot));
                    }
                    None => {
                        tracing::warn!(max_connections, "refused a connection: max_connections reached");
                        let busy = RpcError::new(
                            ErrorKind::ServerBusy,
                            format!("memoryd is serving its maximum of {max_connections} connections; retry shortly"),
                        );
                        shutdown.connections.spawn(refuse(stream, busy));
                    }
                }
            }
            Err(e) => {
                // EMFILE and friends pass; the daemon goes on.
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One open connection counted against a limit (`max_connections` here,
/// the MCP endpoint's own in `mcp`).
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Slot {
    pub(crate) fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn refuse(mut stream: UnixStream, error: RpcError) {
    let line = Response { id: Value::Null, outcome: Err(error) }.encode();
    let _ = tokio::time::timeout(WRITE_LIMIT, stream.write_all(&line)).await;
    let _ = stream.shutdown().await;
}

enum Next {
    Line(Vec<u8>),
    TooLarge,
    /// Closed, idle past the limit, shutting down, or broken.
    End,
}

async fn next_line(
    reader: &mut tokio::net::unix::OwnedReadHalf,
    framer: &mut LineFramer,
    begun: &CancellationToken,
) -> Next {
    let deadline = tokio::time::Instant::now() + IDLE_LIMIT;
    let mut buf = [0u8; 8192];
    loop {
        if let Some(line) = framer.next_line() {
            return Next::Line(line);
        }
        let read = tokio::select! {
            biased;
            _ = begun.cancelled() => return Next::End,
            _ = tokio::time::sleep_until(deadline) => return Next::End,
            read = reader.read(&mut buf) => read,
        };
        match read {
            Ok(0) | Err(_) => return Next::End,
            Ok(n) => {
                if framer.push(&buf[..n]).is_err() {
                    return Next::TooLarge;
                }
            }
        }
    }
}

async fn write(writer: &mut OwnedWriteHalf, line: &[u8]) -> bool {
    matches!(tokio::time::timeout(WRITE_LIMIT, writer.write_all(line)).await, Ok(Ok(())))
}

async fn connection<S: Service>(stream: UnixStream, service: Arc<S>, shutdown: Shutdown, _slot: Slot) {
    let me = nix::unistd::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == me => {}
        Ok(cred) => {
            tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a connection from another user");
            let error = RpcError::new(
                ErrorKind::ConnectionRefused,
                format!("memoryd serves only uid {me}; this connection comes from uid {}", cred.uid()),
            );
            return refuse(stream, error).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "refused a connection whose peer credentials cannot be read");
            return;
        }
    }
    let (mut reader, mut writer) = stream.into_split();
    let (_, cap) = service.limits();
    let mut framer = LineFramer::new(cap);
    let mut greeted = false;
    loop {
        let line = match next_line(&mut reader, &mut framer, &shutdown.begun).await {
            Next::Line(line) => line,
            Next::TooLarge => {
                let error = RpcError::new(
                    ErrorKind::RequestTooLarge,
                    format!(
                        "the request line is longer than max_request_bytes ({cap} bytes); the connection is closed"
                    ),
                );
                write(&mut writer, &Response { id: Value::Null, outcome: Err(error) }.encode()).await;
                return;
            }
            Next::End => return,
        };
        let request = match Request::decode(&line) {
            Ok(request) => request,
            Err(DecodeError { id, error }) => {
                if !write(&mut writer, &Response { id, outcome: Err(error) }.encode()).await {
                    return;
                }
                continue;
            }
        };
        let id = request.id.clone();
        let method = request.method.clone();
        let outcome = if shutdown.begun.is_cancelled() {
            Err(shutting_down())
        } else if method == methods::SESSION_HELLO {
            let outcome = service.hello(&request);
            greeted |= outcome.is_ok();
            outcome
        } else if !greeted && !methods::BEFORE_HELLO.contains(&method.as_str()) {
            Err(RpcError::invalid_request(format!(
                "`{method}` before `session.hello`; every connection starts with session.hello"
            )))
        } else if let Some(outcome) = service.answer_now(&request) {
            outcome
        } else {
            match run_request(service.clone(), request, &shutdown, &mut writer).await {
                Some(outcome) => outcome,
                None => return,
            }
        };
        let ok = outcome.is_ok();
        if !write(&mut writer, &Response { id, outcome }.encode()).await {
            return;
        }
        if ok {
            service.after_reply(&method);
        }
    }
}

fn shutting_down() -> RpcError {
    RpcError::new(
        ErrorKind::DaemonShuttingDown,
        "memoryd is shutting down and did not finish this request; retry when it is back",
    )
}

/// Runs one request in its own task, forwarding its progress. None when
/// the client went away (the request still runs to its end).
async fn run_request<S: Service>(
    service: Arc<S>,
    request: Request,
    shutdown: &Shutdown,
    writer: &mut OwnedWriteHalf,
) -> Option<Result<Value, RpcError>> {
    // Unbounded because a request's progress lines are its answer and are
    // never dropped, and its producers include blocking threads that cannot
    // wait on a full channel. It stays small all the same: this loop writes
    // each line as it comes, and a client that stops reading for
    // WRITE_LIMIT loses the connection, which ends every send.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sink = ProgressSink { id: request.id.clone(), tx: Some(tx) };
    let method = request.method.clone();
    let mut task = shutdown.requests.spawn(service.call(request, sink));
    let outcome = loop {
        tokio::select! {
            Some(line) = rx.recv() => {
                if !write(writer, &line).await {
                    return None;
                }
            }
            joined = &mut task => {
                break joined.unwrap_or_else(|e| {
                    tracing::error!(method, error = %e, "request task failed");
                    Err(RpcError::new(ErrorKind::Internal, format!("memoryd failed while running {method}; see its log")))
                });
            }
            _ = shutdown.grace_over.cancelled() => break Err(shutting_down()),
        }
    };
    while let Ok(line) = rx.try_recv() {
        if !write(writer, &line).await {
            return None;
        }
    }
    Some(outcome)
}
