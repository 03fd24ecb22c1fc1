//! The end of the container process: stdio on the console, the payload
//! found (the tree's init for `--boot`, else the command on the guest's
//! PATH) and exec'd with PID 1's environment.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::guest::environment;
use crate::spec::{ConsoleMode, Payload as SpecPayload, Spec};
use crate::sys;

/// Where systemd-nspawn looks for an init with --boot.
pub const INIT_CANDIDATES: &[&str] = &[
    "/usr/lib/systemd/systemd",
    "/lib/systemd/systemd",
    "/sbin/init",
];

/// What is exec'd: the path, argv and environment, ready for execve.
pub(crate) struct Payload {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidValue {
        what: "argument",
        value: s.to_owned(),
        reason: "contains a NUL byte".into(),
    })
}

fn executable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file()
}

impl Payload {
    /// Resolve the payload inside the (pivoted) guest, with `env` as PID 1's
    /// environment (its PATH is where a bare command name is looked up).
    pub fn resolve(spec: &Spec, env: Vec<(String, String)>) -> Result<Payload> {
        let (path, argv) = match &spec.payload {
            SpecPayload::Boot { args } => {
                let init = INIT_CANDIDATES
                    .iter()
                    .find(|c| executable(Path::new(c)))
                    .ok_or_else(|| Error::NoInit {
                        root: spec.root_description(),
                        candidates: INIT_CANDIDATES.join(", "),
                    })?;
                let mut argv = vec![cstr(init)?];
                for a in args {
                    argv.push(cstr(a)?);
                }
                (cstr(init)?, argv)
            }
            SpecPayload::Command { argv } => {
                let first = argv.first().ok_or_else(|| Error::InvalidValue {
                    what: "command",
                    value: String::new(),
                    reason: "no command given".into(),
                })?;
                let path = if first.contains('/') {
                    PathBuf::from(first)
                } else {
                    let search = env
                        .iter()
                        .find(|(k, _)| k == "PATH")
                        .map(|(_, v)| v.as_str())
                        .unwrap_or(environment::DEFAULT_PATH);
                    search
                        .split(':')
                        .map(|d| Path::new(d).join(first))
                        .find(|p| executable(p))
                        .ok_or_else(|| Error::CommandNotFound {
                            command: first.clone(),
                            search_path: search.to_owned(),
                        })?
                };
                let path = cstr(&path.to_string_lossy())?;
                let argv = argv.iter().map(|a| cstr(a)).collect::<Result<Vec<_>>>()?;
                (path, argv)
            }
        };
        let env = env
            .iter()
            .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
            .collect();
        Ok(Payload { path, argv, env })
    }

    /// `--as-pid2`: fork; the child (PID 2) takes a session and the
    /// console of its own and execs, this process becomes the stub init.
    pub fn exec_as_pid2(&self, console: ConsoleMode, uuid: &crate::spec::identity::Uuid) -> Error {
        if let Err(e) = sys::block_all_signals() {
            return Error::syscall("sigprocmask", e);
        }
        // As nspawn's stub: /proc/1 shows its own name and only $container
        // and $container_uuid, not the launcher's (nspawn writes this UUID
        // without dashes). Before the fork, so the payload can never read
        // the launcher's there: nothing here reads its own environment
        // again (the payload's is `self.env`).
        let environ = format!(
            "container={}\0container_uuid={}\0",
            crate::guest::apifs::runhost::CONTAINER_MANAGER,
            uuid.simple()
        );
        let _ = sys::replace_cmdline_and_environ(b"(sd-stubinit)\0", environ.as_bytes());
        match sys::fork() {
            Err(e) => Error::syscall("fork", e),
            Ok(sys::Forked::Child) => {
                let empty = nix::sys::signal::SigSet::empty();
                let ready = nix::sys::signal::sigprocmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&empty),
                    None,
                )
                .map_err(|e| Error::syscall("sigprocmask", e))
                .and_then(|()| nix::unistd::setsid().map_err(|e| Error::syscall("setsid", e)))
                .and_then(|_| {
                    if console.has_pty() {
                        sys::set_controlling_tty(std::io::stdin().as_fd())
                            .map_err(|e| Error::syscall("ioctl(TIOCSCTTY)", e))
                    } else {
                        Ok(())
                    }
                });
                match ready {
                    Ok(()) => self.exec(),
                    Err(e) => e,
                }
            }
            Ok(sys::Forked::Parent { pid, .. }) => {
                let _ = sys::close_all_for_stub_init();
                crate::guest::process::stub_init(pid)
            }
        }
    }

    /// execve; what comes back is why it failed.
    pub fn exec(&self) -> Error {
        let err = nix::unistd::execve(&self.path, &self.argv, &self.env).unwrap_err();
        Error::io(
            "execve",
            PathBuf::from(self.path.to_string_lossy().into_owned()),
            err.into(),
        )
    }
}

/// A session of PID 1's own, with the console's peer (if any) as its
/// stdio and (if `controlling`) its controlling terminal.
pub(crate) fn attach_stdio(
    peer: Option<OwnedFd>,
    mode: ConsoleMode,
    controlling: bool,
) -> Result<()> {
    nix::unistd::setsid().map_err(|e| Error::syscall("setsid", e))?;
    let Some(peer) = peer else {
        debug_assert_eq!(mode, ConsoleMode::Pipe);
        return Ok(());
    };
    if controlling {
        sys::set_controlling_tty(peer.as_fd())
            .map_err(|e| Error::syscall("ioctl(TIOCSCTTY)", e))?;
    }
    for target in 0..=2 {
        sys::dup_onto_stdio(peer.as_fd(), target).map_err(|e| Error::syscall("dup2", e))?;
    }
    Ok(())
}
