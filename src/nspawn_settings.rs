//! `.nspawn` settings files, as systemd-nspawn reads them: found by
//! machine name in /etc/systemd/nspawn and /run/systemd/nspawn (trusted) or
//! next to the tree (untrusted: privileged settings ignored), and merged
//! with the command line, which wins unless `--settings=override`.
//! Keys nixspawn does not implement are refused by name, as options are.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::launcher_args::Args;

/// `--settings=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    No,
    Yes,
    Override,
    Trusted,
}

impl Mode {
    pub fn parse(value: Option<&str>) -> Result<Mode> {
        Ok(match value {
            None => Mode::Yes,
            Some("override") => Mode::Override,
            Some("trusted") => Mode::Trusted,
            Some(v) => match crate::launcher_args::parse_bool("--settings", v)? {
                true => Mode::Yes,
                false => Mode::No,
            },
        })
    }
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

/// The settings file for `machine`, and whether it is trusted.
pub fn find(machine: &str, directory: Option<&Path>, mode: Mode) -> Option<(PathBuf, bool)> {
    if mode == Mode::No {
        return None;
    }
    let file = format!("{machine}.nspawn");
    if let Some(p) = TRUSTED_DIRS
        .iter()
        .map(|d| Path::new(d).join(&file))
        .find(|p| p.is_file())
    {
        return Some((p, true));
    }
    let beside = directory?.parent()?.join(&file);
    beside.is_file().then_some((beside, mode == Mode::Trusted))
}

/// What systemd-nspawn merges as one unit from a settings file, in the
/// order it merges them. An untrusted file (next to the tree) may not set
/// the privileged ones: each is ignored with nspawn's own warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
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

    /// Whether the command line set this group, which then wins over the
    /// file (as nspawn's settings mask; `--settings=override` clears it).
    fn set_by(self, args: &Args) -> bool {
        match self {
            Group::Ephemeral => args.ephemeral,
            Group::Capability => !args.capability.is_empty() || !args.drop_capability.is_empty(),
            Group::MachineId => args.uuid.is_some(),
            Group::CustomMounts => {
                !args.bind.is_empty() || !args.bind_ro.is_empty() || !args.tmpfs.is_empty()
            }
            Group::Network => {
                args.private_network
                    || args.network_veth
                    || args.network_bridge.is_some()
                    || args.network_zone.is_some()
                    || args.network_namespace_path.is_some()
                    || !args.network_veth_extra.is_empty()
                    || !args.network_interface.is_empty()
                    || !args.network_macvlan.is_empty()
                    || !args.network_ipvlan.is_empty()
            }
            Group::Port => !args.port.is_empty(),
            Group::Userns => {
                args.private_users.is_some()
                    || args.pick_users
                    || args.private_users_ownership.is_some()
            }
            Group::SystemCallFilter => !args.system_call_filter.is_empty(),
            Group::LinkJournal => args.link_journal.is_some(),
            // Options nixspawn refuses on its command line never set these.
            Group::AmbientCapability
            | Group::BindUser
            | Group::BindUserShell
            | Group::Limit(_)
            | Group::OomScoreAdjust
            | Group::CpuAffinity => false,
        }
    }
}

