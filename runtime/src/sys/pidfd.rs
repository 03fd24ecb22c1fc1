//! Process descriptors and namespaces: pidfd_open, signals and waits by
//! pidfd, setns and unshare, and namespace descriptors' types and IDs.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::{check, owned};

pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a null siginfo is allowed and means "as kill(2) would send it".
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(ret).map(drop)
}

/// How a waited-for process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    Exited(i32),
    Signaled(i32),
}

/// How [`pidfd_wait`] waits for the child behind a pidfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Until it has ended, then reap it.
    Block,
    /// Reap it if it has ended; `None` if it still runs.
    Poll,
    /// Say whether it has ended but leave it a zombie (WNOWAIT): its PID
    /// stays taken, so a signal sent by PID meanwhile cannot hit a stranger.
    Peek,
}

/// waitid(P_PIDFD, WEXITED, ...) as `how` says; retries on EINTR.
pub fn pidfd_wait(pidfd: BorrowedFd<'_>, how: Wait) -> io::Result<Option<ExitKind>> {
    let flags = libc::WEXITED
        | match how {
            Wait::Block => 0,
            Wait::Poll => libc::WNOHANG,
            Wait::Peek => libc::WNOHANG | libc::WNOWAIT,
        };
    loop {
        // SAFETY: siginfo_t is plain data; zeroed is a valid initial value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: info is a valid out pointer; P_PIDFD takes the fd as id.
        let ret = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd().cast_unsigned(),
                &mut info,
                flags,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // SAFETY: waitid filled a SIGCHLD siginfo (or left it zeroed for WNOHANG).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(match info.si_code {
            libc::CLD_EXITED => ExitKind::Exited(status),
            _ => ExitKind::Signaled(status),
        }));
    }
}

/// setns(2) with a pidfd and several namespace flags at once (Linux 5.8+),
/// or with a namespace descriptor and its one flag.
pub fn setns_pidfd(pidfd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall with an fd we borrow for its duration.
    check(unsafe { libc::setns(pidfd.as_raw_fd(), flags) }.into()).map(drop)
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::unshare(flags) }.into()).map(drop)
}

/// pidfd_getfd(2): a copy of descriptor `fd` of the process behind `pidfd`.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the result is a fresh
    // descriptor of ours (close-on-exec, as the kernel sets it).
    owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })
}

/// The CLONE_NEW* type of a namespace descriptor (ioctl NS_GET_NSTYPE).
pub fn namespace_type(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the type.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) }.into()).and_then(|t| {
        libc::c_int::try_from(t).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    })
}

/// The user namespace owning the namespace `ns` (ioctl NS_GET_USERNS).
/// EPERM when that owner is outside this process's reach: an ancestor of
/// its own user namespace.
pub fn namespace_owner(ns: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    // SAFETY: NS_GET_USERNS takes no argument and returns a fresh
    // descriptor of ours (close-on-exec), owned at once.
    owned(unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS) }.into())
}

/// NS_GET_ID (Linux 6.18): a namespace's 64-bit ID, which unlike its
/// inode number is never handed to another namespace.
const NS_GET_ID: libc::c_ulong = 0x8008_b70d;

/// The ID of the namespace `ns` (an open /proc/PID/ns/* file).
pub fn namespace_id(ns: BorrowedFd<'_>) -> io::Result<u64> {
    let mut id: u64 = 0;
    // SAFETY: NS_GET_ID writes one u64 to the pointer it is given.
    check(unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_ID, &mut id) }.into())?;
    Ok(id)
}
