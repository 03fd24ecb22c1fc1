//! The janitor: a small helper forked before the launcher claims anything,
//! which releases whatever the launcher had claimed if it dies without
//! doing so itself (SIGKILL, OOM kill), at whatever point that happens.
//!
//! The launcher tells it about each claim as it makes it, over a
//! socketpair: before taking a lock, the lock's path (so a lock taken but
//! not yet reported is still found: it is cleared if nobody holds it);
//! once held, its descriptor (so the janitor keeps the claim alive until
//! its cleanup is done, and knows the claim is still its own); the cgroups
//! before they are created; a scope and a machined registration once they
//! exist, and again when they are let go. `Done` means the launcher
//! released everything; `ReleaseRest`, end-of-file or the launcher's exit
//! mean the janitor releases what is still claimed — and only that: the
//! cgroups, state and registration are removed only while the janitor
//! still holds the machine name's lock, so a newer claim of the same name
//! is never touched.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};

pub(crate) mod claim;

use crate::cgroup::CgroupLayout;
use crate::error::{Error, Result};
use crate::handshake::channel::{self, Channel};
use crate::host::machined::Via;
use crate::spec::identity::MachineName;
use crate::state::lockfile;
use crate::sys::{self};
use claim::{Claim, JanitorLink};

pub(crate) struct Janitor {
    link: JanitorLink,
    pid: libc::pid_t,
}

impl Janitor {
    /// Fork the janitor. The caller must be single-threaded and must not
    /// have claimed anything yet (nothing claimed before is covered).
    pub fn spawn() -> Result<Self> {
        let launcher = nix::unistd::getpid().as_raw();
        let (ours, theirs) = channel::pair()?;
        let pid = sys::fork_helper(vec![theirs.into_fd()], launcher, |mut fds, launcher| {
            watch(Channel::from_fd(fds.remove(0)), launcher)
        })
        .map_err(|e| Error::syscall("fork", e))?;
        Ok(Janitor {
            link: JanitorLink { channel: ours },
            pid,
        })
    }

    pub fn link(&self) -> &JanitorLink {
        &self.link
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The launcher is done: if it `released` everything itself the
    /// janitor just goes, otherwise it releases what is left (as after a
    /// SIGKILL). It is waited for, so that nothing of this run outlives the
    /// launcher — unless `network_tail`: then it checks that the links of
    /// the guest's network namespace went with it and removes an emptied
    /// zone once the launcher is gone (that takes the kernel tens of
    /// milliseconds a link, which no launcher's exit should wait for).
    pub fn dismiss(self, released: bool, network_tail: bool) {
        let last = if released {
            Claim::Done
        } else {
            Claim::ReleaseRest
        };
        let _ = self.link.note(&last, None);
        if !(released && network_tail) {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.pid), None);
        }
    }
}

/// The name's claim as the janitor knows it.
struct NameClaim {
    name: MachineName,
    lock: PathBuf,
    state_dir: PathBuf,
    held: Option<File>,
}

/// Everything the launcher said it claimed and has not let go of.
#[derive(Default)]
struct Claims {
    name: Option<NameClaim>,
    /// Lock files (UID range blocks, a unit's cgroup), released after
    /// the guest's cgroups are gone.
    locks: Vec<(PathBuf, Option<File>)>,
    cgroups: Option<CgroupLayout>,
    scope: Option<String>,
    registered: Option<Via>,
    network: crate::network::cleanup::Leftovers,
    work_dirs: Vec<PathBuf>,
}

