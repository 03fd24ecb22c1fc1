//! `-p`: the port map follows the guest's addresses. A socket in the
//! guest's network namespace hears of every address added or removed
//! there; each time, the address systemd-nspawn would pick is looked up
//! again per family, and the map's entries are swapped in one transaction.
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
        if wanted == self.current {
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
        match nft.swap(&self.current, &wanted) {
            Ok(()) => {
                self.current = wanted;
                self.complained = false;
                let _ = journal(NetClaim::Ports(self.current.clone()));
                None
            }
            Err(e) => self.complain(e),
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
