//! The daemon's side of peer links and messages (spec 50): each method is
//! one store call on a blocking thread.

use crate::daemon::Daemon;
use crate::presence::rpc_error;
use memoryd_core::fleet::FleetMap;
use memoryd_core::host::clock;
use memoryd_core::peers;
use memoryd_core::peers::{Draft, Limits};
use memoryd_proto::peers::{
    AckParams, Acked, AcknowledgeParams, Acknowledged, HistoryParams, HistoryRow, InboxParams, Linked, Message,
    OutboxParams, OutboxRow, PeerPair, PersonalityParams, ReplyParams, SendParams, Sent, Unlinked, Visible,
};
use memoryd_proto::{ErrorKind, RpcError};
use std::sync::Arc;

impl Daemon {
    /// The fleet map in use, or the refusal saying there is none.
    pub fn fleet_map(&self) -> Result<FleetMap, RpcError> {
        self.fleet.map.lock().ok().and_then(|f| f.map().cloned()).ok_or_else(|| {
            RpcError::new(
                ErrorKind::FleetUnavailable,
                format!("there is no fleet map: {}; check iapeer_bin (memoryctl config check)", self.fleet_describe()),
            )
        })
    }

    /// `peer.link`: both peers present in the fleet (on any host).
    pub async fn peer_link(self: &Arc<Self>, p: PeerPair) -> Result<Linked, RpcError> {
        self.blocking(move |daemon| {
            let made = daemon.store.link(&daemon.registry()?, &p.a, &p.b).map_err(rpc_error)?;
            daemon.refresh_fragments(Some(vec![p.a.clone(), p.b.clone()]));
            Ok(Linked { linked: true, already: !made, a: p.a, b: p.b })
        })
        .await
    }

    /// `peer.unlink`: works without a fleet map (a peer that left keeps
    /// its links, and may be unlinked).
    pub async fn peer_unlink(self: &Arc<Self>, p: PeerPair) -> Result<Unlinked, RpcError> {
        let fleet = self.fleet_map();
        self.blocking(move |daemon| {
            let was = daemon.store.unlink(fleet.as_ref().ok(), &p.a, &p.b).map_err(rpc_error)?;
            daemon.refresh_fragments(Some(vec![p.a.clone(), p.b.clone()]));
            Ok(Unlinked { unlinked: was, a: p.a, b: p.b })
        })
        .await
    }

    /// `peer.visible`.
    pub async fn peer_visible(self: &Arc<Self>, p: PersonalityParams) -> Result<Vec<Visible>, RpcError> {
        self.blocking(move |daemon| daemon.visible_now(&p.personality)).await
    }

    /// `peer.visible` and the MCP tool `peers_list`: `personality`'s linked
    /// peers present in the fleet, with their presence.
    pub fn visible_now(&self, personality: &str) -> Result<Vec<Visible>, RpcError> {
        let fleet = self.registry()?;
        peers::visible_in(&*self.store, &fleet, self.rules().floor, personality).map_err(rpc_error)
    }

    /// `peers_list`: as [`Self::visible_now`], and while the fleet
    /// database cannot be reached, the answer from what this host last
    /// read of it, with `true` for stale (spec 80) rather than no answer.
    pub fn visible_or_last_known(&self, personality: &str) -> Result<(Vec<Visible>, bool), RpcError> {
        let e = match self.visible_now(personality) {
            Ok(visible) => return Ok((visible, false)),
            Err(e) => e,
        };
        let last = match (&self.pg, e.kind()) {
            (Some(pg), Some(memoryd_proto::ErrorKind::StoreUnavailable)) => pg.last_known(&self.fleet_map()?),
            _ => None,
        };
        let Some((fleet, links, presence)) = last else { return Err(e) };
        peers::check_known(Some(&fleet), personality, false).map_err(|r| rpc_error(r.into()))?;
        Ok((peers::visible(&links, &fleet, &presence.roster(self.rules().floor), personality), true))
    }

    /// The message limits in force (the fleet's inbox capacity, with the
    /// fleet database).
    pub fn message_limits(&self) -> Limits {
        Limits::of(&self.presence_config())
    }

    /// `peer.send` and the MCP tool `peer_send`, on a blocking thread. An
    /// operator's names are checked first, naming the fleet's peers (the
    /// MCP tool's caller gets no such list); the fleet database checks
    /// them in the send's own transaction instead, against every host's
    /// peers as committed (this host's copy may be a notification behind).
    pub fn send_now(&self, draft: &Draft, naming: bool) -> Result<Sent, RpcError> {
        let fleet = self.registry()?;
        if naming && self.pg.is_none() {
            let from = (!draft.operator).then_some(&draft.from);
            for name in from.into_iter().chain(&draft.to) {
                peers::check_known(Some(&fleet), name, false).map_err(|r| rpc_error(r.into()))?;
            }
        }
        let sent = self.store.send(&fleet, draft, &self.message_limits(), clock::now()).map_err(rpc_error)?;
        self.refresh_fragments(Some(draft.to.clone()));
        Ok(sent)
    }

