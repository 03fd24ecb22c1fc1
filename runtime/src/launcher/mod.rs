//! The launcher's side: claim the name and cgroup, start the container
//! process in new namespaces, supervise it (console, notify socket, stop
//! signals), map how it ended, restart it on reboot, and clean up.

pub mod console;
pub(crate) mod context;
pub mod events;
pub(crate) mod janitor;
pub(crate) mod network;
pub mod notify;
pub(crate) mod start;
pub(crate) mod supervise;
pub(crate) mod tint;

use std::fs::File;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::cgroup::CgroupLayout;
use crate::error::{Error, Result};
use crate::host::link::HostLink;
use crate::launcher::console::RawTerminal;
use crate::launcher::context::Launch;
use crate::launcher::events::{Event, Observer, Outcome};
use crate::launcher::janitor::Janitor;
use crate::launcher::janitor::claim::Claim;
use crate::spec::{Payload, Spec};
use crate::state::StateDir;
use crate::sys;
use crate::userns::{self, range::RangeLock};

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
    // Nor does a guest write the tree under --read-only or --volatile=.
    let shared = spec.ephemeral
        || spec.filesystem.read_only
        || spec.filesystem.volatile != crate::spec::filesystem::Volatile::No;
    let how = if shared {
        FlockArg::LockSharedNonblock
    } else {
        FlockArg::LockExclusiveNonblock
    };
    Flock::lock(f, how).map(Some).map_err(|_| Error::TreeBusy {
        path: dir.clone(),
        ephemeral: spec.ephemeral,
    })
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
    /// Under --keep-unit: the unit's cgroup, ours alone until the payload
    /// is gone.
    unit_claim: Option<crate::cgroup::UnitClaim>,
    /// The janitor has links to see gone and maybe a zone to remove once
    /// the launcher exits (see `Janitor::dismiss`).
    network_tail: bool,
    /// `--overlay` work directories made for the guest.
    work_dirs: Vec<std::path::PathBuf>,
}

