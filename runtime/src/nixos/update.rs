//! Live closure update of a running NixOS guest (`nixspawnctl update`):
//! give the guest's store the new toplevel's missing paths, repoint its
//! system profile, and run the new `switch-to-configuration`. No restart.
//!
//! A store that is one overlay gets a new overlay (what it had and the new
//! closure) slid beneath the old one at /nix/store, which is then taken
//! away: the guest sees old and new paths at once and keeps one mount,
//! whatever the number of updates. Open files, mappings and working
//! directories in the old one keep working; it goes with its last user.
//! A per-path store gets one more bind per new path.

use std::collections::{BTreeSet, HashSet};
use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::ctl::enter;
use crate::error::Failure;
use crate::error::{Error, Result};
use crate::handshake::channel;
use crate::nixos::closure::{self, ClosureSource, STORE};
use crate::nixos::{overlay, store};
use crate::spec::closure::{Entry, EntryKind};
use crate::state::{State, StateDir};
use crate::sys::{self, Forked};

/// What an update did.
#[derive(Debug)]
pub struct Update {
    /// Store entries that were added to the guest's store.
    pub added: Vec<OsString>,
    /// Exit status of switch-to-configuration.
    pub switch_status: i32,
}

/// A store path made ready on the host side, before entering the guest.
enum Prepared {
    /// The path's detached read-only mount, and whether it is a directory
    /// (known only here: inside the guest the host store is out of sight).
    Mount(OsString, OwnedFd, bool),
    Symlink(OsString, PathBuf),
}

pub fn update(
    state: &State,
    toplevel: &Path,
    source: &ClosureSource,
    action: &str,
) -> Result<Update> {
    let toplevel = closure::resolve_toplevel(toplevel)?;
    let switch = toplevel.join("bin/switch-to-configuration");
    if !switch.is_file() {
        return Err(Error::Toplevel {
            path: toplevel,
            reason: "has no bin/switch-to-configuration".into(),
        });
    }
    let pidfd = state.open_leader()?;
    let added = match (state.closure_only, state.store_overlay) {
        (true, true) => update_overlay(state, &toplevel, source, &pidfd)?,
        (true, false) => update_binds(state, &toplevel, source, &pidfd)?,
        (false, _) => {
            in_mount_namespace(&guest_mounts(state, &pidfd)?, |_| {
                store::link_profile(Path::new("/"), &toplevel)
            })?;
            Vec::new()
        }
    };
    // The new toplevel is kept from the host's garbage collector too.
    store::gc_root(&StateDir::path_for(&state.name), &toplevel);

    let argv = [switch.to_string_lossy().into_owned(), action.to_owned()];
    let switch_status = enter::exec(state, &argv, &[])?;
    Ok(Update {
        added,
        switch_status,
    })
}

/// Under a user namespace the guest's store is locked read-only (its root
/// could otherwise make it writable): its store changes in the launcher's
/// outer mount namespace instead, from which mounts propagate into the
/// guest's as locked copies. Without one, the guest is host root anyway
/// and they go straight into its namespace.
fn guest_mounts(state: &State, pidfd: &OwnedFd) -> Result<OwnedFd> {
    match state.uid_range {
        Some(_) => outer_mount_namespace(state),
        None => pidfd.try_clone().map_err(|e| Error::syscall("dup", e)),
    }
}

fn update_error(state: &State, reason: String) -> Error {
    Error::Update {
        name: state.name.to_string(),
        reason,
    }
}

