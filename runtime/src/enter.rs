//! Running a command inside a live container (`nixspawnctl exec`): join
//! the leader's cgroup and namespaces, fork, and exec with the guest's
//! capabilities.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::PathBuf;

use crate::capabilities;
use crate::environment::DEFAULT_PATH;
use crate::error::{Error, Result};
use crate::runhost::CONTAINER_MANAGER;
use crate::state::State;
use crate::sys::{self, ExitKind, Forked};

/// The leader's cgroup v2 directory on the host.
fn leader_cgroup(leader: i32) -> Result<PathBuf> {
    let p = format!("/proc/{leader}/cgroup");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io("reading", &p, e))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or(Error::NoCgroup2)?;
    Ok(crate::cgroup::v2_mount()?.join(rel.trim_start_matches('/')))
}

/// PATH of the guest's PID 1, so NixOS guests find their profile.
fn leader_path(leader: i32) -> String {
    std::fs::read(format!("/proc/{leader}/environ"))
        .ok()
        .and_then(|env| {
            env.split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(b"PATH="))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .unwrap_or_else(|| DEFAULT_PATH.to_owned())
}

/// Run `argv` in the container and return its exit status (128+N if it
/// was killed by signal N). This process joins the container's namespaces.
pub fn exec(state: &State, argv: &[String], extra_env: &[(String, String)]) -> Result<i32> {
    let pidfd = state.open_leader()?;
    let leader = state.leader.unwrap_or_default();
    if argv.is_empty() {
        return Err(Error::InvalidValue {
            what: "command",
            value: String::new(),
            reason: "no command given".into(),
        });
    }
    let cgroup = leader_cgroup(leader)?;
    let path = leader_path(leader);
    state.leader_alive(&pidfd)?;

    let procs = cgroup.join("cgroup.procs");
    std::fs::write(&procs, "0").map_err(|e| Error::Cgroup {
        step: "joining",
        path: procs,
        source: e,
    })?;
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP;
    if state.uid_range.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    sys::setns_pidfd(pidfd.as_fd(), flags).map_err(|e| Error::syscall("setns", e))?;

    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), path.clone()),
        ("container".into(), CONTAINER_MANAGER.into()),
        ("container_uuid".into(), state.uuid.clone()),
        ("HOME".into(), "/root".into()),
        ("USER".into(), "root".into()),
        ("LOGNAME".into(), "root".into()),
        (
            "TERM".into(),
            std::env::var("TERM").unwrap_or_else(|_| "vt220".into()),
        ),
    ];
    for (k, v) in extra_env {
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    let to_c = |s: &str| {
        CString::new(s).map_err(|_| Error::InvalidValue {
            what: "argument",
            value: s.into(),
            reason: "contains a NUL byte".into(),
        })
    };
    let c_argv = argv.iter().map(|a| to_c(a)).collect::<Result<Vec<_>>>()?;
    let c_env = env
        .iter()
        .map(|(k, v)| to_c(&format!("{k}={v}")))
        .collect::<Result<Vec<_>>>()?;
    let program = resolve(&argv[0], &path);

    match sys::clone3(0, libc::SIGCHLD, None).map_err(|e| Error::syscall("clone3", e))? {
        Forked::Child => {
            if state.uid_range.is_some() {
                // Host root has no id in the guest's namespace; its root does.
                let (u, g) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
                if nix::unistd::setresgid(g, g, g)
                    .and_then(|()| nix::unistd::setresuid(u, u, u))
                    .and_then(|()| nix::unistd::setgroups(&[]))
                    .is_err()
                {
                    sys::exit_now(126);
                }
            }
            let _ = nix::unistd::chdir("/");
            // The payload's own restrictions: its seccomp filter and capabilities.
            let caps = capabilities::from_mask(state.capabilities);
            if let Some(adjust) = &state.syscall_filter
                && crate::seccomp::program(&caps, adjust)
                    .and_then(|p| crate::seccomp::install(&p))
                    .is_err()
            {
                sys::exit_now(126);
            }
            let _ = capabilities::restrict_to(&caps);
            if state.no_new_privileges {
                let _ = nix::sys::prctl::set_no_new_privs();
            }
            let _ = sys::cloexec_from(3);
            let err = match to_c(&program) {
                Ok(p) => nix::unistd::execve(&p, &c_argv, &c_env).unwrap_err(),
                Err(_) => nix::errno::Errno::EINVAL,
            };
            let _ = nix::unistd::write(
                sys::stdio(2),
                format!("nixspawnctl: executing {}: {err}\n", argv[0]).as_bytes(),
            );
            sys::exit_now(127)
        }
        Forked::Parent { pidfd, .. } => {
            let pidfd = pidfd.ok_or_else(|| Error::Protocol("clone3 returned no pidfd".into()))?;
            // Stop signals are for the command, not for us.
            let mut mask = nix::sys::signal::SigSet::empty();
            mask.add(nix::sys::signal::Signal::SIGINT);
            mask.add(nix::sys::signal::Signal::SIGTERM);
            let sfd = nix::sys::signalfd::SignalFd::with_flags(
                &mask,
                nix::sys::signalfd::SfdFlags::SFD_CLOEXEC
                    | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
            )
            .map_err(|e| Error::syscall("signalfd", e))?;
            let _ = mask.thread_block();
            loop {
                let mut fds = [
                    nix::poll::PollFd::new(pidfd.as_fd(), nix::poll::PollFlags::POLLIN),
                    nix::poll::PollFd::new(sfd.as_fd(), nix::poll::PollFlags::POLLIN),
                ];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE);
                let sig_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
                if sig_ready {
                    while let Ok(Some(info)) = sfd.read_signal() {
                        let _ = sys::pidfd_send_signal(pidfd.as_fd(), info.ssi_signo as i32);
                    }
                }
                match sys::pidfd_wait(pidfd.as_fd(), true)
                    .map_err(|e| Error::syscall("waitid", e))?
                {
                    Some(ExitKind::Exited(n)) => return Ok(n),
                    Some(ExitKind::Signaled(s)) => return Ok(128 + s),
                    None => {}
                }
            }
        }
    }
}

/// Look `name` up in PATH inside the (already joined) guest.
fn resolve(name: &str, path: &str) -> String {
    if name.contains('/') {
        return name.to_owned();
    }
    path.split(':')
        .map(|d| format!("{d}/{name}"))
        .find(|p| nix::unistd::access(p.as_str(), nix::unistd::AccessFlags::X_OK).is_ok())
        .unwrap_or_else(|| name.to_owned())
}
