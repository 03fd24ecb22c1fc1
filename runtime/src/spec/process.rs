//! How the payload process itself is set up, beyond its namespaces: the
//! user it runs as, a stub init as PID 1 (`--as-pid2`), resource limits,
//! OOM score, CPU affinity, personality, ambient capabilities and the
//! extra seccomp rules (`--restrict-address-families`, `--suppress-sync`)
//! — systemd-nspawn's "execution" options, as values checked here with
//! nspawn's spellings.

use std::collections::BTreeSet;

/// The resource limits nspawn knows, in the kernel's RLIMIT_* order (the
/// index is the resource number on Linux).
pub const RLIMIT_NAMES: &[&str] = &[
    "CPU",
    "FSIZE",
    "DATA",
    "STACK",
    "CORE",
    "RSS",
    "NPROC",
    "NOFILE",
    "MEMLOCK",
    "AS",
    "LOCKS",
    "SIGPENDING",
    "MSGQUEUE",
    "NICE",
    "RTPRIO",
    "RTTIME",
];

/// `RLIM_INFINITY`.
pub const INFINITY: u64 = u64::MAX;

/// One resource limit: soft and hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub soft: u64,
    pub hard: u64,
}

/// The resource number of a limit named as nspawn takes it:
/// `RLIMIT_NOFILE`, `NOFILE` or `LimitNOFILE` (any case for the prefix).
pub fn rlimit_resource(name: &str) -> Option<usize> {
    let bare = name
        .strip_prefix("RLIMIT_")
        .or_else(|| name.strip_prefix("Limit"))
        .unwrap_or(name);
    RLIMIT_NAMES.iter().position(|n| *n == bare)
}

/// Which limits take a byte size (and so K/M/G/T/P/E suffixes, base 1024).
fn is_bytes(resource: usize) -> bool {
    matches!(
        RLIMIT_NAMES[resource],
        "FSIZE" | "DATA" | "STACK" | "CORE" | "RSS" | "MEMLOCK" | "AS" | "MSGQUEUE"
    )
}

fn one_value(resource: usize, text: &str) -> Result<u64, String> {
    if text == "infinity" {
        return Ok(INFINITY);
    }
    if RLIMIT_NAMES[resource] == "NICE" && (text.starts_with('-') || text.starts_with('+')) {
        // A nice level (-20..19), as the kernel's 40..1 (nspawn's reading).
        let level: i64 = text
            .parse()
            .map_err(|_| format!("{text:?} is not a nice level"))?;
        if !(-20..=19).contains(&level) {
            return Err(format!("nice level {level} is outside -20...19"));
        }
        return Ok(u64::try_from(20 - level).expect("within 1..=40"));
    }
    let (digits, factor) = match text.char_indices().last() {
        Some((i, c)) if is_bytes(resource) && "KMGTPE".contains(c) => {
            let power = u32::try_from("KMGTPE".find(c).expect("a suffix")).expect("< 6") + 1;
            (&text[..i], 1024u64.pow(power))
        }
        _ => (text, 1),
    };
    let n: u64 = digits.parse().map_err(|_| {
        format!(
            "{text:?} is not a number{} or infinity",
            if is_bytes(resource) {
                " (K, M, G, ... allowed)"
            } else {
                ""
            }
        )
    })?;
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `SOFT[:HARD]` (or one value for both) for `resource`.
pub fn parse_rlimit_value(resource: usize, text: &str) -> Result<Rlimit, String> {
    let (soft, hard) = match text.split_once(':') {
        Some((s, h)) => (one_value(resource, s)?, one_value(resource, h)?),
        None => {
            let v = one_value(resource, text)?;
            (v, v)
        }
    };
    if soft > hard {
        return Err(format!(
            "the soft limit {soft} is above the hard limit {hard}"
        ));
    }
    Ok(Rlimit { soft, hard })
}

/// `--rlimit=NAME=SOFT[:HARD]`.
pub fn parse_rlimit(text: &str) -> Result<(usize, Rlimit), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| "expected NAME=SOFT[:HARD], e.g. RLIMIT_NOFILE=1024:4096".to_owned())?;
    let resource = rlimit_resource(name).ok_or_else(|| {
        format!("unknown resource limit {name:?} (RLIMIT_CPU ... RLIMIT_RTTIME, as setrlimit(2))")
    })?;
    Ok((resource, parse_rlimit_value(resource, value)?))
}

