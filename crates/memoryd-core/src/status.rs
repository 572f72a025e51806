//! Judging health from the facts of a [`HostStatus`].

use crate::config::Config;
use memoryd_proto::status::HostStatus;

/// Fills `healthy` and `problems`: unhealthy when the daemon is down, the
/// heartbeat is missing or stale, the watch is off, the last sweep failed,
/// or the MCP endpoint is configured but not listening.
pub fn assess(status: &mut HostStatus, config: &Config) {
    let mut problems = Vec::new();
    if !status.running {
        problems.push("memoryd is not running.".to_owned());
    }
    let stale = config.heartbeat_stale_after.as_secs();
    match status.heartbeat_age_secs {
        None => problems.push("there is no heartbeat file.".to_owned()),
        Some(age) if age > stale => problems.push(format!(
            "the heartbeat is {age}s old, past heartbeat_stale_after ({stale}s)."
        )),
        Some(_) => {}
    }
    if status.watch.as_deref() == Some("off") {
        problems.push(
            "the fleet map watcher is off; changes are seen only by polling every 5 s.".to_owned(),
        );
    }
    if let Some(sweep) = &status.last_sweep
        && sweep.failed > 0
    {
        problems.push(format!(
            "the last sweep failed for {} peer-runtime(s); run: memoryctl verify",
            sweep.failed
        ));
    }
    if status.mcp.port != 0 && !status.mcp.listening {
        problems.push(format!(
            "the MCP endpoint on port {} is not listening.",
            status.mcp.port
        ));
    }
    status.healthy = problems.is_empty();
    status.problems = problems;
}
