//! Interface names and MAC addresses as systemd-nspawn derives them, so a
//! guest gets the same `ve-`/`vb-` names and the same MACs under either
//! launcher (and keeps its DHCP lease when switched). Pure functions of
//! the host's machine ID and the machine name.

use std::hash::Hasher;

use siphasher::sip::SipHasher24;

/// The hash keys systemd-nspawn uses, one per kind of link end.
pub mod keys {
    use super::hex16;
    /// `ve-`/`vb-`, the host side of the main veth.
    pub const HOST: [u8; 16] = hex16("1a376fc746ec450bada3d53106605db1");
    /// `host0`, the guest side of the main veth.
    pub const CONTAINER: [u8; 16] = hex16("c3c4f919b557b21ce6cf1427039ceea2");
    /// Host sides of `--network-veth-extra=` pairs.
    pub const VETH_EXTRA_HOST: [u8; 16] = hex16("48c7f6b7ea9d4c9eb728d4de91d5bf66");
    /// Guest sides of `--network-veth-extra=` pairs.
    pub const VETH_EXTRA_CONTAINER: [u8; 16] = hex16("af501761cef94d35840d2b2054bece59");
    /// `--network-macvlan=` links.
    pub const MACVLAN: [u8; 16] = hex16("00136dbc66834481bb0cf9511f24a66f");
    /// Shortening a name of 16 bytes or more.
    pub const SHORTEN: [u8; 16] = hex16("e190a404a8ef4b518cccc33a9f11fca2");
}

/// The kernel's limit on an interface name, without its NUL.
pub const IFNAME_MAX: usize = 15;

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("not a hex digit"),
    }
}

const fn hex16(s: &str) -> [u8; 16] {
    let b = s.as_bytes();
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

fn siphash24(key: &[u8; 16], data: &[u8]) -> u64 {
    let mut h = SipHasher24::new_with_key(key);
    h.write(data);
    h.finish()
}

/// The host's machine ID as 16 raw bytes (what the MACs are hashed from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostId([u8; 16]);

impl HostId {
    /// From the text of /etc/machine-id: 32 hex digits, not all zero.
    pub fn parse(text: &str) -> Option<HostId> {
        let t = text.trim();
        if t.len() != 32 || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let b = t.as_bytes();
        let id: [u8; 16] = std::array::from_fn(|i| (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]));
        (id != [0; 16]).then_some(HostId(id))
    }

    /// The host's /etc/machine-id (systemd-nspawn fails without one too).
    pub fn read() -> crate::Result<HostId> {
        let path = "/etc/machine-id";
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::Error::io("reading the host's machine ID", path, e))?;
        HostId::parse(&text).ok_or_else(|| crate::Error::Network {
            message: format!(
                "{path} holds no valid machine ID, which the guest's MAC addresses are derived from (as with systemd-nspawn); create one with: systemd-machine-id-setup"
            ),
        })
    }
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mac(pub [u8; 6]);

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The MAC systemd-nspawn gives the link end of `machine` hashed with
/// `key`: SipHash-2-4 of the host ID, the machine name and (for the
/// second and later link of a kind) the link's index, little-endian; its
/// first six bytes, made unicast and locally administered.
pub fn mac(host: &HostId, machine: &str, key: &[u8; 16], index: u64) -> Mac {
    let mut input = Vec::with_capacity(16 + machine.len() + 8);
    input.extend_from_slice(&host.0);
    input.extend_from_slice(machine.as_bytes());
    if index > 0 {
        input.extend_from_slice(&index.to_le_bytes());
    }
    let h = siphash24(key, &input).to_le_bytes();
    let mut mac = [h[0], h[1], h[2], h[3], h[4], h[5]];
    mac[0] &= 0xfe;
    mac[0] |= 0x02;
    Mac(mac)
}

