//! Running a command inside a live container (`nixspawnctl exec`).
//!
//! Three processes take part. The caller stays on the host, in its own
//! namespaces, and relays the command's terminal or pipes. A helper, forked
//! from it, joins the leader's cgroups and namespaces and takes on the
//! guest's identity, seccomp filter and capabilities (failing hard if any
//! of that fails); it lives in the host's PID namespace, where the guest
//! cannot see it. Only then does it fork the command, which is therefore
//! visible in the guest's PID namespace from its first instruction with
//! nothing more than a guest process has: no host capabilities, no
//! descriptor of the caller's terminal, a session of its own and, when the
//! caller sits at a terminal, a pty of the guest's own devpts (so TIOCSTI
//! reaches only the command's own input). The command is the caller's
//! child (CLONE_PARENT), whose exit status the caller returns exactly.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::error::{Error, Result};
use crate::guest::apifs::runhost::CONTAINER_MANAGER;
use crate::guest::environment::DEFAULT_PATH;
use crate::handshake::channel::{self, Channel};
use crate::launcher::console::RawTerminal;
use crate::spec::capabilities;
use crate::state::State;
use crate::sys::{self, ExitKind, Forked};

/// statfs f_type of devpts.
const DEVPTS_SUPER_MAGIC: u64 = 0x1cd1;

/// What the helper tells the caller.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum FromHelper {
    /// The command's pty master (as an fd).
    Pty,
    /// The command was forked (its pidfd comes with this).
    Started,
    /// Entering failed at `step`; the command was not run.
    Failed { step: String, message: String },
}

/// The `cgroup.procs` files a process writes itself into to sit where the
/// leader does: its cgroup v2 directory on the host, then its cgroups in
/// the v1 hierarchies mounted here where we sit elsewhere (on a hybrid
/// host the payload's `devices` cgroup, and the scope in systemd's named
/// hierarchy), so that the command's /proc/self/cgroup reads as a guest
/// process's, not `devices:/../../..`.
pub(super) fn leader_cgroups(leader: i32) -> Result<Vec<PathBuf>> {
    let p = format!("/proc/{leader}/cgroup");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io("reading", &p, e))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or(Error::NoCgroup2)?;
    let v2 = crate::cgroup::hierarchy::v2_mount()?
        .join(rel.trim_start_matches('/'))
        .join("cgroup.procs");
    let mut all = vec![v2];
    all.extend(crate::cgroup::hierarchy::v1_procs_to_join(leader)?);
    Ok(all)
}

/// PATH of the guest's PID 1, so NixOS guests find their profile.
pub(super) fn leader_path(leader: i32) -> String {
    std::fs::read(format!("/proc/{leader}/environ"))
        .ok()
        .and_then(|env| {
            env.split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(b"PATH="))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .unwrap_or_else(|| DEFAULT_PATH.to_owned())
}

/// A guest user the command runs as (from the guest's passwd and group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The working directory (the user's home; `/` if it cannot be entered).
    pub home: String,
}

/// How `exec_with` runs the command beyond `exec`'s defaults.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// Run as this guest user (default: the guest's root, in `/`).
    pub user: Option<GuestUser>,
    /// argv[0] if not the program's name (`-bash` for a login shell).
    pub argv0: Option<String>,
}

/// How the command's standard descriptors are connected.
enum Stdio {
    /// stdin and stdout are terminals: a pty of the guest's, relayed; the
    /// caller's stderr goes there too when it is a terminal.
    Pty { stderr_too: bool },
    /// Otherwise each standard descriptor that is a terminal is replaced by
    /// a pipe the caller relays, and the others are passed as they are, so
    /// pipes and files stay byte-exact.
    Pipes { relayed: Vec<Relay> },
    /// `login`: a pty of the guest's is made and handed over unattached (a
    /// getty opens it); the command (systemctl) gets the host's /dev/null.
    Login { null: OwnedFd },
}

/// One relayed pipe: `theirs` becomes the command's descriptor `fd`.
struct Relay {
    fd: RawFd,
    ours: OwnedFd,
    theirs: Option<OwnedFd>,
}

