//! Per-container state under /run/nixspawn/NAME, for nixspawnctl.
//!
//! The name is claimed by a lock file in /run/nixspawn/.locks (held by the
//! launcher for the container's whole life, and by its janitor until
//! cleanup is done); the directory holds `state.json` (replaced
//! atomically) and the root's mount point. A directory whose name nobody
//! holds is stale: listing skips it, and the next holder of the name
//! removes it.

pub mod lockfile;
pub mod process;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::launcher::janitor::claim::{Claim, JanitorLink};
use crate::spec::ConsoleMode;
use crate::spec::identity::MachineName;
use crate::sys;
use process::{host_boot_id, open_verified};

pub const STATE_ROOT: &str = "/run/nixspawn";

/// Names the directory that stands for `/run` in every path nixspawn and
/// nixspawnctl keep state in (`/run/nixspawn`, the UID range locks of
/// `/run/systemd/nspawn-uid`, `/run/nixspawn-chown`), for callers whose
/// `/run` is not the host's — a Nix build sandbox, a test harness. Unset,
/// the paths are systemd-nspawn's and its range locks are shared.
pub const RUNTIME_DIR_ENV: &str = "NIXSPAWN_RUNTIME_DIR";

/// `path` (one of the `/run/...` defaults) with `/run` replaced by
/// `$NIXSPAWN_RUNTIME_DIR` when that is set to an absolute path.
pub fn run_path(path: &str) -> PathBuf {
    relocate(path, std::env::var_os(RUNTIME_DIR_ENV).as_deref())
}

fn relocate(path: &str, dir: Option<&std::ffi::OsStr>) -> PathBuf {
    match (dir.map(Path::new), path.strip_prefix("/run/")) {
        (Some(dir), Some(rest)) if dir.is_absolute() => dir.join(rest),
        _ => PathBuf::from(path),
    }
}

/// What nixspawnctl can know about a running container.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub name: MachineName,
    pub uuid: String,
    /// The tree or state directory; None for an empty tmpfs root.
    pub directory: Option<PathBuf>,
    /// The NixOS toplevel the guest booted from, if any.
    pub toplevel: Option<PathBuf>,
    /// The guest's /nix/store holds only the closure (not the host store).
    pub closure_only: bool,
    pub ephemeral: bool,
    pub boot: bool,
    /// PID 1 of the guest, as the host sees it; None between boots.
    pub leader: Option<i32>,
    /// Who `leader` is: checked before the PID is signalled or entered.
    #[serde(default)]
    pub leader_identity: Option<crate::state::process::ProcessIdentity>,
    /// The launcher's PID.
    pub supervisor: i32,
    /// Who `supervisor` is.
    #[serde(default)]
    pub supervisor_identity: Option<crate::state::process::ProcessIdentity>,
    /// The host's boot ID when this was written (PIDs mean nothing after
    /// the host reboots, and /run need not be a tmpfs).
    #[serde(default)]
    pub host_boot_id: String,
    /// Which boot of the guest `leader` belongs to: 1 for the first, one
    /// more for each reboot the launcher restarts it for.
    #[serde(default)]
    pub boot_count: u32,
    /// The payload cgroup's path on the host.
    pub cgroup: PathBuf,
    pub kill_signal: Option<i32>,
    pub console: ConsoleMode,
    pub private_network: bool,
    /// The host UID/GID range of the guest's user namespace, if any.
    pub uid_range: Option<crate::spec::userns::UidRange>,
    /// The guest's store is an idmapped view (root-owned files are its root's).
    #[serde(default)]
    pub store_idmapped: bool,
    /// The closure-only store is one overlay mount (not one bind per path);
    /// what it holds is recorded in the state directory.
    #[serde(default)]
    pub store_overlay: bool,
    /// The payload's capabilities (bit mask, as /proc/PID/status shows them).
    pub capabilities: u64,
    /// The seccomp filter's adjustments; None when seccomp is off.
    pub syscall_filter: Option<crate::spec::filter::Adjustments>,
    pub no_new_privileges: bool,
    /// With a user namespace: the launcher's descriptor (in the supervisor
    /// process) of the mount namespace the guest's mounts propagate from.
    #[serde(default)]
    pub outer_mounts_fd: Option<i32>,
    /// Microseconds since the epoch when the current payload was started.
    pub started_usec: u64,
    /// The guest sent READY=1.
    pub ready: bool,
    /// The last STATUS= the guest sent.
    pub status: Option<String>,
    /// "running", "stopping", "restarting" (between boots: no leader) or
    /// "exited" (the payload ended; the launcher is cleaning up).
    pub phase: String,
}

impl State {
    /// The tree or state directory, or what stands for it.
    pub fn root_description(&self) -> String {
        self.directory
            .as_ref()
            .map_or_else(|| "(empty tmpfs)".to_owned(), |d| d.display().to_string())
    }
}

/// Where the machine names' locks live: one file per name, held for the
/// launcher's whole life (and its janitor's cleanup), unlinked by its
/// holder on release (see lockfile.rs). Not a machine name, as it starts
/// with a dot.
pub const LOCK_DIR: &str = "/run/nixspawn/.locks";

