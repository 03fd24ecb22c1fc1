//! The few operating-system calls the binaries and tests need directly,
//! each sound whatever it is given (the rest of `sys` stays in the crate),
//! and safe helpers the crate's event loops share.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

/// True when the descriptor refers to a terminal.
pub fn isatty(fd: impl AsFd) -> bool {
    crate::sys::isatty(fd)
}

/// The width of the terminal `fd` is, in columns.
pub fn terminal_columns(fd: impl AsFd) -> Option<u16> {
    crate::sys::get_winsize(fd.as_fd())
        .ok()
        .map(|w| w.ws_col)
        .filter(|c| *c > 0)
}

/// Send `signal` to the process behind `pidfd` (which cannot have been
/// replaced by another process meanwhile, as a PID can).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    crate::sys::pidfd_send_signal(pidfd, signal)
}

/// The 64-bit ID of the namespace `ns` (an open /proc/PID/ns/* file),
/// which unlike its inode number is never reused.
pub fn namespace_id(ns: BorrowedFd<'_>) -> io::Result<u64> {
    crate::sys::namespace_id(ns)
}

/// Have `cmd`'s process receive `signal` when the thread that spawns it
/// ends (PR_SET_PDEATHSIG), so a child dies with a runner that is killed.
/// Spawn from a thread that lives as long as the child should.
pub fn die_with_parent(cmd: &mut std::process::Command, signal: libc::c_int) {
    crate::sys::set_pdeathsig_on_spawn(cmd, signal)
}

/// Let `fd` survive exec (clear FD_CLOEXEC), to hand it to a program we
/// run by its /proc/self/fd path.
pub fn inheritable(fd: BorrowedFd<'_>) -> io::Result<()> {
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map(drop)
    .map_err(io::Error::from)
}

/// poll(2) without a timeout, then which of `fds` are ready (readable,
/// hung up or in error); none after an interrupting signal.
pub(crate) fn poll_ready(fds: &mut [nix::poll::PollFd<'_>]) -> nix::Result<Vec<bool>> {
    match nix::poll::poll(fds, nix::poll::PollTimeout::NONE) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(e),
    }
    Ok(fds
        .iter()
        .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
        .collect())
}
