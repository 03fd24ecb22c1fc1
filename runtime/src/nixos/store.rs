//! The guest's /nix/store: exactly the toplevel's closure — one read-only
//! overlay mount (`overlay.rs`), or where the kernel refuses that, each
//! path a read-only bind of the host's on a read-only tmpfs (nothing else
//! of the host store is visible or reachable either way) — or the whole
//! store with `--shared-store`. Plus the system profile, a GC root for the
//! toplevel while the guest runs and, on request, the host's nix-daemon
//! socket.

use std::io;
use std::path::Path;

use nix::mount::MsFlags;

use crate::error::{Error, Result};

use crate::guest::rootfs::mounts::{
    Mounted, Owner, Target, bind, bind_onto, ensure_dir, ensure_file, mount_new,
};
use crate::guest::rootfs::resolve::{self, Create};
use crate::nixos::closure::STORE;
use crate::nixos::overlay;
use crate::spec::closure::{Entry, EntryKind};
use crate::spec::{Spec, StoreSpec};
use std::os::fd::{AsFd, OwnedFd};

/// How one boot's closure-only store is made, decided by the launcher.
pub(crate) enum BootStore {
    /// The overlay's store directory, detached, for the container process
    /// to attach at /nix/store.
    Overlay(OwnedFd),
    /// One bind per path, made by the container process (the overlay
    /// could not be had; the launcher said why).
    PerPath,
}

/// Decide and prepare the closure-only store for one boot (None for a
/// shared store or none): build the overlay, or say in one line through
/// `notice` why it is one bind mount per path instead. The overlay's
/// content is recorded in `state_dir` for `nixspawnctl update`.
pub(crate) fn prepare_boot_store(
    spec: &Spec,
    userns: Option<&crate::userns::Plan>,
    state_dir: &Path,
    notice: &mut dyn FnMut(&str),
) -> Result<Option<BootStore>> {
    let Some(store) = &spec.store else {
        return Ok(None);
    };
    gc_root(state_dir, &store.toplevel);
    let Some(closure) = &store.closure else {
        return Ok(None);
    };
    let t0 = std::time::Instant::now();
    let mount_points = overlay::mount_points(closure, &spec.mounts);
    // The layers are idmapped where the per-path binds would come from an
    // idmapped store (mapped ownership).
    let idmap = userns
        .filter(|u| u.store.is_some())
        .and_then(|u| u.mapping.as_ref());
    let probe = toplevel_probe(&store.toplevel);
    let built = overlay::build(
        &overlay::Layout {
            paths: closure,
            mount_points: &mount_points,
        },
        &overlay::Options {
            idmap: idmap.map(AsFd::as_fd),
            owner: userns.map(|u| u.range.shift),
            probe: &probe,
        },
    );
    tracing::debug!(
        "store overlay of {} paths: {} µs{}",
        closure.len(),
        t0.elapsed().as_micros(),
        if built.is_err() { " (unavailable)" } else { "" }
    );
    match built {
        Ok(fd) => {
            write_record(state_dir, closure, &mount_points)?;
            Ok(Some(BootStore::Overlay(fd)))
        }
        Err(why) => {
            let binds = closure
                .iter()
                .filter(|e| !matches!(e.kind, EntryKind::Symlink(_)))
                .count();
            notice(&overlay::fallback_notice(binds, &why));
            Ok(Some(BootStore::PerPath))
        }
    }
}

/// `HASH-name/init` of a toplevel: what must be there through the overlay.
pub(crate) fn toplevel_probe(toplevel: &Path) -> std::path::PathBuf {
    Path::new(toplevel.file_name().unwrap_or_default()).join("init")
}

/// Record what the overlay holds (see [`overlay::record`]), replacing the
/// file atomically (a fresh name, never through what stands there).
pub(crate) fn write_record(
    state_dir: &Path,
    paths: &[Entry],
    mount_points: &[overlay::MountPoint],
) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dst = state_dir.join(overlay::record::FILE);
    let tmp = state_dir.join(format!(
        ".{}.{}.{:x}",
        overlay::record::FILE,
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&overlay::record::encode(paths, mount_points)))
        .and_then(|()| std::fs::rename(&tmp, &dst));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| Error::io("writing", dst, e))
}

/// What [`write_record`] wrote.
pub(crate) fn read_record(state_dir: &Path) -> Result<(Vec<Entry>, Vec<overlay::MountPoint>)> {
    let p = state_dir.join(overlay::record::FILE);
    let data = std::fs::read(&p).map_err(|e| Error::io("reading", &p, e))?;
    overlay::record::decode(&data).map_err(|e| Error::Protocol(format!("{}: {e}", p.display())))
}

