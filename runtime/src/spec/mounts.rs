//! The user's own mounts (`--bind`, `--bind-ro`, `--tmpfs` and the
//! settings files' `Bind=`, `BindReadOnly=`, `TemporaryFileSystem=`) in
//! systemd-nspawn's syntax. Applying them is the guest's business
//! (`guest::rootfs::mounts`).

use std::path::{Component, PathBuf};

use crate::error::{Error, Result};

/// How a bind's ownership appears under a user namespace (nspawn's options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindIdmap {
    /// `noidmap` (the default): host ids outside the guest's range show as nobody.
    None,
    /// `idmap`: ids [0, range) of the source appear as the guest's own.
    Idmap,
    /// `rootidmap`: the source's owner appears as the guest's root.
    RootIdmap,
}

/// Whether a bind may be written through: `--bind` or `--bind-ro`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindAccess {
    ReadWrite,
    ReadOnly,
}

/// One of the user's extra mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomMount {
    Bind {
        source: PathBuf,
        target: PathBuf,
        read_only: bool,
        recursive: bool,
        idmap: BindIdmap,
    },
    Tmpfs {
        target: PathBuf,
        options: String,
    },
    /// `--overlay`/`--overlay-ro`: `lower` bottom first; `upper` None for a
    /// tmpfs upper layer (nspawn's empty upper path).
    Overlay {
        lower: Vec<OverlayPath>,
        upper: Option<OverlayPath>,
        target: PathBuf,
        read_only: bool,
        /// The overlay's work directory, beside `upper` on the host, made
        /// and removed by the launcher (set from the machine's name).
        work: Option<PathBuf>,
    },
    /// `--inaccessible`: over-mounted by an inaccessible node of its type.
    Inaccessible {
        target: PathBuf,
    },
}

/// One directory of an overlay: on the host, or (nspawn's `+` prefix)
/// inside the guest's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayPath {
    Host(PathBuf),
    InRoot(PathBuf),
}

impl OverlayPath {
    /// The upper layer on the host (a `+` one lives in the tree).
    pub fn host_path(&self, tree: Option<&std::path::Path>) -> Option<PathBuf> {
        match self {
            OverlayPath::Host(p) => Some(p.clone()),
            OverlayPath::InRoot(p) => tree.map(|t| t.join(p.strip_prefix("/").unwrap_or(p))),
        }
    }
}

fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> Error {
    Error::InvalidValue {
        what,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Split on unescaped ':' (systemd allows "\:" inside paths).
fn split_colons(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => parts.last_mut().expect("non-empty").push(n),
                None => parts.last_mut().expect("non-empty").push('\\'),
            },
            ':' => parts.push(String::new()),
            c => parts.last_mut().expect("non-empty").push(c),
        }
    }
    parts
}

fn absolute_path(what: &'static str, value: &str, p: &str) -> Result<PathBuf> {
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(invalid(
            what,
            value,
            format!("{p:?} is not an absolute path"),
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(what, value, format!("{p:?} contains '..'")));
    }
    Ok(path)
}

