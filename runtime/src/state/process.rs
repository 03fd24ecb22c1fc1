//! Process identities that survive PID reuse. The launcher records, next to
//! each PID in state.json, who that process is (the pidfs inode of a pidfd
//! for it, and its start time as a fallback for kernels before 6.9); before
//! nixspawnctl signals or enters a PID it opens a pidfd and checks that it
//! still names that process. A stale state (a launcher killed before it
//! cleaned up, a leader that died and whose PID was handed out again, a
//! previous boot of the guest) is refused instead of acted on.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::error::{Error, Result};
use crate::sys;

/// statfs f_type of pidfs, the filesystem pidfds live on since Linux 6.9.
const PID_FS_MAGIC: u64 = 0x5049_4446;

/// Who a PID belonged to when it was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessIdentity {
    /// The inode of a pidfd for the process on pidfs: unique per process
    /// for the life of the boot (what systemd calls the pidfd ID).
    pub pidfd_id: Option<u64>,
    /// Start time in clock ticks since boot (/proc/PID/stat, field 22).
    pub start_time: u64,
}

impl ProcessIdentity {
    /// The identity of the process `pidfd` refers to, whose PID (as this
    /// process sees it) is `pid`. The caller must know the process cannot
    /// have been reaped meanwhile (it is our child or ourselves).
    pub fn of(pid: i32, pidfd: BorrowedFd<'_>) -> Result<Self> {
        Ok(ProcessIdentity {
            pidfd_id: pidfs_id(pidfd),
            start_time: start_time(pid)?,
        })
    }

    /// The launcher's own identity.
    pub fn of_self() -> Result<Self> {
        let pid = std::process::id().cast_signed();
        let pidfd = sys::pidfd_open(pid).map_err(|e| Error::syscall("pidfd_open", e))?;
        Self::of(pid, pidfd.as_fd())
    }
}

/// The pidfs inode of `pidfd`, or None where pidfds are anonymous inodes
/// (Linux before 6.9), which say nothing about the process.
fn pidfs_id(pidfd: BorrowedFd<'_>) -> Option<u64> {
    let fs = nix::sys::statfs::fstatfs(pidfd).ok()?;
    if fs.filesystem_type().0.cast_unsigned() != PID_FS_MAGIC {
        return None;
    }
    nix::sys::stat::fstat(pidfd).ok().map(|st| st.st_ino)
}

/// Field 22 of /proc/PID/stat. The command name (field 2) may hold spaces
/// and parentheses, so the fields are counted from its closing one.
fn start_time(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    parse_start_time(&text).ok_or_else(|| Error::Protocol(format!("{path}: no start time in it")))
}

fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    // after_comm starts with field 3 (the state); field 22 is 19 further on.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// The host's boot ID: state recorded under another one is from before a
/// reboot of the host, and none of its PIDs mean anything now.
pub fn host_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A pidfd for `pid`, if it is still the process recorded as `recorded`.
/// `what` names the process in errors ("leader", "launcher").
pub(crate) fn open_verified(
    name: &str,
    what: &'static str,
    pid: i32,
    recorded: &ProcessIdentity,
) -> Result<OwnedFd> {
    let stale = |reason: String| Error::StaleProcess {
        name: name.to_owned(),
        what,
        pid,
        reason,
    };
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            return Err(stale("gone".into()));
        }
        Err(e) => return Err(Error::syscall("pidfd_open", e)),
    };
    if let (Some(want), Some(have)) = (recorded.pidfd_id, pidfs_id(pidfd.as_fd())) {
        // Exact: the pidfd we hold is the recorded process or it is not.
        if want != have {
            return Err(stale(format!(
                "now another process (pidfd ID {have}, recorded {want})"
            )));
        }
        return Ok(pidfd);
    }
    // Without pidfs: the start time read through /proc is the pidfd's
    // process only if that process is still alive after the read.
    let now = start_time(pid).map_err(|_| stale("gone".into()))?;
    if now != recorded.start_time {
        return Err(stale(format!(
            "now another process (started at tick {now}, recorded {})",
            recorded.start_time
        )));
    }
    if sys::pidfd_send_signal(pidfd.as_fd(), 0).is_err() {
        return Err(stale("gone".into()));
    }
    Ok(pidfd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat =
            "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("4242 (x"), None);
        assert_eq!(parse_start_time("4242 (x) S 1"), None);
    }

    #[test]
    fn our_own_identity_is_stable_and_checks_out() {
        let me = ProcessIdentity::of_self().unwrap();
        assert_eq!(me, ProcessIdentity::of_self().unwrap());
        let pid = std::process::id().cast_signed();
        assert!(open_verified("t", "launcher", pid, &me).is_ok());
        let other = ProcessIdentity {
            pidfd_id: me.pidfd_id.map(|i| i + 1),
            start_time: me.start_time + 1,
        };
        let err = open_verified("t", "launcher", pid, &other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("another process"), "{err}");
    }
}
