//! One run of the payload: start the container process, take its handles,
//! then watch it — console, notify socket, stop signals — until it ends.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;

use crate::cgroup::CgroupLayout;
use crate::error::{Error, Result};
use crate::guest;
use crate::handshake::{self, Channel, ToChild, ToParent};
use crate::host::link::HostLink;
use crate::launcher::console::{Action, Console};
use crate::launcher::notify;
use crate::launcher::{Event, Observer, Outcome};
use crate::spec::Spec;
use crate::spec::userns::UidRange;
use crate::state::process::ProcessIdentity;
use crate::state::{State, StateDir};
use crate::sys::{self, ExitKind, Forked};

/// Which boot of the guest this is, and its user namespace plan.
pub(crate) struct Boot<'a> {
    /// 1 for the first boot, one more for each reboot.
    pub count: u32,
    pub userns: Option<&'a guest::UsernsPlan>,
}

/// Start the payload and supervise it until it ends.
pub(crate) fn run_payload(
    spec: &Spec,
    cgroups: &CgroupLayout,
    state_dir: &StateDir,
    signals: &SignalFd,
    observer: &mut dyn Observer,
    boot: Boot<'_>,
    mut host: Option<&mut HostLink>,
) -> Result<Outcome> {
    let Boot {
        count: boot_count,
        userns,
    } = boot;
    // The closure-only store, made here with the host's privileges (one
    // overlay, or word of why it is one bind per path).
    let boot_store =
        crate::nixos::store::prepare_boot_store(spec, userns, state_dir.path(), &mut |n| {
            if boot_count == 1 {
                observer.event(Event::Notice(n));
            }
        })?;
    let store_overlay = match &boot_store {
        Some(crate::nixos::store::BootStore::Overlay(fd)) => Some(fd),
        _ => None,
    };
    let t0 = std::time::Instant::now();
    let started = start(spec, cgroups, state_dir, userns, store_overlay);
    let store_is_overlay = store_overlay.is_some();
    drop(boot_store);
    let (first, first_pidfd, channel) = started?;
    tracing::debug!("clone3: PID {first}, {} µs", t0.elapsed().as_micros());
    let mut notices = Vec::new();
    // In a scope of our own the guest's PID 1 is registered from the scope's
    // root, then moved into payload (with a user namespace once it exists).
    let mut placement = match host.as_deref_mut() {
        Some(h) if cgroups.managed => Some(Placement {
            host: h,
            cgroups,
            notices: &mut notices,
        }),
        _ => None,
    };
    if userns.is_none()
        && let Some(p) = placement.as_mut()
    {
        let placed = p
            .place(spec, first, first_pidfd.as_fd())
            .and_then(|()| channel.send(&ToChild::Placed, &[]));
        if let Err(e) = placed {
            kill_and_reap(first_pidfd.as_fd());
            return Err(e);
        }
    }
    let early = placement.is_some();
    let setup = receive_setup(
        spec,
        &channel,
        (first, first_pidfd),
        userns.map(|u| u.range),
        placement.filter(|_| userns.is_some()),
    );
    let Setup {
        leader,
        pidfd,
        notify_sock,
        console,
        outer_mounts,
    } = setup?;
    if !early && let Some(h) = host.as_deref_mut() {
        let linked = h.guest_started(spec, leader, pidfd.as_fd(), &mut |n| notices.push(n));
        if let Err(e) = linked {
            kill_and_reap(pidfd.as_fd());
            return Err(e);
        }
    }
    for n in &notices {
        observer.event(Event::Notice(n));
    }
    // The leader is our child (or, under a user namespace, one we reap):
    // its PID cannot be reused before we wait for it.
    let identities = ProcessIdentity::of(leader, pidfd.as_fd())
        .and_then(|l| Ok((l, ProcessIdentity::of_self()?)));
    let (leader_identity, supervisor_identity) = match identities {
        Ok(ids) => ids,
        Err(e) => {
            kill_and_reap(pidfd.as_fd());
            return Err(e);
        }
    };
    let state = State {
        name: spec.machine.clone(),
        uuid: spec.uuid.to_string(),
        directory: spec.directory.clone(),
        toplevel: spec.store.as_ref().map(|s| s.toplevel.clone()),
        closure_only: spec.store.as_ref().is_some_and(|s| s.closure.is_some()),
        ephemeral: spec.ephemeral,
        boot: spec.is_boot(),
        leader: Some(leader),
        leader_identity: Some(leader_identity),
        supervisor: std::process::id() as i32,
        supervisor_identity: Some(supervisor_identity),
        host_boot_id: crate::state::process::host_boot_id(),
        boot_count,
        cgroup: cgroups.payload(),
        kill_signal: spec.kill_signal,
        console: spec.console,
        private_network: spec.private_network,
        uid_range: userns.map(|u| u.range),
        store_idmapped: userns.is_some_and(|u| u.store.is_some()),
        store_overlay: store_is_overlay,
        capabilities: crate::spec::capabilities::mask(&spec.payload_capabilities(userns.is_some())),
        syscall_filter: spec.seccomp.then(|| spec.syscall_filter.clone()),
        no_new_privileges: spec.no_new_privileges,
        outer_mounts_fd: outer_mounts.as_ref().map(|fd| fd.as_raw_fd()),
        started_usec: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0),
        ready: false,
        status: None,
        phase: "running".into(),
    };
    tracing::debug!(
        "payload exec'd: {} µs after clone3",
        t0.elapsed().as_micros()
    );
    state_dir.write(&state)?;
    observer.event(Event::Started { leader });
    notify::notify_manager(&format!(
        "STATUS=Container started.\nX_NSPAWN_LEADER_PID={leader}"
    ));
    if !spec.notify_ready {
        notify::notify_manager("READY=1");
    }
    let mut watch = Watch {
        spec,
        state_dir,
        observer,
        leader,
        pidfd,
        notify_sock,
        console,
        _outer_mounts: outer_mounts,
        state,
        stop_requests: 0,
        handlers_ready: false,
        resend_kill_signal: false,
        host,
    };
    watch.run(signals)
}

