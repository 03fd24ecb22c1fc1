//! The transport under every conversation between our processes (the
//! launcher and the container process, the janitor, nixspawnctl's helpers):
//! a SOCK_SEQPACKET socketpair carrying one small JSON message per packet,
//! with descriptors alongside. A closed peer reads as `None`, never a hang.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};

use crate::error::{Error, Result};

const MAX_MESSAGE: usize = 64 * 1024;

pub struct Channel {
    sock: OwnedFd,
}

/// A connected pair: (launcher end, container end). Both are close-on-exec,
/// so the container end closing (EOF) means the payload was exec'd.
pub fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::syscall("socketpair", e))?;
    Ok((Channel { sock: a }, Channel { sock: b }))
}

impl Channel {
    /// True once the peer has closed its end (without waiting).
    pub fn peer_closed(&self) -> bool {
        let mut fds = [nix::poll::PollFd::new(
            self.sock.as_fd(),
            nix::poll::PollFlags::empty(),
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO);
        fds[0]
            .revents()
            .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP))
    }

    /// The socket itself, to hand to another process.
    pub fn into_fd(self) -> OwnedFd {
        self.sock
    }

    /// A channel over a socket handed over by [`Channel::into_fd`].
    pub fn from_fd(sock: OwnedFd) -> Channel {
        Channel { sock }
    }

    /// Another handle on the same socket.
    pub fn try_clone(&self) -> Result<Channel> {
        let sock = self
            .sock
            .try_clone()
            .map_err(|e| Error::syscall("dup", e))?;
        Ok(Channel { sock })
    }

    pub fn send<T: serde::Serialize + std::fmt::Debug>(
        &self,
        msg: &T,
        fds: &[BorrowedFd<'_>],
    ) -> Result<()> {
        let data = serde_json::to_vec(msg).map_err(|e| Error::Protocol(e.to_string()))?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
        sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(&data)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| Error::Protocol(format!("sending {msg:?}: {e}")))?;
        Ok(())
    }

    /// The next message with its descriptors, or None when the peer closed
    /// its end (for the container end: it exec'd its payload).
    pub fn recv<T: serde::de::DeserializeOwned>(&self) -> Result<Option<(T, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let got = crate::sys::recv_blocking(self.sock.as_fd(), &mut buf)
            .map_err(|e| Error::Protocol(format!("receiving: {e}")))?;
        if got.len == 0 {
            return Ok(None);
        }
        let data = buf
            .get(..got.len)
            .ok_or_else(|| Error::Protocol(format!("a message longer than {MAX_MESSAGE} bytes")))?;
        let msg = serde_json::from_slice(data).map_err(|e| {
            Error::Protocol(format!("malformed message from the container process: {e}"))
        })?;
        Ok(Some((msg, got.fds)))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