/// A new overlay of what the guest's store had (as the launcher recorded
/// it, never as the guest shows it) and the new closure, in place of the
/// old one.
fn update_overlay(
    state: &State,
    toplevel: &Path,
    source: &ClosureSource,
    pidfd: &OwnedFd,
) -> Result<Vec<OsString>> {
    let state_dir = StateDir::path_for(&state.name);
    // One update at a time: each builds on the record the last one wrote.
    let _lock = lock_updates(&state_dir)?;
    let (mut paths, mount_points) = store::read_record(&state_dir)?;
    let have: HashSet<OsString> = paths.iter().map(|e| e.name.clone()).collect();
    let new: Vec<Entry> = closure::compute(toplevel, source)?
        .into_iter()
        .filter(|e| !have.contains(&e.name))
        .collect();
    let added: Vec<OsString> = new.iter().map(|e| e.name.clone()).collect();
    let ns = guest_mounts(state, pidfd)?;
    if new.is_empty() {
        in_mount_namespace(&ns, |_| store::link_profile(Path::new("/"), toplevel))?;
        return Ok(added);
    }
    paths.extend(new);
    paths.sort_by(|a, b| a.name.cmp(&b.name));
    // New paths look the way the guest's store already does.
    let mapping = match state.uid_range {
        Some(range) if state.store_idmapped => Some(crate::userns::idmap::mapping_userns(range)?),
        _ => None,
    };
    let probe = store::toplevel_probe(toplevel);
    let new_store = overlay::build(
        &overlay::Layout {
            paths: &paths,
            mount_points: &mount_points,
        },
        &overlay::Options {
            idmap: mapping.as_ref().map(AsFd::as_fd),
            owner: state.uid_range.map(|r| r.shift),
            probe: &probe,
        },
    )
    .map_err(|why| update_error(state, format!("cannot make its new store overlay: {why}")))?;
    let in_userns = state.uid_range.is_some();
    // The host's /proc: the namespace's own shows the guest's processes,
    // and this helper is none of them.
    let proc = nix::fcntl::open(
        "/proc",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::io("opening", "/proc", e.into()))?;
    in_mount_namespace(&ns, |_| {
        swap_store(&new_store, &proc, in_userns)?;
        store::link_profile(Path::new("/"), toplevel)
    })?;
    // They must have reached the guest (it may have cut its propagation);
    // only then is the record (the guest's GC roots among it) the new one.
    let leader = state.leader.unwrap_or_default();
    let guest_store = PathBuf::from(format!("/proc/{leader}/root{STORE}"));
    let missing = added
        .iter()
        .find(|name| std::fs::symlink_metadata(guest_store.join(name)).is_err());
    state.leader_alive(pidfd)?;
    if let Some(name) = missing {
        return Err(update_error(
            state,
            format!(
                "{} did not reach the guest: its /nix/store no longer receives nixspawn's mounts (unmounted or made private inside); restart it to update",
                Path::new(STORE).join(name).display()
            ),
        ));
    }
    store::write_record(&state_dir, &paths, &mount_points)?;
    Ok(added)
}

/// Held while an update changes a guest's store.
fn lock_updates(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = state_dir.join("update.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&p)
        .map_err(|e| Error::io("opening", &p, e))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::io("locking", &p, e.into()))
}

/// openat2: no symbolic link on the way (mount points were resolved when
/// they were made; mountinfo names them as they are).
const RESOLVE_NO_SYMLINKS: u64 = 0x04;