/// Whether the naming scheme shortens long names with a hash (systemd
/// v245 and later, the default) or truncates them (v238 to v243), from
/// `$NET_NAMING_SCHEME` and the kernel command line's `net.naming-scheme=`
/// as systemd reads them (the environment wins unless it starts with ':').
pub fn long_hash_naming(env: Option<&str>, cmdline: &str) -> bool {
    let from_cmdline = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("net.naming-scheme="));
    let name = match env {
        Some(e) if e.starts_with(':') => from_cmdline.or(Some(&e[1..])),
        Some(e) => Some(e),
        None => from_cmdline,
    };
    !matches!(name, Some("v238" | "v239" | "v240" | "v241" | "v243"))
}

const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A name as the kernel takes it: `name` itself when it fits, else the
/// shortened form (11 bytes and 4 characters of its hash, or 15 bytes
/// with an old naming scheme) with `name` as its alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkName {
    pub name: String,
    pub altname: Option<String>,
}

pub fn shorten(full: &str, long_hash: bool) -> LinkName {
    if full.len() <= IFNAME_MAX {
        return LinkName {
            name: full.to_owned(),
            altname: None,
        };
    }
    let bytes = full.as_bytes();
    let mut short = bytes[..11].to_vec();
    if long_hash {
        let h = siphash24(&keys::SHORTEN, bytes);
        for shift in [18u32, 12, 6, 0] {
            short.push(URL_SAFE[((h >> shift) & 63) as usize]);
        }
    } else {
        short.extend_from_slice(&bytes[11..15]);
    }
    LinkName {
        // Interface names are checked ASCII before they get here.
        name: String::from_utf8_lossy(&short).into_owned(),
        altname: Some(full.to_owned()),
    }
}

/// systemd's `ifname_valid()`: 1 to 15 bytes, printable ASCII other than
/// space, ':', '/' and '%'; not ".", "..", "all" or "default"; not all digits.
pub fn ifname_valid(name: &str) -> bool {
    if name.is_empty() || name.len() > IFNAME_MAX {
        return false;
    }
    if matches!(name, "." | ".." | "all" | "default") {
        return false;
    }
    if !name
        .bytes()
        .all(|c| c > b' ' && c < 127 && !matches!(c, b':' | b'/' | b'%'))
    {
        return false;
    }
    !name.bytes().all(|c| c.is_ascii_digit())
}

/// The host side of the main veth: `ve-M`, or `vb-M` when bridged.
pub fn veth_host_name(machine: &str, bridged: bool, long_hash: bool) -> LinkName {
    let prefix = if bridged { "vb-" } else { "ve-" };
    shorten(&format!("{prefix}{machine}"), long_hash)
}