    /// `peer.reply` and the MCP tool `peer_reply`.
    pub fn reply_now(&self, p: &ReplyParams) -> Result<Sent, RpcError> {
        let fleet = self.registry()?;
        let sent = self.store.reply(&fleet, p, &self.message_limits(), clock::now()).map_err(rpc_error)?;
        self.refresh_fragments(Some(vec![sent.to.clone()]));
        Ok(sent)
    }

    /// `peer.acknowledge` and the MCP tool `peer_ack`.
    pub fn acknowledge_now(&self, p: &AcknowledgeParams) -> Result<Acknowledged, RpcError> {
        self.store.acknowledge(&p.personality, &p.message_id, &self.message_limits(), clock::now()).map_err(rpc_error)
    }

    /// `peer.history` and the MCP tools `peer_thread` and
    /// `peer_messages_search`.
    pub fn history_now(&self, p: &HistoryParams) -> Result<Vec<HistoryRow>, RpcError> {
        let mailbox = self.store.mailbox(&p.personality).map_err(rpc_error)?;
        peers::history(&mailbox, p).map_err(|r| rpc_error(r.into()))
    }

    /// `peer.send`.
    pub async fn peer_send(self: &Arc<Self>, p: SendParams) -> Result<Sent, RpcError> {
        self.blocking(move |daemon| daemon.send_now(&draft_of(p), true)).await
    }

    /// `peer.reply`.
    pub async fn peer_reply(self: &Arc<Self>, p: ReplyParams) -> Result<Sent, RpcError> {
        self.blocking(move |daemon| daemon.reply_now(&p)).await
    }

    /// `peer.acknowledge`.
    pub async fn peer_acknowledge(self: &Arc<Self>, p: AcknowledgeParams) -> Result<Acknowledged, RpcError> {
        self.blocking(move |daemon| daemon.acknowledge_now(&p)).await
    }

    /// `peer.outbox`.
    pub async fn peer_outbox(self: &Arc<Self>, p: OutboxParams) -> Result<Vec<OutboxRow>, RpcError> {
        self.blocking(move |daemon| daemon.store.outbox(&p.personality, p.limit).map_err(rpc_error)).await
    }

    /// `peer.history`.
    pub async fn peer_history(self: &Arc<Self>, p: HistoryParams) -> Result<Vec<HistoryRow>, RpcError> {
        self.blocking(move |daemon| daemon.history_now(&p)).await
    }

    /// `peer.inbox`: a lease is a hook fetching its own peer's messages; a
    /// look names any peer, which must be one the store knows.
    pub async fn peer_inbox(self: &Arc<Self>, p: InboxParams) -> Result<Vec<Message>, RpcError> {
        let now = clock::now();
        self.blocking(move |daemon| {
            let store = &daemon.store;
            if !p.lease {
                let fleet = daemon.registry();
                let kept = memoryd_core::fleet::names::is_personality(&p.personality)
                    && store.waiting().is_ok_and(|w| w.contains_key(&p.personality));
                peers::check_known(fleet.as_ref().ok(), &p.personality, kept).map_err(|r| rpc_error(r.into()))?;
            }
            let messages =
                if p.lease { store.lease(&p.personality, p.urgent, now) } else { store.inbox(&p.personality, now) };
            messages.map_err(rpc_error)
        })
        .await
    }

    /// `peer.ack`.
    pub async fn peer_ack(self: &Arc<Self>, p: AckParams) -> Result<Acked, RpcError> {
        self.blocking(move |daemon| {
            let acked =
                daemon.store.ack(&p.personality, &p.ids, &daemon.message_limits(), clock::now()).map_err(rpc_error)?;
            daemon.refresh_fragments(Some(vec![p.personality]));
            Ok(Acked { acked })
        })
        .await
    }
}

/// The message `peer.send` params ask for.
pub fn draft_of(p: SendParams) -> Draft {
    Draft {
        from: if p.operator { peers::OPERATOR.to_owned() } else { p.from },
        to: p.to.names(),
        text: p.message,
        subject: p.subject,
        importance: p.importance,
        ack_required: p.ack_required,
        operator: p.operator,
        thread: None,
        in_reply_to: None,
    }
}