/// In the mount namespace that holds the guest's store: put `new` (a
/// detached store overlay) in place of the one at /nix/store, carrying the
/// user's mounts on it over. Beneath the old one, which then goes, so the
/// store is never missing and the mount count stays; on top where the old
/// one cannot go: the launch-time store of a guest in a user namespace,
/// whose copy in the guest's namespace is locked (that happens once; later
/// updates go beneath this one).
fn swap_store(new: &OwnedFd, proc: &OwnedFd, in_userns: bool) -> Result<()> {
    // Our own mountinfo, now the namespace's, its paths as seen from its root.
    let info = "/proc/self/mountinfo";
    let text = nix::fcntl::openat(
        proc,
        "self/mountinfo",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .and_then(|fd| std::io::read_to_string(std::fs::File::from(fd)))
    .map_err(|e| Error::io("reading", info, e))?;
    let mounts = overlay::parse_mountinfo(&text);
    let store = Path::new(STORE);
    let here: Vec<&overlay::MountInfo> = mounts.iter().filter(|m| m.mount_point == store).collect();
    let top = here
        .iter()
        .find(|m| !here.iter().any(|o| o.parent == m.id))
        .copied();
    // The user's mounts on the store, each with what is mounted below it,
    // and where each goes in the new one.
    let mut carried = Vec::new();
    for m in mounts
        .iter()
        .filter(|m| top.is_some_and(|t| m.parent == t.id) && m.mount_point != store)
    {
        let Ok(rel) = m.mount_point.strip_prefix(store) else {
            continue;
        };
        let clone = crate::guest::rootfs::mounts::clone_tree(&m.mount_point, true)?;
        let c = CString::new(rel.as_os_str().as_bytes()).map_err(|_| {
            Error::io(
                "mount point",
                &m.mount_point,
                std::io::ErrorKind::InvalidInput.into(),
            )
        })?;
        let target = sys::openat2(
            new.as_fd(),
            &c,
            libc::O_PATH,
            sys::RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS,
        )
        .map_err(|e| {
            Error::io(
                "finding the mount point in the new store",
                &m.mount_point,
                e,
            )
        })?;
        // A directory cannot go onto a file nor the reverse (the guest's
        // own store on top may disagree with the record): refused here, as
        // the kernel's EINVAL for it would read as "no moves onto a
        // detached store" below.
        let is_dir = |fd: &OwnedFd| {
            nix::sys::stat::fstat(fd)
                .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .map_err(|e| Error::io("stat", &m.mount_point, e.into()))
        };
        if is_dir(&clone)? != is_dir(&target)? {
            return Err(Error::io(
                "carrying a mount over to the new store",
                &m.mount_point,
                std::io::Error::other(
                    "a directory and a file on either side (the guest's store disagrees with the record); unmount it in the guest, or restart the guest to update it",
                ),
            ));
        }
        carried.push((clone, target, m.mount_point.clone()));
    }
    // The store as a descriptor, found with no symbolic link on the way
    // (the guest's root may have made its /nix one) and checked to be the
    // mount mountinfo shows on top there: every step below acts on it,
    // never on a path the guest could change meanwhile.
    let store_fd = open_store(top.map(|t| t.id))?;
    // The user's mounts go onto the new store while it is still detached
    // (Linux 6.15 and later), so that a failure leaves the guest's store as
    // it was: the new tree, with what was moved onto it, goes with its
    // descriptor. An older kernel refuses the first (EINVAL); then they go
    // after the move, as before, and a failure there takes the new store
    // away again where it is on top.
    let mut after: &[(OwnedFd, OwnedFd, PathBuf)] = &[];
    for (i, (clone, target, shown)) in carried.iter().enumerate() {
        match sys::move_mount_onto(clone.as_fd(), target.as_fd()) {
            Ok(()) => {}
            Err(e) if i == 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                after = &carried;
                break;
            }
            Err(e) => {
                return Err(Error::io(
                    "carrying a mount over to the new store",
                    shown,
                    e,
                ));
            }
        }
    }
    let mut beneath = top.is_some() && !(in_userns && here.len() == 1);
    if beneath {
        match sys::move_mount_beneath_onto(new.as_fd(), store_fd.as_fd()) {
            Ok(()) => {}
            // Before Linux 6.5, or a store the guest has replaced by
            // something we may not go beneath: on top, one more mount.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => beneath = false,
            Err(e) => return Err(Error::io("move_mount(beneath)", STORE, e)),
        }
    }
    if !beneath {
        sys::move_mount_onto(new.as_fd(), store_fd.as_fd())
            .map_err(|e| Error::io("move_mount", STORE, e))?;
    }
    for (clone, target, shown) in after {
        if let Err(e) = sys::move_mount_onto(clone.as_fd(), target.as_fd()) {
            // On top, the new store (and what was carried onto it) goes
            // again; beneath the old one it stays hidden there (the guest
            // still sees its old store whole).
            if !beneath {
                let _ = unmount_by_fd(proc, new);
            }
            return Err(Error::io(
                "carrying a mount over to the new store",
                shown,
                e,
            ));
        }
    }
    if beneath {
        // The old one, on top: what is open in it stays usable. Named by
        // its descriptor through the host's /proc (this helper is in the
        // host's PID namespace; the guest's /proc does not show it).
        unmount_by_fd(proc, &store_fd)
            .map_err(|e| Error::io("unmounting the old store", STORE, e.into()))?;
    }
    Ok(())
}

