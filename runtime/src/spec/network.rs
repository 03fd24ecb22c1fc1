//! The guest's network as systemd-nspawn's options describe it (`-n`,
//! `--network-bridge`, `--network-zone`, `--network-veth-extra`,
//! `--network-interface`, `--network-macvlan`, `--network-ipvlan`,
//! `--network-namespace-path`, `-p`, `--resolv-conf`, `--timezone`), its
//! value syntax and its refusals, word for word; plus nixspawn's
//! `--network-address` for hosts without a networkd to address the link.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::network::names::ifname_valid;

fn refuse(message: String) -> Error {
    Error::Network { message }
}

/// `HOST[:CONTAINER]` of `--network-veth-extra=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethExtra {
    pub host: String,
    pub container: String,
}

impl VethExtra {
    pub fn parse(value: &str) -> Result<VethExtra> {
        let bad = || {
            refuse(format!(
                "Failed to parse --network-veth-extra= parameter: {value}"
            ))
        };
        let (host, container) = match value.split_once(':') {
            Some((_, c)) if c.contains(':') => return Err(bad()),
            Some((h, "")) => (h, h),
            Some((h, c)) => (h, c),
            None => (value, value),
        };
        if !ifname_valid(host) || !ifname_valid(container) {
            return Err(bad());
        }
        Ok(VethExtra {
            host: host.to_owned(),
            container: container.to_owned(),
        })
    }
}

/// Which list an `IF[:NEW]` belongs to (for nspawn's wording).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairKind {
    Interface,
    MacVlan,
    IpVlan,
}

impl PairKind {
    fn noun(self) -> &'static str {
        match self {
            PairKind::Interface => "Network interface",
            PairKind::MacVlan => "MACVLAN network interface",
            PairKind::IpVlan => "IPVLAN network interface",
        }
    }
}

/// `IF[:NEW]`: a host link, and the name it gets in the guest (None: as
/// systemd-nspawn names it — the same for moved links, `mv-IF`/`iv-IF`
/// for macvlans and ipvlans).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfacePair {
    pub host: String,
    pub guest: Option<String>,
}

impl IfacePair {
    /// A whitespace-separated list of `IF[:NEW]` (the `NEW` form is
    /// systemd-nspawn 254's; 252 takes bare names only).
    pub fn parse_list(kind: PairKind, value: &str) -> Result<Vec<IfacePair>> {
        let bad = |w: &str| refuse(format!("{} name not valid: {w}", kind.noun()));
        let words: Vec<&str> = value.split_whitespace().collect();
        if words.is_empty() {
            return Err(bad(value));
        }
        words
            .into_iter()
            .map(|w| {
                let (host, guest) = match w.split_once(':') {
                    Some((h, g)) => (h, Some(g)),
                    None => (w, None),
                };
                if !ifname_valid(host) || guest.is_some_and(|g| !ifname_valid(g)) {
                    return Err(bad(w));
                }
                Ok(IfacePair {
                    host: host.to_owned(),
                    guest: guest.map(str::to_owned),
                })
            })
            .collect()
    }
}

/// `--network-bridge=` names an existing bridge.
pub fn parse_bridge(value: &str) -> Result<String> {
    if !ifname_valid(value) {
        return Err(refuse(format!("Bridge interface name not valid: {value}")));
    }
    Ok(value.to_owned())
}

