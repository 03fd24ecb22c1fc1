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
