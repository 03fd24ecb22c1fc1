//! `--oci-bundle=PATH`: an OCI runtime bundle (config.json and a root
//! filesystem) read as systemd-nspawn reads it, turned into the launcher's
//! own options: the root directory, the process's argv, environment and
//! working directory, the hostname, and bind and tmpfs mounts. The API
//! filesystems a bundle lists (/proc, /sys, /dev, ...) are nspawn's own
//! anyway; annotations are ignored.
//!
//! Read as plain JSON rather than through the `oci-spec` crate: every key
//! we do not honour must be refused by name rather than dropped, which
//! needs the document as written (typed structs fill in defaults and
//! forget what they do not model).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

/// What a bundle asks for, in the launcher's terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    /// The root filesystem (root.path, relative to the bundle).
    pub root: PathBuf,
    pub args: Vec<String>,
    /// NAME=VALUE, as `-E` takes them.
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub hostname: Option<String>,
    pub no_new_privileges: bool,
    /// `--bind` specs (SRC:DST[:norbind]).
    pub binds: Vec<String>,
    /// `--bind-ro` specs, for binds with the `ro` option.
    pub binds_ro: Vec<String>,
    /// `--tmpfs` specs (DST[:OPTIONS]).
    pub tmpfs: Vec<String>,
    /// linux.namespaces has a network namespace (without a path).
    pub private_network: bool,
}

/// Destinations nspawn mounts itself; a bundle's entries for them are
/// taken as said.
const API_MOUNTS: &[&str] = &[
    "/proc",
    "/sys",
    "/sys/fs/cgroup",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
];

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .with_context(|| format!("{what} is not a JSON object"))
}

fn string(v: &Value, what: &str) -> Result<String> {
    v.as_str()
        .map(str::to_owned)
        .with_context(|| format!("{what} is not a string"))
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>> {
    v.as_array()
        .with_context(|| format!("{what} is not an array"))?
        .iter()
        .map(|s| string(s, what))
        .collect()
}

/// Refuse the keys of `map` not in `known`, naming the first.
fn only(map: &Map<String, Value>, known: &[&str], at: &str) -> Result<()> {
    if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
        bail!("{at}{k} is not supported by nixspawn");
    }
    Ok(())
}

/// Read `bundle/config.json`.
pub fn read(bundle: &Path) -> Result<Bundle> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("OCI bundle {}: reading config.json", bundle.display()))?;
    parse(&text, bundle).with_context(|| format!("OCI bundle {}", path.display()))
}

/// The bundle described by `text` (config.json), `bundle` its directory.
pub fn parse(text: &str, bundle: &Path) -> Result<Bundle> {
    let doc: Value = serde_json::from_str(text).context("config.json is not valid JSON")?;
    let top = object(&doc, "config.json")?;
    only(
        top,
        &[
            "ociVersion",
            "process",
            "root",
            "hostname",
            "mounts",
            "annotations",
            "linux",
        ],
        "",
    )?;
    let version = top
        .get("ociVersion")
        .map(|v| string(v, "ociVersion"))
        .transpose()?
        .context("ociVersion is missing")?;
    if !version.starts_with("1.") {
        bail!("OCI version {version} is not supported (1.x is)");
    }
    let mut out = Bundle::default();

    let root = object(top.get("root").context("root is missing")?, "root")?;
    only(root, &["path", "readonly"], "root.")?;
    let root_path = string(
        root.get("path").context("root.path is missing")?,
        "root.path",
    )?;
    out.root = bundle.join(root_path);
    if root.get("readonly").and_then(Value::as_bool) == Some(true) {
        bail!("root.readonly needs --read-only, which nixspawn does not implement yet");
    }

    if let Some(process) = top.get("process") {
        let process = object(process, "process")?;
        only(
            process,
            &[
                "terminal",
                "consoleSize",
                "user",
                "args",
                "env",
                "cwd",
                "noNewPrivileges",
            ],
            "process.",
        )?;
        if let Some(user) = process.get("user") {
            let user = object(user, "process.user")?;
            only(
                user,
                &["uid", "gid", "umask", "additionalGids"],
                "process.user.",
            )?;
            let id = |k: &str| user.get(k).and_then(Value::as_u64).unwrap_or(0);
            let extra = user
                .get("additionalGids")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            if id("uid") != 0 || id("gid") != 0 || extra || user.contains_key("umask") {
                bail!(
                    "process.user other than uid 0, gid 0 needs --user, which nixspawn does not implement yet"
                );
            }
        }
        if let Some(args) = process.get("args") {
            out.args = strings(args, "process.args")?;
        }
        if let Some(env) = process.get("env") {
            out.env = strings(env, "process.env")?;
            if let Some(bad) = out.env.iter().find(|e| !e.contains('=')) {
                bail!("process.env entry {bad:?} is not NAME=VALUE");
            }
        }
        if let Some(cwd) = process.get("cwd") {
            let cwd = PathBuf::from(string(cwd, "process.cwd")?);
            if !cwd.is_absolute() {
                bail!("process.cwd {} is not an absolute path", cwd.display());
            }
            out.cwd = Some(cwd);
        }
        out.no_new_privileges = process
            .get("noNewPrivileges")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    }
    if let Some(h) = top.get("hostname") {
        out.hostname = Some(string(h, "hostname")?);
    }
    if let Some(mounts) = top.get("mounts") {
        let mounts = mounts.as_array().context("mounts is not an array")?;
        for m in mounts {
            mount(object(m, "a mounts entry")?, &mut out)?;
        }
    }
    if let Some(linux) = top.get("linux") {
        let linux = object(linux, "linux")?;
        only(linux, &["namespaces"], "linux.")?;
        if let Some(ns) = linux.get("namespaces") {
            for n in ns.as_array().context("linux.namespaces is not an array")? {
                let n = object(n, "a linux.namespaces entry")?;
                only(n, &["type"], "linux.namespaces[].")?;
                match n.get("type").and_then(Value::as_str) {
                    Some("pid" | "mount" | "ipc" | "uts" | "cgroup") => {}
                    Some("network") => out.private_network = true,
                    Some(other) => {
                        bail!("linux.namespaces type {other:?} is not supported by nixspawn")
                    }
                    None => bail!("a linux.namespaces entry has no type"),
                }
            }
        }
    }
    Ok(out)
}

