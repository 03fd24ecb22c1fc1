//! The guest's root: the tree bound (or overlaid, for `--ephemeral`) onto
//! a private mount point, and later pivoted into.

pub mod mounts;
pub mod resolve;

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, umount2};

use crate::error::{Error, Result};
use crate::guest::rootfs::mounts::{Owner, attach, bind, ensure_dir, mount_fs, propagation};
use std::os::fd::OwnedFd;

/// Detach our mount namespace from the host's: nothing we mount propagates
/// back out.
pub(crate) fn isolate_from_host() -> Result<()> {
    propagation(Path::new("/"), MsFlags::MS_SLAVE | MsFlags::MS_REC)
}

/// Put the guest root on `mount_point` and return the path of the root.
///
/// The tree comes in bound as it is or, under a user namespace with mapped
/// ownership, as `idmapped` (a detached idmapped clone the launcher made).
/// For `--ephemeral` it is the lower layer of an overlay whose upper layer
/// is a fresh tmpfs: nothing is copied (the cost does not depend on the
/// tree's size) and the tree is never written. Without a tree the root is
/// an empty tmpfs (a guest from nothing but the store).
pub(crate) fn assemble(
    tree: Option<&Path>,
    mount_point: &Path,
    ephemeral: bool,
    owner: Owner,
    idmapped: Option<&OwnedFd>,
) -> Result<PathBuf> {
    // Traversable: under a user namespace the guest's PID 1 still has to
    // reach the root by this path before it pivots (only our mount
    // namespace has anything mounted here).
    ensure_dir(mount_point, 0o755)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let root = match tree {
        None => {
            mount_fs("tmpfs", mount_point, flags, Some(&owner.tmpfs("mode=0755")))?;
            mount_point.to_path_buf()
        }
        Some(tree) if ephemeral => {
            mount_fs("tmpfs", mount_point, flags, Some("mode=0755"))?;
            let (lower, upper, work, merged) = (
                mount_point.join("lower"),
                mount_point.join("upper"),
                mount_point.join("work"),
                mount_point.join("merged"),
            );
            for d in [&lower, &upper, &work, &merged] {
                ensure_dir(d, 0o755)?;
            }
            let lower = match idmapped {
                Some(fd) => {
                    attach(fd, &lower)?;
                    lower
                }
                None => tree.to_path_buf(),
            };
            // The upper root must carry the tree root's mode and owner (as
            // the guest sees them), or its / would look like the tmpfs's.
            copy_root_attributes(&lower, &upper)?;
            owner.chown(&work)?;
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                escape_overlay(&lower),
                escape_overlay(&upper),
                escape_overlay(&work)
            );
            nix::mount::mount(
                Some("overlay"),
                &merged,
                Some("overlay"),
                MsFlags::empty(),
                Some(data.as_str()),
            )
            .map_err(|e| Error::Mount {
                what: format!("overlay of {}", tree.display()),
                target: merged.clone(),
                source: e.into(),
            })?;
            merged
        }
        Some(tree) => {
            match idmapped {
                Some(fd) => attach(fd, mount_point)?,
                None => bind(tree, mount_point, true, false)?,
            }
            mount_point.to_path_buf()
        }
    };
    propagation(&root, MsFlags::MS_PRIVATE | MsFlags::MS_REC)?;
    Ok(root)
}

fn copy_root_attributes(tree: &Path, upper: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(tree).map_err(|e| Error::io("stat", tree, e))?;
    std::fs::set_permissions(upper, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| Error::io("chmod", upper, e))?;
    std::os::unix::fs::chown(upper, Some(meta.uid()), Some(meta.gid()))
        .map_err(|e| Error::io("chown", upper, e))
}

/// overlayfs takes ',' and ':' as separators and '\' as escape in its options.
fn escape_overlay(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Make `root` the process's `/`, drop the host's tree, and turn on shared
/// propagation inside (systemd requires shared mounts at start).
pub(crate) fn switch_root(root: &Path) -> Result<()> {
    nix::unistd::chdir(root).map_err(|e| Error::io("chdir", root, e.into()))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| Error::syscall("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| Error::syscall("umount2(old root)", e))?;
    nix::unistd::chdir("/").map_err(|e| Error::io("chdir", "/", e.into()))?;
    propagation(Path::new("/"), MsFlags::MS_SHARED | MsFlags::MS_REC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_escaping() {
        assert_eq!(escape_overlay(Path::new("/a,b:c\\d")), "/a\\,b\\:c\\\\d");
    }
}
