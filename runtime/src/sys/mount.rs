//! The fd-based mount API (open_tree, move_mount also beneath a mount,
//! mount_setattr, fsopen/fsconfig with strings, flags and descriptors,
//! fsmount), openat2 with resolve restrictions, mount IDs and extended
//! attributes through descriptors.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::{check, owned};

/// open_tree(2): a detached copy of the mount at `path` (OPEN_TREE_CLONE).
pub fn open_tree(
    dirfd: Option<BorrowedFd<'_>>,
    path: &CStr,
    flags: libc::c_uint,
) -> io::Result<OwnedFd> {
    let dirfd = dirfd.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    // SAFETY: path is NUL-terminated and lives across the call.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, dirfd, path.as_ptr(), flags) })
}

/// move_mount(2) of a detached mount fd onto a path.
pub fn move_mount_fd(
    from: BorrowedFd<'_>,
    to_dirfd: Option<BorrowedFd<'_>>,
    to: &CStr,
) -> io::Result<()> {
    let to_dirfd = to_dirfd.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    let empty = c"";
    // SAFETY: both paths are NUL-terminated and live across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            to_dirfd,
            to.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(ret).map(drop)
}

/// struct mount_attr (linux/mount.h), MOUNT_ATTR_SIZE_VER0.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
pub const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x0000_0008;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// mount_setattr(2) on a mount fd (AT_EMPTY_PATH), optionally recursive.
pub fn mount_setattr(
    mount: BorrowedFd<'_>,
    recursive: bool,
    set: u64,
    clear: u64,
) -> io::Result<()> {
    mount_setattr_with(mount, recursive, set, clear, None)
}

/// mount_setattr(2), with MOUNT_ATTR_IDMAP's user namespace if given.
pub fn mount_setattr_with(
    mount: BorrowedFd<'_>,
    recursive: bool,
    set: u64,
    clear: u64,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let userns_fd = userns.map_or(0, |fd| u64::from(fd.as_raw_fd().cast_unsigned()));
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd,
    };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    let empty = c"";
    // SAFETY: attr is a valid mount_attr of the size we pass; the path is
    // an empty NUL-terminated string, as AT_EMPTY_PATH requires.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// A detached copy (OPEN_TREE_CLONE) of the mount at `path`, close-on-exec.
pub fn clone_mount(path: &CStr) -> io::Result<OwnedFd> {
    open_tree(None, path, libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC)
}

/// struct open_how (linux/openat2.h).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// openat2(2): open `path` below `dirfd` with resolve restrictions.
pub fn openat2(
    dirfd: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: u64::from((flags | libc::O_CLOEXEC).cast_unsigned()),
        mode: 0,
        resolve,
    };
    // SAFETY: how is a valid open_how of the size passed; path is NUL-terminated.
    owned(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })
}

/// The id of the mount `fd` is on (statx STATX_MNT_ID, Linux 5.8): two
/// places on one filesystem but different mounts (a bind) differ here,
/// where st_dev does not.
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: statx is plain data; zeroed is a valid initial value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is an empty NUL-terminated string (AT_EMPTY_PATH)
    // and stx a valid out pointer.
    let ret = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    check(ret.into())?;
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    Ok(stx.stx_mnt_id)
}

/// fgetxattr(2): the value of `name` on `fd`, None if it has none.
pub fn get_xattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes and name NUL-terminated.
    let ret = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    match check(ret as libc::c_long) {
        Ok(n) => {
            buf.truncate(usize::try_from(n).unwrap_or(0));
            Ok(Some(buf))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// fsetxattr(2).
pub fn set_xattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: value is valid for value.len() bytes and name NUL-terminated.
    let ret = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(ret.into()).map(drop)
}

/// fremovexattr(2); a missing attribute is no error.
pub fn remove_xattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: name is NUL-terminated.
    let ret = unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) };
    match check(ret.into()) {
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
        other => other.map(drop),
    }
}

pub const MOUNT_ATTR_STRICTATIME: u64 = 0x0000_0020;
pub const MOUNT_ATTR_NOATIME: u64 = 0x0000_0010;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x0000_0080;

