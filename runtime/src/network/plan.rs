//! The link plan: what the network options turn into (names, MACs, which
//! bridge, which addresses), decided once, and carried out for each boot
//! against a host-side rtnetlink handle and the guest's network namespace
//! in systemd-nspawn's order: moved links, the veth (and its bridge),
//! extra veths, macvlans, ipvlans; then nixspawn's addressing.
//!
//! The host side is whatever network namespace the caller is in: the
//! launcher's own, or (for a multi-node test runner that starts launchers
//! inside a private namespace with a bridge per vlan) that one.

use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use netlink_packet_route::link::InfoKind;

use crate::error::{Error, Result};
use crate::network::cleanup::{NetClaim, zone_lock_path};
use crate::network::names::{self, HostId, LinkName, Mac, keys};
use crate::network::netlink::NlError;
use crate::network::rtnl::{Netns, Route, Rtnl};
use crate::spec::network::{AddressPair, IfacePair, Network};

/// Where the host end of a veth goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    /// Nowhere (`ve-M`, or an extra veth): left down, as nspawn leaves it.
    None,
    /// A port of this existing bridge, up.
    Bridge(String),
    /// A port of this zone bridge (`vz-Z`), made if missing, up.
    Zone(String),
}

/// A veth pair: host end here, guest end made in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veth {
    pub host: LinkName,
    pub host_mac: Option<Mac>,
    pub guest: String,
    pub guest_mac: Option<Mac>,
    pub attach: Attach,
}

/// A host link moved into the guest, renamed to `guest` there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub host: String,
    pub guest: String,
}

/// A macvlan or ipvlan on the host link `parent`, made in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubLink {
    pub parent: String,
    pub name: LinkName,
    /// None for ipvlans (they share the parent's MAC).
    pub mac: Option<Mac>,
}

/// Addresses for both ends of one veth (nixspawn's extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing {
    pub host: IpAddr,
    pub guest: IpAddr,
    pub prefix: u8,
    /// Point-to-point (/32, /128): routes to each other's address. With a
    /// bridge the prefix route does it.
    pub peer_routes: bool,
    /// A default route in the guest through `host`.
    pub default_route: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The main veth (`-n`, a bridge, a zone): host0 in the guest.
    pub veth: Option<Veth>,
    /// `--network-veth-extra=`.
    pub extras: Vec<Veth>,
    /// `--network-interface=`.
    pub moves: Vec<Move>,
    pub macvlans: Vec<SubLink>,
    pub ipvlans: Vec<SubLink>,
    /// Addresses for the main veth's two ends.
    pub addresses: Vec<Addressing>,
}

/// What the naming depends on besides the options.
pub struct Naming {
    pub host_id: Option<HostId>,
    /// The hash-based shortening of systemd v245+ (see names::long_hash_naming).
    pub long_hash: bool,
}

impl Naming {
    /// The host's machine ID and naming scheme, read now.
    pub fn of_host(need_macs: bool) -> Result<Naming> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let env = std::env::var("NET_NAMING_SCHEME").ok();
        Ok(Naming {
            host_id: if need_macs {
                Some(HostId::read()?)
            } else {
                None
            },
            long_hash: names::long_hash_naming(env.as_deref(), &cmdline),
        })
    }
}

