//! Hosts of one fleet database (spec 80): each its own root, fleet map
//! (claude peers) and daemon, all on one throwaway cluster and schema.

use crate::{Conn, Daemon, Root};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

/// How a host is configured beyond the database it shares.
pub struct HostConfig<'a> {
    /// The lines of its `[presence]` table (the first host started seeds
    /// the fleet's settings from them).
    pub presence: &'a str,
    /// The lines of its `[postgres]` table besides url, schema and host id.
    pub postgres: &'a str,
    /// Its MCP endpoint's port; 0, none.
    pub mcp_port: u16,
}

pub struct FleetHost {
    pub root: Root,
    pub names: Vec<String>,
    /// The peers' folders, in the order of `names`.
    pub dirs: Vec<PathBuf>,
}

impl FleetHost {
    /// Host `host_id` with claude peers `names` on the database at `url`
    /// (straight, or through a proxy), schema `schema`.
    pub fn new(url: &str, schema: &str, host_id: &str, names: &[&str], config: &HostConfig) -> FleetHost {
        let root = Root::bare();
        let HostConfig { presence, postgres, mcp_port } = config;
        root.write_config(&format!(
            "mcp_port = {mcp_port}\n[presence]\n{presence}\n[store]\nbackend = \"postgres\"\n\
             [postgres]\nurl = {url:?}\nschema = {schema:?}\nhost_id = {host_id:?}\n{postgres}\n"
        ));
        let dirs = root.claude_fleet(names);
        FleetHost { root, names: names.iter().map(|n| (*n).to_owned()).collect(), dirs }
    }

    /// Its daemon, once it answers (its store may still be connecting).
    pub fn spawn(&self, setup: impl FnOnce(&mut Command)) -> Daemon {
        let mut daemon = self.root.spawn_daemon_with(setup);
        daemon.wait_ready(&self.root);
        daemon
    }

    /// One request on a connection of its own; Null when nothing answers.
    pub fn request(&self, method: &str, params: Value) -> Value {
        match Conn::open(&self.root.socket()) {
            Ok(mut conn) => {
                conn.hello();
                conn.request(method, params)
            }
            Err(_) => Value::Null,
        }
    }

    /// The hook shim of `event` for this host's claude peers.
    pub fn shim(&self, event: &str) -> PathBuf {
        self.root.paths.hooks_dir.join(format!("memoryd.claude.{event}.sh"))
    }

    /// The hook input of peer `i`'s session `session`, as Claude sends it.
    pub fn hook_input(&self, i: usize, session: &str) -> String {
        json!({"session_id": session, "cwd": self.dirs[i], "hook_event_name": "x", "source": "startup"}).to_string()
    }
}

/// Spec 80's invariants (scenario 5), checked after every scenario.
pub fn check_invariants(cluster: &memoryd_store_pg::testkit::Cluster, schema: &str) {
    let broken = memoryd_store_pg::testkit::invariants(&cluster.url(), schema);
    assert!(broken.is_empty(), "invariants broken:\n{}", broken.join("\n"));
}
