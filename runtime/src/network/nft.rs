//! Port forwarding in systemd-nspawn's nftables layout: the tables
//! `io.systemd.nat` (families ip and ip6) with the nat chains prerouting,
//! output and postrouting, the set `masq_saddr` and the map
//! `map_port_ipport` (`l4proto . port` → `address . port`), so the guests
//! of both launchers and systemd-networkd's masquerading share one table.
//! Sent over nf_tables netlink as one transaction per change, with
//! netlink-packet-netfilter's message types; the three expressions that
//! crate has no type for (fib, nat, masq) are written as raw attributes.

use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions,
    Hook, HookNumber, InetHookNumber, ListAttribute, Lookup, Meta, MetaKey, NfTablesMessage,
    Operator, Payload, Register, RuleAttribute, RuleMessage, SetAttribute, SetElementAttribute,
    SetElementList, SetElementMessage, SetFlags, SetMessage, TableAttribute, TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use nix::sys::socket::SockProtocol;

use crate::network::netlink::{
    NLMSG_ERROR, NlError, NlResult, RECV_BUFFER, Socket, error_of, messages,
};

pub const TABLE: &str = "io.systemd.nat";
pub const MAP: &str = "map_port_ipport";
pub const MASQ: &str = "masq_saddr";

// nft's own data type numbers (concatenations shift by 6 bits per member).
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(a: IpAddr) -> Family {
        if a.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    fn nfproto(self) -> NetfilterProtoFamily {
        match self {
            Family::V4 => NetfilterProtoFamily::IPv4,
            Family::V6 => NetfilterProtoFamily::IPv6,
        }
    }

    fn address_length(self) -> u32 {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    /// nft's name for the family (`nft list table ip io.systemd.nat`).
    pub fn nft_name(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

type Expr = ListAttribute<ExpressionAttribute>;

fn raw_expression(name: &str, attributes: &[(u16, u32)]) -> Expr {
    Expressions::Other {
        expression_type: name.into(),
        attributes: attributes
            .iter()
            .map(|&(k, v)| DefaultNla::new(k, v.to_be_bytes().to_vec()))
            .collect(),
    }
    .into()
}

fn payload(base: u32, offset: u32, len: u32, dreg: Register) -> Expr {
    Expressions::Payload(vec![
        Payload::DestinationRegister(dreg),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
    .into()
}

fn cmp(op: Operator, data: Vec<u8>) -> Expr {
    Expressions::Cmp(vec![
        Cmp::Op(op),
        Cmp::SourceRegister(Register::Reg32_01),
        Cmp::Data(DataAttribute::Value(data)),
    ])
    .into()
}

fn meta(key: MetaKey, dreg: Register) -> Expr {
    Expressions::Meta(vec![Meta::Key(key), Meta::DestinationRegister(dreg)]).into()
}

fn lookup(set: &str, dreg: Option<Register>) -> Expr {
    let mut v = vec![
        Lookup::Set(set.into()),
        Lookup::SourceRegister(Register::Reg32_01),
    ];
    if let Some(d) = dreg {
        v.push(Lookup::DestinationRegister(d));
    }
    Expressions::Lookup(v).into()
}

/// `dnat to` the address in register 9 (NFT_REG32_01's slot after the
/// map lookup) and the port right after it.
fn dnat(f: Family) -> Expr {
    const NFTA_NAT_TYPE: u16 = 1;
    const NFTA_NAT_FAMILY: u16 = 2;
    const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
    const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
    const NFT_NAT_DNAT: u32 = 1;
    // The port follows the 4- or 16-byte address in the registers.
    let (family, proto_reg) = match f {
        Family::V4 => (libc::NFPROTO_IPV4 as u32, 10),
        Family::V6 => (libc::NFPROTO_IPV6 as u32, 13),
    };
    raw_expression(
        "nat",
        &[
            (NFTA_NAT_TYPE, NFT_NAT_DNAT),
            (NFTA_NAT_FAMILY, family),
            (NFTA_NAT_REG_ADDR_MIN, 9),
            (NFTA_NAT_REG_PROTO_MIN, proto_reg),
        ],
    )
}

/// `fib daddr type` into register 1.
fn fib_daddr_type() -> Expr {
    const NFTA_FIB_DREG: u16 = 1;
    const NFTA_FIB_RESULT: u16 = 2;
    const NFTA_FIB_FLAGS: u16 = 3;
    const NFTA_FIB_F_DADDR: u32 = 1 << 1;
    const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
    raw_expression(
        "fib",
        &[
            (NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR),
            (NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE),
            (NFTA_FIB_DREG, 9),
        ],
    )
}

fn masquerade() -> Expr {
    ListAttribute::Element(vec![ExpressionAttribute::Name("masq".into())])
}

/// `meta l4proto . th dport` looked up in the map, then dnat.
fn map_dnat(f: Family, v: &mut Vec<Expr>) {
    v.push(meta(MetaKey::L4Proto, Register::Reg32_01));
    v.push(payload(2, 2, 2, Register::Reg32_02));
    v.push(lookup(MAP, Some(Register::Reg32_01)));
    v.push(dnat(f));
}

fn rule(chain: &str, expressions: Vec<Expr>) -> (NfTablesMessage, u16) {
    (
        NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(TABLE.into()),
                RuleAttribute::Chain(chain.into()),
                RuleAttribute::Expressions(expressions),
            ],
        }),
        NLM_F_CREATE | NLM_F_APPEND,
    )
}

/// What each message of [`init_family`]'s transaction makes, for errors.
const INIT_PARTS: &[&str] = &[
    "table",
    "prerouting chain (nat type)",
    "output chain (nat type)",
    "postrouting chain (nat type)",
    "masq_saddr set",
    "map_port_ipport map",
    "prerouting rule (fib, lookup, nat)",
    "output rule (lookup, nat)",
    "postrouting rule (masq)",
];

/// The whole table for one family as systemd-nspawn lays it out. The
/// table goes first with EXCL: if it exists (made by nspawn, networkd or
/// an earlier guest) the transaction fails with EEXIST and changes nothing.
pub fn init_family(f: Family) -> Vec<(NfTablesMessage, u16)> {
    let mut msgs = vec![(
        NfTablesMessage::NewTable(TableMessage {
            attributes: vec![TableAttribute::Name(TABLE.into())],
        }),
        NLM_F_CREATE | NLM_F_EXCL,
    )];
    for (name, hook, priority) in [
        ("prerouting", InetHookNumber::PreRouting, -99i32),
        ("output", InetHookNumber::LocalOut, -99),
        ("postrouting", InetHookNumber::PostRouting, 101),
    ] {
        msgs.push((
            NfTablesMessage::NewChain(ChainMessage {
                attributes: vec![
                    ChainAttribute::Table(TABLE.into()),
                    ChainAttribute::Name(name.into()),
                    ChainAttribute::Type("nat".into()),
                    ChainAttribute::Hook(vec![
                        Hook::Number(HookNumber::Inet(hook)),
                        Hook::Priority(priority.cast_unsigned()),
                    ]),
                ],
            }),
            NLM_F_CREATE,
        ));
    }
    let (ip_type, ip_len) = match f {
        Family::V4 => (TYPE_IPADDR, 4),
        Family::V6 => (TYPE_IP6ADDR, 16),
    };
    msgs.push((
        NfTablesMessage::NewSet(SetMessage {
            attributes: vec![
                SetAttribute::Table(TABLE.into()),
                SetAttribute::Name(MASQ.into()),
                SetAttribute::Id(1),
                SetAttribute::KeyLen(ip_len),
                SetAttribute::Flags(SetFlags::Interval),
                SetAttribute::KeyType(ip_type),
            ],
        }),
        NLM_F_CREATE,
    ));
    msgs.push((
        NfTablesMessage::NewSet(SetMessage {
            attributes: vec![
                SetAttribute::Table(TABLE.into()),
                SetAttribute::Name(MAP.into()),
                SetAttribute::Id(2),
                SetAttribute::KeyLen(8),
                SetAttribute::Flags(SetFlags::Map),
                SetAttribute::KeyType((TYPE_INET_PROTOCOL << 6) | TYPE_INET_SERVICE),
                SetAttribute::DataType((ip_type << 6) | TYPE_INET_SERVICE),
                SetAttribute::DataLen(ip_len + 4),
            ],
        }),
        NLM_F_CREATE,
    ));
    // prerouting: fib daddr type local → dnat through the map
    const RTN_LOCAL: u32 = 2;
    let mut pre = vec![
        fib_daddr_type(),
        cmp(Operator::Equal, RTN_LOCAL.to_ne_bytes().to_vec()),
    ];
    map_dnat(f, &mut pre);
    msgs.push(rule("prerouting", pre));
    // output: not to the loopback network, out of lo → the same dnat
    let mut out = Vec::new();
    match f {
        Family::V4 => {
            out.push(payload(1, 16, 4, Register::Reg32_01));
            out.push(
                Expressions::Bitwise(vec![
                    Bitwise::SourceRegister(Register::Reg32_01),
                    Bitwise::DestinationRegister(Register::Reg32_01),
                    Bitwise::Length(4),
                    Bitwise::Mask(DataAttribute::Value(vec![0xff, 0, 0, 0])),
                    Bitwise::Xor(DataAttribute::Value(vec![0, 0, 0, 0])),
                ])
                .into(),
            );
            out.push(cmp(Operator::NotEqual, vec![127, 0, 0, 0]));
        }
        Family::V6 => {
            out.push(payload(1, 24, 16, Register::Reg32_01));
            let mut loopback = vec![0u8; 16];
            loopback[15] = 1;
            out.push(cmp(Operator::NotEqual, loopback));
        }
    }
    const LOOPBACK_IFINDEX: u32 = 1;
    out.push(meta(MetaKey::Oif, Register::Reg32_01));
    out.push(cmp(
        Operator::Equal,
        LOOPBACK_IFINDEX.to_ne_bytes().to_vec(),
    ));
    map_dnat(f, &mut out);
    msgs.push(rule("output", out));
    // postrouting: saddr @masq_saddr masquerade
    let saddr_offset = match f {
        Family::V4 => 12,
        Family::V6 => 8,
    };
    msgs.push(rule(
        "postrouting",
        vec![
            payload(1, saddr_offset, f.address_length(), Register::Reg32_01),
            lookup(MASQ, None),
            masquerade(),
        ],
    ));
    msgs
}

/// One entry of the port map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub protocol: u8,
    pub host_port: u16,
    pub address: IpAddr,
    pub container_port: u16,
}

impl PortMapping {
    pub fn family(&self) -> Family {
        Family::of(self.address)
    }

    fn key(&self) -> Vec<u8> {
        // Each member of a concatenation takes a 32-bit register.
        let mut k = u32::from(self.protocol).to_ne_bytes().to_vec();
        k.extend_from_slice(&self.host_port.to_be_bytes());
        k.extend_from_slice(&[0, 0]);
        k
    }

    fn data(&self) -> Vec<u8> {
        let mut d = match self.address {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        d.extend_from_slice(&self.container_port.to_be_bytes());
        d.extend_from_slice(&[0, 0]);
        d
    }

    fn message(&self, add: bool) -> (NfTablesMessage, u16) {
        let mut element = vec![SetElementAttribute::Key(DataAttribute::Value(self.key()))];
        if add {
            element.push(SetElementAttribute::Data(DataAttribute::Value(self.data())));
        }
        let m = SetElementMessage {
            attributes: vec![
                SetElementList::Table(TABLE.into()),
                SetElementList::Set(MAP.into()),
                SetElementList::Elements(vec![ListAttribute::Element(element)]),
            ],
        };
        if add {
            (NfTablesMessage::NewSetElement(m), NLM_F_CREATE | NLM_F_EXCL)
        } else {
            (NfTablesMessage::DeleteSetElement(m), 0)
        }
    }
}

/// An nf_tables netlink client.
pub struct Nft {
    sock: Socket,
    seq: u32,
}

/// Why a transaction failed: which of its messages, and the error.
#[derive(Debug)]
pub struct BatchError {
    pub index: Option<usize>,
    pub error: NlError,
}

impl Nft {
    pub fn open() -> NlResult<Nft> {
        let sock = Socket::open(SockProtocol::NetlinkNetFilter)?;
        // Every message is acknowledged; this only guards against a
        // kernel that swallows a transaction's tail.
        sock.set_timeout(Duration::from_secs(2))?;
        Ok(Nft { sock, seq: 0 })
    }

    fn next(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// One transaction (BATCH_BEGIN, the messages, BATCH_END) for `family`;
    /// the kernel applies all of it or nothing.
    pub fn transaction(
        &mut self,
        what: &str,
        family: Family,
        msgs: Vec<(NfTablesMessage, u16)>,
    ) -> Result<(), BatchError> {
        fn push(out: &mut Vec<u8>, m: NetfilterMessage, flags: u16, seq: u32) {
            let mut h = NetlinkHeader::default();
            h.flags = NLM_F_REQUEST | flags;
            h.sequence_number = seq;
            let mut nl = NetlinkMessage::new(h, NetlinkPayload::from(m));
            nl.finalize();
            let start = out.len();
            out.resize(start + nl.buffer_len(), 0);
            nl.serialize(&mut out[start..]);
        }
        // NFNL_SUBSYS_NFTABLES in the batch messages' res_id.
        const NFTABLES: u16 = 10;
        let batch = |m| {
            NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFTABLES),
                m,
            )
        };
        let mut out = Vec::new();
        let begin = self.next();
        push(&mut out, batch(ControlMessage::BatchBegin), 0, begin);
        let mut seqs = Vec::new();
        for (m, flags) in msgs {
            let s = self.next();
            seqs.push(s);
            let msg = NetfilterMessage::new(NetfilterHeader::new(family.nfproto(), 0, 0), m);
            push(&mut out, msg, NLM_F_ACK | flags, s);
        }
        let end = self.next();
        push(&mut out, batch(ControlMessage::BatchEnd), 0, end);
        let fail = |error| BatchError { index: None, error };
        self.sock.send(what, &out).map_err(fail)?;
        let Some(&last) = seqs.last() else {
            return Ok(());
        };
        let mut first_error = None;
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            let n = match self.sock.recv(what, &mut buf) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                // The timeout: every answer that was coming came.
                Err(e) if e.errno == libc::EAGAIN && first_error.is_some() => break,
                Err(e) => return Err(fail(e)),
            };
            let mut done = false;
            for (kind, seq, msg) in messages(&buf[..n]) {
                if kind != NLMSG_ERROR {
                    continue;
                }
                let (errno, extack) = error_of(msg);
                if errno != 0 && first_error.is_none() {
                    first_error = Some(BatchError {
                        index: seqs.iter().position(|&s| s == seq),
                        error: NlError {
                            what: what.to_owned(),
                            errno,
                            extack,
                        },
                    });
                }
                done |= seq == last;
            }
            if done {
                break;
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Make `io.systemd.nat` for `family` unless it exists.
    pub fn ensure_table(&mut self, family: Family) -> Result<(), String> {
        match self.transaction("creating io.systemd.nat", family, init_family(family)) {
            Ok(()) => Ok(()),
            Err(BatchError { error, .. }) if error.errno == libc::EEXIST => Ok(()),
            Err(BatchError { index, error }) => {
                let part = index.and_then(|i| INIT_PARTS.get(i)).copied();
                Err(match part {
                    Some(part) => format!(
                        "the kernel refused the {part} of {} {TABLE}: {error}; port forwarding needs nf_tables with nat, fib and masquerade support",
                        family.nft_name()
                    ),
                    None => format!(
                        "{error}; port forwarding needs nf_tables with nat, fib and masquerade support"
                    ),
                })
            }
        }
    }

    /// Replace `old` entries by `new` ones in one transaction per family
    /// (a caller that keeps track of what is in place passes one family:
    /// an earlier family's transaction stands when a later one fails).
    pub fn swap(&mut self, old: &[PortMapping], new: &[PortMapping]) -> Result<(), String> {
        for family in [Family::V4, Family::V6] {
            let mut msgs: Vec<_> = old
                .iter()
                .filter(|p| p.family() == family)
                .map(|p| p.message(false))
                .collect();
            msgs.extend(
                new.iter()
                    .filter(|p| p.family() == family)
                    .map(|p| p.message(true)),
            );
            if msgs.is_empty() {
                continue;
            }
            self.transaction("updating the port map", family, msgs)
                .map_err(|e| e.error.to_string())?;
        }
        Ok(())
    }

    /// Remove entries, each on its own (one that is gone already is fine).
    pub fn remove(&mut self, entries: &[PortMapping]) {
        for p in entries {
            let _ = self.transaction(
                "removing a port map entry",
                p.family(),
                vec![p.message(false)],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_encoding_as_nft_writes_it() {
        // nft --debug=netlink for `tcp . 8080 : 10.13.0.2 . 80`:
        // key 00000006 0000901f, data 02000d0a 00005000 (little endian words).
        let p = PortMapping {
            protocol: 6,
            host_port: 8080,
            address: "10.13.0.2".parse().unwrap(),
            container_port: 80,
        };
        assert_eq!(p.key(), [6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(p.data(), [10, 13, 0, 2, 0, 80, 0, 0]);
        assert_eq!(init_family(Family::V4).len(), INIT_PARTS.len());
    }
}
