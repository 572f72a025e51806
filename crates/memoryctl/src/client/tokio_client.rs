//! The client on tokio, for the commands that run on a runtime (long
//! requests with progress, `top`, `events --follow`, the daemon commands).

use super::{CallError, ConnectError, Conversation, Outcome, Queued};
use memoryd_proto::{Command, HelloResult, Notification};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    talk: Conversation,
    /// The first write's failure (see [`super::closed`]).
    unsent: Option<std::io::Error>,
    pub hello: HelloResult,
}

impl Client {
    /// Connects and says hello, both within `timeout`.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Client, ConnectError> {
        tokio::time::timeout(timeout, Client::connect_inner(socket))
            .await
            .unwrap_or_else(|_| Err(super::no_answer(socket, timeout)))
    }

    async fn connect_inner(socket: &Path) -> Result<Client, ConnectError> {
        let stream = UnixStream::connect(socket).await.map_err(|e| super::connect_failed(socket, &e))?;
        let (reader, writer) = stream.into_split();
        let (talk, greeting, []) = Conversation::greeting([]);
        let mut client =
            Client { reader: BufReader::new(reader), writer, talk, unsent: None, hello: super::placeholder_hello() };
        // `connect` bounds the whole handshake; the hello itself needs no
        // second limit.
        client.hello = super::greeted(client.answer(greeting, Duration::MAX, |_| {}).await)?;
        Ok(client)
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
    ) -> Result<Outcome, CallError> {
        let queued = self.talk.queue(command);
        self.answer(queued, silence, on_notification).await
    }

    async fn answer(
        &mut self,
        queued: Queued,
        silence: Duration,
        mut on_notification: impl FnMut(Notification),
    ) -> Result<Outcome, CallError> {
        if let Some(answer) = self.talk.early(&queued) {
            return Ok(answer);
        }
        let outbox = self.talk.take_outbox();
        if !outbox.is_empty() && self.unsent.is_none() {
            self.unsent = self.writer.write_all(&outbox).await.err();
        }
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = match tokio::time::timeout(silence, self.reader.read_until(b'\n', &mut line)).await {
                Ok(read) => read.map_err(|e| CallError::Lost(format!("lost the connection to memoryd: {e}")))?,
                Err(_) => return Err(CallError::Silent { method: queued.method.to_owned(), silence }),
            };
            if n == 0 {
                return Err(super::closed(&queued, self.unsent.as_ref()));
            }
            if let Some(answer) = self.talk.read(&line, &queued, &mut on_notification)? {
                return Ok(answer);
            }
        }
    }
}
