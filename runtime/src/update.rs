//! Live closure update of a running NixOS guest (`nixspawnctl update`):
//! mount the new toplevel's missing store paths into the guest's mount
//! namespace, repoint its system profile, and run the new
//! `switch-to-configuration`. No restart.

use std::collections::BTreeSet;
use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::channel::{self, ToParent};
use crate::closure::{self, ClosureSource, Entry, EntryKind, STORE};
use crate::enter;
use crate::error::{Error, Result};
use crate::state::State;
use crate::store;
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
            Some(range) if state.store_idmapped => Some(crate::idmap::mapping_userns(range)?),
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
    in_guest_mount_namespace(&pidfd, |store_dir| {
        if !prepared.is_empty() {
            store::remount_store_dir(store_dir, false)?;
            let placed = place(store_dir, &prepared);
            store::remount_store_dir(store_dir, true)?;
            placed?;
        }
        store::link_profile(Path::new("/"), &toplevel)
    })?;

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
        Some(mapping) => crate::idmap::idmapped_clone(&host, mapping, false, true)?,
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
                    crate::mounts::ensure_dir(&dst, 0o555)?;
                } else {
                    crate::mounts::ensure_file(&dst, 0o444)?;
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

/// Run `work` in a child that has joined the guest's mount namespace (so
/// this process keeps the host's); its error comes back over a channel.
fn in_guest_mount_namespace(pidfd: &OwnedFd, work: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (ours, theirs) = channel::pair()?;
    match sys::clone3(0, libc::SIGCHLD, None).map_err(|e| Error::syscall("clone3", e))? {
        Forked::Child => {
            drop(ours);
            let result = sys::setns_pidfd(pidfd.as_fd(), libc::CLONE_NEWNS)
                .map_err(|e| Error::syscall("setns(CLONE_NEWNS)", e))
                .and_then(|()| work(Path::new(STORE)));
            if let Err(e) = result {
                let _ = theirs.send(
                    &ToParent::Failed {
                        step: "update the guest's store".into(),
                        message: e.to_string(),
                    },
                    &[],
                );
                sys::exit_now(1);
            }
            sys::exit_now(0)
        }
        Forked::Parent { pidfd: child, .. } => {
            drop(theirs);
            let child = child.ok_or_else(|| Error::Protocol("clone3 returned no pidfd".into()))?;
            let msg = ours.recv();
            let status =
                sys::pidfd_wait(child.as_fd(), false).map_err(|e| Error::syscall("waitid", e))?;
            match msg? {
                Some((ToParent::Failed { step, message }, _)) => {
                    Err(Error::Child { step, message })
                }
                Some((other, _)) => Err(Error::Protocol(format!("unexpected message {other:?}"))),
                None if status == Some(sys::ExitKind::Exited(0)) => Ok(()),
                None => Err(Error::Protocol(format!(
                    "the update helper ended with {status:?}"
                ))),
            }
        }
    }
}
