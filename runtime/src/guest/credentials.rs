//! Delivering systemd credentials to the guest: a read-only ramfs at
//! /run/host/credentials, filled by the container process from what the
//! launcher read (`spec::credentials`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::mount::MsFlags;

use crate::error::{Error, Result};
use crate::guest::rootfs::mounts::{mount_fs_on_dir, remount};
use crate::spec::credentials::Credential;

/// Where the guest finds them (`$CREDENTIALS_DIRECTORY` of PID 1).
pub const GUEST_DIR: &str = "/run/host/credentials";

/// In the container process: a ramfs at /run/host/credentials (`host` is
/// /run/host) holding the
/// credentials, 0400 files in a 0500 directory, then read-only.
pub(crate) fn install(
    host: &Path,
    creds: &[Credential],
    owner: crate::guest::rootfs::mounts::Owner,
) -> Result<()> {
    let dir = host.join("credentials");
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs_on_dir("ramfs", &dir, 0o700, flags, Some("mode=0700"))?;
    for c in creds {
        let p = dir.join(&c.id);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&p)
            .map_err(|e| Error::io("creating credential file", &p, e))?;
        f.write_all(&c.value)
            .map_err(|e| Error::io("writing credential file", &p, e))?;
        owner.chown(&p)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o400))
            .map_err(|e| Error::io("chmod", &p, e))?;
    }
    owner.chown(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500))
        .map_err(|e| Error::io("chmod", &dir, e))?;
    remount(&dir, MsFlags::MS_RDONLY | flags)?;
    // The superblock too, so no other mount of it can be writable.
    nix::mount::mount(
        None::<&str>,
        &dir,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
        Some("mode=0500"),
    )
    .map_err(|e| Error::Mount {
        what: "ramfs read-only".into(),
        target: dir.clone(),
        source: e.into(),
    })
}
