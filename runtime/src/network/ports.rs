//! `-p`: the port map follows the guest's addresses. A socket in the
//! guest's network namespace hears of every address added or removed
//! there; each time, the address systemd-nspawn would pick is looked up
//! again per family, and the map's entries are swapped in one transaction
//! per family.
//! Entries are removed when the boot ends; the tables stay (as nspawn's).

use std::os::fd::{AsFd, BorrowedFd};

use crate::error::Result;
use crate::network::cleanup::NetClaim;
use crate::network::nft::{Family, Nft, PortMapping};
use crate::network::rtnl::{GROUP_IPV4_IFADDR, GROUP_IPV6_IFADDR, Rtnl, forwarding_address};
use crate::spec::network::Port;

pub struct PortForward {
    ports: Vec<Port>,
    /// Joined to the address groups in the guest's namespace.
    watch: Rtnl,
    nft: Option<Nft>,
    current: Vec<PortMapping>,
    /// A failure already said (said once, as the map keeps being retried).
    complained: bool,
    /// The tables were made (or found).
    tables: bool,
}

impl PortForward {
    pub fn new(ports: &[Port], guest_netns: BorrowedFd<'_>) -> Result<PortForward> {
        let watch = Rtnl::open_in(guest_netns)?;
        watch.socket().join(GROUP_IPV4_IFADDR)?;
        watch.socket().join(GROUP_IPV6_IFADDR)?;
        watch.socket().set_nonblocking()?;
        Ok(PortForward {
            ports: ports.to_vec(),
            watch,
            nft: None,
            current: Vec::new(),
            complained: false,
            tables: false,
        })
    }

    /// What to poll for address changes.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.watch.as_fd()
    }

    /// After the watch fired: whether anything changed, then [`Self::update`].
    pub fn changed(&mut self) -> bool {
        matches!(self.watch.drain_events(), Ok(Some(true)) | Err(_))
    }

    /// Make the map match the guest's addresses now (read through `guest`,
    /// a socket in its namespace). Returns a line to show if it failed.
    pub fn update(
        &mut self,
        guest: &mut Rtnl,
        journal: &mut dyn FnMut(NetClaim) -> Result<()>,
    ) -> Option<String> {
        let addresses = match guest.addresses() {
            Ok(a) => a,
            Err(e) => return self.complain(e.to_string()),
        };
        let mut wanted = Vec::new();
        for ipv6 in [false, true] {
            if let Some(address) = forwarding_address(&addresses, ipv6) {
                for p in &self.ports {
                    wanted.push(PortMapping {
                        protocol: p.protocol.number(),
                        host_port: p.host,
                        address,
                        container_port: p.container,
                    });
                }
            }
        }
        let of = |list: &[PortMapping], family: Family| -> Vec<PortMapping> {
            list.iter()
                .filter(|p| p.family() == family)
                .cloned()
                .collect()
        };
        let families: Vec<Family> = [Family::V4, Family::V6]
            .into_iter()
            .filter(|&f| of(&self.current, f) != of(&wanted, f))
            .collect();
        if families.is_empty() {
            return None;
        }
        let nft = match self.nft.as_mut() {
            Some(n) => n,
            None => match Nft::open() {
                Ok(n) => self.nft.insert(n),
                Err(e) => return self.complain(e.to_string()),
            },
        };
        if !self.tables {
            // As nspawn: both families' tables once the map is first
            // touched (IPv6's only where the kernel has it).
            if let Err(e) = nft.ensure_table(Family::V4) {
                return self.complain(e);
            }
            if let Err(e) = nft.ensure_table(Family::V6)
                && wanted.iter().any(|p| p.family() == Family::V6)
            {
                return self.complain(e);
            }
            self.tables = true;
        }
        // One transaction per family: what one of them committed is ours
        // to remove (and the janitor's to know of) even if the other fails.
        let mut failed = None;
        for family in families {
            let new = of(&wanted, family);
            match nft.swap(&of(&self.current, family), &new) {
                Ok(()) => {
                    self.current.retain(|p| p.family() != family);
                    self.current.extend(new);
                    let _ = journal(NetClaim::Ports(self.current.clone()));
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            None => {
                self.complained = false;
                None
            }
            Some(e) => self.complain(e),
        }
    }

    fn complain(&mut self, e: String) -> Option<String> {
        if std::mem::replace(&mut self.complained, true) {
            return None;
        }
        Some(format!("Failed to modify the port map (--port): {e}"))
    }

    /// Remove this boot's entries.
    pub fn flush(&mut self, journal: &mut dyn FnMut(NetClaim) -> Result<()>) {
        if self.current.is_empty() {
            return;
        }
        if let Some(nft) = self.nft.as_mut() {
            nft.remove(&self.current);
        }
        self.current.clear();
        let _ = journal(NetClaim::Ports(Vec::new()));
    }
}
