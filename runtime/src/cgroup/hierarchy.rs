//! Reading the host's cgroup hierarchies: where cgroup v2 is mounted, which
//! cgroup a process is in, and systemd's named v1 hierarchy on hybrid hosts.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The host's cgroup v2 mount point.
pub fn v2_mount() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("reading", "/proc/self/mountinfo", e))?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(unescape(mount_point)))
        })
        .ok_or(Error::NoCgroup2)
}

/// Where a cgroup v2 hierarchy is the only one (pure v2 hosts, and where
/// we mount it ourselves).
pub const UNIFIED_ROOT: &str = "/sys/fs/cgroup";

/// What to do about a missing cgroup2 mount, decided from facts alone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MissingV2 {
    /// Mount cgroup2 on /sys/fs/cgroup ourselves.
    Mount,
    /// Tell the user how; the message names the command.
    Refuse(String),
}

/// Facts about a system with no cgroup2 mounted, for [`missing_v2`].
#[derive(Debug)]
pub(crate) struct V2Facts {
    /// Our `0::` path from /proc/self/cgroup.
    pub own: Option<PathBuf>,
    /// /sys/fs/cgroup is a directory.
    pub dir: bool,
    /// Something is mounted on it (a hybrid or v1 host's tmpfs).
    pub mounted_on: bool,
    /// It has entries.
    pub populated: bool,
}

/// No cgroup2 is mounted: mount it where we are the root of our own cgroup
/// namespace (`0::/`, as a Nix `uid-range` builder is, whose sandbox
/// mounts none) and /sys/fs/cgroup is the sysfs's own empty directory —
/// exactly what a pure cgroup v2 host has there. Anything else (a v1 or
/// hybrid layout on /sys/fs/cgroup, a cgroup below the root whose
/// hierarchy someone else manages) is not ours to guess at.
pub(crate) fn missing_v2(f: &V2Facts) -> MissingV2 {
    let at_root = f.own.as_deref() == Some(Path::new("/"));
    if at_root && f.dir && !f.mounted_on && !f.populated {
        return MissingV2::Mount;
    }
    let fix = if f.mounted_on || f.populated {
        "mount one with: mount -t cgroup2 none /sys/fs/cgroup/unified".to_owned()
    } else if !f.dir {
        "/sys/fs/cgroup is missing (is sysfs mounted on /sys?); mount sysfs, then: mount -t cgroup2 none /sys/fs/cgroup".to_owned()
    } else {
        "mount one with: mount -t cgroup2 none /sys/fs/cgroup".to_owned()
    };
    MissingV2::Refuse(fix)
}

/// The cgroup v2 mount point, mounting cgroup2 on /sys/fs/cgroup first
/// where [`missing_v2`] says it is ours to do (a Nix build sandbox). The
/// mount stays in the caller's mount namespace, as on a systemd host:
/// other launchers and `nixspawnctl` there use it too.
pub fn ensure_v2_mount() -> Result<PathBuf> {
    match v2_mount() {
        Err(Error::NoCgroup2) => {}
        other => return other,
    }
    let dir = Path::new(UNIFIED_ROOT);
    let meta = fs::metadata(dir).ok();
    let parent = fs::metadata("/sys/fs").ok();
    let facts = V2Facts {
        own: own_v2_cgroup().ok(),
        dir: meta.as_ref().is_some_and(|m| m.is_dir()),
        mounted_on: match (&meta, &parent) {
            (Some(m), Some(p)) => {
                std::os::unix::fs::MetadataExt::dev(m) != std::os::unix::fs::MetadataExt::dev(p)
            }
            _ => false,
        },
        populated: fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()),
    };
    match missing_v2(&facts) {
        MissingV2::Refuse(fix) => Err(Error::Cgroup2NotMounted { fix }),
        MissingV2::Mount => {
            let mount = |data: Option<&str>| {
                nix::mount::mount(
                    Some("cgroup2"),
                    dir,
                    Some("cgroup2"),
                    nix::mount::MsFlags::MS_NOSUID
                        | nix::mount::MsFlags::MS_NODEV
                        | nix::mount::MsFlags::MS_NOEXEC,
                    data,
                )
            };
            // nsdelegate is only accepted in the initial cgroup namespace.
            let mounted = mount(Some("nsdelegate")).or_else(|_| mount(None));
            // Launchers started together (a multi-node test in a build)
            // race to mount it; the loser's mount fails (EBUSY), and the
            // winner's is as good.
            if let Err(e) = mounted
                && v2_mount().is_err()
            {
                return Err(Error::Mount {
                    what: "cgroup2".into(),
                    target: dir.to_path_buf(),
                    source: e.into(),
                });
            }
            tracing::info!(
                "mounted cgroup2 on {UNIFIED_ROOT}: none was mounted and this cgroup namespace is ours"
            );
            v2_mount()
        }
    }
}

