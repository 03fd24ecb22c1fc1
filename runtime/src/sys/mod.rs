//! Every `unsafe` call of the crate, behind safe functions whose arguments
//! make them sound: thin wrappers over the syscalls that `nix` does not
//! cover (clone3, pidfds, the fd-based mount API, pty peers, close_range,
//! BPF), each with a `// SAFETY:` comment. What they return is owned
//! (`OwnedFd`); what they borrow is borrowed (`BorrowedFd`). Nothing here is
//! public outside the crate.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

mod block;
mod bpf;
mod fd;
mod mount;
mod net;
mod pidfd;
mod process;
mod tty;

pub(crate) use block::*;
pub(crate) use bpf::*;
pub(crate) use fd::*;
pub(crate) use mount::*;
pub(crate) use net::*;
pub(crate) use pidfd::*;
pub(crate) use process::*;
pub(crate) use tty::*;

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(ret)?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