/// move_mount(2) of a detached mount onto exactly what `to` refers to (an
/// O_PATH descriptor of the target, MOVE_MOUNT_T_EMPTY_PATH): whatever
/// happens to the path the target was found by meanwhile.
pub fn move_mount_onto(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    let empty = c"";
    // SAFETY: both paths are empty NUL-terminated strings, as the
    // *_EMPTY_PATH flags require; the descriptors are borrowed for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            to.as_raw_fd(),
            empty.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    check(ret).map(drop)
}

/// A new, detached filesystem mount (fsopen + fsconfig + fsmount): `fstype`
/// with `options` ("key=value" or "flag", comma-separated, as mount(8)
/// takes them) and MOUNT_ATTR_* `attrs`. The descriptor is its root.
pub fn new_mount(fstype: &CStr, options: &str, attrs: u64) -> io::Result<OwnedFd> {
    let cstring =
        |s: &str| std::ffi::CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    let fs = FsContext::open(fstype)?;
    // Named after its type, as mount(8) and nspawn name such mounts.
    fs.set_string(c"source", fstype)?;
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            Some((key, value)) => fs.set_string(&cstring(key)?, &cstring(value)?)?,
            None => fs.set_flag(&cstring(option)?)?,
        }
    }
    fs.create()?;
    fs.mount(attrs)
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_SET_FD: libc::c_uint = 5;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
/// move_mount(2): mount beneath the topmost mount at the target (Linux 6.5).
const MOVE_MOUNT_BENEATH: libc::c_uint = 0x200;

/// A filesystem context (fsopen): configured key by key, then created and
/// turned into a detached mount. The closure-only store's overlay is built
/// with it, its layers passed by descriptor so that no host path reaches
/// the overlay's options.
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
        value: Option<&CStr>,
        aux: libc::c_int,
    ) -> io::Result<()> {
        let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
        // SAFETY: key and value are NUL-terminated or null, as `cmd` wants,
        // both alive for the call; aux is an integer (a descriptor for
        // FSCONFIG_SET_FD, borrowed by the caller for the call).
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                cmd,
                ptr(key),
                ptr(value),
                aux,
            )
        })
        .map(drop)
    }

    /// fsconfig(FSCONFIG_SET_STRING): `key=value`.
    pub fn set_string(&self, key: &CStr, value: &CStr) -> io::Result<()> {
        self.config(FSCONFIG_SET_STRING, Some(key), Some(value), 0)
    }

    /// fsconfig(FSCONFIG_SET_FLAG): a bare `key`.
    pub fn set_flag(&self, key: &CStr) -> io::Result<()> {
        self.config(FSCONFIG_SET_FLAG, Some(key), None, 0)
    }

    /// fsconfig(FSCONFIG_SET_FD): `key` names what `fd` refers to (an
    /// overlay layer, `lowerdir+`, since Linux 6.13).
    pub fn set_fd(&self, key: &CStr, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.config(FSCONFIG_SET_FD, Some(key), None, fd.as_raw_fd())
    }

    /// fsconfig(FSCONFIG_CMD_CREATE): make the superblock.
    pub fn create(&self) -> io::Result<()> {
        self.config(FSCONFIG_CMD_CREATE, None, None, 0)
    }

    /// fsmount(2): a detached mount of the created superblock with the
    /// MOUNT_ATTR_* flags `attrs`; the descriptor is its root.
    pub fn mount(&self, attrs: u64) -> io::Result<OwnedFd> {
        let attrs = libc::c_uint::try_from(attrs)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: plain syscall with integer arguments.
        owned(unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                self.fd.as_raw_fd(),
                FSMOUNT_CLOEXEC,
                attrs,
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
            match nix::unistd::read(&self.fd, &mut buf) {
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

/// move_mount(2) of the detached (or attached) mount `from` beneath the
/// mount whose root `to` is (an O_PATH descriptor: whatever happens
/// meanwhile to the path it was found by): the new mount goes between that
/// one and its parent, so removing the top afterwards reveals it without a
/// moment of nothing in between.
pub fn move_mount_beneath_onto(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    let empty = c"";
    // SAFETY: both paths are empty NUL-terminated strings, as the
    // *_EMPTY_PATH flags require; the descriptors are borrowed for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            to.as_raw_fd(),
            empty.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH | MOVE_MOUNT_BENEATH,
        )
    };
    check(ret).map(drop)
}
