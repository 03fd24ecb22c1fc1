//! A long-lived entry into a running container, for callers that run many
//! short commands in it (nixspawn-test's nodes).
//!
//! `nixspawnctl exec` pays per command for a helper that joins the guest's
//! namespaces and takes on its restrictions. Here one process (the entry,
//! `serve`) does that once, exactly as the exec helper does it
//! (`enter::enter_restricted`: namespaces, the guest's root, seccomp,
//! capabilities, no_new_privs), and then forks each command it is asked
//! for. A command moves itself into the leader's cgroups (v2, and the v1
//! hierarchies of a hybrid host) through `cgroup.procs` descriptors the
//! entry opened before it entered (the kernel checks a migration against
//! the opener), so the entry itself never holds the guest's cgroups. The
//! entry lives in the host's PID namespace, where the guest cannot see
//! it, and ends as soon as the guest's PID 1 does (a reboot gets a new
//! one).
//!
//! Per command the caller sends the argv, the environment, its stdin,
//! stdout and stderr and a reply socket; the entry answers on the reply
//! socket with `Started`, then `Exited` with the status (128+N for signal
//! N), and sends the command a signal when asked there (the caller's
//! timeout). The caller never gets a descriptor of the command: nothing it
//! does depends on trusting what comes out of the guest's namespaces.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::error::{Error, Result};
use crate::guest::apifs::runhost::CONTAINER_MANAGER;
use crate::handshake::channel::{self, Channel};
use crate::state::State;
use crate::sys::{self, ExitKind, Forked};

use super::enter::{at, enter_restricted, leader_cgroups, leader_path, resolve};

/// Exit status of a command that was not found (as a shell gives it).
pub const NOT_FOUND: i32 = 127;
/// Exit status of a command that was found but could not be executed.
pub const NOT_EXECUTABLE: i32 = 126;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum ToEntry {
    /// Run `argv` (looked up in the PATH of `env`) with `env` over the
    /// defaults; the descriptors: reply socket, stdin and stdout where
    /// given (else the guest's /dev/null), stderr.
    Run {
        argv: Vec<String>,
        env: Vec<(String, String)>,
        stdin: bool,
        stdout: bool,
    },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum FromEntry {
    /// On the control socket: entered, ready for commands.
    Ready,
    /// Entering (or starting one command) failed at `step`.
    Failed { step: String, message: String },
    /// On a reply socket: the command was forked.
    Started,
    /// On a reply socket: the command ended with this status.
    Exited { status: i32 },
}

/// On a reply socket, from the caller: signal the command.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Kill {
    signal: i32,
}

/// The caller's end of an entry.
pub struct Entry {
    control: Channel,
    machine: String,
}

/// One command started through an entry.
pub struct Running {
    reply: Channel,
    machine: String,
}

