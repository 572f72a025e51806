//! The client on blocking sockets, for `status`, `peers` and the hooks:
//! one connection, the hello and the first requests in one write, every
//! connect, write and read bounded by a deadline, and no runtime started.

use super::{CallError, ConnectError, Conversation, Outcome, Queued};
use memoryd_proto::framing::LineFramer;
use memoryd_proto::{Command, HelloResult};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longer lines than any answer memoryd sends end the call.
const MAX_LINE: usize = 64 << 20;
/// How often a connect finding the daemon's backlog full tries again.
const BACKLOG_RETRY: Duration = Duration::from_millis(5);

pub struct BlockingClient {
    stream: UnixStream,
    framer: LineFramer,
    talk: Conversation,
    /// The first write's failure (see [`super::closed`]).
    unsent: Option<std::io::Error>,
    pub hello: HelloResult,
}

impl BlockingClient {
    /// Connects and says hello within `limit`, with `ahead` sent in the
    /// same write behind the hello; their answers are read by
    /// [`BlockingClient::answer`]. A short command costs one round trip (a
    /// refused hello fails the requests behind it, unread).
    pub fn connect_ahead<const N: usize>(
        socket: &Path,
        limit: Duration,
        ahead: [&Command; N],
    ) -> Result<(BlockingClient, [Queued; N]), ConnectError> {
        let deadline = deadline_after(limit);
        let stream = connect(socket, deadline).map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => super::no_answer(socket, limit),
            _ => super::connect_failed(socket, &e),
        })?;
        let (talk, greeting, queued) = Conversation::greeting(ahead);
        let framer = LineFramer::new(MAX_LINE);
        let mut client = BlockingClient { stream, framer, talk, unsent: None, hello: super::placeholder_hello() };
        client.hello = super::greeted(client.answer(greeting, deadline.saturating_duration_since(Instant::now())))
            .map_err(|e| match e {
                // The hello's own limit is what was left of `limit`.
                ConnectError::NotAnswering(_) if Instant::now() >= deadline => super::no_answer(socket, limit),
                e => e,
            })?;
        Ok((client, queued))
    }

    /// Queues a request, sent with the next [`BlockingClient::answer`].
    pub fn queue(&mut self, command: &Command) -> Queued {
        self.talk.queue(command)
    }

    /// Sends what is queued, then reads until the answer to `queued`, all
    /// within `limit`. Answers to other queued requests that come first are
    /// kept for their own turn; notifications (progress) are not shown.
    pub fn answer(&mut self, queued: Queued, limit: Duration) -> Result<Outcome, CallError> {
        if let Some(answer) = self.talk.early(&queued) {
            return Ok(answer);
        }
        let deadline = deadline_after(limit);
        let silent = || CallError::Silent { method: queued.method.to_owned(), silence: limit };
        let outbox = self.talk.take_outbox();
        if !outbox.is_empty() && self.unsent.is_none() {
            self.unsent = match deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) {
                Some(left) => {
                    self.stream.set_write_timeout(Some(left)).and_then(|()| (&self.stream).write_all(&outbox)).err()
                }
                None => Some(std::io::ErrorKind::TimedOut.into()),
            };
        }
        let mut chunk = [0u8; 16 * 1024];
        loop {
            while let Some(line) = self.framer.next_line() {
                if let Some(answer) = self.talk.read(&line, &queued, &mut |_| {})? {
                    return Ok(answer);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(silent());
            }
            self.stream.set_read_timeout(Some(left)).map_err(lost)?;
            let n = match (&self.stream).read(&mut chunk) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err(silent());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(lost(e)),
            };
            if n == 0 {
                return Err(super::closed(&queued, self.unsent.as_ref()));
            }
            self.framer
                .push(&chunk[..n])
                .map_err(|_| CallError::Lost(format!("memoryd sent a line longer than {MAX_LINE} bytes")))?;
        }
    }
}

/// `limit` from now, or as far as the clock goes (`--timeout 1000y`).
fn deadline_after(limit: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(limit).unwrap_or_else(|| now + Duration::from_secs(u32::MAX.into()))
}

fn lost(e: std::io::Error) -> CallError {
    CallError::Lost(format!("lost the connection to memoryd: {e}"))
}

/// Connects to `socket` by `deadline`. A Unix socket connects at once or,
/// when the daemon's backlog is full, not at all (EAGAIN on a non-blocking
/// socket; a blocking one would wait for as long as the daemon does not
/// accept), so a full backlog is tried again until the deadline.
fn connect(socket: &Path, deadline: Instant) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let addr = UnixAddr::new(socket)?;
    loop {
        let fd = nix::sys::socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        match nix::sys::socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(nix::errno::Errno::EAGAIN) if Instant::now() + BACKLOG_RETRY < deadline => {
                std::thread::sleep(BACKLOG_RETRY);
            }
            Err(nix::errno::Errno::EAGAIN) => return Err(std::io::ErrorKind::TimedOut.into()),
            Err(e) => return Err(e.into()),
        }
    }
}
