//! The notification payloads and the roster copy's bookkeeping, without a
//! server.

use crate::roster_cache::{NodeState, Reload, RosterCache, Row};
use crate::supervisor::Hint;
use memoryd_core::presence::{Attachment, Health, State};
use std::collections::BTreeMap;
use std::time::SystemTime;

#[test]
fn hints_are_the_payloads_of_spec_80() {
    let presence = Hint::Presence { node: "claude-ada".into(), state: "degraded".into(), origin: None };
    assert_eq!(serde_json::to_string(&presence).unwrap(), r#"{"k":"presence","n":"claude-ada","s":"degraded"}"#);
    assert_eq!(serde_json::to_string(&Hint::Roster).unwrap(), r#"{"k":"roster"}"#);
    let inbox: Hint = serde_json::from_str(r#"{"k":"inbox","p":"bob"}"#).unwrap();
    assert_eq!(inbox, Hint::Inbox { personality: "bob".into() });
    let link: Hint = serde_json::from_str(r#"{"k":"link","a":"ada","b":"bob"}"#).unwrap();
    assert_eq!(link, Hint::Link { a: "ada".into(), b: "bob".into() });
    assert_eq!(serde_json::from_str::<Hint>(r#"{"k":"settings"}"#).unwrap(), Hint::Settings);
    assert!(serde_json::from_str::<Hint>(r#"{"k":"newer"}"#).is_err(), "an unknown hint is the reader's to handle");
}

fn node(session: &str, state: State) -> NodeState {
    let at = SystemTime::UNIX_EPOCH;
    let att = Attachment {
        attachment_id: format!("att-{session}"),
        node_id: "claude-ada".into(),
        session_id: session.into(),
        state,
        health: Health::Online,
        client_version: "1.0".into(),
        capabilities: serde_json::Map::new(),
        pid: None,
        pid_start: None,
        attached_at: at,
        last_heartbeat_at: at,
        updated_at: at,
    };
    NodeState { rows: vec![Row { host: "host-a".into(), att }], revoked: None }
}

fn loaded(state: NodeState) -> BTreeMap<String, NodeState> {
    BTreeMap::from([("claude-ada".to_owned(), state)])
}

fn session(cache: &mut RosterCache) -> Option<String> {
    cache.built().presence.active("claude-ada").map(|a| a.session_id.clone())
}

#[test]
fn a_reload_never_overwrites_a_newer_change() {
    let mut cache = RosterCache::default();
    assert_eq!(cache.reload_needed(), Reload::All);
    cache.install(cache.generation(), None, loaded(node("s1", State::Online)));
    assert_eq!(cache.reload_needed(), Reload::Nothing);
    // A reload reads, then a change stages and commits, then the reload's
    // older rows arrive: the change stays.
    let reload_at = cache.generation();
    cache.stage("claude-ada", node("s2", State::Online));
    cache.finish("claude-ada", true);
    cache.install(reload_at, None, loaded(node("s1", State::Online)));
    assert_eq!(session(&mut cache).as_deref(), Some("s2"));
    // A change in flight is never overwritten, even by a newer reload.
    cache.stage("claude-ada", node("s3", State::Online));
    cache.install(cache.generation(), None, loaded(node("s2", State::Online)));
    assert_eq!(session(&mut cache).as_deref(), Some("s3"));
    // It did not commit: the node is reloaded before it is trusted.
    cache.finish("claude-ada", false);
    assert_eq!(cache.reload_needed(), Reload::Nodes(vec!["claude-ada".into()]));
    assert!(!cache.trusted("claude-ada", true, std::time::Duration::from_secs(60)));
    cache.install(cache.generation(), Some(&["claude-ada".to_owned()]), loaded(node("s2", State::Offline)));
    assert_eq!(session(&mut cache), None);
    assert!(cache.trusted("claude-ada", true, std::time::Duration::from_secs(60)));
    // Another host's change: dirty until reloaded; a stale copy as a whole.
    cache.mark_dirty("claude-ada");
    assert_eq!(cache.reload_needed(), Reload::Nodes(vec!["claude-ada".into()]));
    cache.mark_stale();
    assert_eq!(cache.reload_needed(), Reload::All);
    cache.install(cache.generation(), None, BTreeMap::new());
    assert_eq!(cache.reload_needed(), Reload::Nothing);
    assert!(cache.built().presence.attachments.is_empty());
}