/// Merge `entries` into `args`. Returns the warnings for what an untrusted
/// file was not allowed to set, in systemd-nspawn's order.
pub fn apply(
    entries: &[Entry],
    path: &Path,
    trusted: bool,
    mode: Mode,
    args: &mut Args,
) -> Result<Vec<String>> {
    let over = mode == Mode::Override;
    let at = |e: &Entry| format!("{}:{}", path.display(), e.line);
    // What the command line set wins, unless --settings=override; decided
    // before anything from the file is merged.
    let masked: Vec<Group> = entries
        .iter()
        .filter_map(|e| Group::of(&e.section, &e.key))
        .filter(|g| !over && g.set_by(args))
        .collect();
    // An untrusted file's SystemCallFilter= is ignored as a whole if it
    // allows anything; removals alone (`~...`) still apply, as in nspawn.
    let filter_allows = entries
        .iter()
        .any(|e| e.key == "SystemCallFilter" && !e.value.trim_start().starts_with('~'));
    let mut ignored = std::collections::BTreeSet::new();

    // Lists from the file replace the command line's only when it gave none
    // (or under override); collect them first.
    let mut binds = Vec::new();
    let mut binds_ro = Vec::new();
    let mut tmpfs = Vec::new();
    let mut env = Vec::new();
    let mut caps = Vec::new();
    let mut drop_caps = Vec::new();
    let mut filters = Vec::new();
    // The first [Network] key (or Port=) taken from the file replaces what
    // the command line said about it as a whole, as nspawn's merge does.
    let mut network_taken = false;
    let mut ports_taken = false;
    for e in entries {
        let group = Group::of(&e.section, &e.key);
        if let Some(g) = group {
            if masked.contains(&g) {
                continue;
            }
            let untrusted_may_set = g == Group::SystemCallFilter && !filter_allows;
            if !trusted && !untrusted_may_set {
                ignored.insert(g);
                continue;
            }
        }
        let bool_value =
            || crate::launcher_args::parse_bool(&format!("{}= ({})", e.key, at(e)), &e.value);
        if group == Some(Group::Network) && !std::mem::replace(&mut network_taken, true) {
            args.private_network = false;
            args.network_veth = false;
            args.network_bridge = None;
            args.network_zone = None;
            args.network_namespace_path = None;
            args.network_veth_extra.clear();
            args.network_interface.clear();
            args.network_macvlan.clear();
            args.network_ipvlan.clear();
        }
        if group == Some(Group::Port) && !std::mem::replace(&mut ports_taken, true) {
            args.port.clear();
        }
        let set_opt = |slot: &mut Option<String>, value: &str| {
            if over || slot.is_none() {
                *slot = Some(value.to_owned());
            }
        };
        match (e.section.as_str(), e.key.as_str()) {
            ("Exec", "Boot") => {
                if over || !args.boot {
                    args.boot = bool_value()?;
                }
            }
            ("Exec", "Ephemeral") => args.ephemeral = bool_value()?,
            ("Exec", "Parameters") => {
                if over || args.command.is_empty() {
                    args.command = words(&e.value)
                        .map_err(|err| anyhow::anyhow!("{}: Parameters=: {err}", at(e)))?;
                }
            }
            ("Exec", "Environment") => {
                env.extend(words(&e.value).map_err(|err| anyhow::anyhow!("{}: {err}", at(e)))?)
            }
            ("Exec", "WorkingDirectory") => {
                if over || args.chdir.is_none() {
                    args.chdir = Some(PathBuf::from(&e.value));
                }
            }
            ("Exec", "Capability") => caps.push(e.value.clone()),
            ("Exec", "DropCapability") => {
                // Taking capabilities away is allowed to any file, but the
                // command line's capability options win as a whole.
                if over || (args.capability.is_empty() && args.drop_capability.is_empty()) {
                    drop_caps.push(e.value.clone())
                }
            }
            ("Exec", "NoNewPrivileges") => set_opt(&mut args.no_new_privileges, &e.value),
            ("Exec", "KillSignal") => set_opt(&mut args.kill_signal, &e.value),
            ("Exec", "MachineID") => args.uuid = Some(e.value.clone()),
            ("Exec", "PrivateUsers") => {
                args.private_users = Some(e.value.clone());
                args.pick_users = false;
            }
            ("Files", "PrivateUsersOwnership") => {
                args.private_users_ownership = Some(e.value.clone())
            }
            ("Files", "PrivateUsersChown") => {
                let chown = bool_value()?;
                args.private_users_ownership = Some(if chown { "chown" } else { "off" }.into());
            }
            ("Exec", "NotifyReady") => set_opt(&mut args.notify_ready, &e.value),
            ("Exec", "SystemCallFilter") => filters.push(e.value.clone()),
            ("Exec", "Hostname") => set_opt(&mut args.hostname, &e.value),
            ("Exec", "LinkJournal") => args.link_journal = Some(e.value.clone()),
            ("Files", "Bind") => binds.extend(words(&e.value)?),
            ("Files", "BindReadOnly") => binds_ro.extend(words(&e.value)?),
            ("Files", "TemporaryFileSystem") => tmpfs.extend(words(&e.value)?),
            // The [Network] section replaces the command line's network as
            // a whole (nspawn's settings mask), so it is set as it comes.
            ("Network", "Private") => args.private_network = bool_value()?,
            ("Network", "VirtualEthernet") => args.network_veth = bool_value()?,
            ("Network", "VirtualEthernetExtra") => args.network_veth_extra.push(e.value.clone()),
            ("Network", "Interface") => args.network_interface.push(e.value.clone()),
            ("Network", "MACVLAN") => args.network_macvlan.push(e.value.clone()),
            ("Network", "IPVLAN") => args.network_ipvlan.push(e.value.clone()),
            ("Network", "Bridge") => args.network_bridge = Some(e.value.clone()),
            ("Network", "Zone") => args.network_zone = Some(e.value.clone()),
            ("Network", "NamespacePath") => {
                args.network_namespace_path = Some(PathBuf::from(&e.value))
            }
            ("Network", "Port") => args.port.push(e.value.clone()),
            ("Exec", "ResolvConf") => set_opt(&mut args.resolv_conf, &e.value),
            ("Exec", "Timezone") => set_opt(&mut args.timezone, &e.value),
            (section, key) if KNOWN_UNIMPLEMENTED.contains(&key) => {
                bail!(
                    "{}: [{section}] {key}= is a systemd-nspawn setting nixspawn does not implement yet",
                    at(e)
                )
            }
            (section, key) => bail!("{}: unknown setting [{section}] {key}=", at(e)),
        }
    }
    for (from_file, slot) in [
        (binds, &mut args.bind),
        (binds_ro, &mut args.bind_ro),
        (tmpfs, &mut args.tmpfs),
        (env, &mut args.setenv),
        (caps, &mut args.capability),
        (drop_caps, &mut args.drop_capability),
        (filters, &mut args.system_call_filter),
    ] {
        if !from_file.is_empty() && (over || slot.is_empty()) {
            *slot = from_file;
        }
    }
    Ok(ignored.into_iter().map(|g| g.warning(path)).collect())
}