impl Plan {
    /// The plan for `machine` with these options, named as systemd-nspawn names.
    pub fn new(net: &Network, machine: &str, naming: &Naming) -> Plan {
        let mac = |key: &[u8; 16], idx: u64| {
            naming
                .host_id
                .as_ref()
                .map(|id| names::mac(id, machine, key, idx))
        };
        let bridged = net.bridge.is_some() || net.zone.is_some();
        let veth = net.has_veth().then(|| Veth {
            host: names::veth_host_name(machine, bridged, naming.long_hash),
            host_mac: mac(&keys::HOST, 0),
            guest: "host0".to_owned(),
            guest_mac: mac(&keys::CONTAINER, 0),
            attach: match (&net.bridge, &net.zone) {
                (Some(b), _) => Attach::Bridge(b.clone()),
                (None, Some(z)) => Attach::Zone(names::zone_bridge(z)),
                (None, None) => Attach::None,
            },
        });
        let extras = net
            .veth_extra
            .iter()
            .enumerate()
            .map(|(i, x)| Veth {
                // Names of extra veths are never shortened (they must be valid).
                host: LinkName {
                    name: x.host.clone(),
                    altname: None,
                },
                host_mac: mac(&keys::VETH_EXTRA_HOST, i as u64),
                guest: x.container.clone(),
                guest_mac: mac(&keys::VETH_EXTRA_CONTAINER, i as u64),
                attach: Attach::None,
            })
            .collect();
        let moves = net
            .interfaces
            .iter()
            .map(|p| Move {
                host: p.host.clone(),
                guest: p.guest.clone().unwrap_or_else(|| p.host.clone()),
            })
            .collect();
        let sub = |pairs: &[IfacePair], prefix: &str, with_mac: bool| -> Vec<SubLink> {
            pairs
                .iter()
                .enumerate()
                .map(|(i, p)| SubLink {
                    parent: p.host.clone(),
                    name: match &p.guest {
                        Some(g) => LinkName {
                            name: g.clone(),
                            altname: None,
                        },
                        None => names::shorten(&format!("{prefix}{}", p.host), naming.long_hash),
                    },
                    mac: if with_mac {
                        mac(&keys::MACVLAN, i as u64)
                    } else {
                        None
                    },
                })
                .collect()
        };
        let addresses = net
            .addresses
            .iter()
            .map(|a: &AddressPair| {
                let prefix = a.prefix_for(bridged);
                let full = if a.host.is_ipv4() { 32 } else { 128 };
                Addressing {
                    host: a.host,
                    guest: a.guest,
                    prefix,
                    peer_routes: prefix == full,
                    default_route: true,
                }
            })
            .collect();
        Plan {
            veth,
            extras,
            moves,
            macvlans: sub(&net.macvlans, "mv-", true),
            ipvlans: sub(&net.ipvlans, "iv-", false),
            addresses,
        }
    }

    pub fn is_empty(&self) -> bool {
        self == &Plan::default()
    }

    /// Whether MACs are derived (the host's machine ID is needed).
    pub fn needs_host_id(net: &Network) -> bool {
        net.has_veth() || !net.veth_extra.is_empty() || !net.macvlans.is_empty()
    }

    /// The checks that need the host but change nothing, made before the
    /// launcher claims anything, so bad input fails in one line with
    /// nothing left behind.
    pub fn preflight(&self, host: &mut Rtnl) -> Result<()> {
        let fail = |message: String| Error::Network { message };
        let nl = |e: NlError| fail(e.to_string());
        if let Some(iv) = self.ipvlans.first()
            && !host.supports_kind(InfoKind::IpVlan).map_err(nl)?
        {
            return Err(fail(format!(
                "--network-ipvlan={}: this kernel has no ipvlan support (CONFIG_IPVLAN is not set); use --network-macvlan= instead",
                iv.parent
            )));
        }
        let udev = std::path::Path::new("/run/udev/control").exists();
        let parents = self
            .moves
            .iter()
            .map(|m| &m.host)
            .chain(self.macvlans.iter().map(|m| &m.parent))
            .chain(self.ipvlans.iter().map(|m| &m.parent));
        for name in parents {
            let Some(link) = host.link(name).map_err(nl)? else {
                return Err(fail(format!(
                    "Failed to resolve interface \"{name}\": No such device"
                )));
            };
            // Where udev runs, a link it has not processed yet is refused
            // (as systemd-nspawn does: it may still be renamed).
            if udev && !std::path::Path::new(&format!("/run/udev/data/n{}", link.index)).exists() {
                return Err(fail(format!(
                    "Network interface {name} is not initialized yet."
                )));
            }
            if link.index == 1 && self.moves.iter().any(|m| &m.host == name) {
                return Err(fail(format!(
                    "Failed to move interface {name} to namespace: Invalid argument"
                )));
            }
        }
        if let Some(Veth {
            host: h,
            attach: Attach::Bridge(bridge),
            ..
        }) = &self.veth
        {
            match host.link(bridge).map_err(nl)? {
                None => {
                    return Err(fail(format!(
                        "Failed to add interface {} to bridge {bridge}: No such device",
                        h.name
                    )));
                }
                Some(l) if l.kind.as_deref() != Some("bridge") => {
                    return Err(fail(format!(
                        "Failed to add interface {} to bridge {bridge}: Operation not supported",
                        h.name
                    )));
                }
                Some(br) => {
                    // A bridge we did not make is the admin's, and so is its
                    // addressing: we would not know when an address we added
                    // is no longer used by any guest on it.
                    let on_it: Vec<(IpAddr, u8)> = host
                        .addresses()
                        .map_err(nl)?
                        .into_iter()
                        .filter(|a| a.index == br.index)
                        .map(|a| (a.address, a.prefix))
                        .collect();
                    for a in &self.addresses {
                        if !on_it.contains(&(a.host, a.prefix)) {
                            return Err(fail(format!(
                                "--network-address={}/{},{}: bridge {bridge} does not carry {}/{}; nixspawn does not change a bridge it did not create: add the address to it, or use --network-zone=",
                                a.host, a.prefix, a.guest, a.host, a.prefix
                            )));
                        }
                    }
                }
            }
        }
        if let Some(Veth {
            host: h,
            attach: Attach::Zone(zone),
            ..
        }) = &self.veth
            && let Some(l) = host.link(zone).map_err(nl)?
            && l.kind.as_deref() != Some("bridge")
        {
            return Err(fail(format!(
                "Failed to add interface {} to bridge {zone}: Operation not supported",
                h.name
            )));
        }
        Ok(())
    }
}

