//! The guest's root: the tree bound (or overlaid, for `--ephemeral`) onto
//! a private mount point, and later pivoted into.

pub mod mounts;
pub mod resolve;

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, umount2};

use crate::error::{Error, Result};
use crate::guest::rootfs::mounts::{
    Owner, Target, attach, bind, clone_tree, ensure_dir, mount_fs, mount_new, propagation,
};
use crate::guest::rootfs::resolve::Create;
use crate::spec::filesystem::{Filesystem, PivotRoot, Volatile};
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
    layout: &Filesystem,
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
        Some(tree) if layout.volatile == Volatile::Yes => {
            let pivot = layout.pivot_root.as_ref().map(|p| p.new_root.as_path());
            volatile_root(tree, pivot, mount_point, owner, idmapped)?;
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
    // (With --volatile=yes the pivot chose whose /usr the tmpfs holds;
    // nspawn pivots first, so an OLD kept beside it is gone with the rest.)
    if let Some(pivot) = &layout.pivot_root
        && tree.is_some()
        && layout.volatile != Volatile::Yes
    {
        pivot_within(&root, pivot)?;
    }
    // As nspawn: the tree read-only (all its mounts) before anything is
    // mounted on it, so a mount point the tree lacks cannot be made.
    if tree.is_some()
        && (layout.volatile == Volatile::State
            || (layout.read_only && layout.volatile == Volatile::No))
    {
        seal_read_only(&root)?;
    }
    if tree.is_some() && layout.volatile == Volatile::State {
        let var = Target::resolve(&root, Path::new("/var"), Create::Nothing)?;
        mount_new(
            "tmpfs",
            &var,
            MsFlags::MS_STRICTATIME,
            Some(&owner.tmpfs(VOLATILE_TMPFS)),
        )?;
    }
    propagation(&root, MsFlags::MS_PRIVATE | MsFlags::MS_REC)?;
    Ok(root)
}

/// nspawn's options for a volatile root or /var: a quarter of the RAM.
const VOLATILE_TMPFS: &str = "mode=0755,size=25%,nr_inodes=1m";

/// The mount at `root` and every mount below it read-only.
fn seal_read_only(root: &Path) -> Result<()> {
    let fd = nix::fcntl::open(
        root,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::io("opening", root, e.into()))?;
    crate::sys::mount_setattr(
        std::os::fd::AsFd::as_fd(&fd),
        true,
        crate::sys::MOUNT_ATTR_RDONLY,
        0,
    )
    .map_err(|e| Error::Mount {
        what: "read-only remount of the tree".into(),
        target: root.to_path_buf(),
        source: e,
    })
}

/// A detached copy of the mount tree at what `fd` was opened on.
fn clone_at(fd: &OwnedFd) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    clone_tree(
        Path::new(&format!("/proc/self/fd/{}", fd.as_raw_fd())),
        true,
    )
}

