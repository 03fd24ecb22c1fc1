//! One boot of the guest, supervised: start it (`start`), record it for
//! nixspawnctl, then watch it — stop signals, the systemd host's stop
//! requests, the console, the notify socket — until PID 1 ends, and say
//! how it ended.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::poll::{PollFd, PollFlags};
use nix::sys::signalfd::SignalFd;

use crate::error::{Error, Result};
use crate::host::link::HostLink;
use crate::launcher::console::{Action, Console};
use crate::launcher::context::Launch;
use crate::launcher::events::{Event, Observer, Outcome};
use crate::launcher::notify;
use crate::launcher::start::{self, Started};
use crate::spec::Spec;
use crate::state::process::ProcessIdentity;
use crate::state::{State, StateDir};
use crate::sys::{self, ExitKind};

/// Start the payload and supervise it until it ends.
pub(crate) fn run_payload(launch: &mut Launch<'_>, observer: &mut dyn Observer) -> Result<Outcome> {
    // The closure-only store, made here with the host's privileges (one
    // overlay, or word of why it is one bind per path).
    let first_boot = launch.boot == 1;
    let boot_store = crate::nixos::store::prepare_boot_store(
        launch.spec,
        launch.userns.as_ref(),
        launch.state_dir.path(),
        &mut |n| {
            if first_boot {
                observer.event(Event::Notice(n));
            }
        },
    )?;
    let store_overlay = match &boot_store {
        Some(crate::nixos::store::BootStore::Overlay(fd)) => Some(fd),
        _ => None,
    };
    let store_is_overlay = store_overlay.is_some();
    let mut notices = Vec::new();
    let started = start::start(launch, store_overlay, &mut |n| notices.push(n));
    drop(boot_store);
    let started = started?;
    for n in &notices {
        observer.event(Event::Notice(n));
    }
    let Started {
        leader,
        pidfd,
        notify: notify_sock,
        console,
        outer_mounts,
        network,
        warnings,
    } = started;
    for w in &warnings {
        observer.event(Event::Warning(w));
    }
    // The leader is our child (or, under a user namespace, one we reap):
    // its PID cannot be reused before we wait for it.
    let identities = ProcessIdentity::of(leader, pidfd.as_fd())
        .and_then(|l| Ok((l, ProcessIdentity::of_self()?)));
    let (leader_identity, supervisor_identity) = match identities {
        Ok(ids) => ids,
        Err(e) => {
            start::kill_and_reap(pidfd.as_fd());
            return Err(e);
        }
    };
    let spec = launch.spec;
    let userns = launch.userns.as_ref();
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
        supervisor: std::process::id().cast_signed(),
        supervisor_identity: Some(supervisor_identity),
        host_boot_id: crate::state::process::host_boot_id(),
        boot_count: launch.boot,
        cgroup: launch.cgroups.payload(),
        kill_signal: spec.kill_signal,
        console: spec.console,
        private_network: spec.private_network,
        uid_range: userns.map(|u| u.range),
        store_idmapped: userns.is_some_and(|u| u.store.is_some()),
        store_overlay: store_is_overlay,
        capabilities: crate::spec::capabilities::mask(&launch.capabilities),
        syscall_filter: spec.seccomp.then(|| spec.syscall_filter.clone()),
        no_new_privileges: spec.no_new_privileges,
        outer_mounts_fd: outer_mounts.as_ref().map(|fd| fd.as_raw_fd()),
        started_usec: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        ready: false,
        status: None,
        phase: "running".into(),
    };
    launch.state_dir.write(&state)?;
    observer.event(Event::Started { leader });
    notify::notify_manager(&format!(
        "STATUS=Container started.\nX_NSPAWN_LEADER_PID={leader}"
    ));
    if !spec.notify_ready {
        notify::notify_manager("READY=1");
    }
    let mut watch = Watch {
        spec,
        state_dir: launch.state_dir,
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
        host: launch.host.as_mut(),
        network,
    };
    watch.run(launch.signals)
}

/// How much of the guest's console output and how many notify datagrams
/// one wakeup of the supervisor handles before it looks at everything
/// else again (a guest can send both faster than we read).
const CONSOLE_BYTES_PER_WAKEUP: usize = 64 * 1024;
const NOTIFY_MESSAGES_PER_WAKEUP: usize = 64;
/// What is left in the pty after PID 1 ended is copied out up to this.
const CONSOLE_BYTES_AT_EXIT: usize = 1024 * 1024;

/// Where each watched descriptor sits in the poll set (None: not watched).
struct Slots {
    leader: Option<usize>,
    signals: Option<usize>,
    notify: Option<usize>,
    console: Option<usize>,
    stdin: Option<usize>,
    host: Option<usize>,
    network: Option<usize>,
}

