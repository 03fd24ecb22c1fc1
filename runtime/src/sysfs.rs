//! /sys read-only, with the guest's cgroup v2 subtree at /sys/fs/cgroup.
//!
//! A read-only /sys is the container interface ("no device management").
//! The cgroup mount happens inside the guest's cgroup namespace, so it
//! shows the payload cgroup as the root, on hybrid hosts as well.

use std::path::Path;

use nix::mount::MsFlags;

use crate::error::Result;
use crate::mounts::{mount_fs, mount_fs_in_root};

pub(crate) fn mount_sys(root: &Path) -> Result<()> {
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let sys = mount_fs_in_root(root, "/sys", "sysfs", 0o555, ro, None)?;
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