fn plan_stdio() -> Result<Stdio> {
    let tty = |fd| sys::isatty(sys::stdio(fd));
    if tty(0) && tty(1) {
        return Ok(Stdio::Pty { stderr_too: tty(2) });
    }
    let mut relayed = Vec::new();
    for fd in (0..=2).filter(|fd| tty(*fd)) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::syscall("pipe2", e))?;
        let (ours, theirs) = if fd == 0 { (w, r) } else { (r, w) };
        relayed.push(Relay {
            fd,
            ours,
            theirs: Some(theirs),
        });
    }
    Ok(Stdio::Pipes { relayed })
}

/// Everything the helper needs, prepared before it is forked.
struct Plan<'a> {
    state: &'a State,
    leader: OwnedFd,
    cgroup_procs: Vec<PathBuf>,
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    stdio: &'a Stdio,
    caller: libc::pid_t,
    user: Option<&'a GuestUser>,
    home: Option<CString>,
}

/// Run `argv` in the container and return its exit status (128+N if it
/// was killed by signal N).
pub fn exec(state: &State, argv: &[String], extra_env: &[(String, String)]) -> Result<i32> {
    exec_with(state, argv, extra_env, &ExecOptions::default())
}

/// `exec` as a guest user and with a chosen argv[0] (`nixspawnctl shell`).
pub fn exec_with(
    state: &State,
    argv: &[String],
    extra_env: &[(String, String)],
    opts: &ExecOptions,
) -> Result<i32> {
    let stdio = plan_stdio()?;
    let (command, master, stdio, signals, _blocked) = start(state, argv, extra_env, opts, stdio)?;
    relay(&command, master, stdio, &signals)
}

/// `nixspawnctl login`: a pty of the guest's, the guest's
/// `container-getty@N.service` started on it (by its own systemctl), and
/// the pty relayed to our terminal until `^]^]^]` or the guest's end, as
/// `machinectl login` does.
pub fn login(state: &State) -> Result<i32> {
    let null: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io("opening", "/dev/null", e))?
        .into();
    // The argv is made by the helper, which learns the pty's number.
    let argv = ["systemctl".to_owned()];
    let (command, master, _, signals, _blocked) = start(
        state,
        &argv,
        &[],
        &ExecOptions::default(),
        Stdio::Login { null },
    )?;
    let master = master.ok_or_else(|| Error::Protocol("no pty for the login".into()))?;
    let exit = loop {
        if let Some(exit) = sys::pidfd_wait(command.as_fd(), sys::Wait::Block)
            .map_err(|e| Error::syscall("waitid", e))?
        {
            break exit;
        }
    };
    if exit != ExitKind::Exited(0) {
        return Err(Error::Enter {
            name: state.name.to_string(),
            step: "start container-getty@.service".into(),
            message: format!(
                "systemctl in the guest ended with {exit:?} (is systemd running there?)"
            ),
        });
    }
    let leader = state.open_leader()?;
    relay_login(master, &leader, &signals)
}