/// Keep the toplevel (and so its closure) from the host's Nix garbage
/// collector while the guest runs: a link in the state directory, and an
/// indirect root in Nix's `gcroots/auto` pointing at it, as `nix-store
/// --add-root --indirect` makes. The state directory goes with the guest
/// (a killed launcher's too, with its janitor); the collector then drops
/// the stale root itself. Best effort: without Nix there is nothing to do.
pub(crate) fn gc_root(state_dir: &Path, toplevel: &Path) {
    if !Path::new("/nix/var/nix/gcroots").is_dir() {
        return;
    }
    let Some(name) = toplevel.file_name() else {
        return;
    };
    // The store path's hash names both links, so an update adds its own.
    let hash: String = name.to_string_lossy().chars().take(32).collect();
    let Some(machine) = state_dir.file_name() else {
        return;
    };
    let local = state_dir.join(format!("{GC_ROOT_PREFIX}{hash}"));
    let auto =
        Path::new(GC_ROOTS_AUTO).join(format!("nixspawn-{}-{hash}", machine.to_string_lossy()));
    let replace = |target: &Path, link: &Path| -> std::io::Result<()> {
        let tmp = link.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp)?;
        std::fs::rename(&tmp, link)
    };
    let made = std::fs::create_dir_all(GC_ROOTS_AUTO)
        .and_then(|()| replace(toplevel, &local))
        .and_then(|()| replace(&local, &auto));
    if let Err(e) = made {
        tracing::debug!("GC root for {}: {e}", toplevel.display());
    }
}

const GC_ROOTS_AUTO: &str = "/nix/var/nix/gcroots/auto";
const GC_ROOT_PREFIX: &str = "gcroot-";

/// Take back the roots [`gc_root`] made for this state directory, before
/// it is removed (by the launcher, its janitor, or the next holder of the
/// name), rather than leave the collector stale links to drop.
pub(crate) fn remove_gc_roots(state_dir: &Path) {
    let (Ok(entries), Some(machine)) = (std::fs::read_dir(state_dir), state_dir.file_name()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(hash) = name.to_str().and_then(|n| n.strip_prefix(GC_ROOT_PREFIX)) else {
            continue;
        };
        let auto =
            Path::new(GC_ROOTS_AUTO).join(format!("nixspawn-{}-{hash}", machine.to_string_lossy()));
        // Only a link of ours (the name is ours to reuse, not to guess at).
        if std::fs::read_link(&auto).is_ok_and(|t| t == entry.path()) {
            let _ = std::fs::remove_file(&auto);
        }
    }
}

/// Attach the launcher's closure-only store overlay (a detached mount)
/// at /nix/store below `root`, as it is: read-only down to its
/// superblock, with mount points for the user's mounts already in it.
pub(crate) fn attach_overlay(root: &Path, overlay: &OwnedFd) -> Result<()> {
    let target = Target::resolve(root, Path::new(STORE), Create::Dir(0o755))?;
    target.attach(overlay.try_clone().map_err(|e| Error::syscall("dup", e))?)?;
    Ok(())
}

/// Mount the store below `root` (the shared store, or the closure's paths
/// one bind each on a tmpfs). `staging` is an empty directory outside the
/// root, used while the store is assembled. Under a user namespace with
/// mapped ownership, `idmapped` is the launcher's read-only idmapped clone
/// of the host store (root-owned store files then belong to the guest's
/// root), and every bind is taken from it. Returns the per-path store's
/// own tmpfs, for [`seal_store`].
pub(crate) fn mount_store(
    root: &Path,
    staging: &Path,
    store: &StoreSpec,
    owner: Owner,
    idmapped: Option<&OwnedFd>,
) -> Result<Option<Mounted>> {
    let target = Target::resolve(root, Path::new(STORE), Create::Dir(0o755))?;
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| Error::syscall("dup", e));
    let Some(closure) = &store.closure else {
        match idmapped {
            Some(fd) => target.attach(dup(fd)?)?,
            None => bind_onto(Path::new(STORE), &target, true, true)?,
        };
        return Ok(None);
    };
    // One read-only view of the host store, with the mounts below it (a
    // Nix build sandbox mounts each input path on its own); binds taken
    // from a read-only mount are read-only themselves, so each path costs
    // one mount(2).
    ensure_dir(staging, 0o700)?;
    match idmapped {
        Some(fd) => crate::guest::rootfs::mounts::attach(fd, staging)?,
        None => bind(Path::new(STORE), staging, true, true)?,
    }
    // Private: binds taken from a slave would each join the host store's
    // peer group as slaves, which makes every later mount operation pay.
    crate::guest::rootfs::mounts::propagation(staging, MsFlags::MS_PRIVATE | MsFlags::MS_REC)?;
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
        MsFlags::MS_BIND | MsFlags::MS_REC,
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
