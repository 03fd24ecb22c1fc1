//! The janitor: a small helper forked before the guest starts that removes
//! the guest's cgroups and state directory if the launcher dies without
//! doing so itself (SIGKILL, OOM kill). It waits on a pipe from the
//! launcher: a byte means "done, nothing to do", end-of-file means the
//! launcher is gone. A machine registered with machined is unregistered.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};

use crate::cgroup::CgroupLayout;
use crate::error::{Error, Result};
use crate::identity::MachineName;
use crate::sys::{self, Forked};

pub struct Janitor {
    dismiss: OwnedFd,
}

impl Janitor {
    /// Fork the janitor. It keeps a copy of `lock` so the container's name
    /// stays claimed until the cleanup is complete.
    ///
    /// `locks` are the held lock files (the name's, a UID range's) with the
    /// paths to remove once cleanup is done (None: leave the file).
    pub fn spawn(
        state_dir: PathBuf,
        cgroups: CgroupLayout,
        locks: Vec<(OwnedFd, Option<PathBuf>)>,
        registered: Option<MachineName>,
    ) -> Result<Self> {
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::syscall("pipe2", e))?;
        match sys::fork().map_err(|e| Error::syscall("fork", e))? {
            Forked::Parent { .. } => {
                drop(rx);
                Ok(Janitor { dismiss: tx })
            }
            Forked::Child => {
                drop(tx);
                watch(rx, locks, &state_dir, &cgroups, registered.as_ref())
            }
        }
    }

    /// The launcher cleaned up itself: let the janitor go.
    pub fn dismiss(self) {
        let _ = nix::unistd::write(&self.dismiss, b"D");
    }
}

fn watch(
    rx: OwnedFd,
    locks: Vec<(OwnedFd, Option<PathBuf>)>,
    state_dir: &std::path::Path,
    cgroups: &CgroupLayout,
    registered: Option<&MachineName>,
) -> ! {
    // Out of the launcher's session and process group, deaf to the signals
    // a terminal or a process-group kill sends, holding only what it needs.
    let _ = nix::unistd::setsid();
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None);
    let keep: Vec<i32> = std::iter::once(rx.as_raw_fd())
        .chain(locks.iter().map(|(fd, _)| fd.as_raw_fd()))
        .collect();
    let highest = keep.iter().copied().max().unwrap_or(2);
    let _ = close_others(&keep, highest);
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsFd;
        for fd in 0..=2 {
            let _ = sys::dup_onto_stdio(null.as_fd(), fd);
        }
    }
    let mut byte = [0u8; 1];
    let n = loop {
        match nix::unistd::read(&rx, &mut byte) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    if n != Ok(1) {
        let _ = cgroups.destroy();
        // machined would drop the machine with its unit anyway; say so now.
        if let Some(name) = registered {
            crate::machined::unregister_any(name);
        }
        let _ = crate::state::remove_state_dir(state_dir);
        // Unlinked while still held, as systemd does with its lock files.
        for path in locks.iter().filter_map(|(_, p)| p.as_ref()) {
            let _ = std::fs::remove_file(path);
        }
    }
    drop(locks);
    sys::exit_now(0)
}

/// Close every inherited descriptor except `keep` (all below `highest+1`
/// are checked one by one; everything above goes at once).
fn close_others(keep: &[i32], highest: i32) -> std::io::Result<()> {
    for fd in 3..highest {
        if !keep.contains(&fd) {
            sys::close_inherited(fd);
        }
    }
    sys::close_from((highest + 1) as libc::c_uint)
}
