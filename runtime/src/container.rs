//! The launcher's side: claim the name and cgroup, start the container
//! process in new namespaces, supervise it (console, notify socket, stop
//! signals), map how it ended, restart it on reboot, and clean up.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::cgroup::CgroupLayout;
use crate::channel::{self, ToParent};
use crate::child;
use crate::console::{Action, Console, RawTerminal};
use crate::error::{Error, Result};
use crate::janitor::Janitor;
use crate::notify;
use crate::spec::{Payload, Spec};
use crate::state::{State, StateDir};
use crate::sys::{self, ExitKind, Forked};

/// How the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// PID 1 exited with this status (`systemctl exit N`, or a command).
    Exited(i32),
    /// poweroff or halt (the kernel ended PID 1 with SIGINT).
    PoweredOff,
    /// reboot (SIGHUP); only returned under `--keep-unit`, else we restart.
    Rebooted,
    /// Killed by a signal other than the two above.
    Killed(i32),
}

impl Outcome {
    /// The launcher's exit status, as systemd-nspawn maps it.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Exited(133) => 1,
            Outcome::Exited(n) => n,
            Outcome::PoweredOff => 0,
            Outcome::Rebooted => 133,
            Outcome::Killed(_) => 1,
        }
    }
}

/// What happens during a run, for the caller to report.
#[derive(Debug)]
pub enum Event<'a> {
    /// Checks passed and resources are claimed; the guest is about to start.
    Spawning,
    Started { leader: i32 },
    Ready,
    Status(&'a str),
    Stopping,
    Rebooting,
    /// The user typed the console escape; the guest is being killed.
    EscapeKill,
}

pub trait Observer {
    fn event(&mut self, event: Event<'_>);
}

impl<F: FnMut(Event<'_>)> Observer for F {
    fn event(&mut self, event: Event<'_>) {
        self(event)
    }
}

/// Check the tree before anything is created for it.
pub fn validate_tree(spec: &Spec) -> Result<()> {
    let dir = &spec.directory;
    let meta = std::fs::metadata(dir).map_err(|e| Error::BadTree { path: dir.clone(), reason: e.to_string() })?;
    if !meta.is_dir() {
        return Err(Error::BadTree { path: dir.clone(), reason: "not a directory".into() });
    }
    for m in &spec.mounts {
        if let crate::mounts::CustomMount::Bind { source, .. } = m {
            std::fs::metadata(source).map_err(|e| Error::io("bind source", source, e))?;
        }
    }
    match &spec.payload {
        Payload::Boot { .. } if crate::environment::tree_os_release(dir).is_none() => {
            Err(Error::NoOsRelease { path: dir.clone() })
        }
        Payload::Command { argv } if argv.is_empty() => {
            Err(Error::InvalidValue { what: "command", value: String::new(), reason: "no command given".into() })
        }
        _ if !dir.join("usr").is_dir() => Err(Error::BadTree {
            path: dir.clone(),
            reason: "does not look like an OS tree (usr/ is missing)".into(),
        }),
        _ => Ok(()),
    }
}

/// Hold the tree: exclusively for a normal run, shared for `--ephemeral`
/// (any number of ephemeral guests may share a tree nobody writes to).
fn lock_tree(spec: &Spec) -> Result<Flock<File>> {
    let f = File::open(&spec.directory).map_err(|e| Error::io("opening", &spec.directory, e))?;
    let how = if spec.ephemeral { FlockArg::LockSharedNonblock } else { FlockArg::LockExclusiveNonblock };
    Flock::lock(f, how).map_err(|_| Error::TreeBusy { path: spec.directory.clone() })
}

fn now_usec() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Everything held for the container's life; dropped in order on exit.
struct Session {
    cgroups: CgroupLayout,
    state_dir: StateDir,
    janitor: Option<Janitor>,
}

impl Session {
    fn finish(mut self) -> Result<()> {
        let cg = self.cgroups.destroy();
        let st = self.state_dir.remove();
        if let Some(j) = self.janitor.take() {
            j.dismiss();
        }
        cg.and(st)
    }
}

/// Run a container to the end and say how it ended.
pub fn run(spec: &Spec, observer: &mut dyn Observer) -> Result<Outcome> {
    if !sys::is_root() {
        return Err(Error::NotRoot);
    }
    validate_tree(spec)?;
    let _tree_lock = lock_tree(spec)?;
    let state_dir = StateDir::claim(&spec.machine)?;
    let mut cgroups = match CgroupLayout::plan(&spec.machine, spec.keep_unit) {
        Ok(c) => c,
        Err(e) => {
            let _ = state_dir.remove();
            return Err(e);
        }
    };
    if let Err(e) = cgroups.create() {
        let _ = cgroups.destroy();
        let _ = state_dir.remove();
        return Err(e);
    }
    let lock = state_dir.lock_fd().map_err(|e| Error::io("duplicating", state_dir.path().join("lock"), e))?;
    let janitor = Janitor::spawn(state_dir.path().to_path_buf(), cgroups.clone(), lock)?;
    let session = Session { cgroups, state_dir, janitor: Some(janitor) };
    observer.event(Event::Spawning);

    let result = supervise(spec, &session, observer);
    let cleanup = session.finish();
    let outcome = result?;
    cleanup?;
    Ok(outcome)
}

fn supervise(spec: &Spec, session: &Session, observer: &mut dyn Observer) -> Result<Outcome> {
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGWINCH, Signal::SIGCHLD] {
        mask.add(s);
    }
    let mut old_mask = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut old_mask)).map_err(|e| Error::syscall("sigprocmask", e))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::syscall("signalfd", e))?;
    let _raw = (spec.console == crate::spec::ConsoleMode::Interactive).then(RawTerminal::enter).flatten();

    let result = loop {
        match run_once(spec, session, &signals, observer) {
            Ok(Outcome::Rebooted) if !spec.keep_unit => {
                observer.event(Event::Rebooting);
                if let Err(e) = crate::cgroup::remove_tree(&session.cgroups.payload())
                    .and_then(|()| std::fs::create_dir(session.cgroups.payload()).map_err(|e| Error::Cgroup {
                        step: "re-creating",
                        path: session.cgroups.payload(),
                        source: e,
                    }))
                {
                    break Err(e);
                }
            }
            other => break other,
        }
    };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    result
}

