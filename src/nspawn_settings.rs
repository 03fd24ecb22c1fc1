//! `.nspawn` settings files, as systemd-nspawn reads them: found by
//! machine name in /etc/systemd/nspawn and /run/systemd/nspawn (trusted) or
//! next to the image or tree (untrusted: privileged settings ignored). A file becomes
//! typed [`Setting`]s in the file's order, each value checked here with the
//! file and line in any refusal; the launcher merges them with its command
//! line (`launcher_args`), which wins unless `--settings=override`.
//! Keys nixspawn does not implement are refused by name, as options are.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use nixspawn_runtime::Uuid;
use nixspawn_runtime::spec::journal::LinkJournal;
use nixspawn_runtime::spec::mounts::CustomMount;
use nixspawn_runtime::spec::network as net;
use nixspawn_runtime::spec::userns;

use crate::values::{self, Choice, Invalid, Spelling, YES_NO};

/// `--settings=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    No,
    #[default]
    Yes,
    Override,
    Trusted,
}

/// `--settings=`'s spellings: a boolean, `override` or `trusted`.
pub const MODE: Choice<Mode> = Choice(&[
    Spelling {
        name: "yes",
        aliases: YES_NO.0[0].aliases,
        value: Mode::Yes,
    },
    Spelling {
        name: "no",
        aliases: YES_NO.0[1].aliases,
        value: Mode::No,
    },
    Spelling {
        name: "override",
        aliases: &[],
        value: Mode::Override,
    },
    Spelling {
        name: "trusted",
        aliases: &[],
        value: Mode::Trusted,
    },
]);

/// Whether a file may make the privileged settings: those in the trusted
/// directories may, one next to the tree only with `--settings=trusted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Trusted,
    Untrusted,
}

pub const TRUSTED_DIRS: &[&str] = &["/etc/systemd/nspawn", "/run/systemd/nspawn"];

/// One `Key=Value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub section: String,
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// Parse the file's text (systemd's unit-file syntax: sections, `#`/`;`
/// comments, backslash continuation).
pub fn parse(text: &str, path: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut section: Option<String> = None;
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let (start, mut line) = match pending.take() {
            Some((start, mut acc)) => {
                acc.push(' ');
                acc.push_str(raw.trim());
                (start, acc)
            }
            None => (number, raw.trim().to_owned()),
        };
        if let Some(stripped) = line.strip_suffix('\\') {
            line = stripped.trim_end().to_owned();
            pending = Some((start, line));
            continue;
        }
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let Some(name) = name.strip_suffix(']') else {
                bail!(
                    "{}:{start}: malformed section header {line:?}",
                    path.display()
                );
            };
            if !matches!(name, "Exec" | "Files" | "Network") {
                bail!(
                    "{}:{start}: unknown section [{name}] (known: Exec, Files, Network)",
                    path.display()
                );
            }
            section = Some(name.to_owned());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!(
                "{}:{start}: expected Key=Value, got {line:?}",
                path.display()
            );
        };
        let Some(section) = &section else {
            bail!("{}:{start}: {key}= outside of any section", path.display());
        };
        out.push(Entry {
            section: section.clone(),
            key: key.trim().to_owned(),
            value: value.trim().to_owned(),
            line: start,
        });
    }
    if let Some((start, _)) = pending {
        bail!(
            "{}:{start}: the file ends inside a continued line",
            path.display()
        );
    }
    Ok(out)
}

/// Split a value into words, honouring double and single quotes.
pub fn words(value: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), '\\') | (None, '\\') => {
                let Some(n) = chars.next() else {
                    bail!("a trailing backslash in {value:?}")
                };
                cur.push(n);
                in_word = true;
            }
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        bail!("an unterminated quote in {value:?}");
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// The settings file for `machine`, and whether it is trusted: in the
/// trusted directories, else beside `directory` (the image or the tree).
pub fn find(machine: &str, directory: Option<&Path>, mode: Mode) -> Option<(PathBuf, Trust)> {
    if mode == Mode::No {
        return None;
    }
    let file = format!("{machine}.nspawn");
    if let Some(p) = TRUSTED_DIRS
        .iter()
        .map(|d| Path::new(d).join(&file))
        .find(|p| p.is_file())
    {
        return Some((p, Trust::Trusted));
    }
    let beside = directory?.parent()?.join(&file);
    let trust = if mode == Mode::Trusted {
        Trust::Trusted
    } else {
        Trust::Untrusted
    };
    beside.is_file().then_some((beside, trust))
}

/// What systemd-nspawn merges as one unit from a settings file, in the
/// order it merges them. An untrusted file (next to the tree) may not set
/// the privileged ones: each is ignored with nspawn's own warning. A group
/// the command line set is not taken from the file at all (nspawn's
/// settings mask; `--settings=override` clears it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    Ephemeral,
    Capability,
    AmbientCapability,
    MachineId,
    CustomMounts,
    Network,
    Port,
    Userns,
    BindUser,
    /// systemd-nspawn 262's BindUserShell=.
    BindUserShell,
    SystemCallFilter,
    /// One per resource limit, in the kernel's RLIMIT_* order.
    Limit(usize),
    OomScoreAdjust,
    CpuAffinity,
    LinkJournal,
}

