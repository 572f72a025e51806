//! The daemon's side of peer links and messages (spec 50): each method is
//! one store call on a blocking thread.

use crate::daemon::Daemon;
use crate::presence::rpc_error;
use memoryd_core::fleet::FleetMap;
use memoryd_core::peers;
use memoryd_proto::peers::{
    AckParams, Acked, InboxParams, Linked, Message, PeerPair, PersonalityParams, SendParams, Sent, Unlinked, Visible,
};
use memoryd_proto::{ErrorKind, RpcError};
use std::sync::Arc;
use std::time::SystemTime;

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

    /// `peer.link`.
    pub async fn peer_link(self: &Arc<Self>, p: PeerPair) -> Result<Linked, RpcError> {
        let fleet = self.fleet_map();
        self.blocking(move |daemon| {
            let made = daemon.store.link(&fleet?, &p.a, &p.b).map_err(rpc_error)?;
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
        let fleet = self.fleet_map();
        let floor = self.rules().floor;
        self.blocking(move |daemon| {
            peers::visible_in(&*daemon.store, &fleet?, floor, &p.personality).map_err(rpc_error)
        })
        .await
    }

    /// `peer.send`.
    pub async fn peer_send(self: &Arc<Self>, p: SendParams) -> Result<Sent, RpcError> {
        let fleet = self.fleet_map();
        let capacity = self.config().presence.inbox_capacity;
        let now = SystemTime::now();
        self.blocking(move |daemon| {
            let fleet = fleet?;
            // An operator's names are checked first, naming the fleet's
            // peers (the MCP tool's caller gets no such list).
            for name in [&p.from, &p.to] {
                peers::check_known(Some(&fleet), name, false).map_err(|r| rpc_error(r.into()))?;
            }
            let sent = daemon.store.send(&fleet, &p.from, &p.to, &p.message, capacity, now).map_err(rpc_error)?;
            daemon.refresh_fragments(Some(vec![p.to]));
            Ok(sent)
        })
        .await
    }

    /// `peer.inbox`: a lease is a hook fetching its own peer's messages; a
    /// look names any peer, which must be one the store knows.
    pub async fn peer_inbox(self: &Arc<Self>, p: InboxParams) -> Result<Vec<Message>, RpcError> {
        let fleet = self.fleet_map();
        let now = SystemTime::now();
        self.blocking(move |daemon| {
            let store = &daemon.store;
            if !p.lease {
                let kept = memoryd_core::fleet::names::is_personality(&p.personality)
                    && store.waiting().is_ok_and(|w| w.contains_key(&p.personality));
                peers::check_known(fleet.as_ref().ok(), &p.personality, kept).map_err(|r| rpc_error(r.into()))?;
            }
            let messages = if p.lease { store.lease(&p.personality, now) } else { store.inbox(&p.personality, now) };
            messages.map_err(rpc_error)
        })
        .await
    }

    /// `peer.ack`.
    pub async fn peer_ack(self: &Arc<Self>, p: AckParams) -> Result<Acked, RpcError> {
        self.blocking(move |daemon| {
            let acked = daemon.store.ack(&p.personality, &p.ids).map_err(rpc_error)?;
            daemon.refresh_fragments(Some(vec![p.personality]));
            Ok(Acked { acked })
        })
        .await
    }
}
