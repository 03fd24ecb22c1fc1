//! What the network setup leaves to undo, as the janitor hears of it
//! (written ahead where a step could otherwise be lost), and undoing it:
//! port-map entries removed, moved links returned to the host under their
//! names (possible only because the janitor holds the guest's network
//! namespace open), host-side links that outlive the namespace deleted, a
//! zone bridge removed once no port is left on it.
//!
//! The veth pairs and macvlans themselves die with the guest's network
//! namespace, in one batch in the kernel: nobody waits for that on the
//! launcher's way out (a deletion costs 11–50 ms here); the janitor
//! checks afterwards.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use crate::network::names::Mac;
use crate::network::nft::{Nft, PortMapping};
use crate::network::plan::MovedLink;
use crate::network::rtnl::{Netns, Rtnl};

/// One record the launcher sends its janitor.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum NetClaim {
    /// The guest's network namespace comes with this (as a descriptor,
    /// which keeps it alive); false: the janitor lets go of it.
    Netns(bool),
    /// A link about to move into the guest: its name on the host and in
    /// the guest, what it is (to know it again), and once moved, its
    /// index there.
    Moved {
        host: String,
        guest: String,
        guest_index: Option<u32>,
        kind: Option<String>,
        perm_mac: Option<Mac>,
        mac: Option<Mac>,
    },
    /// That link is back on the host.
    Returned { host: String },
    /// A host-side link we made (the host end of a veth).
    HostLink { index: u32, name: String },
    /// The zone bridge of this name may be ours to remove when empty.
    Zone(String),
    /// The port-map entries in place now (replaces the previous list).
    Ports(Vec<PortMapping>),
}

/// What is left to undo, built from the records.
#[derive(Debug, Default)]
pub struct Leftovers {
    netns: Option<OwnedFd>,
    moved: Vec<MovedLink>,
    host_links: Vec<(u32, String)>,
    zone: Option<String>,
    ports: Vec<PortMapping>,
}

/// How long host-side links may take to vanish once their namespace is
/// gone before they are deleted explicitly.
const LINGER: Duration = Duration::from_secs(3);

