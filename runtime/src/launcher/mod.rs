//! The launcher's side: claim the name and cgroup, start the container
//! process in new namespaces, supervise it (console, notify socket, stop
//! signals), map how it ended, restart it on reboot, and clean up.

pub mod console;
pub(crate) mod janitor;
pub mod notify;
pub(crate) mod supervise;

use std::fs::File;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::cgroup::CgroupLayout;
use crate::error::{Error, Result};
use crate::host::link::HostLink;
use crate::launcher::console::RawTerminal;
use crate::launcher::janitor::{Claim, Janitor, JanitorLink};
use crate::spec::userns::{Mode, Ownership, RANGE, UidRange};
use crate::spec::{Payload, Spec};
use crate::state::StateDir;
use crate::sys;
use crate::userns::{self, RangeLock};
use crate::{guest, userns::idmap};
use std::path::Path;

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
    /// Something the user should know that is not an error.
    Notice(&'a str),
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
        if let crate::spec::mounts::CustomMount::Bind { source, .. } = m {
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
        Payload::Boot { .. } if crate::guest::environment::tree_os_release(dir).is_none() => {
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
/// The janitor comes first: it is told of every claim as it is made.
struct Session {
    janitor: Option<Janitor>,
    state_dir: Option<StateDir>,
    cgroups: Option<CgroupLayout>,
    /// The UID range's lock, held for the guest's life.
    range_lock: Option<RangeLock>,
}

impl Session {
    /// Remove the cgroups and state, release the UID range and the name,
    /// then let the janitor go; idempotent. What cannot be removed (a
    /// cgroup whose processes will not die) stays claimed for the janitor
    /// to try again once we are gone: the name and range are let go only
    /// after the guest's cgroups are.
    fn finish(&mut self) -> Result<()> {
        let cg = self.cgroups.take().map_or(Ok(()), |c| c.destroy());
        let st = match (&cg, self.state_dir.as_mut()) {
            (Ok(()), Some(state_dir)) => {
                drop(self.range_lock.take());
                state_dir.release()
            }
            _ => Ok(()),
        };
        if let Some(j) = self.janitor.take() {
            j.dismiss(cg.is_ok() && st.is_ok());
        }
        drop(self.range_lock.take());
        drop(self.state_dir.take());
        cg.and(st)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Resolve `--private-users` and `--private-users-ownership`: the range
/// (picked and locked, or checked free), the ownership (idmapped clones of
/// the tree and store, or a one-time chown), and the payload cgroup handed
/// to the guest's root so its systemd can manage it.
fn prepare_userns(
    spec: &Spec,
    cgroups: &CgroupLayout,
    observer: &mut dyn Observer,
    janitor: &JanitorLink,
) -> Result<Option<(guest::UsernsPlan, Option<RangeLock>)>> {
    let busy = |range: UidRange| Error::InvalidValue {
        what: "--private-users",
        value: format!("{}:{}", range.shift, range.range),
        reason: format!(
            "the range overlaps one in use by another container (locks in {})",
            userns::LOCK_DIR
        ),
    };
    let locked = |range: UidRange| -> Result<(UidRange, Option<RangeLock>)> {
        let lock = userns::lock(range, janitor)?.ok_or_else(|| busy(range))?;
        Ok((range, Some(lock)))
    };
    let tree = spec.directory.as_deref();
    let (range, lock) = match spec.private_users {
        Mode::No => return Ok(None),
        Mode::Identity => (
            UidRange {
                shift: 0,
                range: RANGE,
            },
            None,
        ),
        Mode::Fixed(range) => locked(range)?,
        Mode::FromTree => {
            let tree = tree.ok_or_else(|| Error::InvalidValue {
                what: "--private-users",
                value: "yes".into(),
                reason: "takes the range from the tree's owner, and there is no tree (use pick)"
                    .into(),
            })?;
            locked(UidRange {
                shift: userns::tree_shift(tree)?,
                range: RANGE,
            })?
        }
        Mode::Pick => {
            // A chown walk that was cut short is finished in its own range.
            let tree_shift = tree
                .and_then(|t| idmap::chown_in_progress(t).or_else(|| userns::tree_shift(t).ok()));
            let (range, lock) = userns::pick(spec.machine.as_str(), tree_shift, janitor)?;
            (range, Some(lock))
        }
    };
    let mut plan = guest::UsernsPlan {
        range,
        mapping: None,
        root: None,
        store: None,
    };
    // Identity and pre-shifted trees need no ownership work.
    let ownership = if range.shift == 0 || spec.private_users == Mode::FromTree {
        Ownership::Off
    } else {
        spec.ownership
    };
    let map = |plan: &mut guest::UsernsPlan| -> Result<()> {
        let mapping = idmap::mapping_userns(range)?;
        (plan.root, plan.store) = idmapped_mounts(spec, &mapping)?;
        plan.mapping = Some(mapping);
        Ok(())
    };
    match ownership {
        Ownership::Off => {}
        Ownership::Map => map(&mut plan)?,
        Ownership::Chown => chown(tree, range)?,
        Ownership::Auto => match map(&mut plan) {
            Ok(()) => {}
            Err(Error::Idmap { path, source }) => {
                observer.event(Event::Notice(&format!(
                    "{} does not support idmapped mounts ({source}); shifting the tree's ownership with chown instead",
                    path.display()
                )));
                plan = guest::UsernsPlan {
                    range,
                    mapping: None,
                    root: None,
                    store: None,
                };
                chown(tree, range)?;
            }
            Err(e) => return Err(e),
        },
    }
    cgroups.delegate_to(range.shift)?;
    Ok(Some((plan, lock)))
}

/// Detached idmapped clones of the tree and the store, for one boot (a
/// boot attaches them; a reboot needs fresh ones, made here in the
/// launcher's mount namespace, the only one allowed to clone them).
fn idmapped_mounts(
    spec: &Spec,
    mapping: &std::os::fd::OwnedFd,
) -> Result<(Option<std::os::fd::OwnedFd>, Option<std::os::fd::OwnedFd>)> {
    let root = spec
        .directory
        .as_deref()
        .map(|tree| idmap::idmapped_clone(tree, mapping, true, false))
        .transpose()?;
    let store = match &spec.store {
        Some(store) => Some(idmap::idmapped_clone(
            Path::new(crate::nixos::closure::STORE),
            mapping,
            store.closure.is_none(),
            true,
        )?),
        None => None,
    };
    Ok((root, store))
}

fn chown(tree: Option<&Path>, range: UidRange) -> Result<()> {
    if let Some(tree) = tree {
        idmap::chown_tree(tree, range)?;
    }
    Ok(())
}

/// Run a container to the end and say how it ended.
pub fn run(spec: &Spec, observer: &mut dyn Observer) -> Result<Outcome> {
    if !sys::is_root() {
        return Err(Error::NotRoot);
    }
    let t0 = std::time::Instant::now();
    // Declared first, so it is released last (after the cleanup below).
    let signals = BlockedSignals::block()?;
    validate_tree(spec)?;
    let _tree_lock = lock_tree(spec)?;
    // Before the first claim, so that every claim is covered.
    let janitor = Janitor::spawn()?;
    let link = janitor.link().try_clone()?;
    let janitor_pid = janitor.pid();
    let mut session = Session {
        janitor: Some(janitor),
        state_dir: None,
        cgroups: None,
        range_lock: None,
    };
    let state_dir = session
        .state_dir
        .insert(StateDir::claim(&spec.machine, &link)?);
    let mut notices = Vec::new();
    let mut host = HostLink::open(spec, &link, &mut |n| notices.push(n))?;
    for n in &notices {
        observer.event(Event::Notice(n));
    }
    let cgroups = CgroupLayout::plan(
        &spec.machine,
        spec.keep_unit,
        host.as_ref().and_then(|h| h.scope_unit()),
    )?;
    link.note(&Claim::Cgroups(Box::new(cgroups.clone())), None)?;
    let cgroups = session.cgroups.insert(cgroups);
    if let Some(h) = host.as_mut() {
        h.begin_boot(spec, &cgroups.base_relative())?;
    }
    cgroups.create(Some(janitor_pid))?;
    // nspawn's closed device policy, on every host (a systemd host's scope
    // has it too; a host without systemd, or a unit without it, would not).
    // The janitor hears where it goes before, and the program's id after.
    let rules = crate::cgroup::devices::closed_policy(&spec.mounts);
    let mut intent = cgroups.clone();
    intent.devices = Some(cgroups.device_plan(rules.clone()));
    link.note(&Claim::Cgroups(Box::new(intent)), None)?;
    let enforced = cgroups.enforce_devices(rules);
    link.note(&Claim::Cgroups(Box::new(cgroups.clone())), None)?;
    enforced?;
    let (userns, range_lock) = match prepare_userns(spec, cgroups, observer, &link)? {
        Some((plan, lock)) => (Some(plan), lock),
        None => (None, None),
    };
    session.range_lock = range_lock;
    tracing::debug!(
        "claimed name, tree, cgroup {} and janitor: {} µs",
        cgroups.payload().display(),
        t0.elapsed().as_micros()
    );
    observer.event(Event::Spawning);

    let result = supervise(
        spec,
        cgroups,
        state_dir,
        observer,
        userns,
        host.as_mut(),
        &signals.fd,
    );
    drop(host);
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
    mut userns: Option<guest::UsernsPlan>,
    mut host: Option<&mut HostLink>,
    signals: &SignalFd,
) -> Result<Outcome> {
    let _raw = (spec.console == crate::spec::ConsoleMode::Interactive)
        .then(RawTerminal::enter)
        .flatten();

    let mut boot_count = 0;
    loop {
        boot_count += 1;
        let outcome = supervise::run_payload(
            spec,
            cgroups,
            state_dir,
            signals,
            observer,
            supervise::Boot {
                count: boot_count,
                userns: userns.as_ref(),
            },
            host.as_deref_mut(),
        );
        if let Some(h) = host.as_deref_mut() {
            // The scope goes with the boot; its payload first (it is ours).
            if cgroups.managed {
                let _ = cgroups.destroy();
            }
            h.end_boot(spec);
        }
        match outcome {
            Ok(Outcome::Rebooted) if !spec.keep_unit => {
                if let Some(plan) = userns.as_mut()
                    && let Some(mapping) = &plan.mapping
                {
                    match idmapped_mounts(spec, mapping) {
                        Ok(mounts) => (plan.root, plan.store) = mounts,
                        Err(e) => break Err(e),
                    }
                }
                observer.event(Event::Rebooting);
                // A fresh payload cgroup (in a new scope on a systemd host),
                // delegated again under a user namespace.
                let fresh = match host.as_deref_mut() {
                    Some(h) if cgroups.managed => h
                        .begin_boot(spec, &cgroups.base_relative())
                        .and_then(|()| cgroups.create_payload())
                        .and_then(|()| cgroups.reenforce_devices()),
                    _ => cgroups.reset_payload(),
                };
                let reset = fresh.and_then(|()| match &userns {
                    Some(plan) => cgroups.delegate_to(plan.range.shift),
                    None => Ok(()),
                });
                if let Err(e) = reset {
                    break Err(e);
                }
            }
            other => break other,
        }
    }
}

/// The stop signals, blocked and read through a signalfd from before the
/// guest starts until the launcher has cleaned up: machined signals the
/// supervisor when the guest's scope ends, which must not kill it mid-cleanup.
struct BlockedSignals {
    fd: SignalFd,
    old_mask: SigSet,
}

impl BlockedSignals {
    fn block() -> Result<Self> {
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
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| Error::syscall("signalfd", e))?;
        Ok(BlockedSignals { fd, old_mask })
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // What arrived after the guest ended is answered by our exit.
        while let Ok(Some(_)) = self.fd.read_signal() {}
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
    }
}
