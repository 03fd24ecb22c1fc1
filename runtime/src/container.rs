//! The launcher's side: claim the name and cgroup, start the container
//! process in new namespaces, supervise it (console, notify socket, stop
//! signals), map how it ended, restart it on reboot, and clean up.

use std::fs::File;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::cgroup::CgroupLayout;
use crate::console::RawTerminal;
use crate::error::{Error, Result};
use crate::janitor::Janitor;
use crate::spec::{Payload, Spec};
use crate::state::StateDir;
use crate::supervise;
use crate::sys;

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
    Started {
        leader: i32,
    },
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
    for m in &spec.mounts {
        if let crate::mounts::CustomMount::Bind { source, .. } = m {
            std::fs::metadata(source).map_err(|e| Error::io("bind source", source, e))?;
        }
    }
    // No directory: an empty tmpfs root. With a toplevel the directory is
    // the guest's state and may well be empty.
    let Some(dir) = &spec.directory else {
        return Ok(());
    };
    let meta = std::fs::metadata(dir).map_err(|e| Error::BadTree {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(Error::BadTree {
            path: dir.clone(),
            reason: "not a directory".into(),
        });
    }
    if spec.store.is_some() {
        return Ok(());
    }
    match &spec.payload {
        Payload::Boot { .. } if crate::environment::tree_os_release(dir).is_none() => {
            Err(Error::NoOsRelease { path: dir.clone() })
        }
        Payload::Command { argv } if argv.is_empty() => Err(Error::InvalidValue {
            what: "command",
            value: String::new(),
            reason: "no command given".into(),
        }),
        _ if !dir.join("usr").is_dir() => Err(Error::BadTree {
            path: dir.clone(),
            reason: "does not look like an OS tree (usr/ is missing)".into(),
        }),
        _ => Ok(()),
    }
}

/// Hold the tree: exclusively for a normal run, shared for `--ephemeral`
/// (any number of ephemeral guests may share a tree nobody writes to).
fn lock_tree(spec: &Spec) -> Result<Option<Flock<File>>> {
    let Some(dir) = &spec.directory else {
        return Ok(None);
    };
    let f = File::open(dir).map_err(|e| Error::io("opening", dir, e))?;
    let how = if spec.ephemeral {
        FlockArg::LockSharedNonblock
    } else {
        FlockArg::LockExclusiveNonblock
    };
    Flock::lock(f, how)
        .map(Some)
        .map_err(|_| Error::TreeBusy { path: dir.clone() })
}

/// Everything claimed for the container's life. Dropping it releases it
/// all (the container process never drops it: it execs or `_exit`s).
struct Session {
    state_dir: StateDir,
    cgroups: Option<CgroupLayout>,
    janitor: Option<Janitor>,
}

impl Session {
    /// Remove the cgroups and state, then let the janitor go; idempotent.
    fn finish(&mut self) -> Result<()> {
        let cg = self.cgroups.take().map_or(Ok(()), |c| c.destroy());
        let st = self.state_dir.remove();
        if let Some(j) = self.janitor.take() {
            j.dismiss();
        }
        cg.and(st)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Run a container to the end and say how it ended.
pub fn run(spec: &Spec, observer: &mut dyn Observer) -> Result<Outcome> {
    if !sys::is_root() {
        return Err(Error::NotRoot);
    }
    let t0 = std::time::Instant::now();
    validate_tree(spec)?;
    let _tree_lock = lock_tree(spec)?;
    let mut session = Session {
        state_dir: StateDir::claim(&spec.machine)?,
        cgroups: None,
        janitor: None,
    };
    let mut cgroups = CgroupLayout::plan(&spec.machine, spec.keep_unit)?;
    let created = cgroups.create();
    let cgroups = session.cgroups.insert(cgroups);
    created?;
    let lock = session
        .state_dir
        .lock_fd()
        .map_err(|e| Error::io("duplicating", session.state_dir.path().join("lock"), e))?;
    session.janitor = Some(Janitor::spawn(
        session.state_dir.path().to_path_buf(),
        cgroups.clone(),
        lock,
    )?);
    tracing::debug!(
        "claimed name, tree, cgroup {} and janitor: {} µs",
        cgroups.payload().display(),
        t0.elapsed().as_micros()
    );
    observer.event(Event::Spawning);

    let result = supervise(spec, cgroups, &session.state_dir, observer);
    let t1 = std::time::Instant::now();
    let cleanup = session.finish();
    tracing::debug!("cleanup: {} µs", t1.elapsed().as_micros());
    let outcome = result?;
    cleanup?;
    Ok(outcome)
}

/// Run the payload, again after each reboot unless `--keep-unit`.
fn supervise(
    spec: &Spec,
    cgroups: &CgroupLayout,
    state_dir: &StateDir,
    observer: &mut dyn Observer,
) -> Result<Outcome> {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGWINCH,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    let mut old_mask = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut old_mask))
        .map_err(|e| Error::syscall("sigprocmask", e))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::syscall("signalfd", e))?;
    let _raw = (spec.console == crate::spec::ConsoleMode::Interactive)
        .then(RawTerminal::enter)
        .flatten();

    let result = loop {
        match supervise::run_payload(spec, cgroups, state_dir, &signals, observer) {
            Ok(Outcome::Rebooted) if !spec.keep_unit => {
                observer.event(Event::Rebooting);
                if let Err(e) = cgroups.reset_payload() {
                    break Err(e);
                }
            }
            other => break other,
        }
    };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    result
}
