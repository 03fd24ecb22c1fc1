//! The run's vlans: a network namespace private to the run holds one
//! bridge per vlan (`br<vlan>`); each node has a network namespace of its
//! own (which its nixspawn joins with `--network-namespace-path`) with one
//! veth per vlan (`eth1`, `eth2`, ... in the order of its vlans, MAC
//! 52:54:00:12:<vlan>:<n> as the QEMU driver gives), addressed
//! 192.168.<vlan>.<n>/24 and 2001:db8:<vlan>::<n>/64. Every namespace is
//! held only by descriptors of this process (and by the guests that joined
//! them), so all of it goes when the run ends, however it ends; nothing is
//! made on the machine's own network.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use anyhow::{Context, Result};
use nixspawn_runtime::network::names::Mac;
use nixspawn_runtime::network::netns;
use nixspawn_runtime::network::rtnl::{LinkKind, Netns, Rtnl};

/// The netlink client's errors as the runtime's (which say what failed).
fn nl<T>(r: nixspawn_runtime::network::netlink::NlResult<T>) -> Result<T> {
    r.map_err(|e| anyhow::Error::from(nixspawn_runtime::Error::from(e)))
}

pub struct NodeNet {
    pub netns: OwnedFd,
    /// (vlan, interface name in the node, IPv4, IPv6)
    pub interfaces: Vec<(u8, String, Ipv4Addr, Ipv6Addr)>,
}

impl NodeNet {
    /// What nixspawn is given: this process's descriptor of the namespace.
    pub fn namespace_path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.netns.as_raw_fd())
    }
}

pub struct RunNetwork {
    pub run_ns: OwnedFd,
    pub nodes: BTreeMap<String, NodeNet>,
}

pub fn ipv4(vlan: u8, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, vlan, n)
}

pub fn ipv6(vlan: u8, n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, u16::from(vlan), 0, 0, 0, 0, u16::from(n))
}

/// Build it all. `nodes` in sorted order, each with its vlans; the index
/// in that order (from 1) is the node's number.
pub fn build(nodes: &[(String, Vec<u8>)]) -> Result<RunNetwork> {
    let run_ns = netns::create().context("making the run's network namespace")?;
    let mut run = nl(Rtnl::open_in(run_ns.as_fd()))?;
    let mut bridges = BTreeMap::new();
    for vlan in nodes.iter().flat_map(|(_, v)| v.iter().copied()) {
        if bridges.contains_key(&vlan) {
            continue;
        }
        let name = format!("br{vlan}");
        nl(run.create_simple(&name, LinkKind::Bridge))?;
        let br = nl(run.require(&name))?;
        nl(run.set_up(br.index, None))?;
        bridges.insert(vlan, br.index);
    }
    let mut out = BTreeMap::new();
    for (i, (name, vlans)) in nodes.iter().enumerate() {
        let n = u8::try_from(i + 1).context("too many nodes")?;
        let ns = netns::create().with_context(|| format!("making {name}'s network namespace"))?;
        let mut inner = nl(Rtnl::open_in(ns.as_fd()))?;
        let mut interfaces = Vec::new();
        for (k, &vlan) in vlans.iter().enumerate() {
            let host = format!("n{n}v{vlan}");
            let guest = format!("eth{}", k + 1);
            let mac = Mac([0x52, 0x54, 0x00, 0x12, vlan, n]);
            nl(run.create_veth(&host, None, &guest, Some(mac), Netns::Fd(ns.as_fd())))
                .with_context(|| format!("{name}: the link to vlan {vlan}"))?;
            let h = nl(run.require(&host))?;
            nl(run.set_up(h.index, Some(bridges[&vlan])))?;
            let g = nl(inner.require(&guest))?;
            let (v4, v6) = (ipv4(vlan, n), ipv6(vlan, n));
            nl(inner.add_address(g.index, IpAddr::V4(v4), 24))?;
            nl(inner.add_address(g.index, IpAddr::V6(v6), 64))?;
            nl(inner.set_up(g.index, None))?;
            interfaces.push((vlan, guest, v4, v6));
        }
        out.insert(
            name.clone(),
            NodeNet {
                netns: ns,
                interfaces,
            },
        );
    }
    Ok(RunNetwork { run_ns, nodes: out })
}

/// /etc/hosts for every node: each name at its first interface's
/// addresses, as the NixOS test framework writes it.
pub fn hosts_file(net: &RunNetwork) -> String {
    let mut s = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for (name, node) in &net.nodes {
        if let Some((_, _, v4, v6)) = node.interfaces.first() {
            s.push_str(&format!("{v4} {name}\n{v6} {name}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_driver() {
        assert_eq!(ipv4(2, 3).to_string(), "192.168.2.3");
        assert_eq!(ipv6(2, 3).to_string(), "2001:db8:2::3");
        assert_eq!(ipv6(254, 254).to_string(), "2001:db8:fe::fe");
    }
}