/// A link moved into the guest for this boot, and what it was on the
/// host (to tell it from one the guest makes in its place).
#[derive(Debug, Clone)]
pub struct MovedLink {
    pub host: String,
    pub guest: String,
    pub guest_index: Option<u32>,
    pub kind: Option<String>,
    pub perm_mac: Option<Mac>,
    /// Its address as moved in (what tells a virtual link, which has no
    /// permanent one).
    pub mac: Option<Mac>,
}

impl MovedLink {
    fn claim(&self) -> NetClaim {
        NetClaim::Moved {
            host: self.host.clone(),
            guest: self.guest.clone(),
            guest_index: self.guest_index,
            kind: self.kind.clone(),
            perm_mac: self.perm_mac,
            mac: self.mac,
        }
    }
}

/// The network of one boot: set up by [`Boot::attach`], taken down (what
/// needs taking down before the namespace goes) by [`Boot::detach`].
pub struct Boot {
    /// The guest's network namespace.
    pub netns: OwnedFd,
    /// A socket in the guest's namespace.
    pub guest: Rtnl,
    /// The index machined is told about: the `ve-` link, or the bridge.
    pub registered_index: Option<u32>,
    pub host_links: Vec<(u32, String)>,
    pub moved: Vec<MovedLink>,
}

/// How long a new link waits for a dying one of the same name (the
/// previous boot's or a previous run's, whose namespace is going away).
const NAME_WAIT: Duration = Duration::from_secs(3);

fn nl(e: NlError) -> Error {
    e.into()
}

impl Boot {
    /// Open the guest's namespace (`netns`, e.g. /proc/PID/ns/net of its PID 1).
    pub fn new(netns: OwnedFd) -> Result<Boot> {
        let guest = Rtnl::open_in(netns.as_fd()).map_err(nl)?;
        Ok(Boot {
            netns,
            guest,
            registered_index: None,
            host_links: Vec::new(),
            moved: Vec::new(),
        })
    }

