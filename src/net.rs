//! Listening sockets for the sinks that serve clients over TCP (subscribers, HTTP), so both
//! listen the same way and `--check` probes their addresses the same way.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpListener, TcpSocket};

/// Pending connections the kernel holds, so a burst of 1000 connects needs no SYN retries
/// (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;

/// A listening socket with SO_REUSEADDR (a restart finds the port free despite old
/// connections in TIME_WAIT) and a large backlog.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Whether this host has the address `ip`, found by binding a probe socket to it on port 0
/// (closed at once, never listening). Only a missing address or a missing IPv6 is an error:
/// a probe that is denied (a confined snap hook) says nothing about the address, and the
/// configured port is never probed, as a running agent holds it.
pub fn check_address(ip: IpAddr) -> Result<(), String> {
    use nix::errno::Errno;
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let addr = SocketAddr::new(ip, 0);
    let probe = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .and_then(|probe| bind(probe.as_raw_fd(), &SockaddrStorage::from(addr)));
    match probe {
        Err(Errno::EADDRNOTAVAIL) => Err(format!("this host has no address {ip}")),
        Err(Errno::EAFNOSUPPORT) => Err(format!("this host has no IPv6, so no address {ip}")),
        _ => Ok(()),
    }
}