fn wait_readable(fd: BorrowedFd<'_>, until: Option<Instant>) -> Result<bool> {
    loop {
        let timeout = match until {
            None => PollTimeout::NONE,
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                PollTimeout::try_from(left.as_millis().min(60_000) as u64 + 1)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => {
                if until.is_some_and(|t| Instant::now() >= t) {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::syscall("poll", e)),
        }
    }
}

impl Entry {
    /// A new entry's two ends: ours, and the socket to hand to the entry
    /// process (which calls [`serve`] with it).
    pub fn pair(machine: &str) -> Result<(Entry, OwnedFd)> {
        let (ours, theirs) = channel::pair()?;
        Ok((
            Entry {
                control: ours,
                machine: machine.to_owned(),
            },
            theirs.into_fd(),
        ))
    }

    fn failed(&self, step: String, message: String) -> Error {
        Error::Enter {
            name: self.machine.clone(),
            step,
            message,
        }
    }

    fn gone(&self) -> Error {
        Error::Enter {
            name: self.machine.clone(),
            step: "reach the entry".into(),
            message: "the entry process ended (the guest's PID 1 is gone?)".into(),
        }
    }

    /// Until the entry process entered the guest.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        if !wait_readable(self.control.as_fd(), Some(Instant::now() + timeout))? {
            return Err(self.failed(
                "enter".into(),
                format!("the entry did not answer within {}s", timeout.as_secs()),
            ));
        }
        match self.control.recv::<FromEntry>()? {
            Some((FromEntry::Ready, _)) => Ok(()),
            Some((FromEntry::Failed { step, message }, _)) => Err(self.failed(step, message)),
            Some((other, _)) => Err(Error::Protocol(format!(
                "unexpected message from the entry: {other:?}"
            ))),
            None => Err(self.gone()),
        }
    }

    /// Start `argv` with `env` and these standard descriptors (`None`:
    /// the guest's own /dev/null). They reach the command in the guest:
    /// pass pipes, not descriptors of host files (a guest's root could
    /// reopen those through /proc/self/fd read-write, chmod them, or read
    /// their host path).
    pub fn run(
        &self,
        argv: &[String],
        env: &[(String, String)],
        stdin: Option<BorrowedFd<'_>>,
        stdout: Option<BorrowedFd<'_>>,
        stderr: BorrowedFd<'_>,
    ) -> Result<Running> {
        if argv.is_empty() {
            return Err(Error::InvalidValue {
                what: "command",
                value: String::new(),
                reason: "no command given".into(),
            });
        }
        let (reply, theirs) = channel::pair()?;
        let request = ToEntry::Run {
            argv: argv.to_vec(),
            env: env.to_vec(),
            stdin: stdin.is_some(),
            stdout: stdout.is_some(),
        };
        let fds: Vec<BorrowedFd<'_>> = [Some(theirs.as_fd()), stdin, stdout, Some(stderr)]
            .into_iter()
            .flatten()
            .collect();
        self.control.send(&request, &fds).map_err(|_| self.gone())?;
        drop(theirs);
        let running = Running {
            reply,
            machine: self.machine.clone(),
        };
        match running.reply.recv::<FromEntry>()? {
            Some((FromEntry::Started, _)) => Ok(running),
            Some((FromEntry::Failed { step, message }, _)) => Err(self.failed(step, message)),
            Some((other, _)) => Err(Error::Protocol(format!(
                "unexpected message from the entry: {other:?}"
            ))),
            None => Err(self.gone()),
        }
    }
}

impl Running {
    /// The command's status once it ended; `None` if `timeout` passed first.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Option<i32>> {
        if !wait_readable(self.reply.as_fd(), timeout.map(|t| Instant::now() + t))? {
            return Ok(None);
        }
        match self.reply.recv::<FromEntry>()? {
            Some((FromEntry::Exited { status }, _)) => Ok(Some(status)),
            Some((other, _)) => Err(Error::Protocol(format!(
                "unexpected message from the entry: {other:?}"
            ))),
            None => Err(Error::Enter {
                name: self.machine.clone(),
                step: "wait for the command".into(),
                message: "the entry process ended before the command (the guest stopped?)".into(),
            }),
        }
    }

    /// Have the entry send `signal` to the command (if it still runs).
    pub fn signal(&self, signal: i32) -> Result<()> {
        self.reply.send(&Kill { signal }, &[])
    }
}

/// One command the entry waits for.
struct Child {
    pidfd: OwnedFd,
    reply: Option<Channel>,
}