/// `--network-zone=Z`: the bridge `vz-Z` must be a valid link name.
/// An empty value unsets it (as systemd-nspawn's parser does).
pub fn parse_zone(value: &str) -> Result<Option<String>> {
    if value.is_empty() {
        return Ok(None);
    }
    let bridge = crate::network::names::zone_bridge(value);
    if !ifname_valid(&bridge) {
        return Err(refuse(format!("Network zone name not valid: {bridge}")));
    }
    Ok(Some(value.to_owned()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            // IPPROTO_TCP and IPPROTO_UDP (nftables matches the one byte).
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// `-p [tcp:|udp:]HOST[:CONTAINER]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub protocol: Protocol,
    pub host: u16,
    pub container: u16,
}

impl Port {
    /// Add `value` to `ports`, refusing a second entry for the same
    /// protocol and host port.
    pub fn parse_into(ports: &mut Vec<Port>, value: &str) -> Result<()> {
        let (protocol, rest) = if let Some(r) = value.strip_prefix("tcp:") {
            (Protocol::Tcp, r)
        } else if let Some(r) = value.strip_prefix("udp:") {
            (Protocol::Udp, r)
        } else {
            (Protocol::Tcp, value)
        };
        let port = |s: &str| -> Result<u16> {
            let errno = match s.parse::<u32>() {
                Ok(0) => libc::EINVAL,
                Ok(n) if n > 65535 => libc::ERANGE,
                Ok(n) if s.bytes().all(|b| b.is_ascii_digit()) => {
                    return u16::try_from(n).map_err(|_| refuse(value.to_owned()));
                }
                _ if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => libc::ERANGE,
                _ => libc::EINVAL,
            };
            Err(refuse(format!(
                "Failed to parse host port {value}: {}",
                strerror(errno)
            )))
        };
        let (host, container) = match rest.split_once(':') {
            Some((h, c)) => (port(h)?, port(c)?),
            None => {
                let p = port(rest)?;
                (p, p)
            }
        };
        if ports
            .iter()
            .any(|p| p.protocol == protocol && p.host == host)
        {
            return Err(refuse(format!("Duplicate port specification: {value}")));
        }
        ports.push(Port {
            protocol,
            host,
            container,
        });
        Ok(())
    }
}

/// The C library's text for an errno, as systemd's `%m` prints it.
fn strerror(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    // Rust appends " (os error N)".
    s.split(" (os error").next().unwrap_or(&s).to_owned()
}

/// nixspawn's `--network-address=HOST[/P],GUEST[/P]`: the launcher puts
/// HOST on the host side (`ve-M`, or the bridge of a zone or
/// `--network-bridge`), GUEST on `host0`, and a default route through
/// HOST in the guest, for hosts where no networkd does it (in the spirit
/// of nixos-container's hostAddress/localAddress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPair {
    pub host: IpAddr,
    pub guest: IpAddr,
    /// None: /32 (/128) on a point-to-point veth, /24 (/64) on a bridge.
    pub prefix: Option<u8>,
}

impl AddressPair {
    pub fn parse(value: &str) -> Result<AddressPair> {
        let bad = |why: &str| {
            refuse(format!(
                "invalid --network-address={value}: {why} (expected HOST[/PREFIX],GUEST[/PREFIX], both IPv4 or both IPv6)"
            ))
        };
        let (h, g) = value
            .split_once(',')
            .ok_or_else(|| bad("no comma between the two addresses"))?;
        let one = |s: &str| -> Result<(IpAddr, Option<u8>)> {
            let (a, p) = match s.split_once('/') {
                Some((a, p)) => (
                    a,
                    Some(
                        p.parse::<u8>()
                            .map_err(|_| bad(&format!("bad prefix length {p:?}")))?,
                    ),
                ),
                None => (s, None),
            };
            let a: IpAddr = a
                .trim()
                .parse()
                .map_err(|_| bad(&format!("{a:?} is not an IP address")))?;
            let max = if a.is_ipv4() { 32 } else { 128 };
            if p.is_some_and(|p| p == 0 || p > max) {
                return Err(bad("prefix length out of range"));
            }
            if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                return Err(bad(&format!("{a} cannot be a link's address")));
            }
            Ok((a, p))
        };
        let (host, hp) = one(h)?;
        let (guest, gp) = one(g)?;
        if host.is_ipv4() != guest.is_ipv4() {
            return Err(bad("one address is IPv4, the other IPv6"));
        }
        if host == guest {
            return Err(bad("the two addresses are the same"));
        }
        let prefix = match (hp, gp) {
            (Some(a), Some(b)) if a != b => return Err(bad("the prefix lengths differ")),
            (a, b) => a.or(b),
        };
        Ok(AddressPair {
            host,
            guest,
            prefix,
        })
    }

    /// The prefix length both ends get.
    pub fn prefix_for(&self, bridged: bool) -> u8 {
        self.prefix.unwrap_or(match (self.host.is_ipv4(), bridged) {
            (true, false) => 32,
            (true, true) => 24,
            (false, false) => 128,
            (false, true) => 64,
        })
    }
}