/// Relay a login's pty until the escape, a stop signal or the guest's end.
fn relay_login(master: OwnedFd, leader: &OwnedFd, signals: &SignalFd) -> Result<i32> {
    use crate::launcher::console::{Action, Console};
    let _raw = RawTerminal::enter();
    let mut console = Console::new(master, crate::spec::ConsoleMode::Interactive)
        .map_err(|e| Error::syscall("opening the login's pty", e))?;
    loop {
        let mut fds = [
            PollFd::new(console.master.as_fd(), PollFlags::POLLIN),
            PollFd::new(sys::stdio(0), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(leader.as_fd(), PollFlags::POLLIN),
        ];
        let ready = crate::os::poll_ready(&mut fds).map_err(|e| Error::syscall("poll", e))?;
        if ready[0] {
            console.drain_output(64 * 1024);
        }
        if ready[1] && console.forward_input() == Action::Kill {
            return Ok(0);
        }
        if ready[2] {
            while let Ok(Some(info)) = signals.read_signal() {
                if info.ssi_signo.cast_signed() == libc::SIGWINCH {
                    console.sync_size();
                } else {
                    return Ok(0);
                }
            }
        }
        if ready[3] {
            // The guest's PID 1 ended: nothing more will come.
            console.drain_output(64 * 1024);
            return Ok(0);
        }
    }
}

type Started = (OwnedFd, Option<OwnedFd>, Stdio, SignalFd, Blocked);

/// Fork the helper and have it start the command; the command's pidfd,
/// the pty master (if any), the stdio plan, and the signals blocked for
/// the relay.
fn start(
    state: &State,
    argv: &[String],
    extra_env: &[(String, String)],
    opts: &ExecOptions,
    mut stdio: Stdio,
) -> Result<Started> {
    if argv.is_empty() {
        return Err(Error::InvalidValue {
            what: "command",
            value: String::new(),
            reason: "no command given".into(),
        });
    }
    let pidfd = state.open_leader()?;
    let leader = state.leader.unwrap_or_default();
    let cgroup_procs = leader_cgroups(leader)?;
    let path = leader_path(leader);
    // What was read through /proc/PID is the leader's only if it still lives.
    state.leader_alive(&pidfd)?;

    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), path.clone()),
        ("container".into(), CONTAINER_MANAGER.into()),
        ("container_uuid".into(), state.uuid.clone()),
        ("HOME".into(), "/root".into()),
        ("USER".into(), "root".into()),
        ("LOGNAME".into(), "root".into()),
        // (`shell` overrides these four with the user's own.)
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
    let mut c_argv = argv.iter().map(|a| to_c(a)).collect::<Result<Vec<_>>>()?;
    if let Some(a0) = &opts.argv0 {
        c_argv[0] = to_c(a0)?;
    }
    let home = opts.user.as_ref().map(|u| to_c(&u.home)).transpose()?;
    let c_env = env
        .iter()
        .map(|(k, v)| to_c(&format!("{k}={v}")))
        .collect::<Result<Vec<_>>>()?;
    // Blocked before the fork, so none is lost; the command unblocks them.
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGWINCH,
    ] {
        mask.add(s);
    }
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::syscall("signalfd", e))?;
    let _blocked = Blocked::block(&mask)?;

    let (ours, theirs) = channel::pair()?;
    let plan = Plan {
        state,
        leader: pidfd,
        cgroup_procs,
        program: to_c(&argv[0])?,
        argv: c_argv,
        env: c_env,
        stdio: &stdio,
        caller: std::process::id().cast_signed(),
        user: opts.user.as_ref(),
        home,
    };
    let helper =
        match sys::clone3(0, libc::SIGCHLD, None).map_err(|e| Error::syscall("clone3", e))? {
            Forked::Child => {
                drop(ours);
                helper(&plan, &path, theirs)
            }
            Forked::Parent { pidfd, .. } => {
                pidfd.ok_or_else(|| Error::Protocol("clone3 returned no pidfd".into()))?
            }
        };
    drop(theirs);
    drop(plan);
    if let Stdio::Pipes { relayed } = &mut stdio {
        for r in relayed.iter_mut() {
            r.theirs = None;
        }
    }
    let started = receive_start(&ours, state);
    // The helper ends right after the fork (or a failure); reap it.
    let _ = sys::pidfd_wait(helper.as_fd(), sys::Wait::Block);
    let (command, master) = started?;
    Ok((command, master, stdio, signals, _blocked))
}

/// Signals blocked for as long as this lives (the caller may go on after
/// the command, as `nixspawnctl update` does).
struct Blocked {
    old: SigSet,
}

impl Blocked {
    fn block(mask: &SigSet) -> Result<Blocked> {
        let old = mask
            .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
            .map_err(|e| Error::syscall("sigprocmask", e))?;
        Ok(Blocked { old })
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        let _ = self.old.thread_set_mask();
    }
}

