//! Descriptors: the standard ones, close-on-exec and closing in fresh
//! helpers, and receiving datagrams with the descriptors that come along.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::check;

/// Mark every descriptor from `first` upwards close-on-exec.
pub fn cloexec_from(first: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing; it only sets flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    check(ret).map(drop)
}

/// Close every descriptor above 2 but `keep`. Only for freshly forked
/// helpers that never return to their caller's frames ([`super::fork_helper`]).
pub(super) fn close_all_but(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<libc::c_uint> = keep
        .iter()
        .filter_map(|&fd| libc::c_uint::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    let mut first: libc::c_uint = 3;
    for k in keep {
        if k > first {
            // SAFETY: as for close_from; the range excludes the kept ones.
            check(unsafe { libc::syscall(libc::SYS_close_range, first, k - 1, 0) })?;
        }
        first = k + 1;
    }
    close_from(first)
}

/// Close every descriptor from `first` upwards. Only for freshly forked
/// helpers, whose descriptors are all inherited copies owned by nobody in
/// this process image.
fn close_from(first: libc::c_uint) -> io::Result<()> {
    // SAFETY: see above; no OwnedFd in the calling image refers to these.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
    check(ret).map(drop)
}

/// Duplicate `fd` onto the standard descriptor `target` (0, 1 or 2),
/// which stays open across exec.
pub fn dup_onto_stdio(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    assert!(
        (0..=2).contains(&target),
        "not a standard descriptor: {target}"
    );
    // SAFETY: dup2 onto a standard descriptor; the old 0/1/2 (if any) is
    // replaced atomically and is not owned by any OwnedFd in this process.
    check(unsafe { libc::dup2(fd.as_raw_fd(), target) }.into()).map(drop)
}

/// Borrow a standard descriptor that the process image owns for its whole life.
pub fn stdio(fd: RawFd) -> BorrowedFd<'static> {
    assert!((0..=2).contains(&fd), "not a standard descriptor: {fd}");
    // SAFETY: 0, 1 and 2 are never closed by this program.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// True when the descriptor refers to a terminal.
pub fn isatty(fd: impl AsFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd.as_fd().as_raw_fd()) == 1 }
}

/// One datagram read from a socket: how long it really was, the sender's
/// PID (with SO_PASSCRED) and every descriptor that came with it, owned so
/// that dropping them closes them.
#[derive(Debug)]
pub struct Datagram {
    /// The datagram's full length (more than the buffer if it was cut).
    pub len: usize,
    pub pid: Option<libc::pid_t>,
    pub fds: Vec<OwnedFd>,
}

/// SCM_PIDFD (Linux 6.5): a pidfd of the sender, with SO_PASSPIDFD; libc
/// does not name it yet.
const SCM_PIDFD: libc::c_int = 0x04;

/// Room for credentials and a full SCM_RIGHTS message (SCM_MAX_FD = 253
/// descriptors) with plenty to spare for SCM_PIDFD or a security label.
const CONTROL_WORDS: usize = 1024;

/// recvmsg(2) without waiting: Ok(None) when nothing is queued. The data
/// goes to `buf`; descriptors are received close-on-exec.
pub fn recv_datagram(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
    recv(sock, buf, libc::MSG_DONTWAIT)
}

/// recvmsg(2), waiting for a message (a zero length at end-of-stream).
pub fn recv_blocking(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Datagram> {
    recv(sock, buf, 0).map(|d| d.expect("a blocking receive does not come back empty-handed"))
}

fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], wait: libc::c_int) -> io::Result<Option<Datagram>> {
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let flags = wait | libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC;
    let len = loop {
        // SAFETY: msg points at the iovec and control buffer above, both
        // valid for their stated lengths for the duration of the call.
        let ret = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if ret >= 0 {
            break ret.unsigned_abs();
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(err),
        }
    };
    let mut out = Datagram {
        len,
        pid: None,
        fds: Vec::new(),
    };
    // The kernel shrank msg_controllen to what it wrote; walk all of it.
    // SAFETY: CMSG_FIRSTHDR/NXTHDR only read msg and the control buffer it
    // points to, and return null past msg_controllen.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: c points at a complete cmsghdr inside the control buffer.
        let hdr = unsafe { std::ptr::read_unaligned(c) };
        // SAFETY: CMSG_DATA points just past the header inside the buffer;
        // CMSG_LEN(0) is the header's size.
        let (data, header) = unsafe { (libc::CMSG_DATA(c), libc::CMSG_LEN(0) as usize) };
        let payload = (hdr.cmsg_len as usize).saturating_sub(header);
        if hdr.cmsg_level == libc::SOL_SOCKET {
            match hdr.cmsg_type {
                libc::SCM_RIGHTS | SCM_PIDFD => {
                    let n = payload / std::mem::size_of::<libc::c_int>();
                    for i in 0..n {
                        // SAFETY: the kernel wrote n ints after the header.
                        let fd =
                            unsafe { std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i)) };
                        if fd >= 0 {
                            // SAFETY: installed in our table by this recvmsg; nobody else owns it.
                            out.fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                libc::SCM_CREDENTIALS if payload >= std::mem::size_of::<libc::ucred>() => {
                    // SAFETY: a complete ucred follows the header.
                    let cred = unsafe { std::ptr::read_unaligned(data.cast::<libc::ucred>()) };
                    out.pid = Some(cred.pid);
                }
                _ => {}
            }
        }
        // SAFETY: as CMSG_FIRSTHDR above.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    Ok(Some(out))
}

/// The socket of a libdbus connection, borrowed for as long as the
/// connection lives (libdbus keeps it open until the connection is freed).
pub fn dbus_socket(conn: &dbus::blocking::Connection) -> BorrowedFd<'_> {
    let fd = conn.channel().watch().fd;
    // SAFETY: the connection owns the socket and closes it only when it is
    // dropped, which the borrow of `conn` rules out meanwhile.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Close every descriptor above 2, for `--as-pid2`'s stub init, which never
/// returns to its caller's frames (their `OwnedFd`s are never dropped): it
/// must hold nothing the launcher watches for the payload's exec.
pub fn close_all_for_stub_init() -> io::Result<()> {
    close_from(3)
}