/// The stop protocol: first request sends the kill signal, the second SIGKILL.
struct Stopper {
    requests: u32,
    kill_signal: Option<i32>,
    resend_when_handlers_ready: bool,
}

impl Stopper {
    fn request(&mut self, pidfd: &OwnedFd, boot: bool, handlers_ready: bool) {
        self.requests += 1;
        let sig = match (self.requests, self.kill_signal) {
            (1, Some(sig)) => {
                // A signal sent before systemd installed its handlers is lost.
                self.resend_when_handlers_ready = boot && !handlers_ready;
                sig
            }
            _ => libc::SIGKILL,
        };
        let _ = sys::pidfd_send_signal(pidfd.as_fd(), sig);
    }
}

fn run_once(spec: &Spec, session: &Session, signals: &SignalFd, observer: &mut dyn Observer) -> Result<Outcome> {
    let (ours, theirs) = channel::pair()?;
    let payload_cgroup = session.cgroups.open_payload()?;
    let mut flags = (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) as u64;
    if spec.private_network {
        flags |= libc::CLONE_NEWNET as u64;
    }
    let term = std::env::var("TERM").ok().filter(|_| spec.console == crate::spec::ConsoleMode::Interactive);
    let plan = child::Plan { spec, mount_point: session.state_dir.mount_point(), term };
    std::fs::create_dir_all(&plan.mount_point).map_err(|e| Error::io("creating", &plan.mount_point, e))?;

    let (leader, pidfd) = match sys::clone3(flags, libc::SIGCHLD, Some(payload_cgroup.as_fd()))
        .map_err(|e| Error::syscall("clone3", e))?
    {
        Forked::Child => {
            drop(ours);
            child::run(&plan, theirs)
        }
        Forked::Parent { pid, pidfd } => {
            drop(theirs);
            (pid, pidfd.ok_or_else(|| Error::Protocol("clone3 returned no pidfd".into()))?)
        }
    };
    drop(payload_cgroup);

    // Setup: handles arrive, then end-of-file when the payload is exec'd.
    let mut notify_sock: Option<OwnedFd> = None;
    let mut console: Option<Console> = None;
    loop {
        match ours.recv() {
            Ok(Some((ToParent::Handles { console: has_console }, mut fds))) => {
                if fds.is_empty() || (has_console && fds.len() < 2) {
                    return fail_setup(&pidfd, Error::Protocol("handles message without its descriptors".into()));
                }
                let master = has_console.then(|| fds.remove(1));
                notify_sock = Some(fds.remove(0));
                if let Some(m) = master {
                    console = Some(Console::new(m, spec.console).map_err(|e| Error::syscall("opening the console peer", e))?);
                }
            }
            Ok(Some((ToParent::Failed { step, message }, _))) => return fail_setup(&pidfd, Error::Child { step, message }),
            Ok(None) => break,
            Err(e) => return fail_setup(&pidfd, e),
        }
    }
    let Some(notify_sock) = notify_sock else {
        let status = sys::pidfd_wait(pidfd.as_fd(), false).ok().flatten();
        return Err(Error::Protocol(format!("the container process ended during setup ({status:?})")));
    };

    let mut state = State {
        name: spec.machine.clone(),
        uuid: spec.uuid.to_string(),
        directory: spec.directory.clone(),
        ephemeral: spec.ephemeral,
        boot: spec.is_boot(),
        leader: Some(leader),
        supervisor: std::process::id() as i32,
        cgroup: session.cgroups.payload(),
        kill_signal: spec.kill_signal,
        console: spec.console,
        private_network: spec.private_network,
        started_usec: now_usec(),
        ready: false,
        status: None,
        phase: "running".into(),
    };
    session.state_dir.write(&state)?;
    observer.event(Event::Started { leader });
    notify::notify_manager(&format!("STATUS=Container started.\nX_NSPAWN_LEADER_PID={leader}"));
    if !spec.notify_ready {
        notify::notify_manager("READY=1");
    }

    let mut stopper = Stopper { requests: 0, kill_signal: spec.kill_signal, resend_when_handlers_ready: false };
    let mut handlers_ready = false;
    loop {
        let mut fds = vec![
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(notify_sock.as_fd(), PollFlags::POLLIN),
        ];
        if let Some(c) = &console {
            fds.push(PollFd::new(c.master.as_fd(), PollFlags::POLLIN));
            if c.reads_stdin() {
                fds.push(PollFd::new(sys::stdio(0), PollFlags::POLLIN));
            }
        }
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::syscall("poll", e)),
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);

        if ready.get(3).copied().unwrap_or(false) {
            if let Some(c) = &console {
                c.drain_output();
            }
        }
        if ready.get(4).copied().unwrap_or(false) {
            if let Some(c) = &mut console {
                if c.forward_input() == Action::Kill {
                    observer.event(Event::EscapeKill);
                    let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                }
            }
        }
        if ready[2] {
            while let Some((sender, data)) = notify::receive(notify_sock.as_fd()) {
                if sender != Some(leader) {
                    continue;
                }
                let msg = notify::parse(&data);
                if msg.signals_ready {
                    handlers_ready = true;
                    if std::mem::take(&mut stopper.resend_when_handlers_ready) {
                        if let Some(sig) = stopper.kill_signal {
                            let _ = sys::pidfd_send_signal(pidfd.as_fd(), sig);
                        }
                    }
                }
                if let Some(status) = &msg.status {
                    observer.event(Event::Status(status));
                    notify::notify_manager(&format!("STATUS=Container running: {status}"));
                    state.status = Some(status.clone());
                }
                if msg.ready && !state.ready {
                    state.ready = true;
                    observer.event(Event::Ready);
                    if spec.notify_ready {
                        notify::notify_manager("READY=1");
                    }
                }
                if msg.ready || msg.status.is_some() {
                    let _ = session.state_dir.write(&state);
                }
            }
        }
        if ready[1] {
            while let Ok(Some(info)) = signals.read_signal() {
                match info.ssi_signo as i32 {
                    libc::SIGTERM | libc::SIGINT | libc::SIGHUP => {
                        if stopper.requests == 0 {
                            observer.event(Event::Stopping);
                            notify::notify_manager("STOPPING=1");
                            state.phase = "stopping".into();
                            let _ = session.state_dir.write(&state);
                        }
                        stopper.request(&pidfd, spec.is_boot(), handlers_ready);
                    }
                    libc::SIGWINCH => {
                        if let Some(c) = &console {
                            c.sync_size();
                        }
                    }
                    _ => {}
                }
            }
        }
        if ready[0] {
            if let Some(exit) = sys::pidfd_wait(pidfd.as_fd(), true).map_err(|e| Error::syscall("waitid", e))? {
                if let Some(c) = &console {
                    c.drain_output();
                }
                return Ok(match exit {
                    ExitKind::Exited(n) => Outcome::Exited(n),
                    ExitKind::Signaled(libc::SIGINT) => Outcome::PoweredOff,
                    ExitKind::Signaled(libc::SIGHUP) => Outcome::Rebooted,
                    ExitKind::Signaled(s) => Outcome::Killed(s),
                });
            }
        }
    }
}

/// The container process failed before exec: reap it and report why.
fn fail_setup(pidfd: &OwnedFd, err: Error) -> Result<Outcome> {
    let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
    let _ = sys::pidfd_wait(pidfd.as_fd(), false);
    Err(err)
}