impl Session {
    /// Remove the cgroups and state, release the UID range and the name,
    /// then let the janitor go; idempotent. What cannot be removed (a
    /// cgroup whose processes will not die) stays claimed for the janitor
    /// to try again once we are gone: the name and range are let go only
    /// after the guest's cgroups are.
    fn finish(&mut self) -> Result<()> {
        let cg = self.cgroups.take().map_or(Ok(()), |c| c.destroy());
        // Only once the guest (and with it its overlays) is gone.
        if cg.is_ok() {
            for dir in std::mem::take(&mut self.work_dirs) {
                let _ = std::fs::remove_dir_all(dir);
            }
            // The payload is gone: the unit may have another guest now.
            drop(self.unit_claim.take());
        }
        let st = match (&cg, self.state_dir.as_mut()) {
            (Ok(()), Some(state_dir)) => {
                drop(self.range_lock.take());
                state_dir.release()
            }
            _ => Ok(()),
        };
        if let Some(j) = self.janitor.take() {
            j.dismiss(cg.is_ok() && st.is_ok(), self.network_tail);
        }
        drop(self.range_lock.take());
        // Not unlinked if the payload could not be destroyed: the janitor
        // holds it on (a copy of the descriptor) until it has been.
        if let Some(claim) = self.unit_claim.take() {
            claim.keep_for_janitor();
        }
        drop(self.state_dir.take());
        cg.and(st)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Run a container to the end and say how it ended.
///
/// The launch sequence: check the tree and hold it; fork the janitor before
/// anything is claimed; claim the name (state directory); link to a systemd
/// host (scope, registration); plan and create the cgroups with the device
/// policy; prepare the user namespace (range, idmapped mounts); then boot
/// the guest until it ends (again after each reboot), and release
/// everything in reverse.
pub fn run(spec: &Spec, observer: &mut dyn Observer) -> Result<Outcome> {
    if !sys::is_root() {
        return Err(Error::NotRoot);
    }
    let t0 = std::time::Instant::now();
    // Declared first, so it is released last (after the cleanup below).
    let signals = BlockedSignals::block()?;
    // An image is attached and mounted (detached) first, and from then on
    // is the tree: its path reaches the detached mounts. They and the loop
    // devices go when this value and the guest's mount namespace do.
    let image = spec
        .image
        .as_ref()
        .map(|i| crate::image::attach(i, spec.ephemeral))
        .transpose()?;
    let imaged;
    let spec = match &image {
        Some(attached) => {
            for (at, device, fs) in &attached.used {
                tracing::debug!("image: {at} is {device} ({fs})");
            }
            let mut image = spec.image.clone();
            // Under --ephemeral's overlay the root is writable whatever
            // the image is.
            if let Some(i) = image.as_mut().filter(|_| !spec.ephemeral) {
                i.read_only |= attached.root_read_only;
            }
            imaged = Spec {
                directory: Some(attached.path().to_path_buf()),
                image,
                ..spec.clone()
            };
            &imaged
        }
        None => spec,
    };
    validate_tree(spec)?;
    // Network options checked against the host before anything is claimed.
    let network = network::NetworkRun::prepare(spec)?;
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
        unit_claim: None,
        network_tail: !network.plan.is_empty(),
        work_dirs: Vec::new(),
    };
    let mut network = network;
    network.janitor = Some(link.try_clone()?);
    let state_dir = session
        .state_dir
        .insert(StateDir::claim(&spec.machine, &link)?);
    make_work_dirs(spec, &link, &mut session.work_dirs)?;
    let mut notices = Vec::new();
    let mut host = HostLink::open(spec, &link, &mut |n| notices.push(n))?;
    for n in &notices {
        observer.event(Event::Warning(n));
    }
    let scope_unit = host.as_ref().and_then(|h| h.scope_unit());
    // --property acts on the scope systemd makes for us: refused where
    // there is none to make (no systemd host); under --keep-unit it has
    // no effect, as with nspawn.
    if scope_unit.is_none()
        && !spec.keep_unit
        && let Some(p) = spec.process.properties.first()
    {
        return Err(Error::InvalidValue {
            what: "--property",
            value: p.name.to_owned(),
            reason: "unit properties need a systemd host to make the container's scope, and this host has none".into(),
        });
    }
    if spec.keep_unit && (spec.process.slice.is_some() || !spec.process.properties.is_empty()) {
        observer.event(Event::Notice(
            "Scope allocation is turned off (--keep-unit): --slice= and --property= have no effect.",
        ));
    }
    let cgroups = CgroupLayout::plan(
        &spec.machine,
        spec.keep_unit,
        scope_unit,
        spec.process.slice.as_deref(),
    )?;
    session.unit_claim = cgroups.claim_unit(&spec.machine, &link)?;
    cgroups.check_unclaimed()?;
    link.note(&Claim::Cgroups(Box::new(cgroups.clone())), None)?;
    let cgroups = session.cgroups.insert(cgroups);
    if let Some(h) = host.as_mut() {
        h.begin_boot(&cgroups.base_relative())?;
    }
    cgroups.create(Some(janitor_pid))?;
    // nspawn's closed device policy, on every host (a systemd host's scope
    // has it too; a host without systemd, or a unit without it, would not).
    // The janitor hears where it goes before, and the program's id after.
    //
    // Not in a nested user namespace (a Nix uid-range builder): the kernel
    // loads cgroup device programs only for CAP_BPF over the initial one,
    // and there the policy has nothing to add — neither we nor the guest
    // may make device nodes (mknod needs the host's CAP_MKNOD) or open one
    // on a filesystem mounted there (nodev), so the guest reaches only the
    // nodes its creator already could.
    if crate::userns::range::OwnMap::read()?.is_initial() {
        let rules = crate::cgroup::devices::closed_policy(&spec.mounts);
        let mut intent = cgroups.clone();
        intent.devices = Some(cgroups.device_plan(rules.clone()));
        link.note(&Claim::Cgroups(Box::new(intent)), None)?;
        let enforced = cgroups.enforce_devices(rules);
        cgroups.check_unclaimed()?;
        link.note(&Claim::Cgroups(Box::new(cgroups.clone())), None)?;
        enforced?;
    } else {
        tracing::debug!(
            "no device policy: nested user namespace, where no device node can be made"
        );
    }
    let (userns, range_lock) = match userns::prepare(spec, cgroups, observer, &link)? {
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

    let capabilities = Launch::payload_capabilities(spec, userns.is_some());
    let mut launch = Launch {
        spec,
        state_dir,
        cgroups,
        host,
        userns,
        capabilities,
        signals: &signals.fd,
        boot: 0,
        network,
    };
    let result = boot_until_done(&mut launch, observer);
    drop(launch);
    let t1 = std::time::Instant::now();
    let cleanup = session.finish();
    tracing::debug!("cleanup: {} µs", t1.elapsed().as_micros());
    let outcome = result?;
    cleanup?;
    Ok(outcome)
}

/// The writable `--overlay`s' work directories, beside their upper
/// layers (overlayfs wants them on the same filesystem), fresh: a
/// leftover of this machine's is emptied first.
fn make_work_dirs(
    spec: &Spec,
    link: &crate::launcher::janitor::claim::JanitorLink,
    made: &mut Vec<std::path::PathBuf>,
) -> Result<()> {
    for m in &spec.mounts {
        if let crate::spec::mounts::CustomMount::Overlay {
            work: Some(work), ..
        } = m
        {
            link.note(&Claim::WorkDir(work.clone()), None)?;
            made.push(work.clone());
            let _ = std::fs::remove_dir_all(work);
            std::fs::create_dir(work).map_err(|e| Error::io("creating", work, e))?;
        }
    }
    Ok(())
}

/// Boot the guest, again after each reboot unless `--keep-unit`.
fn boot_until_done(launch: &mut Launch<'_>, observer: &mut dyn Observer) -> Result<Outcome> {
    let _raw = (launch.spec.console == crate::spec::ConsoleMode::Interactive)
        .then(RawTerminal::enter)
        .flatten();
    loop {
        launch.boot += 1;
        let outcome = supervise::run_payload(launch, observer);
        let own_scope = launch.in_own_scope();
        if let Some(h) = launch.host.as_mut() {
            // The scope goes with the boot; its payload first (it is ours).
            if own_scope {
                let _ = launch.cgroups.destroy();
            }
            h.end_boot();
        }
        match outcome {
            Ok(Outcome::Rebooted) if !launch.spec.keep_unit => {
                observer.event(Event::Rebooting);
                prepare_reboot(launch)?;
            }
            other => return other,
        }
    }
}

/// A fresh payload cgroup (in a new scope on a systemd host) with the
/// device policy, delegated again under a user namespace, and fresh
/// idmapped mounts.
fn prepare_reboot(launch: &mut Launch<'_>) -> Result<()> {
    if let Some(plan) = launch.userns.as_mut() {
        plan.refresh_mounts(launch.spec)?;
    }
    let cgroups = launch.cgroups;
    let own_scope = launch.in_own_scope();
    match launch.host.as_mut() {
        Some(h) if own_scope => {
            h.begin_boot(&cgroups.base_relative())?;
            cgroups.create_payload()?;
            cgroups.reenforce_devices()?;
        }
        _ => cgroups.reset_payload()?,
    }
    if let Some(plan) = &launch.userns {
        cgroups.delegate_to(plan.range.shift)?;
    }
    Ok(())
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