/// The entry process's work: enter `state`'s guest, say so on `control`,
/// then run commands until the guest's PID 1 ends or the caller closes
/// `control`. Call it from a single-threaded process.
pub fn serve(state: &State, control: OwnedFd) -> Result<()> {
    let control = Channel::from_fd(control);
    let leader = state.open_leader()?;
    let leader_pid = state.leader.unwrap_or_default();
    // Opened on the host, before entering: the command's move into the
    // cgroups is checked against these credentials and cgroup namespace.
    let cgroups = leader_cgroups(leader_pid)?
        .into_iter()
        .map(|procs| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&procs)
                .map(OwnedFd::from)
                .map_err(|e| Error::Cgroup {
                    step: "opening",
                    path: procs,
                    source: e,
                })
        })
        .collect::<Result<Vec<OwnedFd>>>()?;
    let path = leader_path(leader_pid);
    state.leader_alive(&leader)?;
    let defaults: Vec<(String, String)> = vec![
        ("PATH".into(), path),
        ("container".into(), CONTAINER_MANAGER.into()),
        ("container_uuid".into(), state.uuid.clone()),
        ("HOME".into(), "/root".into()),
        ("USER".into(), "root".into()),
        ("LOGNAME".into(), "root".into()),
        ("TERM".into(), "vt220".into()),
    ];
    // This process starts no threads; past the entering it cannot see its
    // own /proc to check.
    sys::settle_single_threaded().map_err(|e| Error::syscall("counting threads", e))?;
    let entered = nix::sys::prctl::set_dumpable(false)
        .map_err(|e| ("clear the dumpable flag", Error::syscall("prctl", e)))
        .and_then(|()| enter_restricted(state, leader.as_fd()));
    if let Err((step, e)) = entered {
        let _ = control.send(
            &FromEntry::Failed {
                step: step.into(),
                message: e.to_string(),
            },
            &[],
        );
        return Err(e);
    }
    // The guest's own /dev/null, for commands given no stdin or stdout:
    // opened once, as the guest (what it put there is its business).
    let null: OwnedFd = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        Ok(f) => f.into(),
        Err(e) => {
            let e = Error::io("opening", "/dev/null in the guest", e);
            let _ = control.send(
                &FromEntry::Failed {
                    step: "open the guest's /dev/null".into(),
                    message: e.to_string(),
                },
                &[],
            );
            return Err(e);
        }
    };
    control.send(&FromEntry::Ready, &[])?;

    let mut children: HashMap<i32, Child> = HashMap::new();
    let mut next_id = 0i32;
    loop {
        let ids: Vec<i32> = children.keys().copied().collect();
        let mut fds = vec![
            PollFd::new(control.as_fd(), PollFlags::POLLIN),
            PollFd::new(leader.as_fd(), PollFlags::POLLIN),
        ];
        for id in &ids {
            let c = &children[id];
            fds.push(PollFd::new(c.pidfd.as_fd(), PollFlags::POLLIN));
            if let Some(r) = &c.reply {
                fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
            }
        }
        let ready = crate::os::poll_ready(&mut fds).map_err(|e| Error::syscall("poll", e))?;
        drop(fds);
        if ready[1] {
            // PID 1 ended: its PID namespace and every command with it.
            return Ok(());
        }
        let mut k = 2;
        for id in &ids {
            let has_reply = children[id].reply.is_some();
            let (exited, asked) = (ready[k], has_reply && ready[k + 1]);
            k += if has_reply { 2 } else { 1 };
            if asked {
                let c = children.get_mut(id).expect("listed");
                match c.reply.as_ref().map(|r| r.recv::<Kill>()) {
                    Some(Ok(Some((Kill { signal }, _)))) => {
                        let _ = sys::pidfd_send_signal(c.pidfd.as_fd(), signal);
                    }
                    // The caller went away (or spoke nonsense): the command
                    // runs on, unreported.
                    _ => c.reply = None,
                }
            }
            if exited
                && let Some(kind) = sys::pidfd_wait(children[id].pidfd.as_fd(), sys::Wait::Poll)
                    .map_err(|e| Error::syscall("waitid", e))?
            {
                let c = children.remove(id).expect("listed");
                let status = match kind {
                    ExitKind::Exited(c) => c,
                    ExitKind::Signaled(s) => 128 + s,
                };
                if let Some(r) = c.reply {
                    let _ = r.send(&FromEntry::Exited { status }, &[]);
                }
            }
        }
        if ready[0] {
            let Some((
                ToEntry::Run {
                    argv,
                    env,
                    stdin,
                    stdout,
                },
                fds,
            )) = control.recv::<ToEntry>()?
            else {
                // The caller is done with us.
                return Ok(());
            };
            let expected = 2 + usize::from(stdin) + usize::from(stdout);
            if fds.len() != expected {
                return Err(Error::Protocol(format!(
                    "a command came with {} descriptors, not {expected}",
                    fds.len()
                )));
            }
            let mut fds = fds.into_iter();
            let mut next = |given: bool| -> Result<OwnedFd> {
                if given {
                    Ok(fds.next().expect("counted"))
                } else {
                    null.try_clone().map_err(|e| Error::syscall("dup", e))
                }
            };
            let reply = next(true)?;
            let stdin = next(stdin)?;
            let stdout = next(stdout)?;
            let stderr = next(true)?;
            let reply = Channel::from_fd(reply);
            match start(&argv, &defaults, &env, &cgroups, [stdin, stdout, stderr]) {
                Ok(pidfd) => {
                    let _ = reply.send(&FromEntry::Started, &[]);
                    next_id = next_id.wrapping_add(1);
                    children.insert(
                        next_id,
                        Child {
                            pidfd,
                            reply: Some(reply),
                        },
                    );
                }
                Err((step, e)) => {
                    let _ = reply.send(
                        &FromEntry::Failed {
                            step: step.into(),
                            message: e.to_string(),
                        },
                        &[],
                    );
                }
            }
        }
    }
}

