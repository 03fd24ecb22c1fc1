//! The typed channel between the launcher and the container process: a
//! SOCK_SEQPACKET socketpair carrying small JSON messages and descriptors.
//! A closed peer or an unexpected message is an error, never a hang.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

use crate::error::{Error, Result};

/// Messages from the container processes to the launcher.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum ToParent {
    /// The notify socket and, with a pty console, the pty master (as fds).
    Handles { console: bool },
    /// With a user namespace: the guest's PID 1 was cloned (its pidfd comes
    /// with this, then the outer process's mount namespace, of which the
    /// guest's is a locked copy); it waits for [`ToChild::MapsWritten`].
    Inner { pid: i32 },
    /// With a user namespace: the console's pty master (as an fd), which
    /// only the inner process can create.
    Console,
    /// Setup failed at `step`; the process exits after sending this.
    Failed { step: String, message: String },
}

/// Messages from the launcher to the container process.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ToChild {
    /// The inner process's uid_map and gid_map are written.
    MapsWritten,
    /// The container process was registered and moved into `payload`.
    Placed,
}

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
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let (len, fds) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => {
                    let mut fds = Vec::new();
                    for c in m.cmsgs().map_err(|e| Error::Protocol(e.to_string()))? {
                        if let ControlMessageOwned::ScmRights(list) = c {
                            for fd in list {
                                fds.push(owned_from_scm(fd));
                            }
                        }
                    }
                    break (m.bytes, fds);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::Protocol(format!("receiving: {e}"))),
            }
        };
        if len == 0 {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&buf[..len]).map_err(|e| {
            Error::Protocol(format!("malformed message from the container process: {e}"))
        })?;
        Ok(Some((msg, fds)))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

fn owned_from_scm(fd: RawFd) -> OwnedFd {
    crate::sys::adopt_received_fd(fd)
}