/// Detach the mount `fd` is the root of, named through the host's /proc.
fn unmount_by_fd(proc: &OwnedFd, fd: &OwnedFd) -> nix::Result<()> {
    let by_fd = format!("self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
    nix::unistd::fchdir(proc)
        .and_then(|()| nix::mount::umount2(by_fd.as_str(), nix::mount::MntFlags::MNT_DETACH))
}

/// The guest's /nix/store (we are in its mount namespace), opened with no
/// symbolic link on the way, and, where `top` names the mount on top
/// there, that very mount.
fn open_store(top: Option<u64>) -> Result<OwnedFd> {
    let root = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::io("opening", "/", e.into()))?;
    let store = sys::openat2(
        root.as_fd(),
        c"nix/store",
        libc::O_PATH | libc::O_DIRECTORY,
        sys::RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | sys::RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| {
        Error::io(
            "opening (no symbolic link may lead there; restart the guest to update it)",
            STORE,
            e,
        )
    })?;
    if let Some(id) = top {
        let found = sys::mount_id(store.as_fd()).map_err(|e| Error::io("statx", STORE, e))?;
        if found != id {
            return Err(Error::io(
                "finding the store's mount (the path leads elsewhere; restart the guest to update it)",
                STORE,
                std::io::ErrorKind::NotFound.into(),
            ));
        }
    }
    Ok(store)
}

/// One more bind per new path, in the per-path store's tmpfs.
fn update_binds(
    state: &State,
    toplevel: &Path,
    source: &ClosureSource,
    pidfd: &OwnedFd,
) -> Result<Vec<OsString>> {
    let leader = state.leader.unwrap_or_default();
    let wanted = closure::compute(toplevel, source)?;
    let guest_store = PathBuf::from(format!("/proc/{leader}/root{STORE}"));
    let present: BTreeSet<OsString> = std::fs::read_dir(&guest_store)
        .map_err(|e| Error::io("listing the guest's store", &guest_store, e))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    // What was listed through /proc/PID is the guest's only if it still lives.
    state.leader_alive(pidfd)?;
    // New paths look the way the guest's store already does.
    let mapping = match state.uid_range {
        Some(range) if state.store_idmapped => Some(crate::userns::idmap::mapping_userns(range)?),
        _ => None,
    };
    let mut prepared = Vec::new();
    for entry in wanted.into_iter().filter(|e| !present.contains(&e.name)) {
        prepared.push(prepare(entry, mapping.as_ref())?);
    }
    let added = prepared
        .iter()
        .map(|p| match p {
            Prepared::Mount(n, _, _) | Prepared::Symlink(n, _) => n.clone(),
        })
        .collect();
    in_mount_namespace(&guest_mounts(state, pidfd)?, |store_dir| {
        if !prepared.is_empty() {
            store::remount_store_dir(store_dir, false)?;
            let placed = place(store_dir, &prepared);
            store::remount_store_dir(store_dir, true)?;
            placed?;
        }
        store::link_profile(Path::new("/"), toplevel)
    })?;
    // They must have reached the guest (it may have unmounted its store or
    // cut its propagation).
    for p in &prepared {
        let Prepared::Mount(name, _, _) = p else {
            continue;
        };
        let inside = Path::new(&format!("/proc/{leader}/root{STORE}")).join(name);
        let host = Path::new(STORE).join(name);
        let same = |a: &Path, b: &Path| {
            use std::os::unix::fs::MetadataExt;
            match (std::fs::metadata(a), std::fs::metadata(b)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            }
        };
        if !same(&inside, &host) {
            return Err(update_error(
                state,
                format!(
                    "{} did not reach the guest: its /nix/store no longer receives nixspawn's mounts (unmounted or made private inside); restart it to update",
                    host.display()
                ),
            ));
        }
    }
    Ok(added)
}

/// A read-only detached copy of a host store path (or its link target).
fn prepare(entry: Entry, mapping: Option<&OwnedFd>) -> Result<Prepared> {
    let is_dir = match entry.kind {
        EntryKind::Symlink(target) => return Ok(Prepared::Symlink(entry.name, target)),
        EntryKind::Directory => true,
        EntryKind::File => false,
    };
    let host = Path::new(STORE).join(&entry.name);
    let fd = match mapping {
        Some(mapping) => crate::userns::idmap::idmapped_clone(&host, mapping, false, true)?,
        None => {
            let c = CString::new(host.as_os_str().as_bytes()).map_err(|_| {
                Error::io("store path", &host, std::io::ErrorKind::InvalidInput.into())
            })?;
            let fd = sys::clone_mount(&c).map_err(|e| Error::io("open_tree", &host, e))?;
            sys::mount_setattr(fd.as_fd(), false, sys::MOUNT_ATTR_RDONLY, 0)
                .map_err(|e| Error::io("mount_setattr(read-only)", &host, e))?;
            fd
        }
    };
    Ok(Prepared::Mount(entry.name, fd, is_dir))
}

