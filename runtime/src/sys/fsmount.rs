//! The filesystem-context half of the new mount API (fsopen, fsconfig with
//! strings, flags and descriptors, fsmount) and `move_mount` beneath a
//! mount, which `nix` and `libc` do not wrap. The closure-only store's
//! overlay is built from these: layers are passed by descriptor, so no
//! path of the host ever reaches the overlay's options.
//!
//! Hand-written like the rest of `sys`: the design card keeps every raw
//! syscall in this one module over `libc::syscall`, and the calls are a
//! handful of lines each.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::{check, owned};

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_SET_FD: libc::c_uint = 5;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
/// move_mount(2): mount beneath the topmost mount at the target (Linux 6.5).
const MOVE_MOUNT_BENEATH: libc::c_uint = 0x200;

/// A filesystem context (fsopen): configured key by key, then created and
/// turned into a detached mount.
pub struct FsContext {
    fd: OwnedFd,
}

impl FsContext {
    /// fsopen(2) for a filesystem type, close-on-exec.
    pub fn open(fstype: &CStr) -> io::Result<FsContext> {
        // SAFETY: fstype is NUL-terminated and lives across the call.
        let fd =
            owned(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
        Ok(FsContext { fd })
    }

    fn config(
        &self,
        cmd: libc::c_uint,
        key: Option<&CStr>,
        value: *const libc::c_void,
        aux: libc::c_int,
    ) -> io::Result<()> {
        let key = key.map_or(std::ptr::null(), CStr::as_ptr);
        // SAFETY: key is NUL-terminated or null and value is what `cmd`
        // wants (a NUL-terminated string or null), both alive for the call;
        // aux is an integer (a descriptor for FSCONFIG_SET_FD).
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                cmd,
                key,
                value,
                aux,
            )
        })
        .map(drop)
    }

    /// fsconfig(FSCONFIG_SET_STRING): `key=value`.
    pub fn set_string(&self, key: &CStr, value: &CStr) -> io::Result<()> {
        self.config(FSCONFIG_SET_STRING, Some(key), value.as_ptr().cast(), 0)
    }

    /// fsconfig(FSCONFIG_SET_FLAG): a bare `key`.
    pub fn set_flag(&self, key: &CStr) -> io::Result<()> {
        self.config(FSCONFIG_SET_FLAG, Some(key), std::ptr::null(), 0)
    }

    /// fsconfig(FSCONFIG_SET_FD): `key` names what `fd` refers to (an
    /// overlay layer, `lowerdir+`, since Linux 6.13).
    pub fn set_fd(&self, key: &CStr, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.config(FSCONFIG_SET_FD, Some(key), std::ptr::null(), fd.as_raw_fd())
    }

    /// fsconfig(FSCONFIG_CMD_CREATE): make the superblock.
    pub fn create(&self) -> io::Result<()> {
        self.config(FSCONFIG_CMD_CREATE, None, std::ptr::null(), 0)
    }

    /// fsmount(2): a detached mount of the created superblock with the
    /// MOUNT_ATTR_* flags `attrs`; the descriptor is its root.
    pub fn mount(&self, attrs: u64) -> io::Result<OwnedFd> {
        // SAFETY: plain syscall with integer arguments.
        owned(unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                self.fd.as_raw_fd(),
                FSMOUNT_CLOEXEC,
                attrs as libc::c_uint,
            )
        })
    }

    /// What the filesystem logged into the context about a failure
    /// ("e overlay: ..."), if anything (many log to the kernel log instead).
    pub fn messages(&self) -> Option<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        // Each read returns one message; ENODATA when there are none left.
        for _ in 0..8 {
            match nix::unistd::read(self.fd.as_fd(), &mut buf) {
                Ok(n) if n > 0 => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    out.push(text.trim_end().to_owned());
                }
                _ => break,
            }
        }
        (!out.is_empty()).then(|| out.join("; "))
    }
}

/// move_mount(2) of the detached (or attached) mount `from` onto `to`
/// (resolved from the caller's root and cwd), beneath the mount on top
/// there: the new mount goes between that one and its parent, so removing
/// the top afterwards reveals it without a moment of nothing in between.
pub fn move_mount_beneath(from: BorrowedFd<'_>, to: &CStr) -> io::Result<()> {
    let empty = c"";
    // SAFETY: both paths are NUL-terminated and live across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_BENEATH,
        )
    };
    check(ret).map(drop)
}