/// What nspawn gives PID 1 for limits not set explicitly: the kernel's
/// defaults for a host's init (as of Linux 5.16), RLIMIT_NOFILE's hard
/// limit raised to min(fs.nr_open, 512Ki), and NPROC/SIGPENDING as the
/// host's PID 1 has them (the kernel scales those with the RAM).
/// `pid1_limits` is the text of the host's /proc/1/limits, `nr_open` the
/// value of /proc/sys/fs/nr_open.
pub fn nspawn_default(resource: usize, pid1_limits: &str, nr_open: Option<u64>) -> Option<Rlimit> {
    let both = |v| Some(Rlimit { soft: v, hard: v });
    match RLIMIT_NAMES[resource] {
        "AS" | "CPU" | "DATA" | "FSIZE" | "LOCKS" | "RSS" | "RTTIME" => both(INFINITY),
        "CORE" => Some(Rlimit {
            soft: 0,
            hard: INFINITY,
        }),
        "MEMLOCK" => both(8 * 1024 * 1024),
        "MSGQUEUE" => both(819_200),
        "NICE" | "RTPRIO" => both(0),
        "NOFILE" => Some(Rlimit {
            soft: 1024,
            hard: nr_open.unwrap_or(1024 * 1024).min(512 * 1024),
        }),
        "STACK" => Some(Rlimit {
            soft: 8 * 1024 * 1024,
            hard: INFINITY,
        }),
        "NPROC" => limits_line(pid1_limits, "Max processes"),
        "SIGPENDING" => limits_line(pid1_limits, "Max pending signals"),
        _ => None,
    }
}

/// One line of a /proc/PID/limits text.
fn limits_line(text: &str, label: &str) -> Option<Rlimit> {
    let rest = text.lines().find_map(|l| l.strip_prefix(label))?;
    let mut words = rest.split_whitespace();
    let value = |w: Option<&str>| match w? {
        "unlimited" => Some(INFINITY),
        n => n.parse().ok(),
    };
    Some(Rlimit {
        soft: value(words.next())?,
        hard: value(words.next())?,
    })
}

/// `--personality=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Personality {
    /// PER_LINUX32: `uname -m` says i686.
    X86,
    /// PER_LINUX.
    X86_64,
}

impl Personality {
    pub fn parse(text: &str) -> Result<Personality, String> {
        match text {
            "x86" => Ok(Personality::X86),
            "x86-64" => Ok(Personality::X86_64),
            _ => Err("expected x86 or x86-64".to_owned()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Personality::X86 => "x86",
            Personality::X86_64 => "x86-64",
        }
    }

    /// The personality(2) value.
    pub fn value(self) -> u64 {
        match self {
            Personality::X86 => 0x0008,
            Personality::X86_64 => 0,
        }
    }
}

/// `--cpu-affinity=`: a list of CPUs and ranges, `0,2-3`.
pub fn parse_cpu_set(text: &str) -> Result<BTreeSet<usize>, String> {
    let mut out = BTreeSet::new();
    for item in text.split([',', ' ']).filter(|s| !s.is_empty()) {
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n < 8192)
                .ok_or_else(|| format!("{s:?} is not a CPU number (0...8191)"))
        };
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("the range {item:?} runs backwards"));
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(num(item)?);
            }
        }
    }
    Ok(out)
}

/// `--restrict-address-families=`: which families socket(2) may create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressFamilies {
    /// Only these (an empty list: `none`).
    Allow(BTreeSet<i32>),
    /// All but these (`~AF_...`).
    Deny(BTreeSet<i32>),
}

