//! The test description nixspawn-test reads: JSON, for people to write by
//! hand and for Nix to generate (`builtins.toJSON`). Unknown keys are
//! refused, so a typo never silently drops a node's option.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Nix's `meta.timeout` default, which the driver's users know.
pub const DEFAULT_GLOBAL_TIMEOUT: f64 = 3600.0;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    /// For logs and the JUnit report.
    #[serde(default)]
    pub name: Option<String>,
    /// Seconds the whole run may take; then it ends with status 143.
    #[serde(default)]
    pub global_timeout: Option<f64>,
    /// Prepended to each node's name for its machine name.
    #[serde(default)]
    pub machine_prefix: Option<String>,
    pub nodes: BTreeMap<String, NodeDescription>,
    /// The test script inline ...
    #[serde(default)]
    pub test_script: Option<String>,
    /// ... or in a file (relative to the description).
    #[serde(default)]
    pub test_script_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDescription {
    /// An OS tree booted with `-D` (ephemeral unless `ephemeral` is false).
    #[serde(default)]
    pub tree: Option<PathBuf>,
    /// A NixOS system toplevel (closure-only store); with `tree`, that is
    /// its state directory.
    #[serde(default)]
    pub toplevel: Option<PathBuf>,
    /// `-x` for a tree (default true; ignored without one).
    #[serde(default)]
    pub ephemeral: Option<bool>,
    /// The vlans the node has an interface on (default `[1]`).
    #[serde(default)]
    pub vlans: Option<Vec<u8>>,
    /// More nixspawn options, verbatim.
    #[serde(default)]
    pub options: Vec<String>,
}

impl NodeDescription {
    pub fn vlans(&self) -> Vec<u8> {
        self.vlans.clone().unwrap_or_else(|| vec![1])
    }
}

/// Options the runner sets itself; a node may not pass them.
const RESERVED: &[&str] = &[
    "-M",
    "--machine",
    "-D",
    "--directory",
    "--toplevel",
    "-b",
    "--boot",
    "--network-namespace-path",
    "--private-network",
    "-n",
    "--network-veth",
    "--network-bridge",
    "--network-zone",
    "--console",
    "--hostname",
];

impl Description {
    pub fn load(path: &Path) -> Result<(Description, String)> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut d: Description = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid test description", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        d.resolve(base);
        d.validate()?;
        let script = match (&d.test_script, &d.test_script_file) {
            (Some(s), None) => s.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading the test script {}", f.display()))?,
            _ => bail!(
                "{}: give exactly one of test_script and test_script_file",
                path.display()
            ),
        };
        Ok((d, script))
    }

    fn resolve(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(f) = &mut self.test_script_file {
            abs(f);
        }
        for n in self.nodes.values_mut() {
            if let Some(t) = &mut n.tree {
                abs(t);
            }
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            bail!("the description has no nodes");
        }
        if self.nodes.len() > 254 {
            bail!(
                "{} nodes: at most 254 fit the address scheme 192.168.<vlan>.<node>",
                self.nodes.len()
            );
        }
        if let Some(t) = self.global_timeout
            && !(t > 0.0 && t.is_finite())
        {
            bail!("global_timeout {t}: must be a positive number of seconds");
        }
        let prefix = self.machine_prefix.as_deref().unwrap_or("");
        let mut variables = BTreeSet::new();
        for (name, node) in &self.nodes {
            let machine = format!("{prefix}{name}");
            nixspawn_runtime::MachineName::new(&machine).with_context(|| {
                format!("node {name:?}: {machine:?} is not a valid machine name")
            })?;
            if !variables.insert(variable_name(name)) {
                bail!(
                    "node {name:?}: its script variable {} is also another node's",
                    variable_name(name)
                );
            }
            match (&node.tree, &node.toplevel) {
                (None, None) => bail!("node {name:?}: give a tree, a toplevel or both"),
                (_, Some(t)) if !t.starts_with("/nix/store/") => bail!(
                    "node {name:?}: toplevel {} is not in /nix/store",
                    t.display()
                ),
                _ => {}
            }
            if let Some(t) = &node.tree
                && !t.is_dir()
            {
                bail!("node {name:?}: tree {} is not a directory", t.display());
            }
            let vlans = node.vlans();
            if vlans.iter().collect::<BTreeSet<_>>().len() != vlans.len() {
                bail!("node {name:?}: vlan listed twice in {vlans:?}");
            }
            for o in &node.options {
                let key = o.split('=').next().unwrap_or(o);
                if RESERVED.contains(&key) {
                    bail!(
                        "node {name:?}: option {key} is set by nixspawn-test itself; remove it from options"
                    );
                }
            }
        }
        Ok(())
    }

    pub fn all_vlans(&self) -> BTreeSet<u8> {
        self.nodes.values().flat_map(|n| n.vlans()).collect()
    }
}

/// The driver's rule for a node's script variable.
pub fn variable_name(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            let ok = if i == 0 {
                c.is_ascii_alphabetic() || c == '_'
            } else {
                c.is_ascii_alphanumeric() || c == '_'
            };
            if ok { c } else { '_' }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Description> {
        let d: Description = serde_json::from_str(json)?;
        d.validate()?;
        Ok(d)
    }

    #[test]
    fn a_minimal_description_gets_the_defaults() {
        let d = parse(r#"{"nodes": {"a": {"toplevel": "/nix/store/x-sys"}}, "test_script": ""}"#)
            .unwrap();
        assert_eq!(d.nodes["a"].vlans(), vec![1]);
        assert_eq!(d.all_vlans().into_iter().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn bad_descriptions_are_refused_in_one_line() {
        for (json, want) in [
            (r#"{"nodes": {}}"#, "no nodes"),
            (r#"{"nodes": {"a": {}}}"#, "give a tree, a toplevel or both"),
            (
                r#"{"nodes": {"a": {"toplevel": "/tmp/x"}}}"#,
                "is not in /nix/store",
            ),
            (
                r#"{"nodes": {"a": {"toplevel": "/nix/store/x", "options": ["-M", "b"]}}}"#,
                "option -M is set by nixspawn-test",
            ),
            (
                r#"{"nodes": {"a": {"toplevel": "/nix/store/x", "vlans": [1, 1]}}}"#,
                "vlan listed twice",
            ),
            (
                r#"{"nodes": {"a-b": {"toplevel": "/nix/store/x"}, "a_b": {"toplevel": "/nix/store/y"}}}"#,
                "also another node's",
            ),
            (
                r#"{"nodes": {"a": {"toplevel": "/nix/store/x"}}, "global_timeout": -1}"#,
                "must be a positive",
            ),
            (
                r#"{"nodes": {"a": {"toplevel": "/nix/store/x", "vlan": [1]}}}"#,
                "unknown field `vlan`",
            ),
        ] {
            let err = format!("{:#}", parse(json).unwrap_err());
            assert!(err.contains(want), "{json}: {err}");
            assert!(!err.contains('\n'), "{json}: {err}");
        }
    }

    #[test]
    fn node_variables_follow_the_driver() {
        assert_eq!(variable_name("server"), "server");
        assert_eq!(variable_name("web-1"), "web_1");
        assert_eq!(variable_name("1st"), "_st");
    }
}