/// clone3 the container process into new namespaces and the payload cgroup.
/// With a user namespace only a new mount namespace: the process assembles
/// the root with the host's privileges and clones the guest's PID 1 into
/// the guest's own namespaces.
fn start(
    spec: &Spec,
    cgroups: &CgroupLayout,
    state_dir: &StateDir,
    userns: Option<&guest::UsernsPlan>,
    store_overlay: Option<&OwnedFd>,
) -> Result<(i32, OwnedFd, Channel)> {
    let (ours, theirs) = handshake::pair()?;
    let start_cgroup = cgroups.open_start()?;
    let mut flags = if userns.is_some() {
        libc::CLONE_NEWNS as u64
    } else {
        (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) as u64
    };
    if spec.private_network && userns.is_none() {
        flags |= libc::CLONE_NEWNET as u64;
    }
    let term = std::env::var("TERM").ok();
    let plan = guest::Plan {
        spec,
        mount_point: state_dir.mount_point(),
        store_staging: state_dir.path().join("store"),
        store_overlay,
        term,
        userns,
        await_placement: cgroups.managed && userns.is_none(),
    };
    state_dir.make_mount_point()?;
    let v1_visit = cgroups.visit_v1()?;
    let cloned = sys::clone3(flags, libc::SIGCHLD, Some(start_cgroup.as_fd()));
    if let Ok(Forked::Child) = cloned {
        // The visit is the launcher's to end: dropped here it would take
        // the container process back out of the guest's v1 cgroups.
        std::mem::forget(v1_visit);
    } else {
        drop(v1_visit);
    }
    match cloned.map_err(|e| Error::syscall("clone3", e))? {
        Forked::Child => {
            drop(ours);
            guest::run(&plan, theirs)
        }
        Forked::Parent { pid, pidfd } => {
            let pidfd = pidfd.ok_or_else(|| Error::Protocol("clone3 returned no pidfd".into()))?;
            Ok((pid, pidfd, ours))
        }
    }
}

/// A process that must not outlive a failed start.
fn kill_and_reap(pidfd: BorrowedFd<'_>) {
    let _ = sys::pidfd_send_signal(pidfd, libc::SIGKILL);
    let _ = sys::pidfd_wait(pidfd, false);
}