const FAMILIES: &[(&str, i32)] = &[
    ("AF_UNIX", libc::AF_UNIX),
    ("AF_LOCAL", libc::AF_LOCAL),
    ("AF_INET", libc::AF_INET),
    ("AF_AX25", libc::AF_AX25),
    ("AF_IPX", libc::AF_IPX),
    ("AF_APPLETALK", libc::AF_APPLETALK),
    ("AF_NETROM", libc::AF_NETROM),
    ("AF_BRIDGE", libc::AF_BRIDGE),
    ("AF_ATMPVC", libc::AF_ATMPVC),
    ("AF_X25", libc::AF_X25),
    ("AF_INET6", libc::AF_INET6),
    ("AF_ROSE", libc::AF_ROSE),
    ("AF_DECnet", libc::AF_DECnet),
    ("AF_NETBEUI", libc::AF_NETBEUI),
    ("AF_SECURITY", libc::AF_SECURITY),
    ("AF_KEY", libc::AF_KEY),
    ("AF_NETLINK", libc::AF_NETLINK),
    ("AF_PACKET", libc::AF_PACKET),
    ("AF_ASH", libc::AF_ASH),
    ("AF_ECONET", libc::AF_ECONET),
    ("AF_ATMSVC", libc::AF_ATMSVC),
    ("AF_RDS", libc::AF_RDS),
    ("AF_SNA", libc::AF_SNA),
    ("AF_IRDA", libc::AF_IRDA),
    ("AF_PPPOX", libc::AF_PPPOX),
    ("AF_WANPIPE", libc::AF_WANPIPE),
    ("AF_LLC", libc::AF_LLC),
    ("AF_IB", libc::AF_IB),
    ("AF_MPLS", libc::AF_MPLS),
    ("AF_CAN", libc::AF_CAN),
    ("AF_TIPC", libc::AF_TIPC),
    ("AF_BLUETOOTH", libc::AF_BLUETOOTH),
    ("AF_IUCV", libc::AF_IUCV),
    ("AF_RXRPC", libc::AF_RXRPC),
    ("AF_ISDN", libc::AF_ISDN),
    ("AF_PHONET", libc::AF_PHONET),
    ("AF_IEEE802154", libc::AF_IEEE802154),
    ("AF_CAIF", libc::AF_CAIF),
    ("AF_ALG", libc::AF_ALG),
    ("AF_NFC", libc::AF_NFC),
    ("AF_VSOCK", libc::AF_VSOCK),
    ("AF_KCM", 41),
    ("AF_QIPCRTR", 42),
    ("AF_SMC", 43),
    ("AF_XDP", libc::AF_XDP),
    ("AF_MCTP", 45),
];

impl AddressFamilies {
    /// `none`, `AF_A AF_B ...`, or `~AF_A ...` (systemd's syntax).
    pub fn parse(text: &str) -> Result<AddressFamilies, String> {
        let text = text.trim();
        if text == "none" {
            return Ok(AddressFamilies::Allow(BTreeSet::new()));
        }
        let (deny, list) = match text.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let mut set = BTreeSet::new();
        for name in list.split([' ', ',']).filter(|s| !s.is_empty()) {
            let family = FAMILIES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, f)| *f)
                .ok_or_else(|| {
                    format!("unknown address family {name:?} (AF_UNIX, AF_INET, ...)")
                })?;
            set.insert(family);
        }
        if set.is_empty() {
            return Err("expected none, a list of AF_... names, or ~ and such a list".into());
        }
        Ok(if deny {
            AddressFamilies::Deny(set)
        } else {
            AddressFamilies::Allow(set)
        })
    }

    /// Whether socket(2) may create a socket of `family`.
    pub fn allows(&self, family: i32) -> bool {
        match self {
            AddressFamilies::Allow(s) => s.contains(&family),
            AddressFamilies::Deny(s) => !s.contains(&family),
        }
    }
}

/// `--slice=`: nspawn's mangling (".slice" appended when missing), then
/// systemd's rules for a slice name.
pub fn parse_slice(text: &str) -> Result<String, String> {
    let name = if text.ends_with(".slice") {
        text.to_owned()
    } else {
        format!("{text}.slice")
    };
    let stem = name.strip_suffix(".slice").unwrap_or(&name);
    let valid_chars = stem
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '\\'));
    if name.len() > 255
        || stem.is_empty()
        || !valid_chars
        || (stem != "-" && (stem.starts_with('-') || stem.ends_with('-') || stem.contains("--")))
    {
        return Err("not a valid slice name (e.g. machine.slice or machine-web.slice)".into());
    }
    Ok(name)
}

