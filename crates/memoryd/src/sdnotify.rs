//! The systemd notification protocol: one datagram per state change to
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (`READY=1`, `WATCHDOG=1`, `STOPPING=1`) when a supervisor
/// listens; does nothing otherwise. A failure is logged, never fatal.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
        return;
    };
    if let Err(e) = send(state, &target) {
        tracing::warn!(state, error = %e, "could not notify the supervisor");
    }
}

/// Tells the supervisor what the daemon is doing (`systemctl status`
/// shows it), in one line.
pub fn status(text: &str) {
    notify(&format!("STATUS={}", text.replace('\n', " ")));
}

/// `RELOADING=1` while it lives, `READY=1` when dropped: systemd then
/// knows a reload is under way and when it ended, whatever its outcome.
pub struct Reloading;

impl Reloading {
    pub fn begin() -> Reloading {
        notify("RELOADING=1");
        Reloading
    }
}

impl Drop for Reloading {
    fn drop(&mut self) {
        notify("READY=1");
    }
}

fn send(state: &str, target: &std::ffi::OsStr) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
            return Ok(());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::other("abstract notify sockets exist only on Linux"));
        }
    }
    socket.send_to(state.as_bytes(), target)?;
    Ok(())
}

/// The watchdog period when systemd asks for pings (`WATCHDOG_USEC`, and
/// `WATCHDOG_PID` unset or ours).
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}
