//! One launch's facts, derived once from the spec and what was claimed for
//! it, and read by every boot of the guest: where its state lives, its
//! cgroups, the systemd host (if any), its user namespace, the payload's
//! capability set and the stop signals. Nothing here is worked out twice,
//! so PID 1 and `nixspawnctl exec` cannot disagree about a fact.

use std::collections::HashSet;

use caps::Capability;
use nix::sys::signalfd::SignalFd;

use crate::cgroup::CgroupLayout;
use crate::host::link::HostLink;
use crate::spec::Spec;
use crate::state::StateDir;

pub(crate) struct Launch<'a> {
    pub spec: &'a Spec,
    pub state_dir: &'a StateDir,
    pub cgroups: &'a CgroupLayout,
    /// The scope and registration on a systemd host; None standalone.
    pub host: Option<HostLink<'a>>,
    /// The user namespace's range and idmapped mounts, if any.
    pub userns: Option<crate::userns::Plan>,
    /// What the payload keeps: PID 1 is restricted to it, the state
    /// records it for `nixspawnctl exec`.
    pub capabilities: HashSet<Capability>,
    /// SIGTERM, SIGINT, SIGHUP, SIGWINCH and SIGCHLD, blocked and read here.
    pub signals: &'a SignalFd,
    /// 1 for the first boot, one more for each reboot.
    pub boot: u32,
    /// The guest's network: planned once, its links made for each boot.
    pub network: crate::launcher::network::NetworkRun,
}

impl Launch<'_> {
    /// The payload's capabilities: the spec's set, without
    /// CAP_NET_BIND_SERVICE under a user namespace on the host's network
    /// (as nspawn: binding low ports there is not the guest's to do).
    pub fn payload_capabilities(spec: &Spec, userns: bool) -> HashSet<Capability> {
        let mut set = spec.capabilities();
        if userns && !spec.private_network {
            set.remove(&Capability::CAP_NET_BIND_SERVICE);
        }
        set
    }

    /// A scope of our own on a systemd host, into which the guest is placed.
    pub fn in_own_scope(&self) -> bool {
        self.host.is_some() && self.cgroups.in_systemd_scope()
    }
}
