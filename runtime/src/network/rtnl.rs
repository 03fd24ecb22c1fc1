//! A synchronous rtnetlink client: links, addresses and routes, one
//! request at a time, over a [`Socket`] of ours. Every operation the
//! launcher and its janitor perform on links goes through here (no `ip`
//! processes).

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoData, InfoIpVlan, InfoKind, InfoMacVlan, InfoVeth, IpVlanMode, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage, MacVlanMode, Prop,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::sys::socket::SockProtocol;

pub use netlink_packet_route::link::InfoKind as LinkKind;

use crate::network::names::Mac;
use crate::network::netlink::{
    NLMSG_DONE, NLMSG_ERROR, NlError, NlResult, RECV_BUFFER, Socket, error_of, messages, nl_err,
};

/// rtnetlink multicast groups (linux/rtnetlink.h RTNLGRP_*).
pub const GROUP_LINK: u32 = 1;
pub const GROUP_IPV4_IFADDR: u32 = 5;
pub const GROUP_IPV6_IFADDR: u32 = 9;

/// IFLA_ALT_IFNAME, which netlink-packet-route has no variant for: a
/// lookup by it finds main names and alternative names alike, and takes
/// names longer than 15 bytes.
const IFLA_ALT_IFNAME: u16 = 53;

/// Which network namespace a new or moved link goes to.
#[derive(Debug, Clone, Copy)]
pub enum Netns<'a> {
    /// That of a process.
    Pid(u32),
    /// A namespace descriptor (/proc/PID/ns/net).
    Fd(BorrowedFd<'a>),
}

impl Netns<'_> {
    fn attribute(self) -> LinkAttribute {
        match self {
            Netns::Pid(p) => LinkAttribute::NetNsPid(p),
            Netns::Fd(f) => LinkAttribute::NetNsFd(f.as_raw_fd()),
        }
    }
}

/// What we read back about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub altnames: Vec<String>,
    pub mac: Option<Mac>,
    /// The hardware's own address, where the driver has one (not virtual
    /// links); unlike `mac`, nobody in the namespace can change it.
    pub perm_mac: Option<Mac>,
    /// IFF_UP: administratively up.
    pub up: bool,
    /// "veth", "bridge", "macvlan", ... (None for a link without a kind, like lo).
    pub kind: Option<String>,
    /// The bridge it is a port of.
    pub master: Option<u32>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            altnames: Vec::new(),
            mac: None,
            perm_mac: None,
            up: m.header.flags.contains(LinkFlags::Up),
            kind: None,
            master: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(b) if b.len() == 6 => {
                    link.mac = Some(Mac([b[0], b[1], b[2], b[3], b[4], b[5]]))
                }
                LinkAttribute::PermAddress(b) if b.len() == 6 => {
                    link.perm_mac = Some(Mac([b[0], b[1], b[2], b[3], b[4], b[5]]))
                }
                LinkAttribute::Controller(i) => link.master = Some(*i),
                LinkAttribute::PropList(props) => {
                    for p in props {
                        if let Prop::AltIfName(n) = p {
                            link.altnames.push(n.clone());
                        }
                    }
                }
                LinkAttribute::LinkInfo(info) => {
                    for i in info {
                        if let LinkInfo::Kind(k) = i {
                            link.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// Whether `name` is this link's name or one of its alternative names.
    pub fn is_named(&self, name: &str) -> bool {
        self.name == name || self.altnames.iter().any(|a| a == name)
    }
}

/// An address as dumped: (ifindex, address, prefix, scope, flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub address: IpAddr,
    pub prefix: u8,
    /// RT_SCOPE_*: 0 universe, 200 site, 253 link, 254 host, 255 nowhere.
    pub scope: u8,
    pub flags: u32,
}

/// A route to add: `destination/prefix` (None: the default route),
/// through `gateway` if given, out of `oif`.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    /// The family when there is neither destination nor gateway.
    pub ipv6: bool,
}

pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// A client in the caller's network namespace.
    pub fn open() -> NlResult<Rtnl> {
        Rtnl::answered(Socket::open(SockProtocol::NetlinkRoute)?)
    }

    /// A client in the network namespace `netns`.
    pub fn open_in(netns: BorrowedFd<'_>) -> NlResult<Rtnl> {
        Rtnl::answered(Socket::open_in(SockProtocol::NetlinkRoute, netns)?)
    }

    /// A client whose requests give up after a while. The kernel answers
    /// route requests while they are sent, so a wait this long means
    /// something is badly wrong, and the supervisor (which reads a guest's
    /// addresses from its loop) must not hang on it; generous, because
    /// RTNL is one lock for the whole machine and a busy host holds it.
    fn answered(sock: Socket) -> NlResult<Rtnl> {
        sock.set_timeout(std::time::Duration::from_secs(10))?;
        Ok(Rtnl::from_socket(sock))
    }

    pub fn from_socket(sock: Socket) -> Rtnl {
        Rtnl {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUFFER],
        }
    }

    pub fn socket(&self) -> &Socket {
        &self.sock
    }

    /// Send one request and collect its answers (a dump's entries).
    pub fn request(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> NlResult<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(what, &out)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let Some(n) = self.sock.recv(what, &mut self.buf)? else {
                return Err(nl_err(what, nix::errno::Errno::EAGAIN));
            };
            for (kind, mseq, bytes) in messages(&self.buf[..n]) {
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => {
                        let (errno, extack) = error_of(bytes);
                        if errno != 0 {
                            return Err(NlError {
                                what: what.to_owned(),
                                errno,
                                extack,
                            });
                        }
                        if !dump {
                            return Ok(replies);
                        }
                    }
                    NLMSG_DONE => return Ok(replies),
                    _ => {
                        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                            .map_err(|e| NlError {
                                what: format!("{what}: an answer we cannot read: {e}"),
                                errno: libc::EBADMSG,
                                extack: None,
                            })?;
                        if let NetlinkPayload::InnerMessage(m) = parsed.payload {
                            replies.push(m);
                        }
                    }
                }
            }
        }
    }

    fn done(&mut self, what: &str, msg: RouteNetlinkMessage, flags: u16) -> NlResult<()> {
        self.request(what, msg, flags).map(drop)
    }

    // ---- links ----

    /// The link called `name` (main or alternative name), if any.
    pub fn link(&mut self, name: &str) -> NlResult<Option<Link>> {
        let mut m = LinkMessage::default();
        let mut v = name.as_bytes().to_vec();
        v.push(0);
        m.attributes
            .push(LinkAttribute::Other(DefaultNla::new(IFLA_ALT_IFNAME, v)));
        self.one_link(&format!("looking up link {name}"), m)
    }

    pub fn link_by_index(&mut self, index: u32) -> NlResult<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.one_link(&format!("looking up link {index}"), m)
    }

    fn one_link(&mut self, what: &str, m: LinkMessage) -> NlResult<Option<Link>> {
        match self.request(what, RouteNetlinkMessage::GetLink(m), 0) {
            Ok(v) => Ok(v.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if e.errno == libc::ENODEV => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn links(&mut self) -> NlResult<Vec<Link>> {
        let v = self.request(
            "listing links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(v.iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, which must exist.
    pub fn require(&mut self, name: &str) -> NlResult<Link> {
        self.link(name)?.ok_or_else(|| NlError {
            what: format!("looking up link {name}"),
            errno: libc::ENODEV,
            extack: None,
        })
    }

    /// A veth pair: `host` here, `peer` created straight in `peer_ns`.
    pub fn create_veth(
        &mut self,
        host: &str,
        host_mac: Option<Mac>,
        peer: &str,
        peer_mac: Option<Mac>,
        peer_ns: Netns<'_>,
    ) -> NlResult<()> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.into()));
        if let Some(mac) = peer_mac {
            p.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        p.attributes.push(peer_ns.attribute());
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(host.into()));
        if let Some(mac) = host_mac {
            m.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.done(
            &format!("creating the veth pair {host}:{peer}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// A link of a kind that needs no parameters (a bridge, an ifb).
    pub fn create_simple(&mut self, name: &str, kind: InfoKind) -> NlResult<()> {
        let what = format!("creating {kind} {name}");
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)]));
        self.done(
            &what,
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// A macvlan (mode bridge) on `parent`, created straight in `ns`.
    pub fn create_macvlan(
        &mut self,
        parent: u32,
        name: &str,
        mac: Mac,
        ns: Netns<'_>,
    ) -> NlResult<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::Link(parent));
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        m.attributes.push(ns.attribute());
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::MacVlan),
            LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                MacVlanMode::Bridge,
            )])),
        ]));
        self.done(
            &format!("creating the macvlan {name}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// An ipvlan (mode L2) on `parent`, created straight in `ns`.
    pub fn create_ipvlan(&mut self, parent: u32, name: &str, ns: Netns<'_>) -> NlResult<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::Link(parent));
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m.attributes.push(ns.attribute());
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::IpVlan),
            LinkInfo::Data(InfoData::IpVlan(vec![InfoIpVlan::Mode(IpVlanMode::L2)])),
        ]));
        self.done(
            &format!("creating the ipvlan {name}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Whether the kernel knows the link kind `kind`, asked without
    /// creating anything: a request with no parent fails with EOPNOTSUPP
    /// for an unknown kind and with the kind's own complaint otherwise.
    pub fn supports_kind(&mut self, kind: InfoKind) -> NlResult<bool> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::Link(0));
        m.attributes
            .push(LinkAttribute::IfName("nixspawn-probe".into()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind.clone())]));
        match self.request(
            &format!("probing for {kind} support"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.errno == libc::EOPNOTSUPP => Ok(false),
            Err(_) => Ok(true),
            Ok(_) => {
                // Should not happen (no parent); never leave it behind.
                if let Some(l) = self.link("nixspawn-probe")? {
                    let _ = self.delete(l.index);
                }
                Ok(true)
            }
        }
    }

    pub fn add_altname(&mut self, index: u32, alt: &str) -> NlResult<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes
            .push(LinkAttribute::PropList(vec![Prop::AltIfName(alt.into())]));
        self.done(
            &format!("adding the alternative name {alt}"),
            RouteNetlinkMessage::NewLinkProp(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Set IFF_UP, and make the link a port of `master` in the same request
    /// (as systemd-nspawn joins a bridge).
    pub fn set_up(&mut self, index: u32, master: Option<u32>) -> NlResult<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        if let Some(b) = master {
            m.attributes.push(LinkAttribute::Controller(b));
        }
        self.done(
            &format!("setting link {index} up"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    /// Move a link to the namespace `ns`, renamed to `new_name` on the way.
    pub fn move_link(&mut self, index: u32, ns: Netns<'_>, new_name: Option<&str>) -> NlResult<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(ns.attribute());
        if let Some(n) = new_name {
            m.attributes.push(LinkAttribute::IfName(n.into()));
        }
        self.done(
            &format!("moving link {index} to another network namespace"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    pub fn delete(&mut self, index: u32) -> NlResult<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.done(
            &format!("deleting link {index}"),
            RouteNetlinkMessage::DelLink(m),
            0,
        )
    }

    /// Wait until no link has `index` any more, or `timeout` passed.
    pub fn wait_gone(&mut self, index: u32, timeout: Duration) -> NlResult<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.link_by_index(index)?.is_none() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Wait until no link is called `name` any more, or `timeout` passed.
    pub fn wait_name_free(&mut self, name: &str, timeout: Duration) -> NlResult<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.link(name)?.is_none() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    // ---- addresses and routes ----

    /// Add `address/prefix` to link `index`, without duplicate address
    /// detection (the link is ours; a tentative IPv6 address would be
    /// unusable for a second or two). EEXIST counts as done.
    pub fn add_address(&mut self, index: u32, address: IpAddr, prefix: u8) -> NlResult<()> {
        let mut m = AddressMessage::default();
        m.header.family = family_of(address);
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.header.scope = AddressScope::Universe;
        m.header.flags = AddressHeaderFlags::Nodad;
        m.attributes.push(AddressAttribute::Local(address));
        m.attributes.push(AddressAttribute::Address(address));
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        match self.done(
            &format!("adding {address}/{prefix} to link {index}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.errno == libc::EEXIST => Ok(()),
            other => other,
        }
    }

    pub fn delete_address(&mut self, index: u32, address: IpAddr, prefix: u8) -> NlResult<()> {
        let mut m = AddressMessage::default();
        m.header.family = family_of(address);
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(address));
        self.done(
            &format!("deleting {address}/{prefix}"),
            RouteNetlinkMessage::DelAddress(m),
            0,
        )
    }

    pub fn addresses(&mut self) -> NlResult<Vec<Address>> {
        let v = self.request(
            "listing addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(v.iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => address_of(a),
                _ => None,
            })
            .collect())
    }

    /// Add `route` (EEXIST counts as done).
    pub fn add_route(&mut self, route: &Route) -> NlResult<()> {
        let ipv6 = route
            .destination
            .map(|d| d.0.is_ipv6())
            .or(route.gateway.map(|g| g.is_ipv6()))
            .unwrap_or(route.ipv6);
        let mut m = RouteMessage::default();
        m.header.address_family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.header.table = libc::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Static;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if route.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if let Some((dst, prefix)) = route.destination {
            m.header.destination_prefix_length = prefix;
            m.attributes
                .push(RouteAttribute::Destination(route_address(dst)));
        }
        if let Some(gw) = route.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(route_address(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(route.oif));
        let what = match route.destination {
            Some((d, p)) => format!("adding a route to {d}/{p}"),
            None => "adding the default route".to_owned(),
        };
        match self.done(
            &what,
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.errno == libc::EEXIST => Ok(()),
            other => other,
        }
    }

    /// Read what arrived on a joined group without blocking: whether any
    /// address message came (None when nothing was there at all). On
    /// ENOBUFS (we fell behind) it says "changed": the caller re-reads.
    pub fn drain_events(&mut self) -> NlResult<Option<bool>> {
        let mut any = None;
        loop {
            match self.sock.recv("reading address events", &mut self.buf) {
                Ok(Some(n)) => {
                    let changed = messages(&self.buf[..n])
                        .any(|(kind, _, _)| kind == libc::RTM_NEWADDR || kind == libc::RTM_DELADDR);
                    any = Some(any.unwrap_or(false) || changed);
                }
                Ok(None) => return Ok(any),
                Err(e) if e.errno == libc::ENOBUFS => any = Some(true),
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsFd for Rtnl {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

fn family_of(a: IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn address_of(a: &AddressMessage) -> Option<Address> {
    let mut flags = u32::from(a.header.flags.bits());
    let mut local = None;
    let mut address = None;
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Flags(f) => flags = f.bits(),
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    Some(Address {
        index: a.header.index,
        address: local.or(address)?,
        prefix: a.header.prefix_len,
        scope: a.header.scope.into(),
        flags,
    })
}

/// The address systemd-nspawn forwards ports to, for one family: as its
/// `local_addresses()` orders them (not deprecated, not host or nowhere
/// scope; by scope, then interface index), the first one, and only if its
/// scope is wider than link (so never an IPv6 link-local address).
pub fn forwarding_address(addresses: &[Address], ipv6: bool) -> Option<IpAddr> {
    const IFA_F_DEPRECATED: u32 = 0x20;
    let mut v: Vec<&Address> = addresses
        .iter()
        .filter(|a| a.address.is_ipv6() == ipv6)
        .filter(|a| a.flags & IFA_F_DEPRECATED == 0)
        .filter(|a| a.scope < 254)
        .collect();
    v.sort_by(|a, b| a.scope.cmp(&b.scope).then(a.index.cmp(&b.index)));
    v.first().filter(|a| a.scope < 253).map(|a| a.address)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(index: u32, a: &str, scope: u8, flags: u32) -> Address {
        Address {
            index,
            address: a.parse().unwrap(),
            prefix: 24,
            scope,
            flags,
        }
    }

    #[test]
    fn forwarding_address_as_nspawn_picks_it() {
        let v = [
            addr(1, "127.0.0.1", 254, 0x80),
            addr(3, "10.0.0.3", 0, 0x80),
            addr(2, "10.0.0.2", 0, 0x80),
            addr(2, "fe80::1", 253, 0x80),
            addr(2, "fd00::2", 0, 0x20),
        ];
        assert_eq!(
            forwarding_address(&v, false),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(
            forwarding_address(&v, true),
            None,
            "link-local and deprecated addresses are never used"
        );
        let v = [addr(2, "fe80::1", 253, 0), addr(2, "fd00::2", 0, 0)];
        assert_eq!(
            forwarding_address(&v, true),
            Some("fd00::2".parse().unwrap())
        );
        assert_eq!(forwarding_address(&[], true), None);
    }
}