/// The helper's messages up to the command's start.
fn receive_start(channel: &Channel, state: &State) -> Result<(OwnedFd, Option<OwnedFd>)> {
    let mut master = None;
    loop {
        match channel.recv::<FromHelper>()? {
            Some((FromHelper::Pty, mut fds)) if fds.len() == 1 => {
                let fd = fds.remove(0);
                // A pty master of a devpts, nothing else the guest could have
                // put at /dev/pts/ptmx: we read, write and ioctl it.
                let is_ptmx = nix::sys::stat::fstat(&fd).is_ok_and(|st| {
                    nix::sys::stat::major(st.st_rdev) == 5 && nix::sys::stat::minor(st.st_rdev) == 2
                });
                if !is_ptmx {
                    return Err(Error::Protocol("the exec helper's pty is not a pty".into()));
                }
                master = Some(fd);
            }
            Some((FromHelper::Started, mut fds)) if fds.len() == 1 => {
                let command = fds.remove(0);
                // Only our own child can be waited for: anything else is a forgery.
                sys::pidfd_wait(command.as_fd(), sys::Wait::Peek)
                    .map_err(|e| Error::syscall("waitid on the command", e))?;
                return Ok((command, master));
            }
            Some((FromHelper::Failed { step, message }, _)) => {
                return Err(Error::Enter {
                    name: state.name.to_string(),
                    step,
                    message,
                });
            }
            Some((other, _)) => {
                return Err(Error::Protocol(format!(
                    "unexpected message from the exec helper: {other:?}"
                )));
            }
            None => {
                return Err(Error::Protocol(
                    "the exec helper ended without starting the command".into(),
                ));
            }
        }
    }
}

/// The helper: enter, restrict, fork the command. Never returns; any
/// failure is reported to the caller and the command is not run.
fn helper(plan: &Plan<'_>, path: &str, channel: Channel) -> ! {
    match enter_and_fork(plan, path, &channel) {
        Ok(()) => sys::exit_now(0),
        Err((step, e)) => {
            let _ = channel.send(
                &FromHelper::Failed {
                    step: step.into(),
                    message: e.to_string(),
                },
                &[],
            );
            sys::exit_now(1)
        }
    }
}