/// The resource limits nspawn knows, in RLIMIT_* order (its warnings follow it).
const LIMITS: &[&str] = &[
    "LimitCPU",
    "LimitFSIZE",
    "LimitDATA",
    "LimitSTACK",
    "LimitCORE",
    "LimitRSS",
    "LimitNPROC",
    "LimitNOFILE",
    "LimitMEMLOCK",
    "LimitAS",
    "LimitLOCKS",
    "LimitSIGPENDING",
    "LimitMSGQUEUE",
    "LimitNICE",
    "LimitRTPRIO",
    "LimitRTTIME",
];

impl Group {
    /// The privileged group a key belongs to (None: any file may set it).
    fn of(section: &str, key: &str) -> Option<Group> {
        Some(match (section, key) {
            ("Exec", "Ephemeral") => Group::Ephemeral,
            ("Exec", "Capability") => Group::Capability,
            ("Exec", "AmbientCapability") => Group::AmbientCapability,
            ("Exec", "MachineID") => Group::MachineId,
            (
                "Files",
                "Bind"
                | "BindReadOnly"
                | "TemporaryFileSystem"
                | "Inaccessible"
                | "Overlay"
                | "OverlayReadOnly",
            ) => Group::CustomMounts,
            (
                "Network",
                "Private"
                | "VirtualEthernet"
                | "VirtualEthernetExtra"
                | "Interface"
                | "MACVLAN"
                | "IPVLAN"
                | "Bridge"
                | "Zone"
                | "NamespacePath",
            ) => Group::Network,
            ("Network", "Port") => Group::Port,
            ("Exec", "PrivateUsers" | "PrivateUsersDelegate")
            | ("Files", "PrivateUsersChown" | "PrivateUsersOwnership") => Group::Userns,
            ("Files", "BindUser") => Group::BindUser,
            ("Files", "BindUserShell") => Group::BindUserShell,
            ("Exec", "SystemCallFilter") => Group::SystemCallFilter,
            ("Exec", "OOMScoreAdjust") => Group::OomScoreAdjust,
            ("Exec", "CPUAffinity") => Group::CpuAffinity,
            ("Exec", "LinkJournal") => Group::LinkJournal,
            ("Exec", limit) => Group::Limit(LIMITS.iter().position(|l| *l == limit)?),
            _ => return None,
        })
    }

    /// systemd-nspawn's warning, word for word (its quoting included).
    fn warning(self, path: &Path) -> String {
        let p = path.display();
        match self {
            Group::Ephemeral => format!("Ignoring ephemeral setting, file {p} is not trusted."),
            Group::Capability => format!("Ignoring Capability= setting, file {p} is not trusted."),
            Group::AmbientCapability => {
                format!("Ignoring AmbientCapability= setting, file {p} is not trusted.")
            }
            Group::MachineId => format!("Ignoring MachineID= setting, file {p} is not trusted."),
            Group::CustomMounts => format!(
                "Ignoring TemporaryFileSystem=, Bind= and BindReadOnly= settings, file {p} is not trusted."
            ),
            Group::Network => format!("Ignoring network settings, file {p} is not trusted."),
            Group::Port => format!("Ignoring Port= setting, file {p} is not trusted."),
            Group::Userns => format!(
                "Ignoring PrivateUsers= and PrivateUsersChown= settings, file {p} is not trusted."
            ),
            Group::BindUser => format!("Ignoring bind user setting, file {p} is not trusted."),
            Group::BindUserShell => {
                format!("Ignoring bind user shell setting, file {p} is not trusted.")
            }
            Group::SystemCallFilter => {
                format!("Ignoring SystemCallFilter= settings, file {p} is not trusted.")
            }
            Group::Limit(i) => format!(
                "Ignoring {}= setting, file '{p}' is not trusted.",
                LIMITS[i]
            ),
            Group::OomScoreAdjust => {
                format!("Ignoring OOMScoreAdjust= setting, file '{p}' is not trusted.")
            }
            Group::CpuAffinity => {
                format!("Ignoring CPUAffinity= setting, file '{p}' is not trusted.")
            }
            Group::LinkJournal => {
                format!("Ignoring journal link setting, file '{p}' is not trusted.")
            }
        }
    }
}

