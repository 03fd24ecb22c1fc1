//! The guest's cgroup on the host's cgroup v2 hierarchy.
//!
//! The guest always sees a pure cgroup v2 tree (its own subtree, through a
//! cgroup namespace), also on hybrid hosts whose v2 hierarchy sits at
//! /sys/fs/cgroup/unified. Layout, as systemd-nspawn's:
//! - standalone: `/machine.slice/machine-NAME.scope/payload`
//! - on a systemd host: `/machine.slice/UNIT/payload` in the transient scope
//!   systemd made for us (see scope.rs); only `payload` is ours
//! - `--keep-unit`: `<our cgroup>/payload`, and we move to `<our cgroup>/supervisor`.

pub mod devices;

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::spec::identity::MachineName;

/// Where the guest's cgroups live, as paths on the host.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CgroupLayout {
    /// The cgroup v2 mount point on the host.
    pub mount: PathBuf,
    /// The unit-like cgroup that holds `payload` (and `supervisor`).
    pub base: PathBuf,
    pub keep_unit: bool,
    /// Whether we move ourselves to `supervisor` (not when we run in the
    /// hierarchy's root, which may hold processes and belongs to no unit).
    pub use_supervisor: bool,
    /// `base` is a unit systemd created and removes (a transient scope).
    pub managed: bool,
    /// On a hybrid systemd host: the scope in the named `systemd` v1
    /// hierarchy, which systemd tracks units by and clone3 cannot enter.
    pub v1: Option<V1Scope>,
    /// The guest's device policy, once in force (devices.rs).
    #[serde(default)]
    pub devices: Option<DevicePolicy>,
}

/// Where the guest's device policy is enforced, to undo it at the end.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DevicePolicy {
    pub rules: Vec<crate::cgroup::devices::Rule>,
    /// The v2 cgroup its program is attached to (the payload's parent).
    pub program_cgroup: PathBuf,
    /// The program's id, to detach it from a cgroup that outlives the
    /// guest (a unit's, under --keep-unit).
    pub program_id: Option<u32>,
    /// With a v1 `devices` hierarchy: the guest's cgroup there.
    pub v1: Option<V1Devices>,
}

/// The guest's cgroups in the host's v1 `devices` hierarchy: `payload`
/// (which PID 1 starts in) below a mirror of the v2 scope, both holding
/// the allow list, so the guest can never widen its own.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct V1Devices {
    /// Where the hierarchy is mounted.
    pub mount: PathBuf,
    /// The mirror of the v2 scope, restricted too (None where that is the
    /// hierarchy's root, which cannot be).
    pub parent: Option<PathBuf>,
    pub payload: PathBuf,
    /// The launcher's own cgroup there, to go back to after a clone.
    pub home: PathBuf,
    /// Directories we created, outermost first.
    pub created: Vec<PathBuf>,
}

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
const SYSTEMD_V1: &str = "/sys/fs/cgroup/systemd";

/// The guest's scope and the launcher's own cgroup in the named v1 hierarchy.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct V1Scope {
    scope: PathBuf,
    home: PathBuf,
}

