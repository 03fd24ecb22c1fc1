//! The guest's /nix/store: exactly the toplevel's closure, each path a
//! read-only bind of the host's, on a read-only tmpfs (nothing else of the
//! host store is visible or reachable) — or the whole store with
//! `--shared-store`. Plus the system profile and, on request, the host's
//! nix-daemon socket.

use std::io;
use std::path::Path;

use nix::mount::MsFlags;

use crate::error::{Error, Result};
use crate::guest::rootfs::mounts::{
    Mounted, Owner, Target, bind, bind_onto, ensure_dir, ensure_file, mount_new,
};
use crate::guest::rootfs::resolve::{self, Create};
use crate::nixos::closure::STORE;
use crate::spec::StoreSpec;
use crate::spec::closure::{Entry, EntryKind};
use std::os::fd::OwnedFd;

/// Mount the store below `root`. `staging` is an empty directory outside
/// the root, used while the store is assembled. Under a user namespace
/// with mapped ownership, `idmapped` is the launcher's read-only idmapped
/// clone of the host store (root-owned store files then belong to the
/// guest's root), and every bind is taken from it. Returns the
/// closure-only store's own tmpfs, for [`seal_store`].
pub(crate) fn mount_store(
    root: &Path,
    staging: &Path,
    store: &StoreSpec,
    owner: Owner,
    idmapped: Option<&OwnedFd>,
) -> Result<Option<Mounted>> {
    let target = Target::resolve(root, Path::new(STORE), Create::Dir(0o755))?;
    let Some(closure) = &store.closure else {
        match idmapped {
            Some(fd) => target.attach(fd.try_clone().map_err(|e| Error::syscall("dup", e))?)?,
            None => bind_onto(Path::new(STORE), &target, true, true)?,
        };
        return Ok(None);
    };
    // One read-only view of the host store; binds taken from a read-only
    // mount are read-only themselves, so each path costs one mount(2).
    ensure_dir(staging, 0o700)?;
    match idmapped {
        Some(fd) => crate::guest::rootfs::mounts::attach(fd, staging)?,
        None => bind(Path::new(STORE), staging, false, true)?,
    }
    // Private: binds taken from a slave would each join the host store's
    // peer group as slaves, which makes every later mount operation pay.
    crate::guest::rootfs::mounts::propagation(staging, MsFlags::MS_PRIVATE)?;
    let mounted = mount_new(
        "tmpfs",
        &target,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&owner.tmpfs("mode=0755")),
    )?;
    let dir = mounted.path();
    for entry in closure {
        add_path(staging, &dir, entry)?;
    }
    Ok(Some(mounted))
}

/// Make a closure entry appear in `store_dir`, bound from `source_store`
/// (no look at the path: its kind was learnt when the closure was checked).
pub(crate) fn add_path(source_store: &Path, store_dir: &Path, entry: &Entry) -> Result<()> {
    let dst = store_dir.join(&entry.name);
    match &entry.kind {
        // A symlink store path is its target; a link to a link is the same.
        EntryKind::Symlink(target) => {
            return match std::os::unix::fs::symlink(target, &dst) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    Err(Error::io("symlink", &dst, e))
                }
                _ => Ok(()),
            };
        }
        EntryKind::Directory => ensure_dir(&dst, 0o555)?,
        EntryKind::File => ensure_file(&dst, 0o444)?,
    }
    let src = source_store.join(&entry.name);
    nix::mount::mount(
        Some(&src),
        &dst,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| Error::Mount {
        what: format!(
            "store path {}",
            Path::new(STORE).join(&entry.name).display()
        ),
        target: dst.clone(),
        source: e.into(),
    })
}

/// After the user's own mounts (a `--bind-ro` of an extra store path needs
/// a mount point): the closure-only store's tmpfs becomes read-only.
pub(crate) fn seal_store(store: Option<&Mounted>) -> Result<()> {
    match store {
        Some(mounted) => remount_store_dir(&mounted.path(), true),
        None => Ok(()),
    }
}

/// Flip the closure-only store's tmpfs between read-only and writable.
pub(crate) fn remount_store_dir(target: &Path, read_only: bool) -> Result<()> {
    // The mount's own flag, not the superblock's: a guest's user namespace
    // may change the former on its mounts, never the latter on ours.
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(|e| {
        Error::Mount {
            what: format!(
                "the store tmpfs ({})",
                if read_only { "read-only" } else { "writable" }
            ),
            target: target.to_path_buf(),
            source: e.into(),
        }
    })
}

/// /nix/var/nix/profiles/system → the toplevel (replaced atomically),
/// made relative to the resolved directory, so no path leaves the root.
pub(crate) fn link_profile(root: &Path, toplevel: &Path) -> Result<()> {
    let guest_dir = Path::new("/nix/var/nix/profiles");
    let dir = resolve::open_in(root, guest_dir, Create::Dir(0o755))?;
    let (tmp, dst) = (c".system.nixspawn-tmp", c"system");
    let _ = nix::unistd::unlinkat(&dir, tmp, nix::unistd::UnlinkatFlags::NoRemoveDir);
    nix::unistd::symlinkat(toplevel, &dir, tmp)
        .map_err(|e| Error::io("symlink", guest_dir.join(".system.nixspawn-tmp"), e.into()))?;
    nix::fcntl::renameat(&dir, tmp, &dir, dst)
        .map_err(|e| Error::io("replacing", guest_dir.join("system"), e.into()))
}

/// The host's Nix database (read-only) and daemon socket directory, so Nix
/// in the guest talks to the host's daemon (NIX_REMOTE=daemon).
pub(crate) fn pass_nix_daemon(root: &Path) -> Result<()> {
    for (host, read_only) in [
        ("/nix/var/nix/db", true),
        ("/nix/var/nix/daemon-socket", false),
    ] {
        let host = Path::new(host);
        if !host.is_dir() {
            return Err(Error::io(
                "--nix-daemon needs",
                host,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "missing; is Nix installed and nix-daemon set up on the host?",
                ),
            ));
        }
        let dst = Target::resolve(root, host, Create::Dir(0o755))?;
        bind_onto(host, &dst, false, read_only)?;
    }
    Ok(())
}