/// Registering the guest from the scope's root and moving it on into payload.
struct Placement<'a> {
    host: &'a mut HostLink,
    cgroups: &'a CgroupLayout,
    notices: &'a mut Vec<String>,
}

impl Placement<'_> {
    fn place(&mut self, spec: &Spec, leader: i32, pidfd: BorrowedFd<'_>) -> Result<()> {
        let notices = &mut *self.notices;
        self.host
            .guest_started(spec, leader, pidfd, &mut |n| notices.push(n))?;
        self.cgroups.move_into_payload(leader)
    }
}

/// What the setup handed over.
struct Setup {
    /// The guest's PID 1 and its pidfd.
    leader: i32,
    pidfd: OwnedFd,
    notify_sock: OwnedFd,
    console: Option<Console>,
    /// With a user namespace: the outer process's mount namespace.
    outer_mounts: Option<OwnedFd>,
}

/// With a user namespace: the guest's PID 1, its pidfd, and the mount
/// namespace of the outer process that assembled its root.
type Inner = (i32, OwnedFd, OwnedFd);

/// The notify socket and console arrive (and with a user namespace, the
/// guest's PID 1, whose ID maps we write), then end-of-file once the
/// payload has been exec'd. On failure every process started is reaped.
fn receive_setup(
    spec: &Spec,
    channel: &Channel,
    first: (i32, OwnedFd),
    userns: Option<UidRange>,
    placement: Option<Placement<'_>>,
) -> Result<Setup> {
    let mut inner: Option<Inner> = None;
    let result = receive_setup_messages(spec, channel, &first, userns, &mut inner, placement);
    match (result, inner) {
        (Ok((notify_sock, console)), Some((leader, pidfd, outer_mounts))) => {
            // The outer process is done once it handed PID 1 over.
            let _ = sys::pidfd_wait(first.1.as_fd(), false);
            Ok(Setup {
                leader,
                pidfd,
                notify_sock,
                console,
                outer_mounts: Some(outer_mounts),
            })
        }
        (Ok((notify_sock, console)), None) => Ok(Setup {
            leader: first.0,
            pidfd: first.1,
            notify_sock,
            console,
            outer_mounts: None,
        }),
        (Err(e), inner) => {
            for pidfd in inner.iter().map(|i| &i.1).chain([&first.1]) {
                kill_and_reap(pidfd.as_fd());
            }
            Err(e)
        }
    }
}

fn receive_setup_messages(
    spec: &Spec,
    channel: &Channel,
    first: &(i32, OwnedFd),
    userns: Option<UidRange>,
    inner: &mut Option<Inner>,
    mut placement: Option<Placement<'_>>,
) -> Result<(OwnedFd, Option<Console>)> {
    let mut notify = None;
    let mut console = None;
    let open_console = |master: OwnedFd| {
        Console::new(master, spec.console)
            .map_err(|e| Error::syscall("opening the console peer", e))
    };
    loop {
        match channel.recv::<ToParent>()? {
            Some((
                ToParent::Handles {
                    console: with_console,
                },
                mut fds,
            )) => {
                if fds.len() != 1 + usize::from(with_console) {
                    return Err(Error::Protocol(
                        "handles message without its descriptors".into(),
                    ));
                }
                if with_console {
                    console = Some(open_console(fds.remove(1))?);
                }
                notify = Some(fds.remove(0));
            }
            Some((ToParent::Inner { pid }, mut fds)) => {
                let (Some(range), 2) = (userns, fds.len()) else {
                    return Err(Error::Protocol("an unexpected PID 1 hand-over".into()));
                };
                let (pidfd, outer_mounts) = (fds.remove(0), fds.remove(0));
                let pidfd = inner.insert((pid, pidfd, outer_mounts)).1.as_fd();
                for file in ["uid_map", "gid_map"] {
                    let p = format!("/proc/{pid}/{file}");
                    std::fs::write(&p, range.map_line())
                        .map_err(|e| Error::io("writing", &p, e))?;
                }
                if let Some(p) = placement.as_mut() {
                    p.place(spec, pid, pidfd)?;
                }
                channel.send(&ToChild::MapsWritten, &[])?;
            }
            Some((ToParent::Console, mut fds)) => {
                if fds.len() != 1 {
                    return Err(Error::Protocol(
                        "console message without its descriptor".into(),
                    ));
                }
                console = Some(open_console(fds.remove(0))?);
            }
            Some((ToParent::Failed { step, message }, _)) => {
                return Err(Error::Child { step, message });
            }
            None => {
                if userns.is_some() && inner.is_none() {
                    let status = sys::pidfd_wait(first.1.as_fd(), false).ok().flatten();
                    return Err(Error::Protocol(format!(
                        "the container process ended before starting PID 1 ({status:?})"
                    )));
                }
                let notify = notify.ok_or_else(|| {
                    Error::Protocol(
                        "the container process ended during setup without a word".into(),
                    )
                })?;
                return Ok((notify, console));
            }
        }
    }
}

