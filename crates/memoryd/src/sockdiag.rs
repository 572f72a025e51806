//! Who owns the client end of a loopback TCP connection, asked of the
//! kernel by its exact address pair over netlink `sock_diag` (what `ss`
//! uses). Reading `/proc/net/tcp` instead walks the whole TCP hash table on
//! every request: about 10 ms here even with three sockets open, which was
//! most of an MCP call's time.

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, send, setsockopt, socket};
use nix::sys::time::{TimeVal, TimeValLike};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

/// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
/// `INET_DIAG_NOCOOKIE`: find the socket by its addresses alone.
const NO_COOKIE: u32 = u32::MAX;
/// `struct nlmsghdr`.
const HEADER: usize = 16;
/// Where `idiag_uid` sits in the answer: the header, then
/// `struct inet_diag_msg` (family, state, timer, retrans: 4 bytes; the
/// 48-byte socket id; expires, rqueue, wqueue: 12 bytes; then the uid).
const UID_AT: usize = HEADER + 4 + 48 + 12;

/// How long the kernel may take to answer (it answers at once; the bound
/// keeps a wait from ever being endless).
const ANSWER_WITHIN: i64 = 500;

/// Why the kernel did not name a connection's owner. The sentences carry
/// no addresses, so that each distinct reason is logged once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("cannot open a netlink sock_diag socket ({0})")]
    Socket(nix::Error),
    #[error("cannot ask the kernel over sock_diag ({0})")]
    Ask(nix::Error),
    #[error("the kernel did not answer over sock_diag ({0})")]
    Answer(nix::Error),
    #[error("the kernel knows no such connection ({0})")]
    Kernel(nix::Error),
    #[error("the kernel's sock_diag answer is not one this memoryd reads")]
    Garbled,
    #[error("the two ends are of different address families")]
    Families,
}

/// The uid owning the socket whose local end is `client` and whose remote
/// end is `server`, or why the kernel did not say.
pub fn client_uid(client: SocketAddr, server: SocketAddr) -> Result<u32, LookupError> {
    let fd = socket(AddressFamily::Netlink, SockType::Datagram, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkSockDiag)
        .map_err(LookupError::Socket)?;
    setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &TimeVal::milliseconds(ANSWER_WITHIN))
        .map_err(LookupError::Socket)?;
    send(fd.as_raw_fd(), &request(client, server).ok_or(LookupError::Families)?, MsgFlags::empty())
        .map_err(LookupError::Ask)?;
    let mut answer = [0u8; 512];
    let len = recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty()).map_err(LookupError::Answer)?;
    let kind = u16::from_ne_bytes([answer[4], answer[5]]);
    if kind == NLMSG_ERROR && len >= HEADER + 4 {
        // `struct nlmsgerr`: a negative errno after the header.
        let errno = i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]);
        return Err(LookupError::Kernel(nix::Error::from_raw(-errno)));
    }
    if len < UID_AT + 4 || kind != SOCK_DIAG_BY_FAMILY {
        return Err(LookupError::Garbled);
    }
    Ok(u32::from_ne_bytes([answer[UID_AT], answer[UID_AT + 1], answer[UID_AT + 2], answer[UID_AT + 3]]))
}

/// Proves the lookup works here: the kernel must name this process's uid
/// as the owner of a loopback connection made for the purpose.
pub fn probe() -> Result<(), String> {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    let server = listener.local_addr().map_err(|e| e.to_string())?;
    let client = std::net::TcpStream::connect(server).map_err(|e| e.to_string())?;
    let local = client.local_addr().map_err(|e| e.to_string())?;
    let me = nix::unistd::getuid().as_raw();
    match client_uid(local, server) {
        Ok(uid) if uid == me => Ok(()),
        Ok(uid) => Err(format!("the kernel named uid {uid} as the owner of this process's own connection (uid {me})")),
        Err(e) => Err(e.to_string()),
    }
}

/// A `SOCK_DIAG_BY_FAMILY` request (`struct inet_diag_req_v2`) for one
/// TCP socket, looked up exactly rather than dumped.
fn request(client: SocketAddr, server: SocketAddr) -> Option<Vec<u8>> {
    let family = match (client.ip(), server.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => nix::libc::AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => nix::libc::AF_INET6,
        _ => return None,
    };
    let address = |ip: IpAddr| -> [u8; 16] {
        let mut out = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
        }
        out
    };
    let mut body = Vec::with_capacity(56);
    body.extend_from_slice(&[family as u8, nix::libc::IPPROTO_TCP as u8, 0, 0]);
    body.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    body.extend_from_slice(&client.port().to_be_bytes());
    body.extend_from_slice(&server.port().to_be_bytes());
    body.extend_from_slice(&address(client.ip()));
    body.extend_from_slice(&address(server.ip()));
    body.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    body.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    body.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    let mut message = Vec::with_capacity(HEADER + body.len());
    message.extend_from_slice(&((HEADER + body.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    message.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // the kernel
    message.extend_from_slice(&body);
    Some(message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_a_loopback_connection_is_this_process_user() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_accepted, seen) = listener.accept().unwrap();
        assert_eq!(seen, client.local_addr().unwrap());
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(client_uid(seen, listener.local_addr().unwrap()), Ok(me));
        // No such connection: the kernel says so.
        let gone = SocketAddr::from(([127, 0, 0, 1], 1));
        let e = client_uid(gone, listener.local_addr().unwrap()).unwrap_err();
        assert!(matches!(e, LookupError::Kernel(nix::Error::ENOENT)), "{e}");
        assert_eq!(probe(), Ok(()));
    }
}