/// The lock file of a machine name.
pub fn lock_path(name: &MachineName) -> PathBuf {
    run_path(LOCK_DIR).join(name.as_str())
}

/// What [`ensure_root_dir`] does with the mode of a directory that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Set it to the mode asked for: the directory is ours.
    SetMode,
    /// Leave it: the directory is shared with others (such as `/run`).
    KeepMode,
}

/// Create `dir` (and what is missing above it) with `mode`, whatever the
/// umask. One that exists must be a directory (not a symlink) owned by
/// root; `existing` says whether its mode is set to `mode` too.
pub(crate) fn ensure_root_dir(dir: &Path, mode: u32, existing: Existing) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let created = match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                ensure_root_dir(parent, 0o755, Existing::KeepMode)?;
            }
            return ensure_root_dir(dir, mode, existing);
        }
        Err(e) => return Err(Error::io("creating", dir, e)),
    };
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| Error::io("opening", dir, e))?;
    let meta = f.metadata().map_err(|e| Error::io("stat", dir, e))?;
    if meta.uid() != 0 {
        return Err(Error::io(
            "checking",
            dir,
            io::Error::other(format!(
                "owned by uid {}, not root; remove it and run again",
                meta.uid()
            )),
        ));
    }
    if (created || existing == Existing::SetMode) && meta.mode() & 0o7777 != mode {
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("chmod", dir, e))?;
    }
    Ok(())
}

/// The claimed state directory of one container. The claim is the name's
/// lock; whoever holds it owns the directory, so a directory found there
/// by a new holder is a dead run's, and removing it races nobody.
pub struct StateDir {
    path: PathBuf,
    lock_path: PathBuf,
    lock: Option<File>,
}

impl StateDir {
    pub fn path_for(name: &MachineName) -> PathBuf {
        run_path(STATE_ROOT).join(name.as_str())
    }

    /// Claim the name and its directory, refusing if a live container
    /// holds it. The janitor hears of the lock before and after it is taken.
    pub(crate) fn claim(name: &MachineName, janitor: &JanitorLink) -> Result<Self> {
        ensure_root_dir(&run_path(STATE_ROOT), 0o755, Existing::SetMode)?;
        ensure_root_dir(&run_path(LOCK_DIR), 0o755, Existing::SetMode)?;
        let path = Self::path_for(name);
        let lock_path = lock_path(name);
        janitor.note(
            &Claim::Name {
                name: name.clone(),
                lock: lock_path.clone(),
                state_dir: path.clone(),
            },
            None,
        )?;
        let Some(lock) = lockfile::acquire(&lock_path)? else {
            return Err(Error::NameInUse {
                name: name.to_string(),
                path,
            });
        };
        janitor.note(&Claim::NameHeld, Some(lock.as_fd()))?;
        let dir = StateDir {
            path,
            lock_path,
            lock: Some(lock),
        };
        // Whatever is at the path now was left by a run that died.
        remove_state_dir(&dir.path)?;
        dir.make_dir(&dir.path)?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A directory of ours with mode 0755, whatever the umask (never
    /// through a symlink standing in its place).
    fn make_dir(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        match fs::DirBuilder::new().mode(0o755).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir != self.path => {}
            Err(e) => return Err(Error::io("creating", dir, e)),
        }
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir)
            .and_then(|d| d.set_permissions(fs::Permissions::from_mode(0o755)))
            .map_err(|e| Error::io("chmod", dir, e))
    }

    /// An empty directory inside the state dir to assemble the root on.
    pub fn mount_point(&self) -> PathBuf {
        self.path.join("root")
    }

    /// Create the mount point (mode 0755).
    pub fn make_mount_point(&self) -> Result<PathBuf> {
        let p = self.mount_point();
        self.make_dir(&p)?;
        Ok(p)
    }

    /// Replace state.json: written to a fresh file (O_EXCL, never through
    /// whatever someone put in the directory), mode 0644, then renamed.
    pub fn write(&self, state: &State) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dst = self.path.join("state.json");
        let data = serde_json::to_vec_pretty(state).map_err(|e| Error::Protocol(e.to_string()))?;
        let (tmp, mut f) = self.temp_file("state.json")?;
        let written = f
            .set_permissions(fs::Permissions::from_mode(0o644))
            .and_then(|()| f.write_all(&data))
            .map_err(|e| Error::io("writing", &tmp, e))
            .and_then(|()| fs::rename(&tmp, &dst).map_err(|e| Error::io("renaming", &dst, e)));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// A new file `.BASE.XXXXXXXX` in the directory, created exclusively.
    fn temp_file(&self, base: &str) -> Result<(PathBuf, File)> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let mut last = None;
        for _ in 0..16 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let tmp = self.path.join(format!(
                ".{base}.{:08x}",
                nanos ^ seq.rotate_left(16) ^ std::process::id()
            ));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
            {
                Ok(f) => return Ok((tmp, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((tmp, e)),
                Err(e) => return Err(Error::io("creating", tmp, e)),
            }
        }
        let (tmp, e) = last.expect("at least one attempt");
        Err(Error::io("creating", tmp, e))
    }