/// Our own cgroup v2 path, relative to the hierarchy root.
pub fn own_v2_cgroup() -> Result<PathBuf> {
    v2_cgroup_of("self")
}

/// A process's cgroup v2 path (the `0::` line; hybrid hosts have one too).
pub fn v2_cgroup_of(pid: &str) -> Result<PathBuf> {
    let path = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(PathBuf::from)
        .ok_or(Error::NoCgroup2)
}

/// Where systemd's named v1 hierarchy is mounted on a hybrid host.
pub(crate) const SYSTEMD_V1: &str = "/sys/fs/cgroup/systemd";

/// Our cgroup in the named v1 hierarchy, if it is mounted here (the
/// kernel lists it in /proc/self/cgroup wherever any namespace mounts it).
pub(crate) fn own_v1_systemd_cgroup() -> Option<PathBuf> {
    if !Path::new(SYSTEMD_V1).join("cgroup.procs").exists()
        || v2_mount().ok()? == Path::new(SYSTEMD_V1)
    {
        return None;
    }
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        l.split_once(":name=systemd:")
            .map(|(_, p)| PathBuf::from(p))
    })
}

/// The `cgroup.procs` files of `pid`'s cgroups in the v1 hierarchies
/// mounted (writable) here where it sits elsewhere than we do: what a
/// process of ours writes to join them all (a container's payload cgroup
/// in the v1 `devices` or systemd's named hierarchy on a hybrid host).
/// Hierarchies not mounted here, read-only, or where its cgroup lies
/// outside our view (`/..`) cannot be joined and are left out.
pub fn v1_procs_to_join(pid: i32) -> Result<Vec<PathBuf>> {
    let read = |p: &str| fs::read_to_string(p).map_err(|e| Error::io("reading", p, e));
    let theirs = read(&format!("/proc/{pid}/cgroup"))?;
    let ours = read("/proc/self/cgroup")?;
    let mountinfo = read("/proc/self/mountinfo")?;
    Ok(v1_joins(&theirs, &ours, &mountinfo))
}

/// [`v1_procs_to_join`] from the texts of the two /proc/PID/cgroup files
/// and our mountinfo.
fn v1_joins(theirs: &str, ours: &str, mountinfo: &str) -> Vec<PathBuf> {
    let v1 = |text: &str| -> Vec<(String, String, String)> {
        text.lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ':');
                let (id, controllers, path) = (f.next()?, f.next()?, f.next()?);
                (id != "0" && !controllers.is_empty())
                    .then(|| (id.to_owned(), controllers.to_owned(), path.to_owned()))
            })
            .collect()
    };
    let ours = v1(ours);
    // (mount root, mount point, super options) of each writable v1 mount.
    let mounts: Vec<(String, PathBuf, Vec<String>)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut r = right.split(' ');
            let (fstype, _, options) = (r.next()?, r.next()?, r.next()?);
            let mut l = left.split(' ');
            let (root, point, mount_options) = (l.nth(3)?, l.next()?, l.next()?);
            (fstype == "cgroup"
                && !mount_options.split(',').any(|o| o == "ro")
                && !options.split(',').any(|o| o == "ro"))
            .then(|| {
                (
                    unescape(root),
                    PathBuf::from(unescape(point)),
                    options.split(',').map(String::from).collect(),
                )
            })
        })
        .collect();
    let mut joins = Vec::new();
    for (id, controllers, path) in v1(theirs) {
        if ours.iter().any(|(i, _, p)| *i == id && *p == path) || path.contains("/..") {
            continue;
        }
        let found = mounts.iter().find_map(|(root, point, options)| {
            if !controllers
                .split(',')
                .all(|c| options.iter().any(|o| o == c))
            {
                return None;
            }
            // A bind mount of a cgroup below the hierarchy's root shows
            // only what lies under it.
            let rel = if root == "/" {
                path.as_str()
            } else {
                let rest = path.strip_prefix(root.as_str())?;
                if !rest.is_empty() && !rest.starts_with('/') {
                    return None;
                }
                rest
            };
            Some(point.join(rel.trim_start_matches('/')).join("cgroup.procs"))
        });
        joins.extend(found);
    }
    joins
}

