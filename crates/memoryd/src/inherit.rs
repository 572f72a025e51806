//! The restart without a gap (spec 10): the single-instance lock, the
//! control socket listener and the MCP listener are handed to the new
//! binary across `exec`, in `MEMORYD_INHERIT_FDS=lock:<fd>,control:<fd>,mcp:<fd>`. Same pid, so a supervisor
//! keeps tracking it; connections that arrive meanwhile wait in the listen
//! backlog, so none is refused.

use anyhow::{Context, bail};
use memoryd_core::host::egress::{Egress, EgressError};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

pub const VAR: &str = "MEMORYD_INHERIT_FDS";

/// Takes the hand-off variable out of the environment, so no child ever
/// sees it. Must run first thing in `main`, while only one thread exists.
#[allow(unsafe_code)]
pub fn take_var() -> Option<String> {
    let value = std::env::var(VAR).ok()?;
    // SAFETY: called at the top of `main` before any other thread starts,
    // so nothing can read the environment concurrently.
    unsafe { std::env::remove_var(VAR) };
    Some(value)
}

/// What the previous image handed over, validated.
pub struct Inherited {
    pub lock: File,
    pub control: UnixListener,
    /// The MCP listener, when the endpoint was on.
    pub mcp: Option<std::net::TcpListener>,
}

/// Adopts the descriptors named in `spec`: the lock must be this root's
/// lock file, still locked; the listener a Unix socket bound at `socket`;
/// the MCP listener a TCP socket bound at 127.0.0.1:`mcp_port`.
pub fn adopt(spec: &str, lock_path: &Path, socket: &Path, mcp_port: u16) -> anyhow::Result<Inherited> {
    let mut lock = None;
    let mut control = None;
    let mut mcp = None;
    for part in spec.split(',') {
        let (name, fd) = part.split_once(':').with_context(|| format!("{VAR}: `{part}` is not name:fd"))?;
        let fd: RawFd = fd.parse().with_context(|| format!("{VAR}: `{fd}` is not a descriptor number"))?;
        nix::sys::stat::fstat(borrow(fd)?).with_context(|| format!("{VAR}: descriptor {fd} ({name}) is not open"))?;
        match name {
            "lock" => lock = Some(own(fd)),
            "control" => control = Some(own(fd)),
            "mcp" => mcp = Some(own(fd)),
            // Handed over by a newer build: keep nothing open that we do
            // not understand.
            _ => drop(own(fd)),
        }
    }
    let (Some(lock), Some(control)) = (lock, control) else {
        bail!("{VAR}={spec} lacks the lock or the control socket");
    };
    let lock = File::from(lock);
    let (held, on_disk) = (lock.metadata()?, std::fs::metadata(lock_path)?);
    if (held.dev(), held.ino()) != (on_disk.dev(), on_disk.ino()) {
        bail!("{VAR}: the inherited lock is not {}", lock_path.display());
    }
    if !memoryd_core::host::instance::lock_is_held(lock_path)? {
        bail!("{VAR}: the inherited lock on {} is not held", lock_path.display());
    }
    let control = UnixListener::from(control);
    let bound = control.local_addr().context("the inherited control descriptor is not a Unix socket")?;
    if bound.as_pathname() != Some(socket) {
        bail!("{VAR}: the inherited control socket is bound at {:?}, not {}", bound.as_pathname(), socket.display());
    }
    let mcp = match mcp {
        Some(fd) => {
            let listener = std::net::TcpListener::from(fd);
            let bound = listener.local_addr().context("the inherited MCP descriptor is not a TCP socket")?;
            if !bound.ip().is_loopback() || bound.port() != mcp_port {
                bail!("{VAR}: the inherited MCP listener is bound at {bound}, not 127.0.0.1:{mcp_port}");
            }
            set_cloexec(listener.as_fd(), true)?;
            listener.set_nonblocking(true)?;
            Some(listener)
        }
        None => None,
    };
    for fd in [lock.as_fd(), control.as_fd()] {
        set_cloexec(fd, true)?;
    }
    control.set_nonblocking(true)?;
    Ok(Inherited { lock, control, mcp })
}

fn borrow(fd: RawFd) -> anyhow::Result<BorrowedFd<'static>> {
    if fd < 3 {
        bail!("{VAR}: descriptor {fd} is a standard stream");
    }
    #[allow(unsafe_code)]
    // SAFETY: only used for the fstat right here, which fails cleanly on a
    // closed descriptor; ownership is taken by `own` after it succeeds.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

#[allow(unsafe_code)]
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: the previous image of this process opened `fd` for us and
    // named it in the variable; fstat showed it open, and nothing else in
    // this process knows the number, so ownership is ours alone.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> anyhow::Result<()> {
    let flags = if on { FdFlag::FD_CLOEXEC } else { FdFlag::empty() };
    fcntl(fd, FcntlArg::F_SETFD(flags)).context("cannot set FD_CLOEXEC")?;
    Ok(())
}

/// Execs `memoryd_bin` with this process's arguments and the lock and the
/// listeners left open for it. Returns only if the hand-off failed.
pub fn hand_off(
    egress: &Egress,
    memoryd: &Path,
    lock: BorrowedFd<'_>,
    control: BorrowedFd<'_>,
    mcp: Option<BorrowedFd<'_>>,
) -> anyhow::Error {
    for fd in [Some(lock), Some(control), mcp].into_iter().flatten() {
        if let Err(e) = set_cloexec(fd, false) {
            return e;
        }
    }
    let mut spec = format!("lock:{},control:{}", lock.as_raw_fd(), control.as_raw_fd());
    if let Some(mcp) = mcp {
        spec.push_str(&format!(",mcp:{}", mcp.as_raw_fd()));
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let error: EgressError = egress.exec(memoryd, &args, &[(VAR, spec.as_str())]);
    anyhow::Error::new(error).context(format!("cannot exec {}", memoryd.display()))
}