/// Our cgroup in the named v1 hierarchy, if it is mounted here (the
/// kernel lists it in /proc/self/cgroup wherever any namespace mounts it).
fn own_v1_systemd_cgroup() -> Option<PathBuf> {
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

/// While alive, the launcher sits in the guest's scope in the named v1
/// hierarchy, so that a child cloned now starts there (clone3 places it in
/// v2 only). Dropping it moves the launcher back.
pub struct V1Visit {
    homes: Vec<PathBuf>,
}

impl Drop for V1Visit {
    fn drop(&mut self) {
        for home in &self.homes {
            let _ = fs::write(home.join("cgroup.procs"), "0");
        }
    }
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

fn rel(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

impl CgroupLayout {
    /// Decide the layout for a machine (nothing is created yet). With
    /// `scope_unit` the guest goes into that transient scope of systemd's.
    pub fn plan(name: &MachineName, keep_unit: bool, scope_unit: Option<&str>) -> Result<Self> {
        let mount = v2_mount()?;
        let own = own_v2_cgroup()?;
        let use_supervisor = keep_unit && own != Path::new("/");
        if let Some(unit) = scope_unit {
            let rel_base = Path::new("machine.slice").join(unit);
            let v1 = own_v1_systemd_cgroup().map(|own| V1Scope {
                scope: Path::new(SYSTEMD_V1).join(&rel_base),
                home: Path::new(SYSTEMD_V1).join(rel(&own)),
            });
            return Ok(CgroupLayout {
                base: mount.join(&rel_base),
                mount,
                keep_unit,
                use_supervisor: false,
                managed: true,
                v1,
                devices: None,
            });
        }
        let base = if keep_unit {
            let own = if own.ends_with("supervisor") {
                own.parent().unwrap_or(&own).to_path_buf()
            } else {
                own
            };
            mount.join(rel(&own))
        } else {
            mount
                .join("machine.slice")
                .join(crate::host::scope::unit_name(name, true))
        };
        Ok(CgroupLayout {
            mount,
            base,
            keep_unit,
            use_supervisor,
            managed: false,
            v1: None,
            devices: None,
        })
    }

    /// The scope's path relative to the hierarchy root (what /proc/PID/cgroup says).
    pub fn base_relative(&self) -> PathBuf {
        Path::new("/").join(self.base.strip_prefix(&self.mount).unwrap_or(Path::new("")))
    }

    /// Enter the guest's v1 cgroups (its scope in the named `systemd`
    /// hierarchy, its payload in the `devices` one) for the moment a child
    /// is cloned (no-op where there are none).
    pub fn visit_v1(&self) -> Result<Option<V1Visit>> {
        let stops = self.v1.iter().map(|v1| (&v1.scope, &v1.home)).chain(
            self.devices
                .iter()
                .filter_map(|d| d.v1.as_ref())
                .map(|v1| (&v1.payload, &v1.home)),
        );
        let mut visit = V1Visit { homes: Vec::new() };
        for (target, home) in stops {
            let procs = target.join("cgroup.procs");
            // Dropping the visit on an error takes us back from the others.
            fs::write(&procs, "0").map_err(|e| Error::Cgroup {
                step: "entering",
                path: procs,
                source: e,
            })?;
            visit.homes.push(home.clone());
        }
        Ok((!visit.homes.is_empty()).then_some(visit))
    }

    /// Put the guest's device policy in force (after [`Self::create`]):
    /// the program on the payload's parent in v2 (on the payload itself if
    /// the parent is the hierarchy's root, which must never be
    /// restricted), and the v1 allow list where there is a v1 `devices`
    /// hierarchy. Recorded as it goes, so that [`Self::destroy`] undoes
    /// whatever was done.
    pub fn enforce_devices(&mut self, rules: Vec<crate::cgroup::devices::Rule>) -> Result<()> {
        let policy = self.devices.insert(self.device_plan(rules));
        policy.program_id = Some(crate::cgroup::devices::attach(
            &policy.program_cgroup,
            &policy.rules,
        )?);
        let Some(v1) = &mut policy.v1 else {
            return Ok(());
        };
        v1.created =
            crate::cgroup::devices::v1_make(&v1.mount, v1.payload.parent().unwrap_or(&v1.mount))?;
        v1.created.push(v1.payload.clone());
        v1_restrict_and_make_payload(v1, &policy.rules)
    }

    /// Where [`Self::enforce_devices`] will put the policy, before it does
    /// (for the janitor, which must find it however far it got): the v1
    /// directories it would create, no program yet.
    pub fn device_plan(&self, rules: Vec<crate::cgroup::devices::Rule>) -> DevicePolicy {
        let program_cgroup = if self.base == self.mount {
            self.payload()
        } else {
            self.base.clone()
        };
        let v1 = crate::cgroup::devices::v1_hierarchy().map(|(mount, own)| {
            let parent = mount.join(rel(&self.base_relative()));
            let payload = parent.join("payload");
            let mut created = Vec::new();
            let mut d = parent.clone();
            while d != mount && !d.exists() {
                created.push(d.clone());
                if !d.pop() {
                    break;
                }
            }
            created.reverse();
            created.push(payload.clone());
            V1Devices {
                payload,
                parent: (parent != mount).then_some(parent),
                home: mount.join(rel(&own)),
                mount,
                created,
            }
        });
        DevicePolicy {
            rules,
            program_cgroup,
            program_id: None,
            v1,
        }
    }

    /// The policy again, for a new boot in a new scope (managed layouts:
    /// systemd made a fresh scope, which has none of it).
    pub fn reenforce_devices(&self) -> Result<()> {
        let Some(policy) = &self.devices else {
            return Ok(());
        };
        crate::cgroup::devices::attach(&policy.program_cgroup, &policy.rules)?;
        if let Some(v1) = &policy.v1 {
            // The same directories as at the first boot (the last boot's
            // were removed with it), the payload last.
            for dir in v1.created.iter().filter(|d| **d != v1.payload) {
                let _ = fs::create_dir(dir);
            }
            v1_restrict_and_make_payload(v1, &policy.rules)?;
        }
        Ok(())
    }

    pub fn payload(&self) -> PathBuf {
        self.base.join("payload")
    }

    pub fn supervisor(&self) -> PathBuf {
        self.base.join("supervisor")
    }

    /// The payload path as the guest's cgroup namespace hides it (for display).
    pub fn payload_relative(&self) -> PathBuf {
        Path::new("/").join(
            self.payload()
                .strip_prefix(&self.mount)
                .unwrap_or(Path::new("")),
        )
    }

    /// Create the directories; with `--keep-unit` move ourselves (and
    /// `companion`, the janitor) to `supervisor`.
    pub fn create(&self, companion: Option<i32>) -> Result<()> {
        let mut to_make = Vec::new();
        if self.managed {
            // systemd made the scope; only payload is ours.
        } else if !self.keep_unit {
            let mut dir = self.base.clone();
            while dir != self.mount && !dir.exists() {
                to_make.push(dir.clone());
                if !dir.pop() {
                    break;
                }
            }
            to_make.reverse();
        } else if self.use_supervisor {
            to_make.push(self.supervisor());
        }
        to_make.push(self.payload());
        for dir in to_make {
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // A payload left over from a killed run: empty it and reuse it.
                    if dir == self.payload() {
                        self.reset_payload()?;
                    }
                }
                Err(e) => {
                    return Err(Error::Cgroup {
                        step: "creating",
                        path: dir,
                        source: e,
                    });
                }
            }
        }
        if self.use_supervisor {
            let procs = self.supervisor().join("cgroup.procs");
            for pid in ["0".to_string()]
                .into_iter()
                .chain(companion.map(|p| p.to_string()))
            {
                fs::write(&procs, pid).map_err(|e| Error::Cgroup {
                    step: "moving the launcher into",
                    path: procs.clone(),
                    source: e,
                })?;
            }
        }
        Ok(())
    }

    /// Hand the payload cgroup to the guest's root (the host id `shift`),
    /// so its systemd can create and manage cgroups below it.
    pub fn delegate_to(&self, shift: u32) -> Result<()> {
        let payload = self.payload();
        let id = (
            Some(nix::unistd::Uid::from_raw(shift)),
            Some(nix::unistd::Gid::from_raw(shift)),
        );
        for name in [
            "",
            "cgroup.procs",
            "cgroup.subtree_control",
            "cgroup.threads",
            "memory.oom.group",
            "memory.reclaim",
        ] {
            let p = if name.is_empty() {
                payload.clone()
            } else {
                payload.join(name)
            };
            match nix::unistd::chown(&p, id.0, id.1) {
                Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => {
                    return Err(Error::Cgroup {
                        step: "delegating",
                        path: p,
                        source: e.into(),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn open_payload(&self) -> Result<OwnedFd> {
        open_dir(self.payload())
    }

    /// Where the container process starts: the scope's root when systemd
    /// made the scope (machined must see the machine's leader there, as
    /// with nspawn, before it moves on into `payload`), else `payload`.
    pub fn open_start(&self) -> Result<OwnedFd> {
        if self.managed {
            open_dir(self.base.clone())
        } else {
            self.open_payload()
        }
    }

    /// Move a process into `payload`.
    pub fn move_into_payload(&self, pid: i32) -> Result<()> {
        let procs = self.payload().join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(|e| Error::Cgroup {
            step: "moving the guest into",
            path: procs,
            source: e,
        })
    }

    /// The payload cgroup in a scope systemd just made (managed layouts),
    /// or after emptying the old one.
    pub fn create_payload(&self) -> Result<()> {
        let payload = self.payload();
        fs::create_dir(&payload).map_err(|e| Error::Cgroup {
            step: "creating",
            path: payload,
            source: e,
        })
    }

    /// An empty payload cgroup for the next boot of the guest.
    pub fn reset_payload(&self) -> Result<()> {
        remove_tree(&self.payload())?;
        self.create_payload()
    }

    /// Kill what is left in the payload, wait for it to empty, and remove
    /// it (the guest's own sub-cgroups included); standalone, the scope
    /// around it too, whoever made it (it is named after the machine,
    /// whose name we hold). Under `--keep-unit` the service's cgroup and
    /// its `supervisor` (where we are) are its manager's to remove, as
    /// with systemd-nspawn; in a transient scope, systemd's.
    pub fn destroy(&self) -> Result<()> {
        // Every step is tried, also after one failed (the janitor gets
        // one go); the first failure is reported.
        let mut result = remove_tree(&self.payload());
        let mut also = |r: Result<()>| {
            if result.is_ok() {
                result = r;
            }
        };
        if let Some(policy) = &self.devices {
            // The guest is gone: its v1 cgroups are empty.
            if let Some(v1) = &policy.v1 {
                also(remove_dirs(&v1.payload));
                for dir in v1.created.iter().rev() {
                    let _ = fs::remove_dir(dir);
                }
                // As machine.slice in v2 below: without a service manager
                // whichever guest leaves it empty removes it.
                let slice = v1.mount.join("machine.slice");
                if !Path::new("/run/systemd/system").exists() && v1.payload.starts_with(&slice) {
                    let _ = fs::remove_dir(&slice);
                }
            }
            if let Some(id) = policy.program_id
                && policy.program_cgroup.exists()
            {
                also(crate::cgroup::devices::detach(&policy.program_cgroup, id));
            }
        }
        if self.managed || self.keep_unit {
            return result;
        }
        also(remove_tree(&self.base));
        // Without a service manager machine.slice is ours alone: whichever
        // guest leaves it empty removes it, not only the one that made it
        // (two guests ending together would otherwise leave it behind).
        let slice = self.mount.join("machine.slice");
        if !Path::new("/run/systemd/system").exists() && self.base.starts_with(&slice) {
            let _ = fs::remove_dir(&slice);
        }
        result
    }

    /// Kill every process left in a transient scope of systemd's (after
    /// the launcher died: its placeholder, a container process not yet
    /// moved on), so that systemd stops and collects the scope.
    pub fn kill_scope(&self) {
        if self.managed {
            kill_all(&self.base);
        }
    }
}

/// The allow list on the v1 parent, then a fresh payload below it with
/// the list too. A v1 cgroup takes "deny all" only while it has no
/// children, hence the order.
fn v1_restrict_and_make_payload(
    v1: &V1Devices,
    rules: &[crate::cgroup::devices::Rule],
) -> Result<()> {
    // Left over from a killed run or the last boot; nobody is in it.
    remove_dirs(&v1.payload)?;
    if let Some(parent) = &v1.parent {
        // A parent with other children (a unit's cgroup that has some)
        // cannot be narrowed; the payload's list and the v2 program still
        // hold, and the guest cannot reach that parent either way.
        if let Err(e) = crate::cgroup::devices::v1_restrict(parent, rules) {
            tracing::debug!("not restricting the v1 parent: {e}");
        }
    }
    fs::create_dir(&v1.payload).map_err(|e| Error::Cgroup {
        step: "creating",
        path: v1.payload.clone(),
        source: e,
    })?;
    crate::cgroup::devices::v1_restrict(&v1.payload, rules)
}

fn open_dir(p: PathBuf) -> Result<OwnedFd> {
    fs::File::open(&p)
        .map(OwnedFd::from)
        .map_err(|e| Error::Cgroup {
            step: "opening",
            path: p,
            source: e,
        })
}

/// Kill every process below `dir`, wait until it is empty, then remove it
/// and its sub-cgroups bottom-up.
pub fn remove_tree(dir: &Path) -> Result<()> {
    // After a normal exit the guest's PID namespace is gone and the cgroup
    // already empty: then there is nothing to kill or wait for.
    if !is_populated(dir)? {
        return remove_dirs(dir);
    }
    kill_all(dir);
    wait_empty(dir, Duration::from_secs(10))?;
    remove_dirs(dir)
}

fn is_populated(dir: &Path) -> Result<bool> {
    let events = dir.join("cgroup.events");
    match fs::read_to_string(&events) {
        Ok(text) => Ok(!text.lines().any(|l| l == "populated 0")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Cgroup {
            step: "reading",
            path: events,
            source: e,
        }),
    }
}

fn kill_all(dir: &Path) {
    // cgroup.kill (Linux 5.14) kills the whole subtree atomically.
    if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for pid in fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
    {
        if let Ok(pid) = pid.parse() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn wait_empty(dir: &Path, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(50);
    loop {
        if !is_populated(dir)? {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Error::Cgroup {
                step: "waiting for processes to leave",
                path: dir.to_path_buf(),
                source: io::Error::from_raw_os_error(libc::EBUSY),
            });
        }
        kill_all(dir);
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn remove_dirs(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Cgroup {
                step: "listing",
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_dirs(&entry.path())?;
        }
    }
    // A just-emptied cgroup can report EBUSY for a moment.
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 200 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(Error::Cgroup {
                    step: "removing",
                    path: dir.to_path_buf(),
                    source: e,
                });
            }
        }
    }
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