/// `--resolv-conf=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ResolvConf {
    Off,
    #[default]
    Auto,
    Delete,
    Copy(ResolvSource),
    Replace(ResolvSource),
    Bind(ResolvSource),
}

/// Where a resolv.conf comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ResolvSource {
    /// The host's /etc/resolv.conf.
    Host,
    /// systemd's /usr/lib/systemd/resolv.conf (the stub listener).
    Static,
    /// systemd-resolved's /run/systemd/resolve/resolv.conf (its upstreams).
    Uplink,
    /// systemd-resolved's /run/systemd/resolve/stub-resolv.conf.
    Stub,
}

impl ResolvSource {
    pub fn path(self) -> &'static str {
        match self {
            ResolvSource::Host => "/etc/resolv.conf",
            ResolvSource::Static => "/usr/lib/systemd/resolv.conf",
            ResolvSource::Uplink => "/run/systemd/resolve/resolv.conf",
            ResolvSource::Stub => "/run/systemd/resolve/stub-resolv.conf",
        }
    }
}

impl ResolvConf {
    pub fn parse(value: &str) -> Result<ResolvConf> {
        use ResolvSource::*;
        let source = |s: &str| match s {
            "host" => Some(Host),
            "static" => Some(Static),
            "uplink" => Some(Uplink),
            "stub" => Some(Stub),
            _ => None,
        };
        let mode = match value {
            "off" | "no" | "false" | "0" => Some(ResolvConf::Off),
            "auto" | "yes" | "true" | "1" => Some(ResolvConf::Auto),
            "delete" => Some(ResolvConf::Delete),
            v => {
                if let Some(s) = v.strip_prefix("copy-") {
                    source(s).map(ResolvConf::Copy)
                } else if let Some(s) = v.strip_prefix("replace-") {
                    source(s).map(ResolvConf::Replace)
                } else if let Some(s) = v.strip_prefix("bind-") {
                    source(s).map(ResolvConf::Bind)
                } else {
                    None
                }
            }
        };
        mode.ok_or_else(|| refuse(format!("Failed to parse /etc/resolv.conf mode: {value}")))
    }
}

/// `--timezone=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Timezone {
    Off,
    #[default]
    Auto,
    Copy,
    Bind,
    Symlink,
    Delete,
}

impl Timezone {
    pub fn parse(value: &str) -> Result<Timezone> {
        Ok(match value {
            "off" | "no" | "false" | "0" => Timezone::Off,
            "auto" | "yes" | "true" | "1" => Timezone::Auto,
            "copy" => Timezone::Copy,
            "bind" => Timezone::Bind,
            "symlink" => Timezone::Symlink,
            "delete" => Timezone::Delete,
            _ => {
                return Err(refuse(format!(
                    "Failed to parse /etc/localtime mode: {value}"
                )));
            }
        })
    }
}

/// Everything about the guest's network but `--private-network` itself
/// (kept in [`crate::Spec::private_network`], which these imply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    /// `-n`; implied by a bridge or a zone.
    pub veth: bool,
    pub bridge: Option<String>,
    pub zone: Option<String>,
    pub veth_extra: Vec<VethExtra>,
    pub interfaces: Vec<IfacePair>,
    pub macvlans: Vec<IfacePair>,
    pub ipvlans: Vec<IfacePair>,
    /// Join this network namespace instead of making one.
    pub namespace_path: Option<PathBuf>,
    pub ports: Vec<Port>,
    /// nixspawn's extension: addresses for both ends of `host0`'s link.
    pub addresses: Vec<AddressPair>,
    pub resolv_conf: ResolvConf,
    pub timezone: Timezone,
}