    /// Remove the directory, then let go of the name (idempotent).
    pub fn release(&mut self) -> Result<()> {
        let removed = remove_state_dir(&self.path);
        if removed.is_ok()
            && let Some(lock) = self.lock.take()
        {
            lockfile::release(&self.lock_path, lock);
        }
        removed
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// Remove a state directory (or whatever stands at its path).
pub fn remove_state_dir(path: &Path) -> Result<()> {
    crate::nixos::store::remove_gc_roots(path);
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", path, e)),
    }
}

/// True while some launcher (or its janitor) holds the name.
fn is_live(name: &MachineName) -> bool {
    lockfile::is_held(&lock_path(name))
}

/// The state of a live container.
pub fn load(name: &MachineName) -> Result<State> {
    let dir = StateDir::path_for(name);
    if !is_live(name) {
        return Err(Error::NoSuchContainer {
            name: name.to_string(),
        });
    }
    let p = dir.join("state.json");
    let data = fs::read(&p).map_err(|e| Error::io("reading", &p, e))?;
    serde_json::from_slice(&data).map_err(|e| Error::Protocol(format!("{}: {e}", p.display())))
}

/// All live containers, sorted by name. Stale directories are skipped.
pub fn list() -> Result<Vec<State>> {
    let root = run_path(STATE_ROOT);
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", &root, e)),
    };
    let mut out: Vec<State> = entries
        .flatten()
        .filter_map(|e| MachineName::new(e.file_name().to_str()?).ok())
        .filter_map(|n| load(&n).ok())
        .collect();
    out.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    Ok(out)
}

impl State {
    fn check_boot_id(&self, what: &'static str, pid: i32) -> Result<()> {
        if self.host_boot_id.is_empty() || self.host_boot_id != host_boot_id() {
            return Err(Error::StaleProcess {
                name: self.name.to_string(),
                what,
                pid,
                reason: "recorded before the host last booted".into(),
            });
        }
        Ok(())
    }

    /// A pidfd for the guest's PID 1 of the current boot, checked to be
    /// that process. Refused while the guest is between boots.
    pub fn open_leader(&self) -> Result<OwnedFd> {
        let (Some(pid), Some(id)) = (self.leader, self.leader_identity.as_ref()) else {
            return Err(Error::NotRunning {
                name: self.name.to_string(),
                phase: self.phase.clone(),
            });
        };
        if self.phase == "restarting" {
            return Err(Error::NotRunning {
                name: self.name.to_string(),
                phase: self.phase.clone(),
            });
        }
        self.check_boot_id("leader", pid)?;
        open_verified(self.name.as_str(), "leader", pid, id)
    }

    /// A pidfd for the launcher, checked to be that process.
    pub fn open_supervisor(&self) -> Result<OwnedFd> {
        let pid = self.supervisor;
        let Some(id) = self.supervisor_identity.as_ref() else {
            return Err(Error::StaleProcess {
                name: self.name.to_string(),
                what: "launcher",
                pid,
                reason: "recorded without its identity (by an older nixspawn)".into(),
            });
        };
        self.check_boot_id("launcher", pid)?;
        open_verified(self.name.as_str(), "launcher", pid, id)
    }

    /// `look` at the guest's root as the host reaches it (`/proc/PID/root`
    /// of the leader); what it found is the guest's only if the leader
    /// still lives after it, which is checked.
    pub fn through_root<T>(&self, look: impl FnOnce(&Path) -> T) -> Result<T> {
        let leader = self.open_leader()?;
        let root = PathBuf::from(format!("/proc/{}/root", self.leader.unwrap_or_default()));
        let found = look(&root);
        self.leader_alive(&leader)?;
        Ok(found)
    }

    /// Whether `pidfd` (from [`State::open_leader`]) is still alive: for
    /// reads through /proc/PID after the check, which are the leader's
    /// only if it still lives after them.
    pub fn leader_alive(&self, pidfd: &OwnedFd) -> Result<()> {
        sys::pidfd_send_signal(pidfd.as_fd(), 0).map_err(|_| Error::StaleProcess {
            name: self.name.to_string(),
            what: "leader",
            pid: self.leader.unwrap_or(0),
            reason: "gone".into(),
        })
    }
}

#[cfg(test)]
mod run_path_tests {
    use super::*;

    #[test]
    fn the_runtime_dir_replaces_run_in_every_state_path() {
        let d = Some(std::ffi::OsStr::new("/build/run"));
        assert_eq!(relocate(STATE_ROOT, d), Path::new("/build/run/nixspawn"));
        assert_eq!(
            relocate("/run/systemd/nspawn-uid", d),
            Path::new("/build/run/systemd/nspawn-uid")
        );
        assert_eq!(relocate(STATE_ROOT, None), Path::new(STATE_ROOT));
        // A relative value is ignored rather than resolved against the cwd.
        let rel = Some(std::ffi::OsStr::new("run"));
        assert_eq!(relocate(STATE_ROOT, rel), Path::new(STATE_ROOT));
    }
}
