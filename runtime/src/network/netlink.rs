//! A netlink socket of ours: an owned descriptor, one request at a time,
//! the kernel's extended-ack text in errors. The message types come from
//! the netlink-packet crates; the socket calls from `nix` (netlink-sys's
//! socket type is `Clone` with a closing `Drop`, a double close waiting to
//! happen, and adds nothing `nix` lacks but three socket options).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

use crate::error::Error;
use crate::sys;

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

/// One failed netlink request: what was asked, errno, the kernel's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlError {
    pub what: String,
    pub errno: i32,
    pub extack: Option<String>,
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.what,
            std::io::Error::from_raw_os_error(self.errno)
        )?;
        if let Some(m) = &self.extack {
            write!(f, " (the kernel says: {m})")?;
        }
        Ok(())
    }
}

impl From<NlError> for Error {
    fn from(e: NlError) -> Error {
        Error::Network {
            message: e.to_string(),
        }
    }
}

pub type NlResult<T> = std::result::Result<T, NlError>;

pub(crate) fn nl_err(what: impl Into<String>, errno: nix::errno::Errno) -> NlError {
    NlError {
        what: what.into(),
        errno: errno as i32,
        extack: None,
    }
}

/// NLMSGERR_ATTR_MSG from the attributes after the echoed request header
/// (NETLINK_CAP_ACK keeps the echo to the bare 16-byte header).
pub(crate) fn extack(after_code: &[u8]) -> Option<String> {
    let mut tlv = after_code.get(16..)?;
    while tlv.len() >= 4 {
        let len = u16::from_ne_bytes([tlv[0], tlv[1]]) as usize;
        let kind = u16::from_ne_bytes([tlv[2], tlv[3]]) & 0x3fff;
        if len < 4 || len > tlv.len() {
            break;
        }
        if kind == 1 {
            let text = &tlv[4..len];
            let text = text.split(|&b| b == 0).next().unwrap_or(text);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        tlv = tlv.get((len + 3) & !3..)?;
    }
    None
}

/// A bound netlink socket in the network namespace it was created in.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
}

/// The largest datagram a dump part fills (the kernel caps them at 32 KiB).
pub(crate) const RECV_BUFFER: usize = 64 * 1024;