/// Settings systemd-nspawn 252 (and 262, the last four) knows that
/// nixspawn refuses for now.
const KNOWN_UNIMPLEMENTED: &[&str] = &[
    "ProcessTwo",
    "User",
    "PivotRoot",
    "AmbientCapability",
    "Personality",
    "LimitCPU",
    "LimitFSIZE",
    "LimitDATA",
    "LimitSTACK",
    "LimitCORE",
    "LimitRSS",
    "LimitNOFILE",
    "LimitAS",
    "LimitNPROC",
    "LimitMEMLOCK",
    "LimitLOCKS",
    "LimitSIGPENDING",
    "LimitMSGQUEUE",
    "LimitNICE",
    "LimitRTPRIO",
    "LimitRTTIME",
    "OOMScoreAdjust",
    "CPUAffinity",
    "SuppressSync",
    "ReadOnly",
    "Volatile",
    "BindUser",
    "Inaccessible",
    "Overlay",
    "OverlayReadOnly",
    "PrivateUsersDelegate",
    "RestrictAddressFamilies",
    "BindUserShell",
];

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(s: &str) -> Args {
        Args::try_parse_from(std::iter::once("nixspawn").chain(s.split_whitespace())).unwrap()
    }

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

    #[test]
    fn parses_and_merges_with_the_command_line_winning() {
        let entries = parse(FILE, Path::new("t.nspawn")).unwrap();
        assert_eq!(
            entries
                .iter()
                .find(|e| e.key == "SystemCallFilter")
                .unwrap()
                .value,
            "@keyring bpf"
        );
        let mut a = args("-D /tmp --kill-signal=SIGTERM --bind-ro=/opt");
        let warnings = apply(&entries, Path::new("t.nspawn"), true, Mode::Yes, &mut a).unwrap();
        assert!(warnings.is_empty());
        assert!(a.boot && a.private_network);
        assert_eq!(a.setenv, ["A=1", "B=two words"]);
        assert_eq!(
            a.kill_signal.as_deref(),
            Some("SIGTERM"),
            "the command line wins"
        );
        assert_eq!(
            a.bind_ro,
            ["/opt"],
            "a list given on the command line wins whole"
        );
        assert_eq!(a.capability, ["CAP_SYS_TIME"]);

        let mut a = args("-D /tmp --kill-signal=SIGTERM --bind-ro=/opt");
        apply(
            &entries,
            Path::new("t.nspawn"),
            true,
            Mode::Override,
            &mut a,
        )
        .unwrap();
        assert_eq!(
            a.kill_signal.as_deref(),
            Some("SIGRTMIN+3"),
            "override: the file wins"
        );
        assert_eq!(a.bind_ro, ["/nix/store", "/etc/hosts:/etc/hosts"]);
    }

    #[test]
    fn untrusted_files_lose_privileged_settings() {
        let entries = parse(FILE, Path::new("t.nspawn")).unwrap();
        let mut a = args("-D /tmp");
        let warnings = apply(&entries, Path::new("t.nspawn"), false, Mode::Yes, &mut a).unwrap();
        assert!(a.capability.is_empty() && a.bind_ro.is_empty());
        assert!(a.system_call_filter.is_empty() && !a.private_network);
        assert_eq!(
            warnings,
            [
                "Ignoring Capability= setting, file t.nspawn is not trusted.",
                "Ignoring TemporaryFileSystem=, Bind= and BindReadOnly= settings, file t.nspawn is not trusted.",
                "Ignoring network settings, file t.nspawn is not trusted.",
                "Ignoring SystemCallFilter= settings, file t.nspawn is not trusted.",
            ]
        );
        assert!(a.boot, "unprivileged settings still apply");

        // Only removals: any file may narrow the filter.
        let entries = parse(
            "[Exec]\nSystemCallFilter=~@mount\nDropCapability=CAP_SYS_PTRACE\n",
            Path::new("t.nspawn"),
        )
        .unwrap();
        let mut a = args("-D /tmp");
        let warnings = apply(&entries, Path::new("t.nspawn"), false, Mode::Yes, &mut a).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(a.system_call_filter, ["~@mount"]);
        assert_eq!(a.drop_capability, ["CAP_SYS_PTRACE"]);

        // What nixspawn does not implement is ignored like the rest, with
        // nspawn's warnings in nspawn's order; settings the command line
        // made give no warning.
        let entries = parse(
            "[Exec]\nLinkJournal=host\nLimitNOFILE=10\nLimitCPU=1\nPrivateUsers=pick\n\
             [Network]\nPort=80\nVirtualEthernet=yes\n[Files]\nBindUser=root\n",
            Path::new("t.nspawn"),
        )
        .unwrap();
        let mut a = args("-D /tmp -U");
        let warnings = apply(&entries, Path::new("t.nspawn"), false, Mode::Yes, &mut a).unwrap();
        assert_eq!(
            warnings,
            [
                "Ignoring network settings, file t.nspawn is not trusted.",
                "Ignoring Port= setting, file t.nspawn is not trusted.",
                "Ignoring bind user setting, file t.nspawn is not trusted.",
                "Ignoring LimitCPU= setting, file 't.nspawn' is not trusted.",
                "Ignoring LimitNOFILE= setting, file 't.nspawn' is not trusted.",
                "Ignoring journal link setting, file 't.nspawn' is not trusted.",
            ]
        );
        assert!(a.link_journal.is_none() && a.private_users.is_none());

        // systemd-nspawn 262's additions, in its words; a restriction
        // nixspawn cannot honour is refused rather than dropped.
        let entries = parse(
            "[Exec]\nPrivateUsersDelegate=2\n[Files]\nBindUserShell=/bin/sh\n\
             [Network]\nNamespacePath=/run/netns/x\n",
            Path::new("t.nspawn"),
        )
        .unwrap();
        let warnings = apply(
            &entries,
            Path::new("t.nspawn"),
            false,
            Mode::Yes,
            &mut args("-D /tmp"),
        )
        .unwrap();
        assert_eq!(
            warnings,
            [
                "Ignoring network settings, file t.nspawn is not trusted.",
                "Ignoring PrivateUsers= and PrivateUsersChown= settings, file t.nspawn is not trusted.",
                "Ignoring bind user shell setting, file t.nspawn is not trusted.",
            ]
        );
        let entries = parse(
            "[Exec]\nRestrictAddressFamilies=AF_INET\n",
            Path::new("t.nspawn"),
        )
        .unwrap();
        let err = apply(
            &entries,
            Path::new("t.nspawn"),
            false,
            Mode::Yes,
            &mut args("-D /tmp"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("does not implement"), "{err}");
    }

    #[test]
    fn network_section_as_a_whole() {
        let text = "[Exec]\nResolvConf=copy-host\nTimezone=off\n[Network]\nZone=web\nPort=tcp:8080:80\nPort=53\n\
                    VirtualEthernetExtra=x0:y0\nMACVLAN=eth1\n";
        let entries = parse(text, Path::new("t.nspawn")).unwrap();
        // Trusted: every key, Zone= implies the veth when the spec is built.
        let mut a = args("-D /tmp");
        assert!(
            apply(&entries, Path::new("t.nspawn"), true, Mode::Yes, &mut a)
                .unwrap()
                .is_empty()
        );
        assert_eq!(a.network_zone.as_deref(), Some("web"));
        assert_eq!(a.port, ["tcp:8080:80", "53"]);
        assert_eq!(a.network_veth_extra, ["x0:y0"]);
        assert_eq!(a.network_macvlan, ["eth1"]);
        assert_eq!(a.resolv_conf.as_deref(), Some("copy-host"));
        assert_eq!(a.timezone.as_deref(), Some("off"));
        // A network option on the command line masks the whole section,
        // -p masks Port=; --settings=override lets the file win.
        let mut a = args("-D /tmp -n -p 1:2 --timezone=copy");
        apply(&entries, Path::new("t.nspawn"), true, Mode::Yes, &mut a).unwrap();
        assert!(a.network_zone.is_none() && a.network_macvlan.is_empty());
        assert_eq!(a.port, ["1:2"]);
        assert_eq!(a.timezone.as_deref(), Some("copy"));
        let mut a = args("-D /tmp -n -p 1:2");
        apply(
            &entries,
            Path::new("t.nspawn"),
            true,
            Mode::Override,
            &mut a,
        )
        .unwrap();
        assert_eq!(a.network_zone.as_deref(), Some("web"));
        // Untrusted: the section and Port= are ignored, with nspawn's
        // words; ResolvConf= and Timezone= are anyone's to set.
        let mut a = args("-D /tmp");
        let warnings = apply(&entries, Path::new("t.nspawn"), false, Mode::Yes, &mut a).unwrap();
        assert_eq!(
            warnings,
            [
                "Ignoring network settings, file t.nspawn is not trusted.",
                "Ignoring Port= setting, file t.nspawn is not trusted.",
            ]
        );
        assert!(a.network_zone.is_none() && a.port.is_empty() && a.network_macvlan.is_empty());
        assert_eq!(a.resolv_conf.as_deref(), Some("copy-host"));
    }

    #[test]
    fn bad_files_are_refused_with_file_and_line() {
        for (text, needle) in [
            (
                "[Exec]\nVolatile=yes\n",
                "t.nspawn:2: [Exec] Volatile= is a systemd-nspawn setting nixspawn does not implement",
            ),
            ("[Exec]\nFrobnicate=1\n", "unknown setting"),
            ("Boot=yes\n", "outside of any section"),
            ("[Bogus]\n", "unknown section"),
            ("[Exec\n", "malformed section"),
            ("[Exec]\nBoot=maybe\n", "expected yes or no"),
            ("[Exec]\nParameters=\"unterminated\n", "unterminated quote"),
            ("[Exec]\nBoot=yes \\\n", "ends inside a continued line"),
        ] {
            let err = parse(text, Path::new("t.nspawn"))
                .and_then(|e| {
                    apply(
                        &e,
                        Path::new("t.nspawn"),
                        true,
                        Mode::Yes,
                        &mut args("-D /tmp"),
                    )
                    .map(drop)
                })
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(
            words(r#"a "b c" 'd e' f\ g"#).unwrap(),
            ["a", "b c", "d e", "f g"]
        );
        assert!(words("\"x").is_err());
    }
}