/// `--volatile=yes`: a fresh tmpfs root holding the tree's /usr, bound
/// read-only, and nspawn's base directories and links into /usr. With
/// `--pivot-root=NEW`, NEW's /usr: nspawn pivots before it makes the
/// volatile root.
fn volatile_root(
    tree: &Path,
    pivot: Option<&Path>,
    mount_point: &Path,
    owner: Owner,
    idmapped: Option<&OwnedFd>,
) -> Result<()> {
    mount_fs(
        "tmpfs",
        mount_point,
        MsFlags::MS_STRICTATIME,
        Some(&owner.tmpfs(VOLATILE_TMPFS)),
    )?;
    // The tree's /usr, resolved inside it (never a link out of it). An
    // idmapped clone of the tree is attached for that on a staging
    // directory first: a detached mount's subdirectory cannot be cloned.
    let staging = mount_point.join(".nixspawn-tree");
    let tree_root = match idmapped {
        Some(fd) => {
            ensure_dir(&staging, 0o700)?;
            attach(fd, &staging)?;
            staging.clone()
        }
        None => tree.to_path_buf(),
    };
    // NEW resolved in the tree, then /usr in NEW, as the pivoted root sees it.
    let usr = match pivot {
        Some(new_root) => resolve::in_root(&tree_root, new_root, Create::Nothing),
        None => Ok(tree_root.clone()),
    }
    .and_then(|root| resolve::open_in(&root, Path::new("/usr"), Create::Nothing))
    .and_then(|usr| clone_at(&usr));
    if idmapped.is_some() {
        umount2(&staging, MntFlags::MNT_DETACH)
            .map_err(|e| Error::syscall("umount2(staging)", e))?;
        std::fs::remove_dir(&staging).map_err(|e| Error::io("removing", &staging, e))?;
    }
    let usr = usr?;
    crate::sys::mount_setattr(
        std::os::fd::AsFd::as_fd(&usr),
        true,
        crate::sys::MOUNT_ATTR_RDONLY,
        0,
    )
    .map_err(|e| Error::Mount {
        what: format!("read-only bind of {}/usr", tree.display()),
        target: mount_point.join("usr"),
        source: e,
    })?;
    for (dir, mode) in BASE_DIRS {
        let p = mount_point.join(dir);
        ensure_dir(&p, 0o755)?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(*mode))
            .map_err(|e| Error::io("chmod", &p, e))?;
        owner.chown(&p)?;
    }
    attach(&usr, &mount_point.join("usr"))?;
    for (link, targets) in BASE_LINKS {
        // The first target the tree's /usr has (for lib64, the one holding
        // the dynamic loader), as systemd's base filesystem does.
        let found = targets.iter().find(|(target, needs)| {
            let t = mount_point.join(target);
            t.is_dir() && needs.is_none_or(|n| t.join(n).exists())
        });
        if let Some((target, _)) = found {
            let p = mount_point.join(link);
            std::os::unix::fs::symlink(target, &p).map_err(|e| Error::io("symlink", &p, e))?;
            owner.chown(&p)?;
        }
    }
    Ok(())
}

/// The directories of systemd's base filesystem, with their modes.
const BASE_DIRS: &[(&str, u32)] = &[
    ("usr", 0o755),
    ("etc", 0o755),
    ("var", 0o755),
    ("root", 0o750),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
];

/// Its links into /usr: each to the first target that exists (and holds
/// the named file, where one is named).
type LinkTargets = &'static [(&'static str, Option<&'static str>)];
const BASE_LINKS: &[(&str, LinkTargets)] = &[
    ("bin", &[("usr/bin", None)]),
    ("lib", &[("usr/lib", None)]),
    ("sbin", &[("usr/sbin", None)]),
    (
        "lib64",
        &[
            ("usr/lib/x86_64-linux-gnu", Some("ld-linux-x86-64.so.2")),
            ("usr/lib64", Some("ld-linux-x86-64.so.2")),
        ],
    ),
];

/// `--pivot-root=NEW[:OLD]`: the tree's NEW becomes the root, stacked on
/// the mount point; with OLD, the whole tree stays reachable there.
fn pivot_within(root: &Path, pivot: &PivotRoot) -> Result<()> {
    let new_root = resolve::open_in(root, &pivot.new_root, Create::Nothing)?;
    if let Some(old) = &pivot.old_root {
        let whole = clone_tree(root, true)?;
        let inside = pivot.new_root.join(old.strip_prefix("/").unwrap_or(old));
        let at = resolve::open_in(root, &inside, Create::Nothing)?;
        crate::sys::move_mount_onto(
            std::os::fd::AsFd::as_fd(&whole),
            std::os::fd::AsFd::as_fd(&at),
        )
        .map_err(|e| Error::Mount {
            what: "the old root".into(),
            target: inside,
            source: e,
        })?;
    }
    let new_root = clone_at(&new_root)?;
    attach(&new_root, root)
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
pub(crate) fn escape_overlay(p: &Path) -> String {
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
