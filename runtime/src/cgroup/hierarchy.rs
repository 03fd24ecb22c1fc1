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

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/x\"), r"/x\");
    }
}
