//! Loop devices and block-device sizes: LOOP_CTL_GET_FREE on
//! /dev/loop-control, LOOP_CONFIGURE (one ioctl that binds the backing file,
//! offset, size limit and flags, so no half-configured device is ever
//! visible), and BLKGETSIZE64.
//!
//! Hand-written rather than the `loopdev` crate: that crate generates its
//! bindings with bindgen at build time (a libclang dependency for four
//! ioctls) and, in its released versions, configures in two steps
//! (LOOP_SET_FD then LOOP_SET_STATUS64), which leaves a window in which the
//! device is bound without AUTOCLEAR.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::check;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

pub const LO_FLAGS_READ_ONLY: u32 = 1;
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// struct loop_info64 (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// struct loop_config (linux/loop.h).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// The number of a free loop device (allocating one if none is free).
pub fn loop_get_free(control: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
    let n = check(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) }.into())?;
    u32::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::ERANGE))
}

/// LOOP_CONFIGURE: bind `backing` to the loop device `dev`, `size` bytes
/// from `offset` (0: to the end), with LO_FLAGS_* `flags`.
pub fn loop_configure(
    dev: BorrowedFd<'_>,
    backing: BorrowedFd<'_>,
    offset: u64,
    size: u64,
    flags: u32,
) -> io::Result<()> {
    let fd = u32::try_from(backing.as_raw_fd())
        .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let config = LoopConfig {
        fd,
        block_size: 0,
        info: LoopInfo64 {
            device: 0,
            inode: 0,
            rdevice: 0,
            offset,
            sizelimit: size,
            number: 0,
            encrypt_type: 0,
            encrypt_key_size: 0,
            flags,
            file_name: [0; 64],
            crypt_name: [0; 64],
            encrypt_key: [0; 32],
            init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: `config` is a fully initialised struct loop_config that lives
    // across the call; the kernel only reads it.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &config) }.into()).map(drop)
}

/// The size of a block device in bytes.
pub fn block_device_size(dev: BorrowedFd<'_>) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, which is valid.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), BLKGETSIZE64, &mut size) }.into())?;
    Ok(size)
}
