//! [`Options`] from memoryd's configuration: one way for the daemon and
//! `memoryctl` to open the fleet database alike.

use crate::Options;
use crate::supervisor::Seed;
use memoryd_core::config::Config;

impl Options {
    /// This host's options: its `[postgres]` settings, its host id (the
    /// configured one, else the hostname made a name), the `[presence]`
    /// values that seed a new schema's `fleet_settings`, and the test
    /// clock's offset. `daemon`: whether this process holds the host's row.
    pub fn from_config(config: &Config, daemon: bool) -> Options {
        let settings = config.store.postgres.clone();
        let p = &config.presence;
        Options {
            host_id: settings.host_id_or(&memoryd_core::host::heartbeat::hostname()),
            settings,
            daemon_version: memoryd_core::VERSION.to_owned(),
            daemon,
            seed: Seed {
                min_client_version: p.min_client_version,
                degraded_after: p.degraded_after,
                offline_after: p.offline_after,
                inbox_capacity: p.inbox_capacity,
            },
            clock_offset_ms: memoryd_core::host::clock::offset_ms(),
            instance: None,
        }
    }
}