/// How much of the guest's console output and how many notify datagrams
/// one wakeup of the supervisor handles before it looks at everything
/// else again (a guest can send both faster than we read).
const CONSOLE_BYTES_PER_WAKEUP: usize = 64 * 1024;
const NOTIFY_MESSAGES_PER_WAKEUP: usize = 64;
/// What is left in the pty after PID 1 ended is copied out up to this.
const CONSOLE_BYTES_AT_EXIT: usize = 1024 * 1024;

struct Watch<'a> {
    spec: &'a Spec,
    state_dir: &'a StateDir,
    observer: &'a mut dyn Observer,
    leader: i32,
    pidfd: OwnedFd,
    notify_sock: OwnedFd,
    console: Option<Console>,
    /// Kept for the guest's life: `nixspawnctl update` mounts new store
    /// paths here (the fd number is in the state), and they propagate into
    /// the guest's mount namespace locked.
    _outer_mounts: Option<OwnedFd>,
    state: State,
    stop_requests: u32,
    /// PID 1 said X_SYSTEMD_SIGNALS_LEVEL=2: its signal handlers are in place.
    handlers_ready: bool,
    /// A stop arrived before the handlers were: send the kill signal again.
    resend_kill_signal: bool,
    /// The systemd host, which may ask us to stop the guest's scope.
    host: Option<&'a mut HostLink>,
}