/// Attach the prepared paths below the guest's /nix/store (we are in its
/// mount namespace).
fn place(store_dir: &Path, prepared: &[Prepared]) -> Result<()> {
    for p in prepared {
        match p {
            Prepared::Symlink(name, target) => {
                let dst = store_dir.join(name);
                std::os::unix::fs::symlink(target, &dst)
                    .map_err(|e| Error::io("symlink", &dst, e))?;
            }
            Prepared::Mount(name, fd, is_dir) => {
                let dst = store_dir.join(name);
                if *is_dir {
                    crate::guest::rootfs::mounts::ensure_dir(&dst, 0o555)?;
                } else {
                    crate::guest::rootfs::mounts::ensure_file(&dst, 0o444)?;
                }
                let c = CString::new(dst.as_os_str().as_bytes()).map_err(|_| {
                    Error::io("store path", &dst, std::io::ErrorKind::InvalidInput.into())
                })?;
                sys::move_mount_fd(fd.as_fd(), None, &c)
                    .map_err(|e| Error::io("move_mount", &dst, e))?;
            }
        }
    }
    Ok(())
}

/// The launcher's outer mount namespace of a guest in a user namespace,
/// taken from the launcher itself (its descriptor number is in the state).
fn outer_mount_namespace(state: &State) -> Result<OwnedFd> {
    let fd = state.outer_mounts_fd.ok_or_else(|| Error::Update {
        name: state.name.to_string(),
        reason: "it was started by a nixspawn that keeps no outer mount namespace; restart it to update its store".into(),
    })?;
    let launcher =
        sys::pidfd_open(state.supervisor).map_err(|e| Error::syscall("pidfd_open(launcher)", e))?;
    let ns = sys::pidfd_getfd(launcher.as_fd(), fd)
        .map_err(|e| Error::syscall("pidfd_getfd(launcher's mount namespace)", e))?;
    match sys::namespace_type(ns.as_fd()) {
        Ok(libc::CLONE_NEWNS) => Ok(ns),
        _ => Err(Error::Update {
            name: state.name.to_string(),
            reason: format!(
                "descriptor {fd} of its launcher (PID {}) is not a mount namespace; is that launcher still running it?",
                state.supervisor
            ),
        }),
    }
}

/// Run `work` in a child that has joined the mount namespace `ns` (a
/// namespace descriptor or a pidfd; this process keeps the host's); its
/// error comes back over a channel.
fn in_mount_namespace(ns: &OwnedFd, work: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (ours, theirs) = channel::pair()?;
    match sys::clone3(0, libc::SIGCHLD, None).map_err(|e| Error::syscall("clone3", e))? {
        Forked::Child => {
            drop(ours);
            let result = sys::setns_pidfd(ns.as_fd(), libc::CLONE_NEWNS)
                .map_err(|e| Error::syscall("setns(CLONE_NEWNS)", e))
                .and_then(|()| work(Path::new(STORE)));
            if let Err(e) = result {
                let _ = theirs.send(&Failure::new("update the guest's store", &e), &[]);
                sys::exit_now(1);
            }
            sys::exit_now(0)
        }
        Forked::Parent { pidfd: child, .. } => {
            drop(theirs);
            let child = child.ok_or_else(|| Error::Protocol("clone3 returned no pidfd".into()))?;
            let msg = ours.recv::<Failure>();
            let status = sys::pidfd_wait(child.as_fd(), sys::Wait::Block)
                .map_err(|e| Error::syscall("waitid", e))?;
            match msg? {
                Some((failure, _)) => Err(Error::Child(failure)),
                None if status == Some(sys::ExitKind::Exited(0)) => Ok(()),
                None => Err(Error::Protocol(format!(
                    "the update helper ended with {status:?}"
                ))),
            }
        }
    }
}