/// Where a slice's cgroup is, relative to the hierarchy's root: systemd
/// nests `a-b.slice` in `a.slice` (and `-.slice` is the root).
pub fn slice_path(slice: &str) -> std::path::PathBuf {
    let stem = slice.strip_suffix(".slice").unwrap_or(slice);
    let mut path = std::path::PathBuf::new();
    if stem == "-" {
        return path;
    }
    let parts: Vec<&str> = stem.split('-').collect();
    for i in 1..=parts.len() {
        path.push(format!("{}.slice", parts[..i].join("-")));
    }
    path
}

/// A value of a unit property `--property=` may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyValue {
    U64(u64),
    Bool(bool),
}

/// One `--property=NAME=VALUE` for the container's scope, typed as
/// systemd's bus API wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitProperty {
    pub name: &'static str,
    pub value: PropertyValue,
}

const BYTE_PROPERTIES: &[&str] = &[
    "MemoryMax",
    "MemoryHigh",
    "MemoryLow",
    "MemoryMin",
    "MemorySwapMax",
];
const WEIGHT_PROPERTIES: &[&str] = &[
    "CPUWeight",
    "StartupCPUWeight",
    "IOWeight",
    "StartupIOWeight",
];
const BOOL_PROPERTIES: &[&str] = &[
    "CPUAccounting",
    "MemoryAccounting",
    "TasksAccounting",
    "IOAccounting",
];