pub(super) type Step<T> = std::result::Result<T, (&'static str, Error)>;

pub(super) fn at<T>(step: &'static str, r: Result<T>) -> Step<T> {
    r.map_err(|e| (step, e))
}

fn enter_and_fork(plan: &Plan<'_>, path: &str, channel: &Channel) -> Step<()> {
    let state = plan.state;
    at(
        "die with nixspawnctl",
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
            .map_err(|e| Error::syscall("prctl(PR_SET_PDEATHSIG)", e))
            .and_then(|()| {
                if nix::unistd::getppid().as_raw() == plan.caller {
                    Ok(())
                } else {
                    Err(Error::Protocol("nixspawnctl is gone".into()))
                }
            }),
    )?;
    // Out of the caller's session: its terminal can never become ours.
    at(
        "leave the caller's session",
        nix::unistd::setsid()
            .map(drop)
            .map_err(|e| Error::syscall("setsid", e)),
    )?;
    for procs in &plan.cgroup_procs {
        at(
            "join the leader's cgroup",
            std::fs::write(procs, "0").map_err(|e| Error::Cgroup {
                step: "joining",
                path: procs.clone(),
                source: e,
            }),
        )?;
    }
    enter_restricted(state, plan.leader.as_fd())?;
    let mut program = resolve(&plan.program, path);
    let mut login_argv = None;

    match plan.stdio {
        Stdio::Login { null } => {
            let master = at("open a pty in the guest", open_guest_pty())?;
            let n = at(
                "number the pty",
                sys::pty_number(master.as_fd()).map_err(|e| Error::syscall("ioctl(TIOCGPTN)", e)),
            )?;
            at(
                "hand over the pty",
                channel.send(&FromHelper::Pty, &[master.as_fd()]),
            )?;
            drop(master);
            for fd in [0, 1, 2] {
                at(
                    "attach /dev/null",
                    sys::dup_onto_stdio(null.as_fd(), fd).map_err(|e| Error::syscall("dup2", e)),
                )?;
            }
            let unit = format!("container-getty@{n}.service");
            let argv: Vec<CString> = ["systemctl", "start", unit.as_str()]
                .iter()
                .filter_map(|a| CString::new(*a).ok())
                .collect();
            program = resolve(&argv[0], path);
            login_argv = Some(argv);
        }
        Stdio::Pty { stderr_too } => {
            let master = at("open a pty in the guest", open_guest_pty())?;
            // The caller's size, before the command can ask for it.
            for fd in [1, 0] {
                if let Ok(ws) = sys::get_winsize(sys::stdio(fd)) {
                    let _ = sys::set_winsize(master.as_fd(), &ws);
                    break;
                }
            }
            let peer = at(
                "open the pty's peer",
                sys::pty_peer(master.as_fd()).map_err(|e| Error::syscall("ioctl(TIOCGPTPEER)", e)),
            )?;
            at(
                "hand over the pty",
                channel.send(&FromHelper::Pty, &[master.as_fd()]),
            )?;
            drop(master);
            let targets: &[RawFd] = if *stderr_too { &[0, 1, 2] } else { &[0, 1] };
            for &fd in targets {
                at(
                    "attach the pty",
                    sys::dup_onto_stdio(peer.as_fd(), fd).map_err(|e| Error::syscall("dup2", e)),
                )?;
            }
        }
        Stdio::Pipes { relayed } => {
            for r in relayed {
                if let Some(theirs) = &r.theirs {
                    at(
                        "attach the pipes",
                        sys::dup_onto_stdio(theirs.as_fd(), r.fd)
                            .map_err(|e| Error::syscall("dup2", e)),
                    )?;
                }
            }
        }
    }
    // Nothing but 0-2 may reach the command: no pidfd, no descriptor of
    // the caller's terminal, no pipe end of ours, not the channel (all of
    // them close at its exec).
    at(
        "close descriptors",
        sys::cloexec_from(3).map_err(|e| Error::syscall("close_range", e)),
    )?;

    // CLONE_PARENT: the command is the caller's child, reaped by it.
    // (Its exit signal is then the helper's own and must be 0 here.)
    match sys::clone3(libc::CLONE_PARENT as u64, 0, None)
        .map_err(|e| ("fork the command", Error::syscall("clone3", e)))?
    {
        Forked::Child => command(plan, &program, login_argv.as_deref().unwrap_or(&plan.argv)),
        Forked::Parent { pidfd, .. } => {
            let pidfd = pidfd.ok_or(("fork the command", Error::Protocol("no pidfd".into())))?;
            at(
                "report the start",
                channel.send(&FromHelper::Started, &[pidfd.as_fd()]),
            )
        }
    }
}

/// Join the leader's namespaces (not its cgroup) and take on the guest's
/// identity, seccomp filter, capabilities and no_new_privs, then go to `/`:
/// what the exec helper does before it forks, and what the long-lived entry
/// (`entry`) does once for all its commands.
pub(super) fn enter_restricted(state: &State, leader: BorrowedFd<'_>) -> Step<()> {
    // With a pidfd the kernel joins them all or none, the user namespace
    // first, so everything after is decided by the guest's namespaces.
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP;
    if state.uid_range.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    at(
        "join the leader's namespaces",
        sys::setns_pidfd(leader, flags).map_err(|e| Error::syscall("setns", e)),
    )?;
    if state.uid_range.is_some() {
        // Host root has no id in the guest's namespace; its root does.
        let (u, g) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
        at(
            "become the guest's root",
            nix::unistd::setresgid(g, g, g)
                .and_then(|()| nix::unistd::setresuid(u, u, u))
                .and_then(|()| nix::unistd::setgroups(&[]))
                .map_err(|e| Error::syscall("setresuid", e)),
        )?;
        // A change of credentials clears the parent-death signal.
        at(
            "die with nixspawnctl",
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| Error::syscall("prctl(PR_SET_PDEATHSIG)", e)),
        )?;
    }
    // No ptrace or /proc/PID/mem of us or the command until it execs (and
    // gets the mode its binary calls for).
    at(
        "clear the dumpable flag",
        nix::sys::prctl::set_dumpable(false)
            .map_err(|e| Error::syscall("prctl(PR_SET_DUMPABLE)", e)),
    )?;
    let caps = capabilities::from_mask(state.capabilities);
    if let Some(adjust) = &state.syscall_filter {
        // Before the capability drop: without no_new_privs, loading a
        // filter takes CAP_SYS_ADMIN, which the guest may not keep.
        let prog = at(
            "build the seccomp filter",
            crate::security::seccomp::program(&caps, adjust),
        )?;
        at(
            "install the seccomp filter",
            crate::security::seccomp::install(&prog),
        )?;
    }
    at(
        "drop capabilities",
        crate::security::capabilities::restrict_to(&caps, &Default::default(), true),
    )?;
    if state.no_new_privileges {
        at(
            "set no_new_privs",
            nix::sys::prctl::set_no_new_privs()
                .map_err(|e| Error::syscall("prctl(PR_SET_NO_NEW_PRIVS)", e)),
        )?;
    }
    let _ = nix::unistd::chdir("/");
    Ok(())
}