impl Leftovers {
    pub fn apply(&mut self, claim: NetClaim, fd: Option<OwnedFd>) {
        match claim {
            NetClaim::Netns(true) => self.netns = fd,
            NetClaim::Netns(false) => self.netns = None,
            NetClaim::Moved {
                host,
                guest,
                guest_index,
                kind,
                perm_mac,
                mac,
            } => {
                self.moved.retain(|m| m.host != host);
                self.moved.push(MovedLink {
                    host,
                    guest,
                    guest_index,
                    kind,
                    perm_mac,
                    mac,
                });
            }
            NetClaim::Returned { host } => self.moved.retain(|m| m.host != host),
            NetClaim::HostLink { index, name } => self.host_links.push((index, name)),
            NetClaim::Zone(z) => self.zone = Some(z),
            NetClaim::Ports(p) => self.ports = p,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.netns.is_none()
            && self.moved.is_empty()
            && self.host_links.is_empty()
            && self.zone.is_none()
            && self.ports.is_empty()
    }

    /// Undo what is recorded. The guest's processes must be gone already.
    pub fn release(mut self) {
        if !self.ports.is_empty()
            && let Ok(mut nft) = Nft::open()
        {
            nft.remove(&self.ports);
        }
        if let Some(netns) = self.netns.take() {
            // Nobody to tell (the launcher is gone): the lines are lost.
            for line in return_moved(&self.moved, netns.as_fd()) {
                tracing::warn!("{line}");
            }
        }
        let Ok(mut host) = Rtnl::open() else { return };
        // Those still standing once the namespace is gone.
        for (index, name) in &self.host_links {
            if let Ok(false) = host.wait_gone(*index, LINGER)
                && let Ok(Some(link)) = host.link_by_index(*index)
                && link.is_named(name)
            {
                let _ = host.delete(*index);
            }
        }
        if let Some(zone) = &self.zone {
            remove_zone_if_empty(&mut host, zone);
        }
    }
}

/// Move links back from the guest's namespace under their host names,
/// each only if it is still the link that was moved in: found by its index
/// there (a link the guest renamed too), by its guest name only when no
/// index was ever recorded, and of the same kind and permanent address (or,
/// for a virtual link, which has none, the address it had when moved in).
/// A guest root can hide the real link and make one of its own in its place,
/// even with the same index (the kernel gives a freed index out again);
/// that one stays where it is. What cannot be told apart: a virtual link's
/// impostor of the same kind to which the guest gave the real one's address. Returns a line for each link not returned.
pub fn return_moved(moved: &[MovedLink], netns: std::os::fd::BorrowedFd<'_>) -> Vec<String> {
    let mut lines = Vec::new();
    if moved.is_empty() {
        return lines;
    }
    let Ok(own) = std::fs::File::open("/proc/thread-self/ns/net") else {
        return lines;
    };
    let Ok(mut guest) = Rtnl::open_in(netns) else {
        return lines;
    };
    for m in moved {
        let link = match m.guest_index {
            Some(i) => guest.link_by_index(i).ok().flatten(),
            None => guest.link(&m.guest).ok().flatten(),
        };
        let Some(link) = link else {
            let here = match m.guest_index {
                Some(i) => match guest.link(&m.guest).ok().flatten() {
                    Some(_) => format!(
                        "a link named {} there is not it (its index {i} is gone), leaving it there",
                        m.guest
                    ),
                    None => "it is not there any more".to_owned(),
                },
                None => "it is not there any more".to_owned(),
            };
            lines.push(format!(
                "Not returning interface {} from the container: {here}.",
                m.host
            ));
            continue;
        };
        // A virtual link has no permanent address: its address as moved
        // in stands for it (so a guest that changes it keeps the link).
        let (was, is, which) = match m.perm_mac {
            Some(p) => (Some(p), link.perm_mac, "permanent address"),
            None => (m.mac, link.mac, "address"),
        };
        if link.kind != m.kind || was != is {
            let show = |k: Option<&str>, a: Option<Mac>| {
                format!(
                    "{} {}",
                    k.unwrap_or("no kind"),
                    a.map_or("none".into(), |a| a.to_string())
                )
            };
            lines.push(format!(
                "Not returning interface {} from the container: its link {} ({}) is not the one moved in ({}; kind and {which} differ), leaving it there.",
                m.host,
                link.name,
                show(link.kind.as_deref(), is),
                show(m.kind.as_deref(), was),
            ));
            continue;
        }
        let rename = (link.name != m.host).then_some(m.host.as_str());
        if let Err(e) = guest.move_link(link.index, Netns::Fd(own.as_fd()), rename) {
            lines.push(format!(
                "Failed to return interface {} from the container: {}",
                m.host,
                std::io::Error::from_raw_os_error(e.errno)
            ));
        }
    }
    lines
}

/// The lock systemd-nspawn takes around making and removing zone bridges
/// (shared with it where systemd runs; ours otherwise).
pub fn zone_lock_path() -> &'static str {
    if std::path::Path::new("/run/systemd").is_dir() {
        "/run/systemd/nspawn-network-zone"
    } else {
        "/run/nixspawn/network-zone.lock"
    }
}

/// Remove the zone bridge `bridge` if no link is its port (asked over
/// netlink: sysfs may show another namespace), under the zone lock.
pub fn remove_zone_if_empty(host: &mut Rtnl, bridge: &str) {
    let path = std::path::Path::new(zone_lock_path());
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let Ok(lock) = crate::state::lockfile::acquire_blocking(path) else {
        return;
    };
    if let Ok(Some(br)) = host.link(bridge)
        && br.kind.as_deref() == Some("bridge")
        && let Ok(links) = host.links()
        && !links.iter().any(|l| l.master == Some(br.index))
    {
        let _ = host.delete(br.index);
    }
    crate::state::lockfile::release(path, lock);
}
