//! The daemon's side of peer links and messages (spec 50): each method is
//! one domain call on a blocking thread.

use crate::daemon::Daemon;
use crate::presence::rpc_error;
use memoryd_core::fleet::FleetMap;
use memoryd_core::peers;
use memoryd_proto::{ErrorKind, Request, RpcError, methods};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::SystemTime;

#[derive(Deserialize)]
struct Pair {
    a: String,
    b: String,
}

#[derive(Deserialize)]
struct Send {
    from: String,
    to: String,
    message: String,
}

#[derive(Deserialize)]
struct InboxParams {
    personality: String,
    #[serde(default)]
    lease: bool,
}

#[derive(Deserialize)]
struct Ack {
    personality: String,
    ids: Vec<String>,
}

#[derive(Deserialize)]
struct Personality {
    personality: String,
}

fn to_value(v: impl serde::Serialize) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| RpcError::new(ErrorKind::Internal, e.to_string()))
}

impl Daemon {
    /// The fleet map in use, or the refusal saying there is none.
    pub fn fleet_map(&self) -> Result<FleetMap, RpcError> {
        self.fleet.lock().ok().and_then(|f| f.map().cloned()).ok_or_else(|| {
            RpcError::new(
                ErrorKind::FleetUnavailable,
                format!("there is no fleet map: {}; check iapeer_bin (memoryctl config check)", self.fleet_describe()),
            )
        })
    }

    /// The `peer.*` methods of spec 50.
    pub async fn peer_call(self: &Arc<Self>, request: Request) -> Result<Value, RpcError> {
        let fleet = self.fleet_map();
        let floor = self.rules().floor;
        let capacity = self.config().presence.inbox_capacity;
        let now = SystemTime::now();
        let job = move |daemon: &Daemon| -> Result<Value, RpcError> {
            let store = &*daemon.store;
            match request.method.as_str() {
                methods::PEER_LINK => {
                    let p: Pair = request.params()?;
                    let made = store.link(&fleet?, &p.a, &p.b).map_err(rpc_error)?;
                    daemon.refresh_fragments(Some(vec![p.a.clone(), p.b.clone()]));
                    Ok(json!({"linked": true, "already": !made, "a": p.a, "b": p.b}))
                }
                methods::PEER_UNLINK => {
                    let p: Pair = request.params()?;
                    let was = store.unlink(fleet.as_ref().ok(), &p.a, &p.b).map_err(rpc_error)?;
                    daemon.refresh_fragments(Some(vec![p.a.clone(), p.b.clone()]));
                    Ok(json!({"unlinked": was, "a": p.a, "b": p.b}))
                }
                methods::PEER_VISIBLE => {
                    let p: Personality = request.params()?;
                    to_value(peers::visible_in(store, &fleet?, floor, &p.personality).map_err(rpc_error)?)
                }
                methods::PEER_SEND => {
                    let p: Send = request.params()?;
                    let fleet = fleet?;
                    // An operator's names are checked first, naming the
                    // fleet's peers (the MCP tool's caller gets no such list).
                    for name in [&p.from, &p.to] {
                        peers::check_known(Some(&fleet), name, false).map_err(|r| rpc_error(r.into()))?;
                    }
                    let sent = store.send(&fleet, &p.from, &p.to, &p.message, capacity, now).map_err(rpc_error)?;
                    daemon.refresh_fragments(Some(vec![p.to]));
                    Ok(sent)
                }
                methods::PEER_INBOX => {
                    let p: InboxParams = request.params()?;
                    // A lease is a hook fetching its own peer's messages; a
                    // look names any peer, which must be one the store knows.
                    if !p.lease {
                        let kept = memoryd_core::fleet::names::is_personality(&p.personality)
                            && store.waiting().is_ok_and(|w| w.contains_key(&p.personality));
                        peers::check_known(fleet.as_ref().ok(), &p.personality, kept)
                            .map_err(|r| rpc_error(r.into()))?;
                    }
                    let messages =
                        if p.lease { store.lease(&p.personality, now) } else { store.inbox(&p.personality, now) };
                    to_value(messages.map_err(rpc_error)?)
                }
                methods::PEER_ACK => {
                    let p: Ack = request.params()?;
                    let acked = store.ack(&p.personality, &p.ids).map_err(rpc_error)?;
                    daemon.refresh_fragments(Some(vec![p.personality]));
                    Ok(json!({"acked": acked}))
                }
                other => Err(RpcError::new(ErrorKind::MethodUnknown, format!("unknown method `{other}`"))),
            }
        };
        self.blocking(job).await
    }
}