impl Socket {
    /// A socket of `protocol` in the caller's (thread's) network namespace.
    pub fn open(protocol: SockProtocol) -> NlResult<Socket> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            protocol,
        )
        .map_err(|e| nl_err("socket(AF_NETLINK)", e))?;
        bind(fd.as_fd().as_raw_fd_compat(), &NetlinkAddr::new(0, 0))
            .map_err(|e| nl_err("bind(AF_NETLINK)", e))?;
        let sock = Socket { fd };
        // Better errors where the kernel has them; nothing depends on it.
        let _ = sock.set(NETLINK_EXT_ACK, 1);
        let _ = sock.set(NETLINK_CAP_ACK, 1);
        Ok(sock)
    }

    /// A socket of `protocol` in the network namespace `netns`: made by
    /// this thread inside it (a thread's setns changes only the thread;
    /// the socket stays in the namespace it was made in), then back.
    pub fn open_in(protocol: SockProtocol, netns: BorrowedFd<'_>) -> NlResult<Socket> {
        use nix::sched::{CloneFlags, setns};
        let own = std::fs::File::open("/proc/thread-self/ns/net").map_err(|e| NlError {
            what: "opening /proc/thread-self/ns/net".into(),
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            extack: None,
        })?;
        setns(netns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| nl_err("entering the guest's network namespace", e))?;
        let sock = Socket::open(protocol);
        if let Err(e) = setns(own.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Everything this thread did from here on would happen in the
            // guest's namespace: never go on.
            panic!("cannot return to our own network namespace: {e}");
        }
        sock
    }

    fn set(&self, option: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
        sys::setsockopt_int(self.fd.as_fd(), SOL_NETLINK, option, value)
    }

    /// Receive the multicast group `group` (an RTNLGRP_* number).
    pub fn join(&self, group: u32) -> NlResult<()> {
        self.set(NETLINK_ADD_MEMBERSHIP, group.cast_signed())
            .map_err(|e| NlError {
                what: format!("joining netlink group {group}"),
                errno: e.raw_os_error().unwrap_or(libc::EIO),
                extack: None,
            })
    }

    /// Make reads return EAGAIN instead of blocking.
    pub fn set_nonblocking(&self) -> NlResult<()> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let flags = fcntl(&self.fd, FcntlArg::F_GETFL).map_err(|e| nl_err("fcntl", e))?;
        fcntl(
            &self.fd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map(drop)
        .map_err(|e| nl_err("fcntl", e))
    }

    /// Give up waiting for an answer after `timeout`.
    pub fn set_timeout(&self, timeout: std::time::Duration) -> NlResult<()> {
        use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
        let tv = nix::sys::time::TimeVal::new(
            libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            libc::suseconds_t::from(timeout.subsec_micros()),
        );
        setsockopt(&self.fd, ReceiveTimeout, &tv).map_err(|e| nl_err("SO_RCVTIMEO", e))
    }

    pub fn send(&self, what: &str, bytes: &[u8]) -> NlResult<()> {
        loop {
            match send(self.fd.as_fd().as_raw_fd_compat(), bytes, MsgFlags::empty()) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(nl_err(what, e)),
            }
        }
    }

    /// One datagram into `buf`; Ok(None) when non-blocking and none is there.
    pub fn recv(&self, what: &str, buf: &mut [u8]) -> NlResult<Option<usize>> {
        loop {
            match recv(self.fd.as_fd().as_raw_fd_compat(), buf, MsgFlags::empty()) {
                Ok(n) => return Ok(Some(n)),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(nl_err(what, e)),
            }
        }
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// nix 0.31's socket calls still take raw descriptor numbers.
trait RawCompat {
    fn as_raw_fd_compat(&self) -> std::os::fd::RawFd;
}

impl RawCompat for BorrowedFd<'_> {
    fn as_raw_fd_compat(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

/// Walk the netlink messages in one datagram: (type, sequence, whole message).
pub(crate) fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 16 > buf.len() {
            return None;
        }
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().ok()?) as usize;
        if len < 16 || off + len > buf.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().ok()?);
        let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().ok()?);
        let msg = &buf[off..off + len];
        off += (len + 3) & !3;
        Some((kind, seq, msg))
    })
}

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;

/// The errno (0 for an ACK) and extended-ack text of an NLMSG_ERROR.
pub(crate) fn error_of(msg: &[u8]) -> (i32, Option<String>) {
    let code = msg
        .get(16..20)
        .and_then(|b| b.try_into().ok())
        .map_or(-libc::EBADMSG, i32::from_ne_bytes);
    (-code, msg.get(20..).and_then(extack))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extack_text_is_found_after_the_echoed_header() {
        let mut after = vec![0u8; 16];
        let text = b"Unknown device type\0";
        let len = u16::try_from(4 + text.len()).unwrap();
        after.extend_from_slice(&len.to_ne_bytes());
        after.extend_from_slice(&1u16.to_ne_bytes());
        after.extend_from_slice(text);
        assert_eq!(extack(&after).as_deref(), Some("Unknown device type"));
        assert_eq!(extack(&after[..10]), None);
        assert_eq!(extack(&[0u8; 16]), None);
    }

    #[test]
    fn message_walk_stops_at_garbage() {
        let mut buf = Vec::new();
        for seq in [7u32, 8] {
            buf.extend_from_slice(&20u32.to_ne_bytes());
            buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&(-17i32).to_ne_bytes());
        }
        buf.extend_from_slice(&[1, 2, 3]);
        let seen: Vec<_> = messages(&buf)
            .map(|(k, s, m)| (k, s, error_of(m).0))
            .collect();
        assert_eq!(seen, [(NLMSG_ERROR, 7, 17), (NLMSG_ERROR, 8, 17)]);
    }
}