/// The command's own steps: a session of its own (with the pty as its
/// controlling terminal), default signal handling, exec.
fn command(plan: &Plan<'_>, program: &CString, argv: &[CString]) -> ! {
    let fail = |what: &str, err: &dyn std::fmt::Display| -> ! {
        let _ = nix::unistd::write(
            sys::stdio(2),
            format!("nixspawnctl: {what}: {err}\n").as_bytes(),
        );
        sys::exit_now(127)
    };
    if let Err(e) = nix::unistd::setsid() {
        fail("setsid", &e);
    }
    if matches!(plan.stdio, Stdio::Pty { .. })
        && let Err(e) = sys::set_controlling_tty(sys::stdio(0))
    {
        fail("making the pty the controlling terminal", &e);
    }
    if let Err(e) = sys::reset_signal_handling() {
        fail("resetting signal handling", &e);
    }
    if let Some(user) = plan.user {
        // As login(1): the user's groups, then its gid and uid (which
        // clears every capability of the guest's root).
        let groups: Vec<nix::unistd::Gid> = user
            .groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        let (u, g) = (
            nix::unistd::Uid::from_raw(user.uid),
            nix::unistd::Gid::from_raw(user.gid),
        );
        if let Err(e) = nix::unistd::setgroups(&groups)
            .and_then(|()| nix::unistd::setresgid(g, g, g))
            .and_then(|()| nix::unistd::setresuid(u, u, u))
        {
            fail("becoming the user", &e);
        }
    }
    if let Some(home) = &plan.home
        && nix::unistd::chdir(home.as_c_str()).is_err()
    {
        let _ = nix::unistd::chdir("/");
    }
    let err = nix::unistd::execve(program, argv, &plan.env).unwrap_err();
    fail(&format!("executing {}", argv[0].to_string_lossy()), &err)
}

/// A new pty of the guest's devpts instance (its /dev/pts/ptmx), checked to
/// be one: the guest controls its /dev and could put anything there.
fn open_guest_pty() -> Result<OwnedFd> {
    let ptmx = "/dev/pts/ptmx";
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(ptmx)
        .map_err(|e| Error::io("opening", ptmx, e))?
        .into();
    let meta = std::fs::File::from(master.try_clone().map_err(|e| Error::io("dup", ptmx, e))?)
        .metadata()
        .map_err(|e| Error::io("stat", ptmx, e))?;
    let on_devpts = nix::sys::statfs::fstatfs(&master)
        .is_ok_and(|fs| fs.filesystem_type().0.cast_unsigned() == DEVPTS_SUPER_MAGIC);
    if !meta.file_type().is_char_device() || !on_devpts {
        return Err(Error::BadTree {
            path: ptmx.into(),
            reason: "is not the ptmx of a devpts instance".into(),
        });
    }
    sys::pty_unlock(master.as_fd()).map_err(|e| Error::syscall("ioctl(TIOCSPTLCK)", e))?;
    Ok(master)
}

/// Look `name` up in PATH inside the (already joined) guest.
pub(super) fn resolve(name: &CString, path: &str) -> CString {
    let s = name.to_string_lossy();
    if s.contains('/') {
        return name.clone();
    }
    path.split(':')
        .map(|d| format!("{d}/{s}"))
        .find(|p| nix::unistd::access(p.as_str(), nix::unistd::AccessFlags::X_OK).is_ok())
        .and_then(|p| CString::new(p).ok())
        .unwrap_or_else(|| name.clone())
}

/// A descriptor the relay reads or writes: one of the caller's standard
/// ones, or one it owns (closed when its stream ends, which is how the
/// command sees the end of its input).
enum End {
    Caller(RawFd),
    Own(OwnedFd),
}

