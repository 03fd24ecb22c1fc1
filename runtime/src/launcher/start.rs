//! Starting one boot of the guest: clone3 the container process into new
//! namespaces and the payload cgroup, then walk the launcher's half of the
//! handshake (`crate::handshake`) until the payload is exec'd. On a systemd
//! host the guest's PID 1 is registered from its scope's root and then
//! moved into `payload`, as systemd-nspawn does. Whatever fails on the way,
//! every process started is killed and reaped before the error returns.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::error::{Error, Result};
use crate::guest;
use crate::handshake::{self, LauncherEnd};
use crate::launcher::console::Console;
use crate::launcher::context::Launch;
use crate::launcher::network::BootNetwork;
use crate::sys::{self, Forked};

/// What a started boot hands the supervisor.
pub(crate) struct Started {
    /// The guest's PID 1 and its pidfd.
    pub leader: i32,
    pub pidfd: OwnedFd,
    pub notify: OwnedFd,
    pub console: Option<Console>,
    /// With a user namespace: the outer process's mount namespace, kept
    /// for the guest's life (`nixspawnctl update` mounts there).
    pub outer_mounts: Option<OwnedFd>,
    /// This boot's links and port map (None without links).
    pub network: Option<BootNetwork>,
    /// What the container processes warned about and went on.
    pub warnings: Vec<String>,
}

/// A process that must not outlive a failed start.
pub(crate) fn kill_and_reap(pidfd: BorrowedFd<'_>) {
    let _ = sys::pidfd_send_signal(pidfd, libc::SIGKILL);
    let _ = sys::pidfd_wait(pidfd, sys::Wait::Block);
}

/// Kills and reaps the processes it holds unless defused.
struct Reaper(Vec<OwnedFd>);

impl Reaper {
    fn defuse(mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pidfd in &self.0 {
            kill_and_reap(pidfd.as_fd());
        }
    }
}

/// Start the guest's PID 1 for this boot (with this boot's closure-only
/// store overlay, if there is one); `notice` hears what the host link has
/// to say.
pub(crate) fn start(
    launch: &mut Launch<'_>,
    store_overlay: Option<&OwnedFd>,
    notice: &mut dyn FnMut(String),
) -> Result<Started> {
    let t0 = std::time::Instant::now();
    let (first, first_pidfd, end) = clone_container(launch, store_overlay)?;
    tracing::debug!("clone3: PID {first}, {} µs", t0.elapsed().as_micros());
    let mut reaper = Reaper(vec![first_pidfd]);
    let own_scope = launch.in_own_scope();
    let started = if launch.userns.is_none() {
        // The network namespace exists from the clone on: the links are
        // made while the container process assembles its root.
        let network = launch.network.attach(launch.spec, first, notice)?;
        let ifindices = registered(&network);
        if own_scope {
            place(launch, first, reaper.0[0].as_fd(), &ifindices, notice)?;
            end.send_placed()?;
        }
        if network.is_some() {
            end.send_network_ready()?;
        }
        let handles = end.handles()?;
        let console = handles
            .console
            .map(|m| open_console(launch, m))
            .transpose()?;
        end.exec()?;
        let pidfd = reaper.defuse().remove(0);
        Started {
            leader: first,
            pidfd,
            notify: handles.notify,
            console,
            outer_mounts: None,
            network,
            warnings: end.take_warnings(),
        }
    } else {
        let handles = end.handles()?;
        let pid1 = end.pid1()?;
        let (leader, outer_mounts) = (pid1.pid, pid1.outer_mounts);
        reaper.0.push(pid1.pidfd);
        write_id_maps(launch, leader)?;
        let network = launch.network.attach(launch.spec, leader, notice)?;
        let ifindices = registered(&network);
        if own_scope {
            place(launch, leader, reaper.0[1].as_fd(), &ifindices, notice)?;
        }
        end.send_maps_written()?;
        if network.is_some() {
            end.send_network_ready()?;
        }
        let console = if launch.spec.console.has_pty() {
            Some(open_console(launch, end.console()?)?)
        } else {
            None
        };
        end.exec()?;
        let mut pidfds = reaper.defuse();
        let pidfd = pidfds.remove(1);
        // The outer process is done once PID 1 has exec'd.
        let _ = sys::pidfd_wait(pidfds[0].as_fd(), sys::Wait::Block);
        Started {
            leader,
            pidfd,
            notify: handles.notify,
            console,
            outer_mounts: Some(outer_mounts),
            network,
            warnings: end.take_warnings(),
        }
    };
    tracing::debug!(
        "payload exec'd: {} µs after clone3",
        t0.elapsed().as_micros()
    );
    if !own_scope && let Some(h) = launch.host.as_mut() {
        let ifindices = registered(&started.network);
        let linked = h.guest_started(started.leader, started.pidfd.as_fd(), &ifindices, notice);
        if let Err(e) = linked {
            kill_and_reap(started.pidfd.as_fd());
            return Err(e);
        }
    }
    Ok(started)
}

