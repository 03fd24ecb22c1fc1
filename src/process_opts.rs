//! systemd-nspawn's process options (`--user`, `--as-pid2`, `--rlimit`,
//! `--oom-score-adjust`, `--cpu-affinity`, `--personality`,
//! `--ambient-capability`, `--restrict-address-families`,
//! `--suppress-sync`) from the command line and settings file to the
//! runtime's `spec::process::Process`: clap's value checks (each keeps
//! the text, so the canonical argv and `.nspawn` files share one
//! spelling) and the cross-option rules nspawn applies. (The resource
//! limit defaults nspawn gives PID 1 are the runtime's to fill in.)

use std::collections::HashSet;

use anyhow::{Result, bail};
use nixspawn_runtime::spec::capabilities;
use nixspawn_runtime::spec::process::{self, AddressFamilies, Personality, Process, Rlimit};

use crate::launcher_args::Args;

/// clap's check of `--rlimit=NAME=SOFT[:HARD]` (the text is kept).
pub fn rlimit(text: &str) -> Result<String, String> {
    process::parse_rlimit(text).map(|_| text.to_owned())
}

/// clap's check of `--cpu-affinity=LIST`.
pub fn cpu_affinity(text: &str) -> Result<String, String> {
    process::parse_cpu_set(text).map(|_| text.to_owned())
}

/// clap's check of `--restrict-address-families=`.
pub fn address_families(text: &str) -> Result<String, String> {
    AddressFamilies::parse(text).map(|_| text.to_owned())
}

/// clap's check of `--slice=` (the name as nspawn mangles it).
pub fn slice(text: &str) -> Result<String, String> {
    process::parse_slice(text)
}

/// clap's check of `--property=NAME=VALUE`.
pub fn property(text: &str) -> Result<String, String> {
    process::parse_property(text).map(|_| text.to_owned())
}

/// clap's check of `--personality=`.
pub fn personality(text: &str) -> Result<Personality, String> {
    Personality::parse(text)
}

/// clap's check of `--oom-score-adjust=` (nspawn: -1000...1000).
pub fn oom_score_adjust(text: &str) -> Result<i32, String> {
    text.parse::<i32>()
        .ok()
        .filter(|n| (-1000..=1000).contains(n))
        .ok_or_else(|| "expected an integer in -1000...1000".to_owned())
}

/// clap's check of `--ambient-capability=` (nspawn refuses "all" here).
pub fn ambient_capability(text: &str) -> Result<String, String> {
    if text.trim() == "all" {
        return Err("\"all\" is not supported for ambient capabilities".to_owned());
    }
    capabilities::parse_list("--ambient-capability", text)
        .map(|_| text.to_owned())
        .map_err(|e| match e {
            nixspawn_runtime::Error::InvalidValue { reason, .. } => reason,
            other => other.to_string(),
        })
}

/// The explicit resource limits (by resource number), last use winning.
pub fn explicit_rlimits(args: &Args) -> Result<Vec<Option<Rlimit>>> {
    let mut out = vec![None; process::RLIMIT_NAMES.len()];
    for r in &args.rlimit {
        let (resource, limit) = process::parse_rlimit(r)
            .map_err(|why| anyhow::anyhow!("invalid --rlimit {r:?}: {why}"))?;
        out[resource] = Some(limit);
    }
    Ok(out)
}

/// Everything but the defaults, with nspawn's cross-option refusals.
/// `retained`: the capabilities the payload keeps.
pub fn plan(args: &Args, boot: bool, retained: &HashSet<caps::Capability>) -> Result<Process> {
    if boot && args.as_pid2 {
        bail!("--boot and --as-pid2 may not be combined");
    }
    let mut ambient = HashSet::new();
    for a in &args.ambient_capability {
        ambient.extend(capabilities::parse_list("--ambient-capability", a)?);
    }
    if !ambient.is_empty() {
        if let Some(missing) = ambient.iter().find(|c| !retained.contains(c)) {
            bail!(
                "--ambient-capability: {missing} is not in the capability set the container keeps (add it with --capability)"
            );
        }
        if boot {
            bail!(
                "--ambient-capability cannot be used with --boot (it is not useful for boot mode)"
            );
        }
    }
    if args.user.as_deref() == Some("") {
        bail!("invalid --user \"\": a user name or UID is needed");
    }
    Ok(Process {
        user: args.user.clone(),
        as_pid2: args.as_pid2,
        rlimits: explicit_rlimits(args)?,
        oom_score_adjust: args.oom_score_adjust,
        cpu_affinity: args
            .cpu_affinity
            .as_deref()
            .map(process::parse_cpu_set)
            .transpose()
            .map_err(|why| anyhow::anyhow!("invalid --cpu-affinity: {why}"))?,
        personality: args.personality,
        ambient: ambient.into_iter().collect(),
        address_families: args
            .restrict_address_families
            .as_deref()
            .map(AddressFamilies::parse)
            .transpose()
            .map_err(|why| anyhow::anyhow!("invalid --restrict-address-families: {why}"))?,
        suppress_sync: args.suppress_sync.unwrap_or(false),
        slice: args.slice.clone(),
        properties: args
            .property
            .iter()
            .map(|p| {
                process::parse_property(p)
                    .map_err(|why| anyhow::anyhow!("invalid --property {p:?}: {why}"))
            })
            .collect::<Result<_>>()?,
    })
}

/// `--selinux-context`/`--selinux-apifs-context`: refused in one line
/// where SELinux is absent (as here: nothing to label with).
pub fn check_selinux(args: &Args) -> Result<()> {
    let given = [
        ("--selinux-context", &args.selinux_context),
        ("--selinux-apifs-context", &args.selinux_apifs_context),
    ];
    if let Some((name, _)) = given.iter().find(|(_, v)| v.is_some()) {
        let enabled = std::path::Path::new("/sys/fs/selinux/enforce").exists();
        if !enabled {
            bail!(
                "{name}: SELinux is not enabled on this host (no /sys/fs/selinux), so there is no context to set"
            );
        }
        bail!("{name}: SELinux labelling is not supported by nixspawn");
    }
    Ok(())
}