impl End {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            End::Caller(n) => sys::stdio(*n),
            End::Own(fd) => fd.as_fd(),
        }
    }
}

/// One direction of copying.
struct Stream {
    from: End,
    to: Option<End>,
    /// From the command to the caller (drained once the command ended).
    output: bool,
}

/// Copy between the caller and the command until it ends; its status.
fn relay(
    command: &OwnedFd,
    master: Option<OwnedFd>,
    stdio: Stdio,
    signals: &SignalFd,
) -> Result<i32> {
    let _raw = master.as_ref().and_then(|_| RawTerminal::enter());
    let mut streams = Vec::new();
    if let Some(m) = &master {
        let _ = nix::fcntl::fcntl(
            m,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        let input = m.try_clone().map_err(|e| Error::syscall("dup", e))?;
        streams.push(Stream {
            from: End::Own(m.try_clone().map_err(|e| Error::syscall("dup", e))?),
            to: Some(End::Caller(1)),
            output: true,
        });
        streams.push(Stream {
            from: End::Caller(0),
            to: Some(End::Own(input)),
            output: false,
        });
    }
    if let Stdio::Pipes { relayed } = stdio {
        for r in relayed {
            streams.push(if r.fd == 0 {
                Stream {
                    from: End::Caller(0),
                    to: Some(End::Own(r.ours)),
                    output: false,
                }
            } else {
                Stream {
                    from: End::Own(r.ours),
                    to: Some(End::Caller(r.fd)),
                    output: true,
                }
            });
        }
    }
    let exit = loop {
        let mut fds = vec![
            PollFd::new(command.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        let open: Vec<usize> = (0..streams.len())
            .filter(|i| streams[*i].to.is_some())
            .collect();
        for &i in &open {
            fds.push(PollFd::new(streams[i].from.fd(), PollFlags::POLLIN));
        }
        let ready = crate::os::poll_ready(&mut fds).map_err(|e| Error::syscall("poll", e))?;
        drop(fds);
        if ready[1] {
            while let Ok(Some(info)) = signals.read_signal() {
                let sig = info.ssi_signo.cast_signed();
                if sig != libc::SIGWINCH {
                    let _ = sys::pidfd_send_signal(command.as_fd(), sig);
                } else if let Some(m) = &master
                    && let Ok(ws) = sys::get_winsize(sys::stdio(1))
                {
                    let _ = sys::set_winsize(m.as_fd(), &ws);
                }
            }
        }
        for (k, &i) in open.iter().enumerate() {
            let s = &mut streams[i];
            if ready[2 + k]
                && !s
                    .to
                    .as_ref()
                    .is_some_and(|to| copy_some(s.from.fd(), to.fd()))
            {
                // End of input: closing our pipe end is the command's EOF.
                s.to = None;
            }
        }
        if ready[0]
            && let Some(exit) = sys::pidfd_wait(command.as_fd(), sys::Wait::Poll)
                .map_err(|e| Error::syscall("waitid", e))?
        {
            break exit;
        }
    };
    // What the command wrote before it ended, without waiting for other
    // holders of its pty or pipes (a daemon it left behind).
    for s in streams.iter().filter(|s| s.output) {
        if let Some(to) = &s.to {
            drain(s.from.fd(), to.fd());
        }
    }
    Ok(match exit {
        ExitKind::Exited(n) => n,
        ExitKind::Signaled(s) => 128 + s,
    })
}

/// Copy what is available; false at end-of-file or an error.
fn copy_some(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 16 * 1024];
    match nix::unistd::read(from, &mut buf) {
        Ok(0) => false,
        Ok(n) => write_all(to, &buf[..n]),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => true,
        Err(_) => false,
    }
}

/// Copy until end-of-file, or until nothing came for a moment.
fn drain(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    loop {
        let mut fds = [PollFd::new(from, PollFlags::POLLIN)];
        if nix::poll::poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) == 0 {
            return;
        }
        if !copy_some(from, to) {
            return;
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                let mut p = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut p, PollTimeout::from(100u16));
            }
            Err(_) => return false,
        }
    }
    true
}
