//! Network interfaces through the classic ioctls (lo in a new namespace).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// IFF_UP as the short ifr_flags holds it.
const IFF_UP: libc::c_short = 0x1;

use super::check;

/// Bring a network interface up through the classic ioctl (used for `lo`
/// in a private network namespace).
pub fn interface_up(sock: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.to_bytes()) {
        *dst = (*src).cast_signed();
    }
    // SAFETY: SIOCGIFFLAGS fills ifr_flags of a valid ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) }.into())?;
    // SAFETY: the union member ifr_flags was just written by the kernel.
    unsafe { req.ifr_ifru.ifru_flags |= IFF_UP };
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }.into()).map(drop)
}

/// `setsockopt(fd, level, name, &value, sizeof(int))`, for the integer
/// options `nix` has no type for (netlink's NETLINK_EXT_ACK,
/// NETLINK_CAP_ACK, NETLINK_ADD_MEMBERSHIP).
pub fn setsockopt_int(
    sock: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a live c_int of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
                .expect("an int's size fits"),
        )
    };
    check(ret.into()).map(drop)
}