type Step<T> = std::result::Result<T, (&'static str, Error)>;

/// Fork one command: its own session, the leader's cgroups, the given
/// descriptors as 0-2 and nothing else, default signal handling, exec.
fn start(
    argv: &[String],
    defaults: &[(String, String)],
    env: &[(String, String)],
    cgroups: &[OwnedFd],
    stdio: [OwnedFd; 3],
) -> Step<OwnedFd> {
    let to_c = |s: &str| {
        CString::new(s).map_err(|_| {
            (
                "read the command",
                Error::InvalidValue {
                    what: "argument",
                    value: s.into(),
                    reason: "contains a NUL byte".into(),
                },
            )
        })
    };
    let mut merged: Vec<(String, String)> = defaults.to_vec();
    for (k, v) in env {
        merged.retain(|(key, _)| key != k);
        merged.push((k.clone(), v.clone()));
    }
    let path = merged
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let c_argv = argv.iter().map(|a| to_c(a)).collect::<Step<Vec<_>>>()?;
    let program = resolve(&c_argv[0], &path);
    // As a shell sets it for what it runs.
    merged.retain(|(k, _)| k != "_");
    merged.push(("_".into(), program.to_string_lossy().into_owned()));
    let c_env = merged
        .iter()
        .map(|(k, v)| to_c(&format!("{k}={v}")))
        .collect::<Step<Vec<_>>>()?;
    let name = argv[0].clone();
    match at(
        "fork the command",
        sys::clone3(0, libc::SIGCHLD, None).map_err(|e| Error::syscall("clone3", e)),
    )? {
        Forked::Child => {
            let fail = |what: String, code: i32| -> ! {
                let _ = nix::unistd::write(sys::stdio(2), format!("{what}\n").as_bytes());
                sys::exit_now(code)
            };
            for (fd, target) in stdio.iter().zip(0..) {
                if let Err(e) = sys::dup_onto_stdio(fd.as_fd(), target) {
                    fail(format!("nixspawn-test: attaching fd {target}: {e}"), 126);
                }
            }
            if let Err(e) = nix::unistd::setsid() {
                fail(format!("nixspawn-test: setsid: {e}"), 126);
            }
            for cgroup in cgroups {
                if let Err(e) = nix::unistd::write(cgroup, b"0") {
                    fail(
                        format!("nixspawn-test: joining the guest's cgroup: {e}"),
                        126,
                    );
                }
            }
            if let Err(e) = sys::cloexec_from(3) {
                fail(format!("nixspawn-test: close_range: {e}"), 126);
            }
            if let Err(e) = sys::reset_signal_handling() {
                fail(format!("nixspawn-test: resetting signals: {e}"), 126);
            }
            let err = nix::unistd::execve(&program, &c_argv, &c_env).unwrap_err();
            if err == nix::errno::Errno::ENOENT && !name.contains('/') {
                fail(format!("{name}: command not found"), NOT_FOUND)
            }
            let code = if err == nix::errno::Errno::ENOENT {
                NOT_FOUND
            } else {
                NOT_EXECUTABLE
            };
            fail(format!("{name}: {}", err.desc()), code)
        }
        Forked::Parent { pidfd, .. } => {
            pidfd.ok_or(("fork the command", Error::Protocol("no pidfd".into())))
        }
    }
}
