//! /sys read-only, with the guest's cgroup v2 subtree at /sys/fs/cgroup.
//!
//! A read-only /sys is the container interface ("no device management").
//! The cgroup mount happens inside the guest's cgroup namespace, so it
//! shows the payload cgroup as the root, on hybrid hosts as well.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::MsFlags;

use crate::error::{Error, Result};
use crate::guest::rootfs::mounts::{Target, bind, mount_fs, mount_new};
use crate::sys;

const RO: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// A sysfs of the guest's own (or the host's) network namespace on `sys`
/// (the guest's /sys, resolved and held).
pub(crate) fn mount_sys_on(sys: &Target) -> Result<()> {
    let mounted = mount_new("sysfs", sys, RO, None).map_err(explain)?;
    mount_cgroup(&mounted.path())
}

/// The same at the path `sys` (inside the guest's root, after it pivoted).
pub(crate) fn mount_sys(sys: &Path) -> Result<()> {
    mount_fs("sysfs", sys, RO, None).map_err(explain)?;
    mount_cgroup(sys)
}

/// A sysfs mount refused with EPERM, said with its cause where that is
/// the network namespace: the kernel lets only (an ancestor of) the user
/// namespace owning it mount sysfs, so a launcher in a guest that shares
/// its host's network namespace cannot, whatever its capabilities.
pub(crate) fn explain(e: Error) -> Error {
    match e {
        Error::Mount { target, source, .. }
            if source.raw_os_error() == Some(libc::EPERM) && !network_in_reach() =>
        {
            Error::SysfsNetnsNotOwned { target }
        }
        e => e,
    }
}

/// Whether our network namespace's owner is our user namespace or one
/// below it (NS_GET_USERNS refuses an owner above it with EPERM).
fn network_in_reach() -> bool {
    let Ok(net) = std::fs::File::open("/proc/self/ns/net") else {
        return true;
    };
    !matches!(sys::namespace_owner(net.as_fd()),
              Err(e) if e.raw_os_error() == Some(libc::EPERM))
}

/// For a guest in a user namespace without a network namespace of its own:
/// it may not mount a sysfs of the host's network namespace, so it gets
/// `source` (a sysfs the launcher mounted for it) bound in, read-only all
/// the way down.
pub(crate) fn bind_host_sys(sys: &Path, source: &Path) -> Result<()> {
    bind(source, sys, true, false)?;
    let c = CString::new(sys.as_os_str().as_bytes())
        .map_err(|_| Error::io("path", sys, std::io::ErrorKind::InvalidInput.into()))?;
    let fd = sys::open_tree(None, &c, libc::OPEN_TREE_CLOEXEC)
        .map_err(|e| Error::io("open_tree", sys, e))?;
    let attrs = sys::MOUNT_ATTR_RDONLY
        | sys::MOUNT_ATTR_NOSUID
        | sys::MOUNT_ATTR_NODEV
        | sys::MOUNT_ATTR_NOEXEC;
    sys::mount_setattr(fd.as_fd(), true, attrs, 0)
        .map_err(|e| Error::io("mount_setattr(read-only)", sys, e))?;
    mount_cgroup(sys)
}

fn mount_cgroup(sys: &Path) -> Result<()> {
    let cgroup = sys.join("fs/cgroup");
    let rw = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // Older kernels refuse memory_recursiveprot; the plain mount is fine.
    mount_fs(
        "cgroup2",
        &cgroup,
        rw,
        Some("nsdelegate,memory_recursiveprot"),
    )
    .or_else(|_| mount_fs("cgroup2", &cgroup, rw, None))
}
