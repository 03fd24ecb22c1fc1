//! Ownership for guests in a user namespace: idmapped mounts (the tree on
//! disk stays owned by host ids, the guest sees them as its own) and the
//! chown fallback.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::sys::{self, Forked};
use crate::userns::UidRange;

/// The host id nspawn gives the launcher's own writes through an idmapped
/// mount (UID_MAPPED_ROOT): host root must map to something in the mount.
const MAPPED_ROOT: u32 = 2_147_483_646;

/// A user namespace that only describes a mapping (ids [0, range) of the
/// filesystem appear as host [shift, shift+range); host root writes as
/// MAPPED_ROOT), for MOUNT_ATTR_IDMAP.
pub fn mapping_userns(range: UidRange) -> Result<OwnedFd> {
    userns_with_map(&format!(
        "0 {} {}\n{MAPPED_ROOT} 0 1\n",
        range.shift, range.range
    ))
}

/// A user namespace with exactly these uid_map/gid_map lines, alive only
/// as long as the returned descriptor.
pub fn userns_with_map(map: &str) -> Result<OwnedFd> {
    let (rx, tx) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::syscall("pipe2", e))?;
    match sys::clone3(libc::CLONE_NEWUSER as u64, libc::SIGCHLD, None)
        .map_err(|e| Error::syscall("clone3(CLONE_NEWUSER)", e))?
    {
        Forked::Child => {
            // Wait until the parent has what it needs, then go.
            drop(tx);
            let _ = nix::unistd::read(&rx, &mut [0u8; 1]);
            sys::exit_now(0)
        }
        Forked::Parent { pid, pidfd } => {
            drop(rx);
            let result = (|| {
                for file in ["uid_map", "gid_map"] {
                    let p = format!("/proc/{pid}/{file}");
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .and_then(|mut f| f.write_all(map.as_bytes()))
                        .map_err(|e| Error::io("writing", &p, e))?;
                }
                let p = format!("/proc/{pid}/ns/user");
                std::fs::File::open(&p)
                    .map(OwnedFd::from)
                    .map_err(|e| Error::io("opening", &p, e))
            })();
            drop(tx);
            if let Some(pidfd) = pidfd {
                let _ = sys::pidfd_wait(pidfd.as_fd(), false);
            }
            result
        }
    }
}

/// A detached clone of the mount tree at `path`, idmapped through `userns`
/// (and read-only if asked), ready to be moved into place.
pub fn idmapped_clone(
    path: &Path,
    userns: &OwnedFd,
    recursive: bool,
    read_only: bool,
) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::io("path", path, std::io::ErrorKind::InvalidInput.into()))?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    let fd = sys::open_tree(None, &c, flags).map_err(|e| Error::io("open_tree", path, e))?;
    let mut set = sys::MOUNT_ATTR_IDMAP;
    if read_only {
        set |= sys::MOUNT_ATTR_RDONLY;
    }
    sys::mount_setattr_with(fd.as_fd(), recursive, set, 0, Some(userns.as_fd())).map_err(|e| {
        Error::Idmap {
            path: path.to_path_buf(),
            source: e,
        }
    })?;
    Ok(fd)
}

/// Shift the ownership of everything below `tree` by `range.shift`, once:
/// a tree whose root already belongs to the shift is left alone (that is
/// the record, as with systemd-nspawn's chown mode).
pub fn chown_tree(tree: &Path, range: UidRange) -> Result<bool> {
    let root = std::fs::symlink_metadata(tree).map_err(|e| Error::io("stat", tree, e))?;
    if root.uid() == range.shift {
        return Ok(false);
    }
    fn walk(path: &Path, range: UidRange) -> Result<()> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
        let shift = |id: u32| {
            if id < range.range {
                id + range.shift
            } else {
                id
            }
        };
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            Some(nix::unistd::Uid::from_raw(shift(meta.uid()))),
            Some(nix::unistd::Gid::from_raw(shift(meta.gid()))),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::io("chown", path, e.into()))?;
        // chown clears setuid/setgid bits; put the mode back.
        if !meta.file_type().is_symlink() && meta.mode() & 0o6000 != 0 {
            std::fs::set_permissions(
                path,
                std::os::unix::fs::PermissionsExt::from_mode(meta.mode() & 0o7777),
            )
            .map_err(|e| Error::io("chmod", path, e))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).map_err(|e| Error::io("listing", path, e))? {
                let entry = entry.map_err(|e| Error::io("listing", path, e))?;
                walk(&entry.path(), range)?;
            }
        }
        Ok(())
    }
    walk(tree, range)?;
    Ok(true)
}