/// mountinfo escapes spaces and friends as octal.
pub(crate) fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(own: &str, dir: bool, mounted_on: bool, populated: bool) -> V2Facts {
        V2Facts {
            own: Some(PathBuf::from(own)),
            dir,
            mounted_on,
            populated,
        }
    }

    #[test]
    fn cgroup2_is_mounted_only_at_the_root_of_our_own_namespace_on_an_empty_sysfs_dir() {
        // A Nix uid-range builder: 0::/ and sysfs's own empty directory.
        assert_eq!(
            missing_v2(&facts("/", true, false, false)),
            MissingV2::Mount
        );
        // A hybrid or v1 host without the unified hierarchy.
        let MissingV2::Refuse(fix) = missing_v2(&facts("/", true, true, true)) else {
            panic!("mounted over a v1 tmpfs")
        };
        assert!(fix.ends_with("/sys/fs/cgroup/unified"), "{fix}");
        // Below the root of the namespace: someone else's hierarchy.
        let MissingV2::Refuse(fix) = missing_v2(&facts("/user.slice", true, false, false)) else {
            panic!("mounted below the namespace root")
        };
        assert!(
            fix.ends_with("mount -t cgroup2 none /sys/fs/cgroup"),
            "{fix}"
        );
        let MissingV2::Refuse(fix) = missing_v2(&facts("/", false, false, false)) else {
            panic!("mounted without sysfs")
        };
        assert!(fix.contains("is sysfs mounted"), "{fix}");
        let unknown = V2Facts {
            own: None,
            ..facts("/", true, false, false)
        };
        assert!(matches!(missing_v2(&unknown), MissingV2::Refuse(_)));
    }

    #[test]
    fn v1_hierarchies_to_join_are_those_where_the_process_sits_elsewhere() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer ro,relatime - cgroup cgroup rw,freezer
38 31 0:35 /sub /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let ours =
            "9:name=systemd:/\n8:pids:/sub\n6:freezer:/\n5:devices:/\n2:cpu,cpuacct:/x\n0::/\n";
        let theirs = "9:name=systemd:/m.scope/payload\n8:pids:/sub/g\n6:freezer:/g\n\
                      5:devices:/m/payload\n2:cpu,cpuacct:/x\n1:net_cls:/g\n0::/m/payload\n";
        assert_eq!(
            v1_joins(theirs, ours, mountinfo),
            [
                // name=systemd, in the line's order
                "/sys/fs/cgroup/systemd/m.scope/payload/cgroup.procs",
                // pids: a bind of /sub, the path taken relative to it
                "/sys/fs/cgroup/pids/g/cgroup.procs",
                "/sys/fs/cgroup/devices/m/payload/cgroup.procs",
                // not freezer (read-only), cpu,cpuacct (the same cgroup
                // as ours), net_cls (not mounted) or v2
            ]
            .map(PathBuf::from)
        );
        // Outside our view: nothing to join.
        assert!(v1_joins("5:devices:/../m\n", "5:devices:/\n", mountinfo).is_empty());
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/x\"), r"/x\");
    }
}