    /// Carry out `plan`, telling `journal` first what could be left behind.
    /// On failure, what was done stays recorded here for [`Boot::detach`].
    pub fn attach(
        &mut self,
        plan: &Plan,
        host: &mut Rtnl,
        journal: &mut dyn FnMut(NetClaim, Option<BorrowedFd<'_>>) -> Result<()>,
        notice: &mut dyn FnMut(String),
    ) -> Result<()> {
        journal(NetClaim::Netns(true), Some(self.netns.as_fd()))?;
        for m in &plan.moves {
            let link = host
                .link(&m.host)
                .map_err(nl)?
                .ok_or_else(|| Error::Network {
                    message: format!("Failed to resolve interface \"{}\": No such device", m.host),
                })?;
            let mut moved = MovedLink {
                host: m.host.clone(),
                guest: m.guest.clone(),
                guest_index: None,
                kind: link.kind.clone(),
                perm_mac: link.perm_mac,
                mac: link.mac,
            };
            journal(moved.claim(), None)?;
            let rename = (m.guest != link.name).then_some(m.guest.as_str());
            host.move_link(link.index, Netns::Fd(self.netns.as_fd()), rename)
                .map_err(|e| Error::Network {
                    message: format!(
                        "Failed to move interface {} to namespace: {}",
                        m.host,
                        std::io::Error::from_raw_os_error(e.errno)
                    ),
                })?;
            moved.guest_index = self.guest.link(&m.guest).ok().flatten().map(|l| l.index);
            journal(moved.claim(), None)?;
            self.moved.push(moved);
        }
        if let Some(v) = &plan.veth {
            let index = match &v.attach {
                Attach::Zone(zone) => {
                    // As systemd-nspawn: the veth first, then the bridge made
                    // (if missing) and joined under the zone lock, so a
                    // zone's last guest going away cannot remove it between.
                    let index = self.veth(host, v, journal, notice)?;
                    let path = std::path::Path::new(zone_lock_path());
                    if let Some(dir) = path.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    let lock = crate::state::lockfile::acquire_blocking(path)?;
                    let r = (|| {
                        journal(NetClaim::Zone(zone.clone()), None)?;
                        match host.create_simple(zone, InfoKind::Bridge) {
                            Err(e) if e.errno != libc::EEXIST => {
                                return Err(Error::Network {
                                    message: format!(
                                        "Failed to create bridge interface {zone}: {}",
                                        std::io::Error::from_raw_os_error(e.errno)
                                    ),
                                });
                            }
                            _ => {}
                        }
                        self.join(host, &v.host.name, index, zone)
                    })();
                    crate::state::lockfile::release(path, lock);
                    r?
                }
                Attach::Bridge(bridge) => {
                    let index = self.veth(host, v, journal, notice)?;
                    self.join(host, &v.host.name, index, bridge)?
                }
                Attach::None => self.veth(host, v, journal, notice)?,
            };
            self.registered_index = Some(index);
        }
        for x in &plan.extras {
            self.veth(host, x, journal, notice)?;
        }
        for (list, kind) in [(&plan.macvlans, "macvlan"), (&plan.ipvlans, "ipvlan")] {
            for s in list {
                let parent = host.require(&s.parent).map_err(nl)?;
                let ns = Netns::Fd(self.netns.as_fd());
                let made = match s.mac {
                    Some(mac) => host.create_macvlan(parent.index, &s.name.name, mac, ns),
                    None => host.create_ipvlan(parent.index, &s.name.name, ns),
                };
                made.map_err(|e| Error::Network {
                    message: format!(
                        "Failed to add new {kind} interfaces: {}",
                        std::io::Error::from_raw_os_error(e.errno)
                    ),
                })?;
                if let Some(alt) = &s.name.altname {
                    // systemd-nspawn asks the host's namespace, where the
                    // link is not, and so never sets it; we set it where
                    // the link is.
                    notice(shortened(alt, &s.name.name));
                    if let Ok(Some(l)) = self.guest.link(&s.name.name) {
                        let _ = self.guest.add_altname(l.index, alt);
                    }
                }
            }
        }
        if let Some(v) = &plan.veth
            && !plan.addresses.is_empty()
        {
            self.address(host, v, &plan.addresses)?;
        }
        Ok(())
    }

    /// Make one veth pair (waiting for a dying namesake first); returns
    /// the host end's index.
    fn veth(
        &mut self,
        host: &mut Rtnl,
        v: &Veth,
        journal: &mut dyn FnMut(NetClaim, Option<BorrowedFd<'_>>) -> Result<()>,
        notice: &mut dyn FnMut(String),
    ) -> Result<u32> {
        let ns = Netns::Fd(self.netns.as_fd());
        let create =
            |host: &mut Rtnl| host.create_veth(&v.host.name, v.host_mac, &v.guest, v.guest_mac, ns);
        let mut made = create(host);
        if let Err(e) = &made
            && e.errno == libc::EEXIST
            && host
                .wait_name_free(&v.host.name, NAME_WAIT)
                .unwrap_or(false)
        {
            made = create(host);
        }
        made.map_err(|e| {
            let mut message = format!(
                "Failed to add new veth interfaces ({}:{}): {}",
                v.host.name,
                v.guest,
                std::io::Error::from_raw_os_error(e.errno)
            );
            if e.errno == libc::EEXIST {
                message.push_str(&format!(
                    "; a link named {} exists (another container of this name?); remove it with: ip link del {}",
                    v.host.name, v.host.name
                ));
            }
            Error::Network { message }
        })?;
        let link = host.require(&v.host.name).map_err(nl)?;
        self.host_links.push((link.index, link.name.clone()));
        journal(
            NetClaim::HostLink {
                index: link.index,
                name: link.name.clone(),
            },
            None,
        )?;
        if let Some(alt) = &v.host.altname {
            notice(shortened(alt, &v.host.name));
            if let Err(e) = host.add_altname(link.index, alt) {
                notice(format!(
                    "Failed to set alternative interface name '{alt}' to '{}', ignoring: {}",
                    v.host.name,
                    std::io::Error::from_raw_os_error(e.errno)
                ));
            }
        }
        Ok(link.index)
    }

    /// Make the link a port of `bridge` and bring it up; returns the
    /// bridge's index.
    fn join(&mut self, host: &mut Rtnl, name: &str, index: u32, bridge: &str) -> Result<u32> {
        let fail = |errno: i32| Error::Network {
            message: format!(
                "Failed to add interface {name} to bridge {bridge}: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
        };
        let br = host
            .link(bridge)
            .map_err(nl)?
            .ok_or_else(|| fail(libc::ENODEV))?;
        if br.kind.as_deref() != Some("bridge") {
            return Err(fail(libc::EOPNOTSUPP));
        }
        host.set_up(index, Some(br.index))
            .map_err(|e| fail(e.errno))?;
        Ok(br.index)
    }

    /// nixspawn's addressing of the main veth: the host address on its
    /// host end (or the bridge), the guest's on host0, routes, both up.
    fn address(&mut self, host: &mut Rtnl, v: &Veth, addresses: &[Addressing]) -> Result<()> {
        let host_index = match self.registered_index {
            Some(i) => i,
            None => return Ok(()),
        };
        // The admin's bridge carries the host addresses already (checked
        // before): nothing of it is changed.
        let ours = !matches!(v.attach, Attach::Bridge(_));
        let host0 = self.guest.require(&v.guest).map_err(nl)?;
        for a in addresses {
            if ours {
                host.add_address(host_index, a.host, a.prefix).map_err(nl)?;
            }
            self.guest
                .add_address(host0.index, a.guest, a.prefix)
                .map_err(nl)?;
        }
        if ours {
            host.set_up(host_index, None).map_err(nl)?;
        }
        self.guest.set_up(host0.index, None).map_err(nl)?;
        for a in addresses {
            let full = if a.host.is_ipv4() { 32 } else { 128 };
            if a.peer_routes {
                if ours {
                    host.add_route(&Route {
                        destination: Some((a.guest, full)),
                        gateway: None,
                        oif: host_index,
                        ipv6: a.guest.is_ipv6(),
                    })
                    .map_err(nl)?;
                }
                self.guest
                    .add_route(&Route {
                        destination: Some((a.host, full)),
                        gateway: None,
                        oif: host0.index,
                        ipv6: a.host.is_ipv6(),
                    })
                    .map_err(nl)?;
            }
            if a.default_route {
                self.guest
                    .add_route(&Route {
                        destination: None,
                        gateway: Some(a.host),
                        oif: host0.index,
                        ipv6: a.host.is_ipv6(),
                    })
                    .map_err(nl)?;
            }
        }
        Ok(())
    }

    /// Before the namespace may go: moved links back to the host under
    /// their names (as systemd-nspawn 254+ does; they would otherwise be
    /// destroyed with it). Returns the records that are settled and a
    /// line for each link that was not returned.
    pub fn detach(&mut self) -> (Vec<NetClaim>, Vec<String>) {
        let moved = std::mem::take(&mut self.moved);
        if moved.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let lines = crate::network::cleanup::return_moved(&moved, self.netns.as_fd());
        let settled = moved
            .into_iter()
            .map(|m| NetClaim::Returned { host: m.host })
            .collect();
        (settled, lines)
    }
}

fn shortened(full: &str, short: &str) -> String {
    format!(
        "Network interface name '{full}' has been changed to '{short}' to fit length constraints."
    )
}