impl Network {
    /// Whether these options make the network private (all but a bare
    /// namespace path, as with systemd-nspawn).
    pub fn implies_private(&self) -> bool {
        self.veth
            || self.bridge.is_some()
            || self.zone.is_some()
            || !self.veth_extra.is_empty()
            || !self.interfaces.is_empty()
            || !self.macvlans.is_empty()
            || !self.ipvlans.is_empty()
    }

    /// Whether the main veth (`host0`) is made.
    pub fn has_veth(&self) -> bool {
        self.veth || self.bridge.is_some() || self.zone.is_some()
    }

    /// Whether anything is set up on links at all (the launcher then waits
    /// for it before the payload runs).
    pub fn has_links(&self) -> bool {
        self.implies_private()
    }

    /// systemd-nspawn's cross-option checks, in its order and words; the
    /// extension's own checks last.
    pub fn verify(&self, private_network: bool) -> Result<()> {
        if self.namespace_path.is_some() && self.implies_private() {
            return Err(refuse(
                "--network-namespace-path= cannot be combined with other network options.".into(),
            ));
        }
        if self.bridge.is_some() && self.zone.is_some() {
            return Err(refuse(
                "--network-bridge= and --network-zone= may not be combined.".into(),
            ));
        }
        if !self.ports.is_empty() && !private_network {
            return Err(refuse(
                "Cannot use --port= without private networking.".into(),
            ));
        }
        if !self.addresses.is_empty() {
            if !self.has_veth() {
                return Err(refuse(
                    "--network-address= addresses host0 and its host side: it needs --network-veth, --network-bridge= or --network-zone=".into(),
                ));
            }
            for v6 in [false, true] {
                if self
                    .addresses
                    .iter()
                    .filter(|a| a.host.is_ipv6() == v6)
                    .count()
                    > 1
                {
                    return Err(refuse(format!(
                        "--network-address= was given twice for {}; give one IPv4 and one IPv6 pair at most",
                        if v6 { "IPv6" } else { "IPv4" }
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<impl std::fmt::Debug>) -> String {
        r.unwrap_err().to_string()
    }

    /// Each refusal as systemd-nspawn 252 words it (checked against it here).
    #[test]
    fn refusals_in_nspawn_words() {
        assert_eq!(
            msg(VethExtra::parse("a:b:c")),
            "Failed to parse --network-veth-extra= parameter: a:b:c"
        );
        assert_eq!(
            msg(VethExtra::parse("toolongname12345")),
            "Failed to parse --network-veth-extra= parameter: toolongname12345"
        );
        assert_eq!(
            msg(VethExtra::parse("")),
            "Failed to parse --network-veth-extra= parameter: "
        );
        assert_eq!(
            msg(parse_zone("abcdefghijklm")),
            "Network zone name not valid: vz-abcdefghijklm"
        );
        assert_eq!(parse_zone("").unwrap(), None);
        assert_eq!(
            msg(parse_bridge("abcdefghijklmnop")),
            "Bridge interface name not valid: abcdefghijklmnop"
        );
        assert_eq!(msg(parse_bridge("")), "Bridge interface name not valid: ");
        for (kind, v, want) in [
            (
                PairKind::Interface,
                "all",
                "Network interface name not valid: all",
            ),
            (
                PairKind::Interface,
                "",
                "Network interface name not valid: ",
            ),
            (
                PairKind::MacVlan,
                "toolongname12345",
                "MACVLAN network interface name not valid: toolongname12345",
            ),
            (
                PairKind::IpVlan,
                "a:",
                "IPVLAN network interface name not valid: a:",
            ),
        ] {
            assert_eq!(msg(IfacePair::parse_list(kind, v)), want);
        }
        let mut ports = Vec::new();
        for (v, want) in [
            ("bogus", "Failed to parse host port bogus: Invalid argument"),
            (
                "70000",
                "Failed to parse host port 70000: Numerical result out of range",
            ),
            ("0", "Failed to parse host port 0: Invalid argument"),
            ("tcp:", "Failed to parse host port tcp:: Invalid argument"),
            (
                "tcp:80:",
                "Failed to parse host port tcp:80:: Invalid argument",
            ),
        ] {
            assert_eq!(msg(Port::parse_into(&mut ports, v)), want);
        }
        Port::parse_into(&mut ports, "tcp:80").unwrap();
        assert_eq!(
            msg(Port::parse_into(&mut ports, "80")),
            "Duplicate port specification: 80"
        );
        Port::parse_into(&mut ports, "udp:80:8080").unwrap();
        assert_eq!(
            ports[1],
            Port {
                protocol: Protocol::Udp,
                host: 80,
                container: 8080
            }
        );
        assert_eq!(
            msg(ResolvConf::parse("bogus")),
            "Failed to parse /etc/resolv.conf mode: bogus"
        );
        assert_eq!(
            msg(Timezone::parse("bogus")),
            "Failed to parse /etc/localtime mode: bogus"
        );
    }

    #[test]
    fn values() {
        assert_eq!(
            VethExtra::parse("a:").unwrap(),
            VethExtra {
                host: "a".into(),
                container: "a".into()
            }
        );
        assert_eq!(VethExtra::parse("h:c").unwrap().container, "c");
        let l = IfacePair::parse_list(PairKind::Interface, "eth1  eth2:new0").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].guest.as_deref(), Some("new0"));
        assert_eq!(
            ResolvConf::parse("bind-uplink").unwrap(),
            ResolvConf::Bind(ResolvSource::Uplink)
        );
        assert_eq!(ResolvConf::parse("no").unwrap(), ResolvConf::Off);
        assert_eq!(Timezone::parse("symlink").unwrap(), Timezone::Symlink);
        let a = AddressPair::parse("10.0.0.1,10.0.0.2").unwrap();
        assert_eq!((a.prefix_for(false), a.prefix_for(true)), (32, 24));
        let a = AddressPair::parse("fd00::1/64,fd00::2").unwrap();
        assert_eq!(a.prefix_for(false), 64);
        for bad in [
            "10.0.0.1",
            "10.0.0.1,fd00::2",
            "10.0.0.1/33,10.0.0.2",
            "10.0.0.1/24,10.0.0.2/16",
            "10.0.0.1,10.0.0.1",
            "127.0.0.1,10.0.0.2",
            "x,10.0.0.2",
        ] {
            assert!(AddressPair::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn combinations() {
        let n = Network {
            bridge: Some("br0".into()),
            zone: Some("z".into()),
            ..Network::default()
        };
        assert_eq!(
            msg(n.verify(true)),
            "--network-bridge= and --network-zone= may not be combined."
        );
        let n = Network {
            veth: true,
            namespace_path: Some("/run/netns/x".into()),
            ..Network::default()
        };
        assert_eq!(
            msg(n.verify(true)),
            "--network-namespace-path= cannot be combined with other network options."
        );
        let mut n = Network::default();
        Port::parse_into(&mut n.ports, "80").unwrap();
        assert_eq!(
            msg(n.verify(false)),
            "Cannot use --port= without private networking."
        );
        assert!(n.verify(true).is_ok());
        let n = Network {
            addresses: vec![AddressPair::parse("10.0.0.1,10.0.0.2").unwrap()],
            ..Network::default()
        };
        assert!(n.verify(true).is_err(), "addresses need a veth");
        let n = Network {
            veth: true,
            addresses: vec![
                AddressPair::parse("10.0.0.1,10.0.0.2").unwrap(),
                AddressPair::parse("10.0.1.1,10.0.1.2").unwrap(),
            ],
            ..Network::default()
        };
        assert!(n.verify(true).is_err(), "one pair per family");
        assert!(
            Network {
                namespace_path: Some("/x".into()),
                ..Network::default()
            }
            .verify(true)
            .is_ok(),
            "--private-network goes with a namespace path"
        );
    }
}
