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

/// How nspawn's stub init was asked to end the container.
#[derive(Clone, Copy)]
enum Ending {
    PowerOff,
    Reboot,
}

/// How long the stub waits for the payload once asked to end, before it
/// ends the container anyway (systemd's default stop timeout, as nspawn's
/// stub waits).
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// `--as-pid2`'s PID 1, once the payload (`child`) is forked, behaving as
/// systemd-nspawn's stub init: reap everything, end with the payload's
/// exit status (255 if it did not exit). The signals that ask an init to
/// halt or power off (SIGRTMIN+3, +4, +13, +14) or to reboot (SIGINT,
/// SIGRTMIN+5, +6, +15, +16) ask the payload to end (SIGTERM, then SIGHUP
/// for shells); once it has, or after STOP_TIMEOUT, the stub calls
/// reboot(2) as asked, so the launcher sees a powered-off or rebooted
/// container (and reboots it), as with a real init. Without CAP_SYS_BOOT
/// a power-off falls back to the payload's status and a reboot ends with
/// 1. Other signals, SIGTERM included, stay blocked, as in nspawn's stub.
pub(crate) fn stub_init(child: libc::pid_t) -> ! {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let _ = nix::sys::prctl::set_name(c"(sd-stubinit)");
    let rtmin = libc::SIGRTMIN();
    let ending = |signal: libc::c_int| match signal - rtmin {
        3 | 4 | 13 | 14 => Some(Ending::PowerOff),
        5 | 6 | 15 | 16 => Some(Ending::Reboot),
        _ if signal == libc::SIGINT => Some(Ending::Reboot),
        _ => None,
    };
    let wanted: Vec<libc::c_int> = [3, 4, 5, 6, 13, 14, 15, 16]
        .iter()
        .map(|n| rtmin + n)
        .chain([libc::SIGINT, libc::SIGCHLD])
        .collect();
    let mut asked: Option<(Ending, std::time::Instant)> = None;
    let payload = nix::unistd::Pid::from_raw(child);
    loop {
        let status = loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == payload => break Some(code),
                Ok(WaitStatus::Signaled(pid, ..)) if pid == payload => break Some(255),
                Ok(WaitStatus::StillAlive) => break None,
                Ok(_) => continue,
                Err(_) => sys::exit_now(1),
            }
        };
        let left = asked.map(|(_, by)| by.saturating_duration_since(std::time::Instant::now()));
        if status.is_some() || left.is_some_and(|l| l.is_zero()) {
            end_as_asked(asked.map(|(e, _)| e), status.unwrap_or(255));
        }
        let signal = match sys::wait_for_signal(&wanted, left) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => sys::exit_now(1),
        };
        let Some(how) = ending(signal).filter(|_| asked.is_none()) else {
            continue;
        };
        asked = Some((how, std::time::Instant::now() + STOP_TIMEOUT));
        use nix::sys::signal::{Signal, kill};
        if kill(payload, Signal::SIGTERM) != Err(nix::errno::Errno::ESRCH) {
            let _ = kill(payload, Signal::SIGCONT);
            let _ = kill(payload, Signal::SIGHUP);
        }
    }
}

/// The stub's end: reboot(2) as it was asked (in a PID namespace the
/// kernel ends PID 1 with SIGINT for a power-off, SIGHUP for a reboot,
/// which the launcher reads), else exit with `status`.
fn end_as_asked(asked: Option<Ending>, status: i32) -> ! {
    use nix::sys::reboot::{RebootMode, reboot};
    match asked {
        Some(Ending::Reboot) => {
            let _ = reboot(RebootMode::RB_AUTOBOOT);
            sys::exit_now(1)
        }
        Some(Ending::PowerOff) => {
            let _ = reboot(RebootMode::RB_POWER_OFF);
        }
        None => {}
    }
    sys::exit_now(status)
}
