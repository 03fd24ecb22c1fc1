//! The launcher's part in the guest's network: checked and planned once
//! before anything is claimed, links made in each boot's network namespace
//! while the container process assembles its root, the port map kept in
//! step with the guest's addresses while it runs, and at the end of a
//! boot the moved links returned and the port map entries removed. The
//! rest (links that die with the namespace, an emptied zone) is left to
//! the janitor, which hears of every step as it is taken.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::error::{Error, Result};
use crate::launcher::janitor::claim::{Claim, JanitorLink};
use crate::network::cleanup::NetClaim;
use crate::network::plan::{Boot, Naming, Plan};
use crate::network::ports::PortForward;
use crate::network::resolv::{self, ResolvAction, TimezoneAction};
use crate::network::rtnl::Rtnl;
use crate::spec::Spec;

/// What the container process does about the network itself.
pub(crate) struct GuestNetwork {
    /// `--network-namespace-path`: join this namespace.
    pub namespace: Option<OwnedFd>,
    /// Wait for the launcher's links before the payload runs.
    pub await_links: bool,
    pub resolv: ResolvAction,
    pub timezone: TimezoneAction,
}

/// The network of one launch.
pub(crate) struct NetworkRun {
    pub plan: Plan,
    /// rtnetlink in the launcher's own network namespace (the host side).
    host: Option<Rtnl>,
    pub guest: GuestNetwork,
    /// Told of each step (set once the janitor runs).
    pub janitor: Option<JanitorLink>,
}

impl NetworkRun {
    /// Everything decided and checked before the launcher claims anything:
    /// names and MACs, the links named exist, the kernel has what is asked
    /// for, the namespace path is a network namespace, what to do about
    /// resolv.conf and the timezone.
    pub fn prepare(spec: &Spec) -> Result<NetworkRun> {
        let net = &spec.network;
        let plan = if net.has_links() {
            Plan::new(
                net,
                spec.machine.as_str(),
                &Naming::of_host(Plan::needs_host_id(net))?,
            )
        } else {
            Plan::default()
        };
        let host = if plan.is_empty() {
            None
        } else {
            let mut host = Rtnl::open()?;
            plan.preflight(&mut host)?;
            Some(host)
        };
        let namespace = net
            .namespace_path
            .as_ref()
            .map(|p| open_netns(p))
            .transpose()?;
        // A read-only /etc (--read-only, --volatile=state, a read-only
        // image root) is bound over, as nspawn does, instead of copied into.
        let etc_writable =
            spec.filesystem.etc_writable() && !spec.image.as_ref().is_some_and(|i| i.read_only);
        let guest = GuestNetwork {
            namespace,
            await_links: !plan.is_empty(),
            resolv: resolv::resolv_action(
                net.resolv_conf,
                spec.private_network,
                etc_writable,
                resolv::resolved_stub_listening,
            ),
            timezone: resolv::timezone_action(net.timezone, etc_writable),
        };
        Ok(NetworkRun {
            plan,
            host,
            guest,
            janitor: None,
        })
    }

    /// Make this boot's links in the namespace of `pid` (the guest's PID 1,
    /// or the container process that made it). None without links.
    pub fn attach(
        &mut self,
        spec: &Spec,
        pid: i32,
        notice: &mut dyn FnMut(String),
    ) -> Result<Option<BootNetwork>> {
        let Some(host) = self.host.as_mut() else {
            return Ok(None);
        };
        let janitor = self
            .janitor
            .as_ref()
            .ok_or_else(|| Error::Janitor("no link to the janitor".into()))?;
        let path = format!("/proc/{pid}/ns/net");
        let netns: OwnedFd = std::fs::File::open(&path)
            .map_err(|e| Error::io("opening", &path, e))?
            .into();
        let boot = Boot::new(netns)?;
        let mut net = BootNetwork {
            boot,
            ports: None,
            janitor: janitor.try_clone()?,
        };
        let t0 = std::time::Instant::now();
        let link = &net.janitor;
        net.boot.attach(
            &self.plan,
            host,
            &mut |c, fd| link.note(&Claim::Network(c), fd),
            notice,
        )?;
        if !spec.network.ports.is_empty() {
            let mut ports = PortForward::new(&spec.network.ports, net.boot.netns.as_fd())?;
            // Addresses given by the launcher are there already.
            let link = &net.janitor;
            if let Some(line) = ports.update(&mut net.boot.guest, &mut |c| {
                link.note(&Claim::Network(c), None)
            }) {
                notice(line);
            }
            net.ports = Some(ports);
        }
        tracing::debug!("network links: {} µs", t0.elapsed().as_micros());
        Ok(Some(net))
    }
}

/// `--network-namespace-path`: a network namespace, or one line saying not.
fn open_netns(path: &std::path::Path) -> Result<OwnedFd> {
    let fd: OwnedFd = std::fs::File::open(path)
        .map_err(|e| Error::io("opening the network namespace", path, e))?
        .into();
    match crate::sys::namespace_type(fd.as_fd()) {
        Ok(t) if t == libc::CLONE_NEWNET => Ok(fd),
        _ => Err(Error::Network {
            message: format!(
                "Path {} doesn't refer to a network namespace, refusing.",
                path.display()
            ),
        }),
    }
}

/// The network of one boot while the guest runs.
pub(crate) struct BootNetwork {
    boot: Boot,
    ports: Option<PortForward>,
    janitor: JanitorLink,
}

impl BootNetwork {
    /// The interface machined is told about.
    pub fn registered_index(&self) -> Option<u32> {
        self.boot.registered_index
    }

    /// What the supervisor polls for the guest's address changes.
    pub fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        self.ports.as_ref().map(|p| p.fd())
    }

    /// The guest's addresses changed (maybe): follow with the port map.
    /// Returns a line to show if that failed.
    pub fn addresses_changed(&mut self) -> Option<String> {
        let ports = self.ports.as_mut()?;
        if !ports.changed() {
            return None;
        }
        let link = &self.janitor;
        ports.update(&mut self.boot.guest, &mut |c| {
            link.note(&Claim::Network(c), None)
        })
    }
}

impl BootNetwork {
    /// The boot is over: as on drop, and returns a line for each moved
    /// link not returned to the host (the guest replaced it, or it is gone).
    pub fn finish(mut self) -> Vec<String> {
        self.end()
    }

    fn end(&mut self) -> Vec<String> {
        let link = &self.janitor;
        if let Some(ports) = self.ports.as_mut() {
            ports.flush(&mut |c| link.note(&Claim::Network(c), None));
        }
        let (settled, lines) = self.boot.detach();
        for settled in settled {
            let _ = link.note(&Claim::Network(settled), None);
        }
        let _ = link.note(&Claim::Network(NetClaim::Netns(false)), None);
        lines
    }
}

impl Drop for BootNetwork {
    /// The boot is over (or never got going): the port map entries go,
    /// moved links return to the host, and the janitor lets go of the
    /// namespace, which then dies with every link still in it. (After
    /// [`BootNetwork::finish`] there is nothing left to do.)
    fn drop(&mut self) {
        for line in self.end() {
            tracing::warn!("{line}");
        }
    }
}
