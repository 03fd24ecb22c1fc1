//! Per-container state under /run/nixspawn/NAME, for nixspawnctl.
//!
//! The directory holds `lock` (flock'd exclusively by the launcher for the
//! container's whole life, and by its janitor until cleanup is done) and
//! `state.json` (replaced atomically). A directory whose lock nobody holds
//! is stale and is removed by whoever finds it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};
use crate::identity::MachineName;
use crate::spec::ConsoleMode;

pub const STATE_ROOT: &str = "/run/nixspawn";

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
    pub leader_identity: Option<crate::process::ProcessIdentity>,
    /// The launcher's PID.
    pub supervisor: i32,
    /// Who `supervisor` is.
    #[serde(default)]
    pub supervisor_identity: Option<crate::process::ProcessIdentity>,
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
    pub uid_range: Option<crate::userns::UidRange>,
    /// The guest's store is an idmapped view (root-owned files are its root's).
    #[serde(default)]
    pub store_idmapped: bool,
    /// The payload's capabilities (bit mask, as /proc/PID/status shows them).
    pub capabilities: u64,
    /// The seccomp filter's adjustments; None when seccomp is off.
    pub syscall_filter: Option<crate::seccomp::Adjustments>,
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

/// The claimed state directory of one container.
pub struct StateDir {
    path: PathBuf,
    lock: Flock<File>,
}

impl StateDir {
    pub fn path_for(name: &MachineName) -> PathBuf {
        Path::new(STATE_ROOT).join(name.as_str())
    }

    /// Claim the directory for `name`, refusing if a live container holds it.
    pub fn claim(name: &MachineName) -> Result<Self> {
        fs::create_dir_all(STATE_ROOT).map_err(|e| Error::io("creating", STATE_ROOT, e))?;
        let path = Self::path_for(name);
        for _ in 0..2 {
            match fs::create_dir(&path) {
                Ok(()) => {
                    let lock = open_lock(&path)?;
                    let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
                        .map_err(|(_, e)| Error::io("locking", path.join("lock"), e.into()))?;
                    return Ok(StateDir { path, lock });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if is_live(&path) {
                        return Err(Error::NameInUse {
                            name: name.to_string(),
                            path,
                        });
                    }
                    fs::remove_dir_all(&path)
                        .map_err(|e| Error::io("removing stale state", &path, e))?;
                }
                Err(e) => return Err(Error::io("creating", &path, e)),
            }
        }
        Err(Error::NameInUse {
            name: name.to_string(),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock's descriptor, for the janitor to keep the claim alive.
    pub fn lock_fd(&self) -> io::Result<OwnedFd> {
        self.lock.as_fd().try_clone_to_owned()
    }

    /// An empty directory inside the state dir to assemble the root on.
    pub fn mount_point(&self) -> PathBuf {
        self.path.join("root")
    }

    pub fn write(&self, state: &State) -> Result<()> {
        let tmp = self.path.join(".state.json.tmp");
        let dst = self.path.join("state.json");
        let data = serde_json::to_vec_pretty(state).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(|e| Error::io("writing", &tmp, e))?;
        f.write_all(&data)
            .map_err(|e| Error::io("writing", &tmp, e))?;
        fs::rename(&tmp, &dst).map_err(|e| Error::io("renaming", &dst, e))
    }

    /// Remove the directory (the lock stays held until we are dropped).
    pub fn remove(&self) -> Result<()> {
        remove_state_dir(&self.path)
    }
}

pub fn remove_state_dir(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", path, e)),
    }
}

fn open_lock(dir: &Path) -> Result<File> {
    let p = dir.join("lock");
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&p)
        .map_err(|e| Error::io("opening", p, e))
}

/// True while some launcher (or its janitor) holds the directory's lock.
fn is_live(dir: &Path) -> bool {
    let Ok(f) = File::open(dir.join("lock")) else {
        return false;
    };
    match Flock::lock(f, FlockArg::LockSharedNonblock) {
        Ok(_released_on_drop) => false,
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// The state of a live container.
pub fn load(name: &MachineName) -> Result<State> {
    let dir = StateDir::path_for(name);
    if !is_live(&dir) {
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
    let entries = match fs::read_dir(STATE_ROOT) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", STATE_ROOT, e)),
    };
    let mut out: Vec<State> = entries
        .flatten()
        .filter_map(|e| MachineName::new(e.file_name().to_str()?).ok())
        .filter_map(|n| load(&n).ok())
        .collect();
    out.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    Ok(out)
}
