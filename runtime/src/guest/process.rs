//! The payload process's own settings, applied as systemd-nspawn's inner
//! child applies them: OOM score, CPU affinity, personality and resource
//! limits (with nspawn's defaults for PID 1); the guest user `--user`
//! names (looked up in the guest's own passwd and group files, after the
//! pivot); and the stub init of `--as-pid2`.

use std::io::Write as _;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::spec::process::{self, Process};
use crate::sys;

/// OOM score, CPU affinity, personality and every resource limit (those
/// not given: nspawn's defaults). Run by the process the guest's PID 1
/// comes from while it still has the host's privileges and /proc (so the
/// host's PID 1 is /proc/1), and inherited from there.
pub(crate) fn apply_limits(p: &Process) -> Result<()> {
    if let Some(n) = p.oom_score_adjust {
        let path = Path::new("/proc/self/oom_score_adj");
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(n.to_string().as_bytes()))
            .map_err(|e| Error::io("writing", path, e))?;
    }
    if let Some(cpus) = &p.cpu_affinity {
        let mut set = nix::sched::CpuSet::new();
        for &c in cpus {
            set.set(c)
                .map_err(|e| Error::syscall("sched_setaffinity", e))?;
        }
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .map_err(|e| Error::syscall("sched_setaffinity", e))?;
    }
    if let Some(persona) = p.personality {
        sys::set_personality(persona.value() as libc::c_ulong)
            .map_err(|e| Error::syscall("personality", e))?;
    }
    let pid1 = std::fs::read_to_string("/proc/1/limits").unwrap_or_default();
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    for resource in 0..process::RLIMIT_NAMES.len() {
        let limit = p
            .rlimits
            .get(resource)
            .copied()
            .flatten()
            .or_else(|| process::nspawn_default(resource, &pid1, nr_open));
        if let Some(l) = limit {
            let r = u32::try_from(resource).expect("a handful of resources");
            sys::set_rlimit(r, l.soft, l.hard).map_err(|e| Error::InvalidValue {
                what: "--rlimit",
                value: format!(
                    "RLIMIT_{}={}:{}",
                    process::RLIMIT_NAMES[resource],
                    l.soft,
                    l.hard
                ),
                reason: format!("setrlimit: {e}"),
            })?;
        }
    }
    Ok(())
}

/// A user of the guest, as its passwd and group files have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GuestUser {
    /// As given to `--user` (nspawn's `$USER` and `$LOGNAME`).
    pub given: String,
    pub uid: u32,
    pub gid: u32,
    /// The primary group and every group listing the user.
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

/// Look `user` (a name or UID) up in the pivoted guest's /etc/passwd and
/// /etc/group; None for root, whom nspawn does not look up.
pub(crate) fn lookup(user: &str) -> Result<Option<GuestUser>> {
    if user == "root" || user == "0" {
        return Ok(None);
    }
    let unknown = || Error::InvalidValue {
        what: "--user",
        value: user.to_owned(),
        reason: "no such user in the container's /etc/passwd".into(),
    };
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|_| unknown())?;
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .find(|f| f[0] == user)
        .or_else(|| {
            // getent also takes a number for a name.
            user.parse::<u32>().ok().and_then(|n| {
                passwd
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .filter(|f| f.len() >= 7)
                    .find(|f| f[2].parse() == Ok(n))
            })
        })
        .ok_or_else(unknown)?;
    let bad = |what: &str| Error::InvalidValue {
        what: "--user",
        value: user.to_owned(),
        reason: format!("the container's /etc/passwd has an invalid {what} for it"),
    };
    let uid: u32 = entry[2].parse().map_err(|_| bad("UID"))?;
    let gid: u32 = entry[3].parse().map_err(|_| bad("GID"))?;
    let name = entry[0];
    let mut groups = vec![gid];
    if let Ok(text) = std::fs::read_to_string("/etc/group") {
        for f in text.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            if f.len() >= 4
                && f[3].split(',').any(|m| m == name)
                && let Ok(g) = f[2].parse::<u32>()
                && !groups.contains(&g)
            {
                groups.push(g);
            }
        }
    }
    Ok(Some(GuestUser {
        given: user.to_owned(),
        uid,
        gid,
        groups,
        home: PathBuf::from(entry[5]),
    }))
}

/// Become `user` (keeping capabilities for the drop that follows), as
/// nspawn does: its home made if missing, the console's stdio handed to
/// it when there is one.
pub(crate) fn switch_user(user: &GuestUser, chown_stdio: bool) -> Result<()> {
    if !user.home.as_os_str().is_empty() && !user.home.exists() {
        if let Some(parent) = user.home.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        // (The umask here is still the setup's 0: the mode is set.)
        if std::fs::create_dir(&user.home).is_ok() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&user.home, std::fs::Permissions::from_mode(0o755));
            let _ = std::os::unix::fs::chown(&user.home, Some(user.uid), Some(user.gid));
        }
    }
    if chown_stdio {
        let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        for fd in [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()] {
            let _ = nix::unistd::fchown(
                fd,
                Some(nix::unistd::Uid::from_raw(user.uid)),
                Some(nix::unistd::Gid::from_raw(user.gid)),
            );
        }
    }
    nix::sys::prctl::set_keepcaps(true).map_err(|e| Error::syscall("prctl(PR_SET_KEEPCAPS)", e))?;
    let groups: Vec<nix::unistd::Gid> = user
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| Error::syscall("setgroups", e))?;
    let gid = nix::unistd::Gid::from_raw(user.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| Error::syscall("setresgid", e))?;
    let uid = nix::unistd::Uid::from_raw(user.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| Error::syscall("setresuid", e))
}

/// `--as-pid2`'s PID 1, once the payload (`child`) is forked: reap
/// everything, end with the payload's exit status (255 if it did not
/// exit), and on the signals that ask an init to halt, power off or
/// reboot, ask the payload to end (SIGTERM, then SIGHUP for shells) and
/// wait. Other signals, SIGTERM included, are left blocked, as nspawn's
/// stub leaves them.
pub(crate) fn stub_init(child: libc::pid_t) -> ! {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let _ = nix::sys::prctl::set_name(c"(sd-stubinit)");
    let rtmin = libc::SIGRTMIN();
    let stop: Vec<libc::c_int> = [3, 4, 5, 6, 13, 14, 15, 16]
        .iter()
        .map(|n| rtmin + n)
        .chain([libc::SIGINT])
        .collect();
    let mut wanted = stop.clone();
    wanted.push(libc::SIGCHLD);
    let mut stopping = false;
    let payload = nix::unistd::Pid::from_raw(child);
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == payload => sys::exit_now(code),
                Ok(WaitStatus::Signaled(pid, ..)) if pid == payload => sys::exit_now(255),
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(_) => sys::exit_now(255),
            }
        }
        let Ok(signal) = sys::wait_for_signal(&wanted) else {
            continue;
        };
        if signal != libc::SIGCHLD && !stopping {
            stopping = true;
            let _ = nix::sys::signal::kill(payload, nix::sys::signal::Signal::SIGTERM);
            let _ = nix::sys::signal::kill(payload, nix::sys::signal::Signal::SIGCONT);
            let _ = nix::sys::signal::kill(payload, nix::sys::signal::Signal::SIGHUP);
        }
    }
}