/// clone3 the container process into new namespaces and the payload cgroup.
/// With a user namespace only a new mount namespace: the process assembles
/// the root with the host's privileges and clones the guest's PID 1 into
/// the guest's own namespaces.
fn clone_container(
    launch: &Launch<'_>,
    store_overlay: Option<&OwnedFd>,
) -> Result<(i32, OwnedFd, LauncherEnd)> {
    let spec = launch.spec;
    let userns = launch.userns.as_ref();
    let (ours, theirs) = handshake::pair()?;
    let start_cgroup = launch.cgroups.open_start()?;
    let mut flags = if userns.is_some() {
        libc::CLONE_NEWNS as u64
    } else {
        (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) as u64
    };
    if spec.private_network && userns.is_none() {
        flags |= libc::CLONE_NEWNET as u64;
    }
    let plan = guest::Plan {
        spec,
        mount_point: launch.state_dir.mount_point(),
        store_staging: launch.state_dir.path().join("store"),
        store_overlay,
        capabilities: &launch.capabilities,
        userns,
        await_placement: launch.in_own_scope() && userns.is_none(),
        network: &launch.network.guest,
    };
    launch.state_dir.make_mount_point()?;
    let v1_visit = launch.cgroups.visit_v1()?;
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

/// Map the guest's root onto its range (the inner process waits for this).
fn write_id_maps(launch: &Launch<'_>, pid: i32) -> Result<()> {
    let Some(plan) = &launch.userns else {
        return Ok(());
    };
    // Bound users (--bind-user) are split out of the range onto their host ids.
    let users = &launch.spec.bind_users;
    let uids: Vec<(u32, u32)> = users.iter().map(|u| (u.id, u.host_uid)).collect();
    let gids: Vec<(u32, u32)> = users.iter().map(|u| (u.id, u.host_gid)).collect();
    for (file, ids) in [("uid_map", uids), ("gid_map", gids)] {
        let p = format!("/proc/{pid}/{file}");
        let map = crate::spec::bind_user::map_lines(plan.range.shift, plan.range.range, &ids);
        std::fs::write(&p, map).map_err(|e| Error::io("writing", &p, e))?;
    }
    Ok(())
}

/// The interface machined hears of, as systemd-nspawn registers it: the
/// host side of the veth, or its bridge.
fn registered(network: &Option<BootNetwork>) -> Vec<u32> {
    network
        .as_ref()
        .and_then(BootNetwork::registered_index)
        .into_iter()
        .collect()
}

/// Register the guest from its scope's root, then move it into payload.
fn place(
    launch: &mut Launch<'_>,
    leader: i32,
    pidfd: BorrowedFd<'_>,
    ifindices: &[u32],
    notice: &mut dyn FnMut(String),
) -> Result<()> {
    if let Some(h) = launch.host.as_mut() {
        h.guest_started(leader, pidfd, ifindices, notice)?;
    }
    launch.cgroups.move_into_payload(leader)
}

fn open_console(launch: &Launch<'_>, master: OwnedFd) -> Result<Console> {
    let mut console = Console::new(master, launch.spec.console)
        .map_err(|e| Error::syscall("opening the console peer", e))?;
    if let Some(bg) = &launch.spec.background {
        console.set_background(bg);
    }
    Ok(console)
}