/// One setting a file makes, its value checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    Boot(bool),
    Ephemeral(bool),
    Parameters(Vec<String>),
    Environment(Vec<String>),
    WorkingDirectory(PathBuf),
    Capability(String),
    DropCapability(String),
    NoNewPrivileges(bool),
    KillSignal(i32),
    MachineId(Uuid),
    PrivateUsers(userns::Mode),
    /// `PrivateUsersOwnership=`, or `PrivateUsersChown=` (chown or off).
    PrivateUsersOwnership(userns::Ownership),
    NotifyReady(bool),
    SystemCallFilter(String),
    Hostname(String),
    LinkJournal(LinkJournal),
    Bind(Vec<String>),
    BindReadOnly(Vec<String>),
    TemporaryFileSystem(Vec<String>),
    // [Files] filesystem settings (issue 16), checked as their options.
    Overlay(Vec<String>),
    OverlayReadOnly(Vec<String>),
    Inaccessible(Vec<String>),
    BindUser(Vec<String>),
    BindUserShell(nixspawn_runtime::spec::bind_user::Shell),
    ReadOnly(bool),
    Volatile(nixspawn_runtime::spec::filesystem::Volatile),
    PivotRoot(String),
    PrivateNetwork(bool),
    // [Network], each value checked as its option's (the launcher parses
    // them again with the command line's).
    VirtualEthernet(bool),
    VirtualEthernetExtra(String),
    Interface(String),
    MacVlan(String),
    IpVlan(String),
    Bridge(String),
    Zone(String),
    NamespacePath(PathBuf),
    Port(String),
    // Not privileged: any file may set these.
    ResolvConf(String),
    Timezone(String),
    // Process settings (issue 16, group A), each value checked as its
    // option's; Limit*= and the next two are privileged (see `Group`).
    User(String),
    ProcessTwo(bool),
    /// `Limit*=` as `NAME=SOFT[:HARD]`, as `--rlimit` takes it.
    Limit(String),
    OomScoreAdjust(i32),
    CpuAffinity(String),
    AmbientCapability(String),
    Personality(nixspawn_runtime::spec::process::Personality),
    /// A restriction only: any file may make it.
    RestrictAddressFamilies(String),
    SuppressSync(bool),
    /// `Slice=`, mangled as `--slice`'s value.
    Slice(String),
    Property(String),
}

impl Setting {
    /// Part of `[Network]` but `Port=`: the first one taken from a file
    /// replaces the command line's network as a whole (nspawn's merge).
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            Setting::PrivateNetwork(_)
                | Setting::VirtualEthernet(_)
                | Setting::VirtualEthernetExtra(_)
                | Setting::Interface(_)
                | Setting::MacVlan(_)
                | Setting::IpVlan(_)
                | Setting::Bridge(_)
                | Setting::Zone(_)
                | Setting::NamespacePath(_)
        )
    }
}

/// What one file contributes: its settings in the file's order, and
/// nspawn's warnings for what it was not trusted to set, in nspawn's order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    pub values: Vec<Setting>,
    pub warnings: Vec<String>,
}

/// Check `entries` of the file at `path` and keep what applies: not what
/// `masked` says the command line set, nor, from an untrusted file, the
/// privileged settings (each group ignored gives one warning).
pub fn read(
    entries: &[Entry],
    path: &Path,
    trust: Trust,
    masked: &dyn Fn(Group) -> bool,
) -> Result<Settings> {
    // An untrusted file's SystemCallFilter= is ignored as a whole if it
    // allows anything; removals alone (`~...`) still apply, as in nspawn.
    let filter_allows = entries
        .iter()
        .any(|e| e.key == "SystemCallFilter" && !e.value.trim_start().starts_with('~'));
    let mut ignored = std::collections::BTreeSet::new();
    let mut values = Vec::new();
    for e in entries {
        if let Some(g) = Group::of(&e.section, &e.key) {
            if masked(g) {
                continue;
            }
            let untrusted_may_set = g == Group::SystemCallFilter && !filter_allows;
            if trust == Trust::Untrusted && !untrusted_may_set {
                ignored.insert(g);
                continue;
            }
        }
        values.push(setting(e, path)?);
    }
    Ok(Settings {
        values,
        warnings: ignored.into_iter().map(|g| g.warning(path)).collect(),
    })
}