impl Watch<'_> {
    fn run(&mut self, signals: &SignalFd) -> Result<Outcome> {
        loop {
            let reads_stdin = self.console.as_ref().is_some_and(|c| c.reads_stdin());
            let mut fds = vec![
                PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.notify_sock.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(c) = &self.console {
                fds.push(PollFd::new(c.master.as_fd(), PollFlags::POLLIN));
            }
            if reads_stdin {
                fds.push(PollFd::new(sys::stdio(0), PollFlags::POLLIN));
            }
            let host_fd = self.host.as_deref().and_then(HostLink::stop_request_fd);
            let host_index = host_fd.map(|fd| {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                fds.len() - 1
            });
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Error::syscall("poll", e)),
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);

            let console_index = self.console.as_ref().map(|_| 3);
            let stdin_index = reads_stdin.then(|| 3 + usize::from(console_index.is_some()));
            // Stop requests first; what the guest sends is read a bounded
            // amount per wakeup, so that however fast it sends, a stop
            // (SIGTERM, `machinectl terminate`, the escape) is acted on at
            // the next turn of this loop.
            if ready[1] {
                self.signals(signals);
            }
            if host_index.is_some_and(|i| ready[i])
                && self
                    .host
                    .as_deref_mut()
                    .is_some_and(HostLink::stop_requested)
            {
                // `machinectl terminate` / `systemctl stop` of the scope.
                self.request_stop();
            }
            if stdin_index.is_some_and(|i| ready[i]) {
                self.console_input();
            }
            if console_index.is_some_and(|i| ready[i]) {
                self.console_output(CONSOLE_BYTES_PER_WAKEUP);
            }
            if ready[2] {
                self.notify_messages();
            }
            if ready[0]
                && let Some(outcome) = self.reap()?
            {
                return Ok(outcome);
            }
        }
    }

    fn console_output(&self, limit: usize) {
        if let Some(c) = &self.console {
            c.drain_output(limit);
        }
    }

    fn console_input(&mut self) {
        let Some(c) = &mut self.console else { return };
        if c.forward_input() == Action::Kill {
            self.observer.event(Event::EscapeKill);
            let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        }
    }

    fn notify_messages(&mut self) {
        let mut changed = false;
        for _ in 0..NOTIFY_MESSAGES_PER_WAKEUP {
            let Some((sender, data)) = notify::receive(self.notify_sock.as_fd()) else {
                break;
            };
            // Only the payload's PID 1 speaks for the container.
            if sender != Some(self.leader) {
                continue;
            }
            let msg = notify::parse(&data);
            if msg.signals_ready {
                self.handlers_ready = true;
                if std::mem::take(&mut self.resend_kill_signal) {
                    self.send_kill_signal();
                }
            }
            if let Some(status) = &msg.status {
                self.observer.event(Event::Status(status));
                notify::notify_manager(&format!("STATUS=Container running: {status}"));
                self.state.status = Some(status.clone());
            }
            let newly_ready = msg.ready && !self.state.ready;
            if newly_ready {
                tracing::debug!("guest sent READY=1");
                self.state.ready = true;
                self.observer.event(Event::Ready);
                if self.spec.notify_ready {
                    notify::notify_manager("READY=1");
                }
            }
            changed |= newly_ready || msg.status.is_some();
        }
        // Once per wakeup, however many messages changed it.
        if changed {
            let _ = self.state_dir.write(&self.state);
        }
    }

    fn signals(&mut self, signals: &SignalFd) {
        while let Ok(Some(info)) = signals.read_signal() {
            match info.ssi_signo as i32 {
                libc::SIGTERM | libc::SIGINT | libc::SIGHUP => self.request_stop(),
                libc::SIGWINCH => {
                    if let Some(c) = &self.console {
                        c.sync_size();
                    }
                }
                _ => {}
            }
        }
    }

    /// The first request sends the kill signal (SIGKILL if there is none),
    /// any further one SIGKILL.
    fn request_stop(&mut self) {
        self.stop_requests += 1;
        if self.stop_requests > 1 || self.spec.kill_signal.is_none() {
            let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        } else {
            // A signal sent before systemd installed its handlers is lost;
            // if PID 1 turns out to be systemd, it will say when to resend.
            self.resend_kill_signal = !self.handlers_ready;
            self.send_kill_signal();
        }
        if self.stop_requests == 1 {
            self.observer.event(Event::Stopping);
            notify::notify_manager("STOPPING=1");
            self.state.phase = "stopping".into();
            let _ = self.state_dir.write(&self.state);
        }
    }

    fn send_kill_signal(&self) {
        if let Some(sig) = self.spec.kill_signal {
            let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), sig);
        }
    }

    fn reap(&mut self) -> Result<Option<Outcome>> {
        // Take the leader out of the state while it is still a zombie, so
        // its PID is never recorded once it can belong to someone else.
        let Some(exit) =
            sys::pidfd_peek_exit(self.pidfd.as_fd()).map_err(|e| Error::syscall("waitid", e))?
        else {
            return Ok(None);
        };
        let restarting = exit == ExitKind::Signaled(libc::SIGHUP) && !self.spec.keep_unit;
        self.state.phase = if restarting { "restarting" } else { "exited" }.into();
        self.state.leader = None;
        self.state.leader_identity = None;
        self.state.ready = false;
        let _ = self.state_dir.write(&self.state);
        sys::pidfd_wait(self.pidfd.as_fd(), true).map_err(|e| Error::syscall("waitid", e))?;
        // What the guest wrote before it ended (nobody can write more now).
        self.console_output(CONSOLE_BYTES_AT_EXIT);
        Ok(Some(match exit {
            ExitKind::Exited(n) => Outcome::Exited(n),
            ExitKind::Signaled(libc::SIGINT) => Outcome::PoweredOff,
            ExitKind::Signaled(libc::SIGHUP) => Outcome::Rebooted,
            ExitKind::Signaled(s) => Outcome::Killed(s),
        }))
    }
}