/// Which of them woke us.
struct Ready {
    leader: bool,
    signals: bool,
    notify: bool,
    console: bool,
    stdin: bool,
    host: bool,
    network: bool,
}

struct Watch<'a, 'h> {
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
    host: Option<&'a mut HostLink<'h>>,
    /// This boot's links and port map; dropped (its cleanup done) with
    /// the watch, once PID 1 is reaped.
    network: Option<crate::launcher::network::BootNetwork>,
}

impl Watch<'_, '_> {
    fn run(&mut self, signals: &SignalFd) -> Result<Outcome> {
        loop {
            let ready = self.poll(signals)?;
            // Stop requests first; what the guest sends is read a bounded
            // amount per wakeup, so that however fast it sends, a stop
            // (SIGTERM, `machinectl terminate`, the escape) is acted on at
            // the next turn of this loop.
            if ready.signals {
                self.signals(signals);
            }
            if ready.host
                && self
                    .host
                    .as_deref_mut()
                    .is_some_and(HostLink::stop_requested)
            {
                // `machinectl terminate` / `systemctl stop` of the scope.
                self.request_stop();
            }
            if ready.stdin {
                self.console_input();
            }
            if ready.console {
                self.console_output(CONSOLE_BYTES_PER_WAKEUP);
            }
            if ready.notify {
                self.notify_messages();
            }
            if ready.network
                && let Some(line) = self.network.as_mut().and_then(|n| n.addresses_changed())
            {
                self.observer.event(Event::Notice(&line));
            }
            if ready.leader
                && let Some(outcome) = self.reap()?
            {
                return Ok(outcome);
            }
        }
    }

    /// Wait until something needs handling, and say what.
    fn poll(&self, signals: &SignalFd) -> Result<Ready> {
        let reads_stdin = self.console.as_ref().is_some_and(|c| c.reads_stdin());
        let host_fd = self.host.as_deref().and_then(HostLink::stop_request_fd);
        fn slot<'f>(fds: &mut Vec<PollFd<'f>>, fd: Option<BorrowedFd<'f>>) -> Option<usize> {
            fd.map(|fd| {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                fds.len() - 1
            })
        }
        let mut fds = Vec::with_capacity(6);
        let slots = Slots {
            leader: slot(&mut fds, Some(self.pidfd.as_fd())),
            signals: slot(&mut fds, Some(signals.as_fd())),
            notify: slot(&mut fds, Some(self.notify_sock.as_fd())),
            console: slot(&mut fds, self.console.as_ref().map(|c| c.master.as_fd())),
            stdin: slot(&mut fds, reads_stdin.then(|| sys::stdio(0))),
            host: slot(&mut fds, host_fd),
            network: slot(&mut fds, self.network.as_ref().and_then(|n| n.watch_fd())),
        };
        let ready = crate::os::poll_ready(&mut fds).map_err(|e| Error::syscall("poll", e))?;
        let fired = |i: Option<usize>| i.is_some_and(|i| ready[i]);
        Ok(Ready {
            leader: fired(slots.leader),
            signals: fired(slots.signals),
            notify: fired(slots.notify),
            console: fired(slots.console),
            stdin: fired(slots.stdin),
            host: fired(slots.host),
            network: fired(slots.network),
        })
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
            match info.ssi_signo.cast_signed() {
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
        let Some(exit) = sys::pidfd_wait(self.pidfd.as_fd(), sys::Wait::Peek)
            .map_err(|e| Error::syscall("waitid", e))?
        else {
            return Ok(None);
        };
        let restarting = exit == ExitKind::Signaled(libc::SIGHUP) && !self.spec.keep_unit;
        self.state.phase = if restarting { "restarting" } else { "exited" }.into();
        self.state.leader = None;
        self.state.leader_identity = None;
        self.state.ready = false;
        let _ = self.state_dir.write(&self.state);
        sys::pidfd_wait(self.pidfd.as_fd(), sys::Wait::Poll)
            .map_err(|e| Error::syscall("waitid", e))?;
        // What the guest wrote before it ended (nobody can write more now).
        self.console_output(CONSOLE_BYTES_AT_EXIT);
        if let Some(network) = self.network.take() {
            for line in network.finish() {
                self.observer.event(Event::Notice(&line));
            }
        }
        Ok(Some(match exit {
            ExitKind::Exited(n) => Outcome::Exited(n),
            ExitKind::Signaled(libc::SIGINT) => Outcome::PoweredOff,
            ExitKind::Signaled(libc::SIGHUP) => Outcome::Rebooted,
            ExitKind::Signaled(s) => Outcome::Killed(s),
        }))
    }
}