/// One entry as a typed setting, or its refusal naming file, line and key.
fn setting(e: &Entry, path: &Path) -> Result<Setting> {
    let at = format!("{}:{}", path.display(), e.line);
    fn checked<T>(e: &Entry, at: &str, r: std::result::Result<T, Invalid>) -> Result<T> {
        r.map_err(|why| anyhow::anyhow!("{at}: invalid {}= value {:?}: {why}", e.key, e.value))
    }
    let yes_no = || checked(e, &at, YES_NO.parse_or_explain(&e.value));
    let words = || words(&e.value).map_err(|err| anyhow::anyhow!("{at}: {}=: {err}", e.key));
    let text = || e.value.clone();
    Ok(match (e.section.as_str(), e.key.as_str()) {
        ("Exec", "Boot") => Setting::Boot(yes_no()?),
        ("Exec", "Ephemeral") => Setting::Ephemeral(yes_no()?),
        ("Exec", "Parameters") => Setting::Parameters(words()?),
        ("Exec", "Environment") => Setting::Environment(words()?),
        ("Exec", "WorkingDirectory") => Setting::WorkingDirectory(PathBuf::from(&e.value)),
        ("Exec", "Capability") => Setting::Capability(text()),
        ("Exec", "DropCapability") => Setting::DropCapability(text()),
        ("Exec", "NoNewPrivileges") => Setting::NoNewPrivileges(yes_no()?),
        ("Exec", "KillSignal") => Setting::KillSignal(checked(e, &at, values::signal(&e.value))?),
        ("Exec", "MachineID") => Setting::MachineId(checked(e, &at, values::uuid(&e.value))?),
        ("Exec", "PrivateUsers") => {
            Setting::PrivateUsers(checked(e, &at, values::private_users(&e.value))?)
        }
        ("Files", "PrivateUsersOwnership") => Setting::PrivateUsersOwnership(checked(
            e,
            &at,
            values::OWNERSHIP.parse_or_explain(&e.value),
        )?),
        ("Files", "PrivateUsersChown") => Setting::PrivateUsersOwnership(if yes_no()? {
            userns::Ownership::Chown
        } else {
            userns::Ownership::Off
        }),
        ("Exec", "NotifyReady") => Setting::NotifyReady(yes_no()?),
        ("Exec", "SystemCallFilter") => Setting::SystemCallFilter(text()),
        ("Exec", "Hostname") => Setting::Hostname(text()),
        ("Exec", "LinkJournal") => Setting::LinkJournal(checked(
            e,
            &at,
            values::LINK_JOURNAL.parse_or_explain(&e.value),
        )?),
        ("Files", "Bind") => Setting::Bind(words()?),
        ("Files", "BindReadOnly") => Setting::BindReadOnly(words()?),
        ("Files", "TemporaryFileSystem") => Setting::TemporaryFileSystem(words()?),
        ("Files", key @ ("Overlay" | "OverlayReadOnly" | "Inaccessible")) => {
            let list = words()?;
            for w in &list {
                let parsed = match key {
                    "Inaccessible" => CustomMount::parse_inaccessible(w),
                    k => CustomMount::parse_overlay(w, k == "OverlayReadOnly"),
                };
                checked(e, &at, parsed.map_err(Invalid::from))?;
            }
            match key {
                "Overlay" => Setting::Overlay(list),
                "OverlayReadOnly" => Setting::OverlayReadOnly(list),
                _ => Setting::Inaccessible(list),
            }
        }
        ("Files", "BindUser") => Setting::BindUser(words()?),
        ("Files", "BindUserShell") => {
            Setting::BindUserShell(checked(e, &at, values::bind_user_shell(&e.value))?)
        }
        ("Files", "ReadOnly") => Setting::ReadOnly(yes_no()?),
        ("Files", "Volatile") => Setting::Volatile(checked(e, &at, values::volatile(&e.value))?),
        ("Exec", "PivotRoot") => {
            checked(
                e,
                &at,
                nixspawn_runtime::spec::filesystem::PivotRoot::parse(&e.value)
                    .map_err(Invalid::from),
            )?;
            Setting::PivotRoot(text())
        }
        ("Network", "Private") => Setting::PrivateNetwork(yes_no()?),
        ("Network", "VirtualEthernet") => Setting::VirtualEthernet(yes_no()?),
        ("Network", "VirtualEthernetExtra") => {
            checked(
                e,
                &at,
                net::VethExtra::parse(&e.value).map_err(Invalid::from),
            )?;
            Setting::VirtualEthernetExtra(text())
        }
        ("Network", key @ ("Interface" | "MACVLAN" | "IPVLAN")) => {
            let kind = match key {
                "Interface" => net::PairKind::Interface,
                "MACVLAN" => net::PairKind::MacVlan,
                _ => net::PairKind::IpVlan,
            };
            checked(
                e,
                &at,
                net::IfacePair::parse_list(kind, &e.value).map_err(Invalid::from),
            )?;
            match kind {
                net::PairKind::Interface => Setting::Interface(text()),
                net::PairKind::MacVlan => Setting::MacVlan(text()),
                net::PairKind::IpVlan => Setting::IpVlan(text()),
            }
        }
        ("Network", "Bridge") => {
            checked(e, &at, net::parse_bridge(&e.value).map_err(Invalid::from))?;
            Setting::Bridge(text())
        }
        ("Network", "Zone") => {
            checked(e, &at, net::parse_zone(&e.value).map_err(Invalid::from))?;
            Setting::Zone(text())
        }
        ("Network", "NamespacePath") => Setting::NamespacePath(PathBuf::from(&e.value)),
        ("Network", "Port") => {
            checked(
                e,
                &at,
                net::Port::parse_into(&mut Vec::new(), &e.value).map_err(Invalid::from),
            )?;
            Setting::Port(text())
        }
        ("Exec", "ResolvConf") => {
            checked(
                e,
                &at,
                net::ResolvConf::parse(&e.value).map_err(Invalid::from),
            )?;
            Setting::ResolvConf(text())
        }
        ("Exec", "Timezone") => {
            checked(
                e,
                &at,
                net::Timezone::parse(&e.value).map_err(Invalid::from),
            )?;
            Setting::Timezone(text())
        }
        ("Exec", "User") => Setting::User(text()),
        ("Exec", "ProcessTwo") => Setting::ProcessTwo(yes_no()?),
        ("Exec", key) if key.starts_with("Limit") && LIMITS.contains(&key) => {
            let resource = key.trim_start_matches("Limit");
            let value = format!("{resource}={}", e.value);
            checked(e, &at, crate::process_opts::rlimit(&value).map_err(Invalid))?;
            Setting::Limit(value)
        }
        ("Exec", "OOMScoreAdjust") => Setting::OomScoreAdjust(checked(
            e,
            &at,
            crate::process_opts::oom_score_adjust(&e.value).map_err(Invalid),
        )?),
        ("Exec", "CPUAffinity") => {
            checked(
                e,
                &at,
                crate::process_opts::cpu_affinity(&e.value).map_err(Invalid),
            )?;
            Setting::CpuAffinity(text())
        }
        ("Exec", "AmbientCapability") => {
            checked(
                e,
                &at,
                crate::process_opts::ambient_capability(&e.value).map_err(Invalid),
            )?;
            Setting::AmbientCapability(text())
        }
        ("Exec", "Personality") => Setting::Personality(checked(
            e,
            &at,
            crate::process_opts::personality(&e.value).map_err(Invalid),
        )?),
        ("Exec", "RestrictAddressFamilies") => {
            checked(
                e,
                &at,
                crate::process_opts::address_families(&e.value).map_err(Invalid),
            )?;
            Setting::RestrictAddressFamilies(text())
        }
        ("Exec", "SuppressSync") => Setting::SuppressSync(yes_no()?),
        ("Exec", "Slice") => Setting::Slice(checked(
            e,
            &at,
            crate::process_opts::slice(&e.value).map_err(Invalid),
        )?),
        ("Exec", "Property") => {
            checked(
                e,
                &at,
                crate::process_opts::property(&e.value).map_err(Invalid),
            )?;
            Setting::Property(text())
        }
        (section, key) if KNOWN_UNIMPLEMENTED.contains(&key) => {
            bail!(
                "{at}: [{section}] {key}= is a systemd-nspawn setting nixspawn does not implement yet"
            )
        }
        (section, key) => bail!("{at}: unknown setting [{section}] {key}="),
    })
}

