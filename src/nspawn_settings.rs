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

/// Settings that elevate privileges or reach host resources: honoured only
/// from trusted files.
const PRIVILEGED: &[&str] = &[
    "Capability",
    "MachineID",
    "PrivateUsers",
    "Bind",
    "BindReadOnly",
    "TemporaryFileSystem",
];

/// Merge `entries` into `args`. Returns a warning per ignored setting.
pub fn apply(
    entries: &[Entry],
    path: &Path,
    trusted: bool,
    mode: Mode,
    args: &mut Args,
) -> Result<Vec<String>> {
    let over = mode == Mode::Override;
    let mut warnings = Vec::new();
    let at = |e: &Entry| format!("{}:{}", path.display(), e.line);
    // Lists from the file replace the command line's only when it gave none
    // (or under override); collect them first.
    let mut binds = Vec::new();
    let mut binds_ro = Vec::new();
    let mut tmpfs = Vec::new();
    let mut env = Vec::new();
    let mut caps = Vec::new();
    let mut drop_caps = Vec::new();
    let mut filters = Vec::new();
    for e in entries {
        if PRIVILEGED.contains(&e.key.as_str()) && !trusted {
            warnings.push(format!(
                "{}: {}= is privileged and ignored in an untrusted settings file",
                at(e),
                e.key
            ));
            continue;
        }
        let bool_value =
            || crate::launcher_args::parse_bool(&format!("{}= ({})", e.key, at(e)), &e.value);
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
            ("Exec", "Ephemeral") => {
                if over || !args.ephemeral {
                    args.ephemeral = bool_value()?;
                }
            }
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
            ("Exec", "DropCapability") => drop_caps.push(e.value.clone()),
            ("Exec", "NoNewPrivileges") => set_opt(&mut args.no_new_privileges, &e.value),
            ("Exec", "KillSignal") => set_opt(&mut args.kill_signal, &e.value),
            ("Exec", "MachineID") => set_opt(&mut args.uuid, &e.value),
            ("Exec", "PrivateUsers") => set_opt(&mut args.private_users, &e.value),
            ("Exec", "NotifyReady") => set_opt(&mut args.notify_ready, &e.value),
            ("Exec", "SystemCallFilter") => filters.push(e.value.clone()),
            ("Exec", "Hostname") => set_opt(&mut args.hostname, &e.value),
            ("Exec", "LinkJournal") => set_opt(&mut args.link_journal, &e.value),
            ("Files", "Bind") => binds.extend(words(&e.value)?),
            ("Files", "BindReadOnly") => binds_ro.extend(words(&e.value)?),
            ("Files", "TemporaryFileSystem") => tmpfs.extend(words(&e.value)?),
            ("Network", "Private") => {
                if over || !args.private_network {
                    args.private_network = bool_value()?;
                }
            }
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
    Ok(warnings)
}

/// Settings systemd-nspawn 252 knows that nixspawn refuses for now.
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
    "ResolvConf",
    "Timezone",
    "SuppressSync",
    "ReadOnly",
    "Volatile",
    "BindUser",
    "Inaccessible",
    "Overlay",
    "OverlayReadOnly",
    "PrivateUsersOwnership",
    "VirtualEthernet",
    "VirtualEthernetExtra",
    "Interface",
    "MACVLAN",
    "IPVLAN",
    "Bridge",
    "Zone",
    "Port",
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
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(a.boot, "unprivileged settings still apply");
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