/// `--property=NAME=VALUE`, for the resource-control properties nixspawn
/// knows how to type (systemd's own parser knows every unit setting; a
/// launcher needs these).
pub fn parse_property(text: &str) -> Result<UnitProperty, String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| "expected NAME=VALUE, e.g. MemoryMax=1G".to_owned())?;
    let find = |list: &[&'static str]| list.iter().copied().find(|n| *n == name);
    let bytes = |v: &str| -> Result<u64, String> {
        if v == "infinity" {
            return Ok(u64::MAX);
        }
        let (digits, factor) = match v.char_indices().last() {
            Some((i, c)) if "KMGTPE".contains(c) => (
                &v[..i],
                1024u64.pow(u32::try_from("KMGTPE".find(c).unwrap_or(0)).unwrap_or(0) + 1),
            ),
            _ => (v, 1),
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .ok_or_else(|| format!("{v:?} is not a size (bytes, K, M, G, ... or infinity)"))
    };
    let value = if let Some(n) = find(BYTE_PROPERTIES) {
        UnitProperty {
            name: n,
            value: PropertyValue::U64(bytes(value)?),
        }
    } else if name == "TasksMax" {
        UnitProperty {
            name: "TasksMax",
            value: PropertyValue::U64(if value == "infinity" {
                u64::MAX
            } else {
                value
                    .parse()
                    .map_err(|_| format!("{value:?} is not a number or infinity"))?
            }),
        }
    } else if let Some(n) = find(WEIGHT_PROPERTIES) {
        let w: u64 = value
            .parse()
            .ok()
            .filter(|w| (1..=10000).contains(w))
            .ok_or_else(|| format!("{value:?} is not a weight (1...10000)"))?;
        UnitProperty {
            name: n,
            value: PropertyValue::U64(w),
        }
    } else if name == "CPUQuota" {
        let pct: u64 = value
            .strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{value:?} is not a percentage such as 20%"))?;
        UnitProperty {
            name: "CPUQuotaPerSecUSec",
            value: PropertyValue::U64(pct * 10_000),
        }
    } else if let Some(n) = find(BOOL_PROPERTIES) {
        let b = match value {
            "yes" | "true" | "1" | "on" => true,
            "no" | "false" | "0" | "off" => false,
            _ => return Err(format!("{value:?} is not a boolean")),
        };
        UnitProperty {
            name: n,
            value: PropertyValue::Bool(b),
        }
    } else {
        return Err(format!(
            "{name} is not a property nixspawn sets (it knows MemoryMax, MemoryHigh, MemoryLow, MemoryMin, MemorySwapMax, TasksMax, CPUWeight, StartupCPUWeight, IOWeight, StartupIOWeight, CPUQuota and the *Accounting switches)"
        ));
    };
    Ok(value)
}

/// The payload process's own settings (all off by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Process {
    /// `--user=`: a name or number in the guest's passwd.
    pub user: Option<String>,
    /// `--as-pid2`: a stub init as PID 1, the payload as PID 2.
    pub as_pid2: bool,
    /// Every limit PID 1 gets (index: resource), the launcher having
    /// filled in nspawn's defaults for those not given.
    pub rlimits: Vec<Option<Rlimit>>,
    pub oom_score_adjust: Option<i32>,
    pub cpu_affinity: Option<BTreeSet<usize>>,
    pub personality: Option<Personality>,
    /// `--ambient-capability=`.
    pub ambient: std::collections::HashSet<caps::Capability>,
    pub address_families: Option<AddressFamilies>,
    pub suppress_sync: bool,
    /// `--slice=`: the slice the container's scope goes in (machine.slice
    /// when None).
    pub slice: Option<String>,
    /// `--property=`: set on the container's scope (systemd hosts only).
    pub properties: Vec<UnitProperty>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimits_parse_as_nspawn_takes_them() {
        assert_eq!(
            parse_rlimit("RLIMIT_NOFILE=8192:16384"),
            Ok((
                7,
                Rlimit {
                    soft: 8192,
                    hard: 16384
                }
            ))
        );
        assert_eq!(
            parse_rlimit("LimitCORE=infinity").map(|r| r.1.hard),
            Ok(INFINITY)
        );
        assert_eq!(
            parse_rlimit("AS=1G:infinity").map(|r| r.1.soft),
            Ok(1 << 30)
        );
        assert_eq!(parse_rlimit("NICE=-5").map(|r| r.1.soft), Ok(25));
        assert!(parse_rlimit("RLIMIT_NOFILE=2:1").is_err());
        assert!(parse_rlimit("RLIMIT_BOGUS=1").is_err());
        assert!(parse_rlimit("RLIMIT_NOFILE=1K").is_err());
        assert!(parse_rlimit("RLIMIT_NOFILE").is_err());
    }

    #[test]
    fn defaults_follow_nspawn() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63448                63448                processes \n\
                      Max pending signals       63448                63448                signals   \n";
        let nofile = nspawn_default(7, limits, Some(1_048_576)).unwrap();
        assert_eq!((nofile.soft, nofile.hard), (1024, 524_288));
        assert_eq!(nspawn_default(6, limits, None).unwrap().soft, 63448);
        assert_eq!(nspawn_default(4, limits, None).unwrap().soft, 0);
    }

    #[test]
    fn slices_and_properties() {
        assert_eq!(parse_slice("web").as_deref(), Ok("web.slice"));
        assert_eq!(
            parse_slice("machine-web.slice").as_deref(),
            Ok("machine-web.slice")
        );
        assert!(parse_slice("a--b").is_err());
        assert!(parse_slice("a/b").is_err());
        assert_eq!(
            slice_path("machine-web.slice"),
            std::path::Path::new("machine.slice/machine-web.slice")
        );
        assert_eq!(slice_path("-.slice"), std::path::PathBuf::new());
        assert_eq!(
            parse_property("MemoryMax=1G"),
            Ok(UnitProperty {
                name: "MemoryMax",
                value: PropertyValue::U64(1 << 30)
            })
        );
        assert_eq!(
            parse_property("CPUQuota=20%").map(|p| (p.name, p.value)),
            Ok(("CPUQuotaPerSecUSec", PropertyValue::U64(200_000)))
        );
        assert!(parse_property("Frobnicate=1").is_err());
        assert!(parse_property("MemoryMax").is_err());
        assert!(parse_property("CPUWeight=0").is_err());
    }

    #[test]
    fn families_and_cpus() {
        let f = AddressFamilies::parse("AF_UNIX AF_INET").unwrap();
        assert!(f.allows(libc::AF_UNIX) && !f.allows(libc::AF_INET6));
        let f = AddressFamilies::parse("~AF_INET6").unwrap();
        assert!(f.allows(libc::AF_UNIX) && !f.allows(libc::AF_INET6));
        assert!(
            !AddressFamilies::parse("none")
                .unwrap()
                .allows(libc::AF_UNIX)
        );
        assert!(AddressFamilies::parse("AF_BOGUS").is_err());
        assert_eq!(
            parse_cpu_set("0,2-3")
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            [0, 2, 3]
        );
        assert!(parse_cpu_set("3-1").is_err());
        assert!(parse_cpu_set("x").is_err());
    }
}
