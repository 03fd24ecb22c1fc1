//! Live closure update of a running NixOS guest (`nixspawnctl update`):
//! mount the new toplevel's missing store paths into the guest's mount
//! namespace, repoint its system profile, and run the new
//! `switch-to-configuration`. No restart.

use std::collections::BTreeSet;
use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::ctl::enter;
use crate::error::Failure;
use crate::error::{Error, Result};
use crate::handshake::channel;
use crate::nixos::closure::{self, ClosureSource, STORE};
use crate::nixos::store;
use crate::spec::closure::{Entry, EntryKind};
use crate::state::State;
use crate::sys::{self, Forked};

/// What an update did.
#[derive(Debug)]
pub struct Update {
    /// Store entries that were mounted into the guest.
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
    let leader = state.leader.unwrap_or_default();

    let mut prepared = Vec::new();
    if state.closure_only {
        let wanted = closure::compute(&toplevel, source)?;
        let guest_store = PathBuf::from(format!("/proc/{leader}/root{STORE}"));
        let present: BTreeSet<OsString> = std::fs::read_dir(&guest_store)
            .map_err(|e| Error::io("listing the guest's store", &guest_store, e))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        // What was listed through /proc/PID is the guest's only if it still lives.
        state.leader_alive(&pidfd)?;
        // New paths look the way the guest's store already does.
        let mapping = match state.uid_range {
            Some(range) if state.store_idmapped => {
                Some(crate::userns::idmap::mapping_userns(range)?)
            }
            _ => None,
        };
        for entry in wanted.into_iter().filter(|e| !present.contains(&e.name)) {
            prepared.push(prepare(entry, mapping.as_ref())?);
        }
    }
    let added = prepared
        .iter()
        .map(|p| match p {
            Prepared::Mount(n, _, _) | Prepared::Symlink(n, _) => n.clone(),
        })
        .collect();
    // Under a user namespace the guest's store is locked read-only (its
    // root could otherwise make it writable): the paths are mounted in the
    // launcher's outer mount namespace instead, from which they propagate
    // into the guest's as locked copies. Without one, the guest is host
    // root anyway and they go straight into its namespace.
    let mount_ns = match state.uid_range {
        Some(_) => outer_mount_namespace(state)?,
        None => pidfd.try_clone().map_err(|e| Error::syscall("dup", e))?,
    };
    in_mount_namespace(&mount_ns, |store_dir| {
        if !prepared.is_empty() {
            store::remount_store_dir(store_dir, false)?;
            let placed = place(store_dir, &prepared);
            store::remount_store_dir(store_dir, true)?;
            placed?;
        }
        store::link_profile(Path::new("/"), &toplevel)
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
            return Err(Error::Update {
                name: state.name.to_string(),
                reason: format!(
                    "{} did not reach the guest: its /nix/store no longer receives nixspawn's mounts (unmounted or made private inside); restart it to update",
                    host.display()
                ),
            });
        }
    }

    let argv = [switch.to_string_lossy().into_owned(), action.to_owned()];
    let switch_status = enter::exec(state, &argv, &[])?;
    Ok(Update {
        added,
        switch_status,
    })
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
