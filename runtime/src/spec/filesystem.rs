//! How the guest's root filesystem is laid out beyond the tree bound as it
//! is: systemd-nspawn's `--read-only`, `--volatile=` and `--pivot-root=`
//! (and their settings-file keys `ReadOnly=`, `Volatile=`, `PivotRoot=`).
//! Overlays and masked paths (`--overlay`, `--inaccessible`) are custom
//! mounts (`spec::mounts`), as in nspawn.

use std::path::{Component, PathBuf};

use crate::error::{Error, Result};

/// `--volatile=`: what of the tree the guest may change, and where the
/// changes go (always a tmpfs, gone with the guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Volatile {
    /// The tree as it is.
    #[default]
    No,
    /// A tmpfs root holding only the tree's /usr, bound read-only.
    Yes,
    /// The tree read-only with a tmpfs on /var.
    State,
    /// An overlay of the tree with a tmpfs upper layer (as `--ephemeral`).
    Overlay,
}

impl Volatile {
    /// nspawn's spellings: a boolean, `state` or `overlay`.
    pub fn parse(value: &str) -> Result<Volatile> {
        Ok(match value {
            "yes" | "y" | "true" | "t" | "on" | "1" => Volatile::Yes,
            "no" | "n" | "false" | "f" | "off" | "0" => Volatile::No,
            "state" => Volatile::State,
            "overlay" => Volatile::Overlay,
            _ => {
                return Err(Error::InvalidValue {
                    what: "--volatile",
                    value: value.to_owned(),
                    reason: "expected yes, no, state or overlay".into(),
                });
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Volatile::No => "no",
            Volatile::Yes => "yes",
            Volatile::State => "state",
            Volatile::Overlay => "overlay",
        }
    }
}

/// `--pivot-root=NEW[:OLD]`: a directory of the tree becomes the root;
/// the rest of the tree is dropped or kept at `old` inside the new root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PivotRoot {
    pub new_root: PathBuf,
    pub old_root: Option<PathBuf>,
}

impl PivotRoot {
    pub fn parse(value: &str) -> Result<PivotRoot> {
        let invalid = |reason: String| Error::InvalidValue {
            what: "--pivot-root",
            value: value.to_owned(),
            reason,
        };
        let path = |p: &str| -> Result<PathBuf> {
            let path = PathBuf::from(p);
            if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
                return Err(invalid(format!(
                    "{p:?} is not an absolute path without '..'"
                )));
            }
            Ok(path)
        };
        let (new_root, old_root) = match value.split_once(':') {
            Some((n, o)) => (path(n)?, Some(path(o)?)),
            None => (path(value)?, None),
        };
        Ok(PivotRoot { new_root, old_root })
    }
}

/// The root's layout.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filesystem {
    /// `--read-only`: the tree's mounts read-only (not the API filesystems
    /// nor the user's own mounts, as nspawn). No effect with `volatile`.
    pub read_only: bool,
    pub volatile: Volatile,
    pub pivot_root: Option<PivotRoot>,
}

impl Filesystem {
    /// Whether the guest can write its /etc (decides resolv.conf and
    /// localtime: copied in, or bound over what is there).
    pub fn etc_writable(&self) -> bool {
        match self.volatile {
            Volatile::No => !self.read_only,
            Volatile::State => false,
            Volatile::Yes | Volatile::Overlay => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_spellings() {
        assert_eq!(Volatile::parse("state").unwrap(), Volatile::State);
        assert_eq!(Volatile::parse("1").unwrap(), Volatile::Yes);
        assert_eq!(Volatile::parse("off").unwrap(), Volatile::No);
        assert!(Volatile::parse("maybe").is_err());
    }

    #[test]
    fn pivot_root_paths() {
        let p = PivotRoot::parse("/a:/b").unwrap();
        assert_eq!(p.new_root, PathBuf::from("/a"));
        assert_eq!(p.old_root, Some(PathBuf::from("/b")));
        assert_eq!(PivotRoot::parse("/a").unwrap().old_root, None);
        assert!(PivotRoot::parse("a").is_err());
        assert!(PivotRoot::parse("/a:b").is_err());
        assert!(PivotRoot::parse("/a/../b").is_err());
    }
}