impl CustomMount {
    /// `SRC[:DST[:OPTIONS]]` as for `--bind`/`--bind-ro`.
    pub fn parse_bind(value: &str, access: BindAccess) -> Result<Self> {
        let read_only = access == BindAccess::ReadOnly;
        let what = if read_only { "--bind-ro" } else { "--bind" };
        let parts = split_colons(value);
        if parts.len() > 3 {
            return Err(invalid(
                what,
                value,
                "expected SOURCE[:DESTINATION[:OPTIONS]]",
            ));
        }
        let source = absolute_path(what, value, &parts[0])?;
        let target = match parts.get(1) {
            Some(d) if !d.is_empty() => absolute_path(what, value, d)?,
            _ => source.clone(),
        };
        let mut recursive = true;
        let mut idmap = BindIdmap::None;
        if let Some(opts) = parts.get(2) {
            for opt in opts.split(',').filter(|o| !o.is_empty()) {
                match opt {
                    "rbind" => recursive = true,
                    "norbind" => recursive = false,
                    "noidmap" => idmap = BindIdmap::None,
                    "idmap" => idmap = BindIdmap::Idmap,
                    "rootidmap" => idmap = BindIdmap::RootIdmap,
                    "owneridmap" => {
                        return Err(invalid(
                            what,
                            value,
                            "the owneridmap option is not implemented by nixspawn yet",
                        ));
                    }
                    other => {
                        return Err(invalid(
                            what,
                            value,
                            format!(
                                "unknown option {other:?} (known: rbind, norbind, noidmap, idmap, rootidmap)"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(CustomMount::Bind {
            source,
            target,
            read_only,
            recursive,
            idmap,
        })
    }

    /// `PATH[:OPTIONS]` as for `--tmpfs`.
    pub fn parse_tmpfs(value: &str) -> Result<Self> {
        let (path, options) = match value.split_once(':') {
            Some((p, o)) => (p, o.to_owned()),
            None => (value, "mode=0755".to_owned()),
        };
        let target = absolute_path("--tmpfs", value, path)?;
        if options.contains(['\n', '\0']) {
            return Err(invalid("--tmpfs", value, "options must be a single line"));
        }
        Ok(CustomMount::Tmpfs { target, options })
    }
}

impl CustomMount {
    /// `[+]LOWER...:[+]UPPER:DEST` (or `[+]LOWER:[+]UPPER`, the upper also
    /// being the destination) as for `--overlay`/`--overlay-ro`. Relative
    /// host paths are taken from the current directory, as nspawn does.
    pub fn parse_overlay(value: &str, read_only: bool) -> Result<Self> {
        let what = if read_only {
            "--overlay-ro"
        } else {
            "--overlay"
        };
        let parts = split_colons(value);
        if parts.len() < 2 {
            return Err(invalid(
                what,
                value,
                "expected at least two colon-separated paths",
            ));
        }
        let source = |p: &str| -> Result<OverlayPath> {
            if let Some(inside) = p.strip_prefix('+') {
                return absolute_path(what, value, inside).map(OverlayPath::InRoot);
            }
            if p.is_empty() {
                return Err(invalid(what, value, "an empty lower path"));
            }
            let path = std::path::absolute(p).map_err(|e| invalid(what, value, e.to_string()))?;
            if path.components().any(|c| c == Component::ParentDir) {
                return Err(invalid(what, value, format!("{p:?} contains '..'")));
            }
            Ok(OverlayPath::Host(path))
        };
        let (lower, upper, target) = if parts.len() == 2 {
            let upper = source(&parts[1])?;
            let target = match &upper {
                OverlayPath::Host(p) | OverlayPath::InRoot(p) => p.clone(),
            };
            (&parts[..1], Some(upper), target)
        } else {
            let n = parts.len();
            let upper = match parts[n - 2].as_str() {
                "" => None,
                p => Some(source(p)?),
            };
            (
                &parts[..n - 2],
                upper,
                absolute_path(what, value, &parts[n - 1])?,
            )
        };
        let lower = lower
            .iter()
            .map(|p| source(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(CustomMount::Overlay {
            lower,
            upper,
            target,
            read_only,
            work: None,
        })
    }

    /// `PATH` as for `--inaccessible`.
    pub fn parse_inaccessible(value: &str) -> Result<Self> {
        Ok(CustomMount::Inaccessible {
            target: absolute_path("--inaccessible", value, value)?,
        })
    }

    /// Where it is mounted in the guest.
    pub fn target(&self) -> &std::path::Path {
        match self {
            CustomMount::Bind { target, .. }
            | CustomMount::Tmpfs { target, .. }
            | CustomMount::Overlay { target, .. }
            | CustomMount::Inaccessible { target } => target,
        }
    }
}

/// Split mount(8)-style `options` into mount flags (starting from `base`,
/// each word setting or clearing one, as systemd's option mangling does)
/// and the rest, the filesystem's own data.
pub fn split_mount_flags(
    base: nix::mount::MsFlags,
    options: &str,
) -> (nix::mount::MsFlags, String) {
    use nix::mount::MsFlags as F;
    const ATIME: F = F::MS_NOATIME.union(F::MS_RELATIME).union(F::MS_STRICTATIME);
    let mut flags = base;
    let mut data: Vec<&str> = Vec::new();
    for word in options.split(',').filter(|w| !w.is_empty()) {
        let (set, clear) = match word {
            "ro" => (F::MS_RDONLY, F::empty()),
            "rw" => (F::empty(), F::MS_RDONLY),
            "nosuid" => (F::MS_NOSUID, F::empty()),
            "suid" => (F::empty(), F::MS_NOSUID),
            "nodev" => (F::MS_NODEV, F::empty()),
            "dev" => (F::empty(), F::MS_NODEV),
            "noexec" => (F::MS_NOEXEC, F::empty()),
            "exec" => (F::empty(), F::MS_NOEXEC),
            "noatime" => (F::MS_NOATIME, ATIME),
            "relatime" => (F::MS_RELATIME, ATIME),
            "strictatime" => (F::MS_STRICTATIME, ATIME),
            "nodiratime" => (F::MS_NODIRATIME, F::empty()),
            "diratime" => (F::empty(), F::MS_NODIRATIME),
            _ => {
                data.push(word);
                continue;
            }
        };
        flags = (flags - clear) | set;
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_flags_are_taken_out_of_tmpfs_options() {
        use nix::mount::MsFlags as F;
        let base = F::MS_NODEV | F::MS_STRICTATIME;
        let (f, d) = super::split_mount_flags(base, "rw,nosuid,noexec");
        assert_eq!((f, d.as_str()), (base | F::MS_NOSUID | F::MS_NOEXEC, ""));
        let (f, d) = super::split_mount_flags(base, "mode=0700,ro,size=1m,dev,noatime");
        assert_eq!(
            (f, d.as_str()),
            (F::MS_RDONLY | F::MS_NOATIME, "mode=0700,size=1m")
        );
        assert_eq!(super::split_mount_flags(base, "mode=0755").0, base);
    }

    use super::*;

    #[test]
    fn bind_specs() {
        assert_eq!(
            CustomMount::parse_bind("/a", BindAccess::ReadWrite).unwrap(),
            CustomMount::Bind {
                source: "/a".into(),
                target: "/a".into(),
                read_only: false,
                recursive: true,
                idmap: BindIdmap::None
            }
        );
        assert_eq!(
            CustomMount::parse_bind("/a\\:b:/c:norbind", BindAccess::ReadOnly).unwrap(),
            CustomMount::Bind {
                source: "/a:b".into(),
                target: "/c".into(),
                read_only: true,
                recursive: false,
                idmap: BindIdmap::None
            }
        );
        assert!(CustomMount::parse_bind("rel", BindAccess::ReadWrite).is_err());
        assert!(CustomMount::parse_bind("/a:/b/../c", BindAccess::ReadWrite).is_err());
        assert!(CustomMount::parse_bind("/a:/b:bogus", BindAccess::ReadWrite).is_err());
        assert!(matches!(
            CustomMount::parse_bind("/a:/b:rootidmap", BindAccess::ReadWrite).unwrap(),
            CustomMount::Bind {
                idmap: BindIdmap::RootIdmap,
                ..
            }
        ));
        assert!(
            CustomMount::parse_bind("/a:/b:owneridmap", BindAccess::ReadWrite)
                .unwrap_err()
                .to_string()
                .contains("not implemented")
        );
        assert!(CustomMount::parse_bind("/a:/b:c:d", BindAccess::ReadWrite).is_err());
    }

    #[test]
    fn overlay_specs() {
        let host = |p: &str| OverlayPath::Host(p.into());
        assert_eq!(
            CustomMount::parse_overlay("/a:/b:/c:/d", false).unwrap(),
            CustomMount::Overlay {
                lower: vec![host("/a"), host("/b")],
                upper: Some(host("/c")),
                target: "/d".into(),
                read_only: false,
                work: None,
            }
        );
        assert_eq!(
            CustomMount::parse_overlay("/a:/b", true).unwrap(),
            CustomMount::Overlay {
                lower: vec![host("/a")],
                upper: Some(host("/b")),
                target: "/b".into(),
                read_only: true,
                work: None,
            }
        );
        assert_eq!(
            CustomMount::parse_overlay("+/var::/var", false).unwrap(),
            CustomMount::Overlay {
                lower: vec![OverlayPath::InRoot("/var".into())],
                upper: None,
                target: "/var".into(),
                read_only: false,
                work: None,
            }
        );
        let cwd = std::env::current_dir().unwrap();
        assert!(matches!(
            CustomMount::parse_overlay("rel:/x:/y", false).unwrap(),
            CustomMount::Overlay { lower, .. } if lower == vec![OverlayPath::Host(cwd.join("rel"))]
        ));
        assert!(CustomMount::parse_overlay("/a", false).is_err());
        assert!(CustomMount::parse_overlay("/a:/b:rel", false).is_err());
        assert!(CustomMount::parse_overlay(":/b:/c", false).is_err());
        assert!(CustomMount::parse_overlay("+rel:/b:/c", false).is_err());
        assert!(CustomMount::parse_inaccessible("/x").is_ok());
        assert!(CustomMount::parse_inaccessible("x").is_err());
    }

    #[test]
    fn tmpfs_specs() {
        assert_eq!(
            CustomMount::parse_tmpfs("/x").unwrap(),
            CustomMount::Tmpfs {
                target: "/x".into(),
                options: "mode=0755".into()
            }
        );
        assert!(CustomMount::parse_tmpfs("x").is_err());
    }
}