/// Settings systemd-nspawn 252 (and 262, the last four) knows that
/// nixspawn refuses for now.
const KNOWN_UNIMPLEMENTED: &[&str] = &["PrivateUsersDelegate"];

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# a comment
[Exec]
Boot=yes
Environment=A=1 \"B=two words\"
KillSignal=SIGRTMIN+3
Capability=CAP_SYS_TIME
SystemCallFilter=@keyring \\
  bpf

[Files]
BindReadOnly=/nix/store /etc/hosts:/etc/hosts
[Network]
Private=yes
";

    fn path() -> &'static Path {
        Path::new("t.nspawn")
    }

    fn read_text(text: &str, trust: Trust, masked: &dyn Fn(Group) -> bool) -> Result<Settings> {
        read(&parse(text, path())?, path(), trust, masked)
    }

    fn nothing_masked(_: Group) -> bool {
        false
    }

    #[test]
    fn a_trusted_file_gives_typed_settings_in_its_order() {
        let entries = parse(FILE, path()).unwrap();
        assert_eq!(
            entries
                .iter()
                .find(|e| e.key == "SystemCallFilter")
                .map(|e| (e.value.as_str(), e.line)),
            Some(("@keyring bpf", 7)),
            "a continued line is one value, at the line it starts on"
        );
        let got = read(&entries, path(), Trust::Trusted, &nothing_masked).unwrap();
        assert_eq!(
            got.values,
            [
                Setting::Boot(true),
                Setting::Environment(vec!["A=1".into(), "B=two words".into()]),
                Setting::KillSignal(nixspawn_runtime::spec::signals::rtmin() + 3),
                Setting::Capability("CAP_SYS_TIME".into()),
                Setting::SystemCallFilter("@keyring bpf".into()),
                Setting::BindReadOnly(vec!["/nix/store".into(), "/etc/hosts:/etc/hosts".into()]),
                Setting::PrivateNetwork(true),
            ]
        );
        assert!(got.warnings.is_empty());
    }

    #[test]
    fn every_implemented_key_has_its_type() {
        let text = "[Exec]\nEphemeral=no\nParameters=-c 'echo hi'\nWorkingDirectory=/srv\n\
                    DropCapability=CAP_SYS_PTRACE\nNoNewPrivileges=1\nMachineID=0123456789abcdef0123456789abcdef\n\
                    PrivateUsers=131072:65536\nNotifyReady=on\nHostname=web\nLinkJournal=try-guest\n\
                    [Files]\nPrivateUsersOwnership=map\nPrivateUsersChown=yes\nPrivateUsersChown=no\n\
                    Bind=/a /b:/c\nTemporaryFileSystem=/tmp:mode=1777\n";
        let got = read_text(text, Trust::Trusted, &nothing_masked).unwrap();
        assert_eq!(
            got.values,
            [
                Setting::Ephemeral(false),
                Setting::Parameters(vec!["-c".into(), "echo hi".into()]),
                Setting::WorkingDirectory("/srv".into()),
                Setting::DropCapability("CAP_SYS_PTRACE".into()),
                Setting::NoNewPrivileges(true),
                Setting::MachineId(Uuid::parse("0123456789abcdef0123456789abcdef").unwrap()),
                Setting::PrivateUsers(userns::Mode::Fixed(userns::UidRange {
                    shift: 131072,
                    range: 65536
                })),
                Setting::NotifyReady(true),
                Setting::Hostname("web".into()),
                Setting::LinkJournal(LinkJournal::TryGuest),
                Setting::PrivateUsersOwnership(userns::Ownership::Map),
                Setting::PrivateUsersOwnership(userns::Ownership::Chown),
                Setting::PrivateUsersOwnership(userns::Ownership::Off),
                Setting::Bind(vec!["/a".into(), "/b:/c".into()]),
                Setting::TemporaryFileSystem(vec!["/tmp:mode=1777".into()]),
            ]
        );
    }

    #[test]
    fn network_settings_are_checked_and_kept_only_from_trusted_files() {
        let text = "[Exec]\nResolvConf=copy-host\nTimezone=off\n[Network]\nZone=web\nPort=tcp:8080:80\n\
                    Port=53\nVirtualEthernetExtra=x0:y0\nMACVLAN=eth1 eth2:mv0\nVirtualEthernet=yes\n";
        let got = read_text(text, Trust::Trusted, &nothing_masked).unwrap();
        assert_eq!(
            got.values,
            [
                Setting::ResolvConf("copy-host".into()),
                Setting::Timezone("off".into()),
                Setting::Zone("web".into()),
                Setting::Port("tcp:8080:80".into()),
                Setting::Port("53".into()),
                Setting::VirtualEthernetExtra("x0:y0".into()),
                Setting::MacVlan("eth1 eth2:mv0".into()),
                Setting::VirtualEthernet(true),
            ]
        );
        // Untrusted: the section and Port= go, in nspawn's words;
        // ResolvConf= and Timezone= are anyone's to set.
        let got = read_text(text, Trust::Untrusted, &nothing_masked).unwrap();
        assert_eq!(
            got.values,
            [
                Setting::ResolvConf("copy-host".into()),
                Setting::Timezone("off".into()),
            ]
        );
        assert_eq!(
            got.warnings,
            [
                "Ignoring network settings, file t.nspawn is not trusted.",
                "Ignoring Port= setting, file t.nspawn is not trusted.",
            ]
        );
        // Masked by the command line: nothing from the section.
        let got = read_text(text, Trust::Trusted, &|g| g == Group::Network).unwrap();
        assert!(!got.values.iter().any(Setting::is_network), "{got:?}");
        assert!(got.values.contains(&Setting::Port("53".into())));
        // A bad value is refused with file and line.
        for (text, needle) in [
            (
                "[Network]\nZone=abcdefghijklm\n",
                "t.nspawn:2: invalid Zone= value",
            ),
            ("[Network]\nPort=0\n", "t.nspawn:2: invalid Port= value"),
            (
                "[Exec]\nTimezone=sideways\n",
                "t.nspawn:2: invalid Timezone= value",
            ),
        ] {
            let err = format!(
                "{:#}",
                read_text(text, Trust::Trusted, &nothing_masked).unwrap_err()
            );
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn untrusted_files_lose_privileged_settings() {
        let got = read_text(FILE, Trust::Untrusted, &nothing_masked).unwrap();
        assert_eq!(
            got.warnings,
            [
                "Ignoring Capability= setting, file t.nspawn is not trusted.",
                "Ignoring TemporaryFileSystem=, Bind= and BindReadOnly= settings, file t.nspawn is not trusted.",
                "Ignoring network settings, file t.nspawn is not trusted.",
                "Ignoring SystemCallFilter= settings, file t.nspawn is not trusted.",
            ]
        );
        assert_eq!(
            got.values,
            [
                Setting::Boot(true),
                Setting::Environment(vec!["A=1".into(), "B=two words".into()]),
                Setting::KillSignal(nixspawn_runtime::spec::signals::rtmin() + 3),
            ],
            "unprivileged settings still apply"
        );

        // Only removals: any file may narrow the filter.
        let got = read_text(
            "[Exec]\nSystemCallFilter=~@mount\nDropCapability=CAP_SYS_PTRACE\n",
            Trust::Untrusted,
            &nothing_masked,
        )
        .unwrap();
        assert!(got.warnings.is_empty(), "{:?}", got.warnings);
        assert_eq!(
            got.values,
            [
                Setting::SystemCallFilter("~@mount".into()),
                Setting::DropCapability("CAP_SYS_PTRACE".into()),
            ]
        );
        // One allowing line spoils the lot.
        let got = read_text(
            "[Exec]\nSystemCallFilter=~@mount\nSystemCallFilter=bpf\n",
            Trust::Untrusted,
            &nothing_masked,
        )
        .unwrap();
        assert!(got.values.is_empty());
        assert_eq!(got.warnings.len(), 1);
    }

    #[test]
    fn ignored_groups_warn_in_nspawns_order_and_masked_ones_not_at_all() {
        // What nixspawn does not implement is ignored like the rest, with
        // nspawn's warnings in nspawn's order; settings the command line
        // made give no warning.
        let text = "[Exec]\nLinkJournal=host\nLimitNOFILE=10\nLimitCPU=1\nPrivateUsers=pick\n\
                    [Network]\nPort=80\nVirtualEthernet=yes\n[Files]\nBindUser=root\n";
        let got = read_text(text, Trust::Untrusted, &|g| g == Group::Userns).unwrap();
        assert_eq!(
            got.warnings,
            [
                "Ignoring network settings, file t.nspawn is not trusted.",
                "Ignoring Port= setting, file t.nspawn is not trusted.",
                "Ignoring bind user setting, file t.nspawn is not trusted.",
                "Ignoring LimitCPU= setting, file 't.nspawn' is not trusted.",
                "Ignoring LimitNOFILE= setting, file 't.nspawn' is not trusted.",
                "Ignoring journal link setting, file 't.nspawn' is not trusted.",
            ]
        );
        assert!(got.values.is_empty());

        // A masked group is dropped before its value is even looked at,
        // from a trusted file too.
        let got = read_text(
            "[Exec]\nPrivateUsers=sideways\nBoot=yes\n",
            Trust::Trusted,
            &|g| g == Group::Userns,
        )
        .unwrap();
        assert_eq!(got.values, [Setting::Boot(true)]);

        // systemd-nspawn 262's additions, in its words; a restriction
        // nixspawn cannot honour is refused rather than dropped.
        let got = read_text(
            "[Exec]\nPrivateUsersDelegate=2\n[Files]\nBindUserShell=/bin/sh\n\
             [Network]\nNamespacePath=/run/netns/x\n",
            Trust::Untrusted,
            &nothing_masked,
        )
        .unwrap();
        assert_eq!(
            got.warnings,
            [
                "Ignoring network settings, file t.nspawn is not trusted.",
                "Ignoring PrivateUsers= and PrivateUsersChown= settings, file t.nspawn is not trusted.",
                "Ignoring bind user shell setting, file t.nspawn is not trusted.",
            ]
        );
        // A restriction only tightens: any file may make it (and it is
        // honoured, not dropped).
        let got = read_text(
            "[Exec]\nRestrictAddressFamilies=AF_INET\n",
            Trust::Untrusted,
            &nothing_masked,
        )
        .unwrap();
        assert_eq!(
            got.values,
            [Setting::RestrictAddressFamilies("AF_INET".into())]
        );
        assert!(got.warnings.is_empty());
    }

    #[test]
    fn process_keys_are_typed_and_the_privileged_ones_need_trust() {
        use nixspawn_runtime::spec::process::Personality;
        let text = "[Exec]\nUser=tester\nProcessTwo=yes\nLimitNOFILE=10:20\nOOMScoreAdjust=-5\n\
                    CPUAffinity=0-1\nAmbientCapability=CAP_CHOWN\nPersonality=x86\n\
                    RestrictAddressFamilies=AF_UNIX\nSuppressSync=yes\nSlice=web\nProperty=TasksMax=5\n";
        let got = read_text(text, Trust::Trusted, &nothing_masked).unwrap();
        assert_eq!(
            got.values,
            [
                Setting::User("tester".into()),
                Setting::ProcessTwo(true),
                Setting::Limit("NOFILE=10:20".into()),
                Setting::OomScoreAdjust(-5),
                Setting::CpuAffinity("0-1".into()),
                Setting::AmbientCapability("CAP_CHOWN".into()),
                Setting::Personality(Personality::X86),
                Setting::RestrictAddressFamilies("AF_UNIX".into()),
                Setting::SuppressSync(true),
                Setting::Slice("web.slice".into()),
                Setting::Property("TasksMax=5".into()),
            ]
        );
        let got = read_text(text, Trust::Untrusted, &nothing_masked).unwrap();
        assert_eq!(
            got.warnings,
            [
                "Ignoring AmbientCapability= setting, file t.nspawn is not trusted.",
                "Ignoring LimitNOFILE= setting, file 't.nspawn' is not trusted.",
                "Ignoring OOMScoreAdjust= setting, file 't.nspawn' is not trusted.",
                "Ignoring CPUAffinity= setting, file 't.nspawn' is not trusted.",
            ]
        );
        assert_eq!(got.values.len(), 7, "{:?}", got.values);
        let err = read_text("[Exec]\nLimitNOFILE=2:1\n", Trust::Trusted, &nothing_masked)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.nspawn:2: invalid LimitNOFILE= value \"2:1\""),
            "{err}"
        );
    }

    #[test]
    fn bind_user_settings_come_from_trusted_files_only() {
        use nixspawn_runtime::spec::bind_user::Shell;
        let text = "[Files]\nBindUser=alice bob\nBindUserShell=/bin/zsh\n";
        let got = read_text(text, Trust::Trusted, &nothing_masked).unwrap();
        assert_eq!(
            got.values,
            [
                Setting::BindUser(vec!["alice".into(), "bob".into()]),
                Setting::BindUserShell(Shell::Path("/bin/zsh".into())),
            ]
        );
        let got = read_text(text, Trust::Untrusted, &nothing_masked).unwrap();
        assert!(got.values.is_empty(), "{:?}", got.values);
        let mut args =
            <crate::launcher_args::Args as clap::Parser>::try_parse_from(["nixspawn", "-D", "/t"])
                .unwrap();
        let trusted = read_text(text, Trust::Trusted, &|g| args.sets(g)).unwrap();
        args.merge(&trusted.values, Mode::Yes);
        assert_eq!(args.bind_user, ["alice", "bob"]);
        assert_eq!(args.bind_user_shell, Some(Shell::Path("/bin/zsh".into())));
        // The command line's wins.
        let mut args = <crate::launcher_args::Args as clap::Parser>::try_parse_from([
            "nixspawn",
            "-D",
            "/t",
            "--bind-user=carol",
        ])
        .unwrap();
        let trusted = read_text(text, Trust::Trusted, &|g| args.sets(g)).unwrap();
        args.merge(&trusted.values, Mode::Yes);
        assert_eq!(args.bind_user, ["carol"]);
    }

    #[test]
    fn bad_files_are_refused_with_file_line_and_key() {
        for (text, needle) in [
            (
                "[Exec]\nPrivateUsersDelegate=2\n",
                "t.nspawn:2: [Exec] PrivateUsersDelegate= is a systemd-nspawn setting nixspawn does not implement",
            ),
            (
                "[Files]\nBindUserShell=sh\n",
                "t.nspawn:2: invalid BindUserShell= value \"sh\"",
            ),
            ("[Exec]\nFrobnicate=1\n", "unknown setting"),
            ("Boot=yes\n", "outside of any section"),
            ("[Bogus]\n", "unknown section"),
            ("[Exec\n", "malformed section"),
            (
                "[Exec]\nBoot=maybe\n",
                "t.nspawn:2: invalid Boot= value \"maybe\": expected yes or no",
            ),
            (
                "[Exec]\nParameters=\"unterminated\n",
                "t.nspawn:2: Parameters=: an unterminated quote",
            ),
            ("[Exec]\nBoot=yes \\\n", "ends inside a continued line"),
            (
                "\n[Exec]\nKillSignal=SIGFOO\n",
                "t.nspawn:3: invalid KillSignal= value \"SIGFOO\": unknown signal name",
            ),
            ("[Exec]\nMachineID=0\n", "invalid MachineID= value \"0\""),
            (
                "[Exec]\nPrivateUsers=131073\n",
                "invalid PrivateUsers= value \"131073\": the shift and the range must be non-zero multiples of 65536",
            ),
            (
                "[Files]\nPrivateUsersOwnership=sideways\n",
                "expected off, chown, map or auto",
            ),
            (
                "[Exec]\nLinkJournal=sometimes\n",
                "expected no, auto, host, guest, try-host or try-guest",
            ),
            (
                "[Files]\nBind=\"/a b\n",
                "t.nspawn:2: Bind=: an unterminated quote",
            ),
        ] {
            let err = read_text(text, Trust::Trusted, &nothing_masked)
                .map(drop)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(
            words(r#"a "b c" 'd e' f\ g"#).unwrap(),
            ["a", "b c", "d e", "f g"]
        );
        assert!(words("\"x").is_err());
        assert_eq!(words("  ").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_file_beside_the_tree_is_trusted_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let machine = format!("nixspawn-unit-{}", std::process::id());
        std::fs::write(dir.path().join(format!("{machine}.nspawn")), "").unwrap();
        let beside = dir.path().join(format!("{machine}.nspawn"));
        assert_eq!(
            find(&machine, Some(&tree), Mode::Yes),
            Some((beside.clone(), Trust::Untrusted))
        );
        assert_eq!(
            find(&machine, Some(&tree), Mode::Override),
            Some((beside.clone(), Trust::Untrusted))
        );
        assert_eq!(
            find(&machine, Some(&tree), Mode::Trusted),
            Some((beside, Trust::Trusted))
        );
        assert_eq!(find(&machine, Some(&tree), Mode::No), None);
        assert_eq!(
            find(&machine, None, Mode::Yes),
            None,
            "no tree, nothing beside it"
        );
        assert_eq!(find("nixspawn-unit-none", Some(&tree), Mode::Yes), None);
    }

    #[test]
    fn settings_mode_spellings() {
        assert_eq!(MODE.parse("override"), Some(Mode::Override));
        assert_eq!(MODE.parse("trusted"), Some(Mode::Trusted));
        assert_eq!(MODE.parse("1"), Some(Mode::Yes));
        assert_eq!(MODE.parse("off"), Some(Mode::No));
        assert_eq!(MODE.parse("maybe"), None);
        assert_eq!(Mode::default(), Mode::Yes);
    }
}