/// The zone bridge's name.
pub fn zone_bridge(zone: &str) -> String {
    format!("vz-{zone}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_ID: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4";

    fn id() -> HostId {
        HostId::parse(HOST_ID).unwrap()
    }

    fn m(machine: &str, key: &[u8; 16], idx: u64) -> String {
        mac(&id(), machine, key, idx).to_string()
    }

    #[test]
    fn siphash_matches_the_reference_vector() {
        // SipHash-2-4 paper: key 00..0f, message 00..0e.
        let key: [u8; 16] = std::array::from_fn(|i| u8::try_from(i).unwrap());
        let msg: Vec<u8> = (0u8..15).collect();
        assert_eq!(siphash24(&key, &msg), 0xa129ca6149be45e5);
    }

    /// Every vector observed under systemd-nspawn 252 on the host whose
    /// machine ID is HOST_ID (design-13 §3.2).
    #[test]
    fn macs_match_systemd_nspawn() {
        use keys::*;
        for (machine, key, idx, want) in [
            ("r13n", &HOST, 0, "76:6c:de:76:ae:3b"),
            ("r13n", &CONTAINER, 0, "4a:93:34:16:25:ed"),
            (
                "r13-this-is-a-long-machine-name",
                &HOST,
                0,
                "d6:aa:05:4c:25:6b",
            ),
            (
                "r13-this-is-a-long-machine-name",
                &CONTAINER,
                0,
                "96:f6:cb:48:6e:71",
            ),
            ("r13zone-a", &HOST, 0, "4e:e8:41:f9:c1:08"),
            ("r13zone-a", &CONTAINER, 0, "12:1f:3a:74:1a:81"),
            ("r13br-a", &HOST, 0, "46:a7:ec:a6:6b:a8"),
            ("r13br-a", &CONTAINER, 0, "82:31:bb:22:65:14"),
            ("r13x", &HOST, 0, "32:e1:f9:3a:b3:74"),
            ("r13x", &CONTAINER, 0, "c2:8a:b7:02:08:ec"),
            ("r13x", &VETH_EXTRA_HOST, 0, "e6:cc:62:ad:85:48"),
            ("r13x", &VETH_EXTRA_CONTAINER, 0, "72:c6:5d:0c:21:f1"),
            ("r13x", &VETH_EXTRA_HOST, 1, "16:7d:35:54:da:30"),
            ("r13x", &VETH_EXTRA_CONTAINER, 1, "02:46:84:a0:68:04"),
            ("r13mv", &MACVLAN, 0, "6e:71:bb:28:08:63"),
            ("r13mv", &MACVLAN, 1, "ee:24:2d:17:1a:52"),
            ("r13p", &HOST, 0, "f6:f9:91:77:b6:7e"),
            ("r13p", &CONTAINER, 0, "7a:48:ed:67:63:fb"),
            ("r13a-short", &HOST, 0, "8a:fd:ea:d3:b2:51"),
            ("r13a-short", &CONTAINER, 0, "96:7e:c3:90:bf:f0"),
            ("r13b", &HOST, 0, "5e:5b:3e:40:60:b6"),
            ("r13b", &CONTAINER, 0, "e6:cc:e5:fe:8c:e6"),
        ] {
            assert_eq!(m(machine, key, idx), want, "{machine} idx {idx}");
        }
    }

    #[test]
    fn names_match_systemd_nspawn() {
        let long = "r13-this-is-a-long-machine-name";
        assert_eq!(
            veth_host_name(long, false, true),
            LinkName {
                name: "ve-r13-thisheag".into(),
                altname: Some(format!("ve-{long}")),
            }
        );
        assert_eq!(veth_host_name(long, true, true).name, "vb-r13-thisi0FX");
        assert_eq!(
            veth_host_name("r134567890123", false, true).name,
            "ve-r1345678FxqQ"
        );
        let fits = veth_host_name("r13456789012", false, true);
        assert_eq!(
            (fits.name.as_str(), fits.altname),
            ("ve-r13456789012", None)
        );
        assert_eq!(shorten("mv-r13parent-long1", true).name, "mv-r13paren1jet");
        // An old naming scheme truncates.
        assert_eq!(veth_host_name(long, false, false).name, "ve-r13-this-is-");
    }

    #[test]
    fn naming_scheme_sources() {
        assert!(long_hash_naming(None, "root=/dev/sda"));
        assert!(!long_hash_naming(None, "quiet net.naming-scheme=v243"));
        assert!(!long_hash_naming(Some("v240"), "net.naming-scheme=v252"));
        assert!(long_hash_naming(Some(":v240"), "net.naming-scheme=v252"));
        assert!(!long_hash_naming(Some(":v240"), ""));
    }

    #[test]
    fn validity_as_systemd_checks_it() {
        for ok in ["vz-abcdefghijkl", "eth0", "a", "x-1.2"] {
            assert!(ifname_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "vz-abcdefghijklm",
            "a:b",
            "a/b",
            "a%d",
            "a b",
            "123",
            "all",
            "default",
            ".",
            "..",
            "é",
        ] {
            assert!(!ifname_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn host_id_parsing() {
        assert!(HostId::parse("0000000000000000000000000000000\n").is_none());
        assert!(HostId::parse("00000000000000000000000000000000").is_none());
        assert!(HostId::parse("3D1219C7C4C5404AAA1F6D2A48ADFDA4\n").is_some());
        assert!(HostId::parse("3d1219c7c4c5404aaa1f6d2a48adfdag").is_none());
    }
}