/// One `mounts` entry: skipped (nspawn's own API filesystems), a bind or
/// a tmpfs.
fn mount(m: &Map<String, Value>, out: &mut Bundle) -> Result<()> {
    only(
        m,
        &["destination", "type", "source", "options"],
        "mounts[].",
    )?;
    let dest = string(
        m.get("destination").context("a mount has no destination")?,
        "mounts[].destination",
    )?;
    if !dest.starts_with('/') {
        bail!("mount destination {dest:?} is not an absolute path");
    }
    if API_MOUNTS.contains(&dest.trim_end_matches('/')) {
        return Ok(());
    }
    let kind = m
        .get("type")
        .map(|t| string(t, "mounts[].type"))
        .transpose()?;
    let options = m
        .get("options")
        .map(|o| strings(o, "mounts[].options"))
        .transpose()?
        .unwrap_or_default();
    let is_bind =
        kind.as_deref() == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind");
    if is_bind {
        let source = string(
            m.get("source").context("a bind mount has no source")?,
            "mounts[].source",
        )?;
        let mut recursive = true;
        let mut read_only = false;
        for o in &options {
            match o.as_str() {
                "rbind" => recursive = true,
                "bind" => recursive = false,
                "ro" => read_only = true,
                "rw" => read_only = false,
                other => {
                    bail!("bind mount option {other:?} (on {dest}) is not supported by nixspawn")
                }
            }
        }
        for s in [&source, &dest] {
            if s.contains(':') {
                bail!("bind mount path {s:?} contains ':', which --bind cannot express");
            }
        }
        let mut spec = format!("{source}:{dest}");
        if !recursive {
            spec.push_str(":norbind");
        }
        if read_only {
            out.binds_ro.push(spec);
        } else {
            out.binds.push(spec);
        }
        return Ok(());
    }
    match kind.as_deref() {
        Some("tmpfs") => {
            if dest.contains(':') {
                bail!("tmpfs destination {dest:?} contains ':'");
            }
            out.tmpfs.push(if options.is_empty() {
                dest
            } else {
                format!("{dest}:{}", options.join(","))
            });
            Ok(())
        }
        other => bail!(
            "mount type {} (on {dest}) is not supported by nixspawn",
            other.unwrap_or("(none)")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
      "ociVersion": "1.0.0",
      "process": {"terminal": false, "user": {"uid": 0, "gid": 0},
                  "args": ["sh", "-c", "echo hi"], "env": ["PATH=/bin", "A=1"], "cwd": "/tmp"},
      "root": {"path": "rootfs", "readonly": false},
      "hostname": "h",
      "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind"]},
        {"destination": "/once", "type": "bind", "source": "/srv/once", "options": ["bind"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]}
      ],
      "annotations": {"x": "y"},
      "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]}
    }"#;

    #[test]
    fn a_bundle_becomes_options() {
        let b = parse(CONFIG, Path::new("/b")).unwrap();
        assert_eq!(b.root, Path::new("/b/rootfs"));
        assert_eq!(b.args, ["sh", "-c", "echo hi"]);
        assert_eq!(b.env, ["PATH=/bin", "A=1"]);
        assert_eq!(b.cwd.as_deref(), Some(Path::new("/tmp")));
        assert_eq!(b.hostname.as_deref(), Some("h"));
        assert_eq!(b.binds, ["/srv/data:/data", "/srv/once:/once:norbind"]);
        assert_eq!(b.tmpfs, ["/scratch:nosuid,size=1m"]);
        assert!(b.private_network);
    }

    #[test]
    fn what_we_do_not_honour_is_refused_by_name() {
        for (from, to, want) in [
            (
                "\"hostname\": \"h\"",
                "\"hooks\": {}",
                "hooks is not supported",
            ),
            (
                "\"cwd\": \"/tmp\"",
                "\"cwd\": \"/tmp\", \"rlimits\": []",
                "process.rlimits",
            ),
            ("\"uid\": 0", "\"uid\": 1000", "needs --user"),
            (
                "\"readonly\": false",
                "\"readonly\": true",
                "needs --read-only",
            ),
            (
                "{\"type\": \"network\"}",
                "{\"type\": \"user\"}",
                "\"user\" is not supported",
            ),
            ("\"1.0.0\"", "\"2.0.0\"", "OCI version 2.0.0"),
            (
                "\"options\": [\"rbind\"]",
                "\"options\": [\"rbind\", \"rprivate\"]",
                "\"rprivate\"",
            ),
        ] {
            let text = CONFIG.replace(from, to);
            assert_ne!(text, CONFIG, "{from}");
            let e = format!("{:#}", parse(&text, Path::new("/b")).unwrap_err());
            assert!(e.contains(want), "{to}: {e}");
        }
    }
}