impl Claims {
    fn apply(&mut self, claim: Claim, mut fds: Vec<OwnedFd>) {
        let fd = (!fds.is_empty()).then(|| File::from(fds.remove(0)));
        match claim {
            Claim::Name {
                name,
                lock,
                state_dir,
            } => {
                self.name = Some(NameClaim {
                    name,
                    lock,
                    state_dir,
                    held: None,
                })
            }
            Claim::NameHeld => {
                if let Some(n) = &mut self.name {
                    n.held = fd;
                }
            }
            Claim::Range { path } | Claim::Unit { path } => self.locks.push((path, None)),
            Claim::RangeHeld { path } | Claim::UnitHeld { path } => {
                if let Some(r) = self.locks.iter_mut().rev().find(|r| r.0 == path) {
                    r.1 = fd;
                }
            }
            Claim::Cgroups(layout) => self.cgroups = Some(*layout),
            Claim::Scope(unit) => self.scope = unit,
            Claim::Registered(via) => self.registered = via,
            Claim::Network(c) => self.network.apply(c, fd.map(OwnedFd::from)),
            Claim::WorkDir(path) => self.work_dirs.push(path),
            Claim::Done | Claim::ReleaseRest => {}
        }
    }

    /// The launcher is gone: release what it still held.
    fn release(mut self) {
        // Network records are only ever this run's (links by index and
        // name, a zone only once it has no port), so they are undone
        // whoever holds the name now; with the guest's processes gone first
        // where they are still ours to kill.
        let network = std::mem::take(&mut self.network);
        let mut network = Some(network);
        if let Some(n) = self.name {
            match n.held {
                // Still ours: the guest, its cgroups, registration and state.
                Some(held) if lockfile::names(&n.lock, &held) => {
                    if let Some(cgroups) = &self.cgroups {
                        let _ = cgroups.destroy();
                        if self.scope.is_some() {
                            cgroups.kill_scope();
                        }
                    }
                    if let Some(net) = network.take() {
                        net.release();
                    }
                    if let Some(via) = self.registered {
                        crate::host::machined::unregister(None, &n.name, via);
                    }
                    let _ = crate::state::remove_state_dir(&n.state_dir);
                    for dir in &self.work_dirs {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    lockfile::release(&n.lock, held);
                }
                // Released by the launcher already, or someone else's now.
                Some(_) => {}
                // Locked, perhaps, but not yet reported.
                None => lockfile::clear_if_unheld(&n.lock),
            }
        }
        for (path, held) in self.locks {
            match held {
                Some(held) => lockfile::release(&path, held),
                None => lockfile::clear_if_unheld(&path),
            }
        }
        if let Some(net) = network {
            net.release();
        }
    }
}

fn watch(channel: Channel, launcher: libc::pid_t) -> ! {
    // Out of the launcher's session and process group, deaf to the signals
    // a terminal or a process-group kill sends, holding only what it needs.
    let _ = nix::unistd::setsid();
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None);
    // The launcher's exit, seen even while a child of its (a container
    // process before its exec) still holds the launcher's end.
    let launcher_fd = sys::pidfd_open(launcher)
        .ok()
        .filter(|_| nix::unistd::getppid().as_raw() == launcher);
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..=2 {
            let _ = sys::dup_onto_stdio(null.as_fd(), fd);
        }
    }
    let mut claims = Claims::default();
    loop {
        use nix::poll::{PollFd, PollFlags};
        let mut fds = vec![PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
        if let Some(l) = &launcher_fd {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        let Ok(ready) = crate::os::poll_ready(&mut fds) else {
            break;
        };
        drop(fds);
        let (message, launcher_gone) = (ready[0], ready.get(1) == Some(&true));
        // What the launcher sent before it died is still queued: read it first.
        if message {
            match channel.recv::<Claim>() {
                Ok(Some((Claim::Done, _))) => {
                    // What the launcher left to us: host-side links that
                    // must vanish with the guest's namespace, an emptied zone.
                    claims.network.release();
                    sys::exit_now(0)
                }
                Ok(Some((Claim::ReleaseRest, _))) => break,
                Ok(Some((claim, fds))) => claims.apply(claim, fds),
                Ok(None) | Err(_) => break,
            }
        } else if launcher_gone {
            break;
        }
    }
    claims.release();
    sys::exit_now(0)
}
