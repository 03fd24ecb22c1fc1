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
pub mod hierarchy;

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::spec::identity::MachineName;
use hierarchy::{SYSTEMD_V1, ensure_v2_mount, own_v1_systemd_cgroup, own_v2_cgroup};

/// Where the guest's cgroups live, as paths on the host.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CgroupLayout {
    /// The cgroup v2 mount point on the host.
    pub mount: PathBuf,
    /// The unit-like cgroup that holds `payload` (and `supervisor`).
    pub base: PathBuf,
    /// Whose `base` is, and so what is ours to create and remove.
    pub placement: Placement,
    /// On a hybrid systemd host: the scope in the named `systemd` v1
    /// hierarchy, which systemd tracks units by and clone3 cannot enter.
    pub v1: Option<V1Scope>,
    /// The guest's device policy, once in force (devices.rs).
    #[serde(default)]
    pub devices: Option<DevicePolicy>,
}

/// Whose cgroup the guest's `payload` sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Placement {
    /// Standalone: `machine.slice/machine-NAME.scope`, which we create
    /// and remove ourselves.
    OwnScope,
    /// A transient scope systemd made for this boot (and removes); only
    /// `payload` is ours.
    SystemdScope,
    /// `--keep-unit`: the calling unit's cgroup, its manager's. With
    /// `supervisor` we move ourselves into `supervisor` beside `payload`
    /// (not when we run in the hierarchy's root, which may hold processes
    /// and belongs to no unit).
    KeepUnit { supervisor: bool },
}

/// What the layout is decided from: the facts of the host and the call.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub name: &'a MachineName,
    pub keep_unit: bool,
    /// The transient scope systemd makes for us, if any.
    pub scope_unit: Option<&'a str>,
    /// The cgroup v2 mount point.
    pub mount: PathBuf,
    /// Our own v2 cgroup, relative to the hierarchy's root.
    pub own: PathBuf,
    /// Our cgroup in systemd's named v1 hierarchy, on a hybrid host.
    pub own_v1: Option<PathBuf>,
    /// `--slice` (machine.slice when None).
    pub slice: Option<&'a str>,
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

/// The guest's scope and the launcher's own cgroup in the named v1 hierarchy.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct V1Scope {
    scope: PathBuf,
    home: PathBuf,
}

/// Where `--keep-unit` launchers claim their unit's cgroup (see
/// [`CgroupLayout::claim_unit`]).
pub const UNIT_LOCK_DIR: &str = "/run/nixspawn/.units";

/// A unit's lock file name: a hash of its cgroup path (which may be longer
/// than a file name, and has slashes), stable across runs so that a dead
/// holder's file is found and cleared by the next launcher in that unit.
fn unit_lock_name(unit: &Path) -> String {
    use std::hash::Hasher;
    use std::os::unix::ffi::OsStrExt;
    let mut h = siphasher::sip128::SipHasher13::new();
    h.write(unit.as_os_str().as_bytes());
    format!(
        "{:032x}",
        siphasher::sip128::Hasher128::finish128(&h).as_u128()
    )
}

/// A held claim on a `--keep-unit` unit's cgroup. Dropping it (only once
/// the payload is destroyed) unlinks the lock file while still holding it.
pub(crate) struct UnitClaim {
    held: Option<(PathBuf, std::fs::File)>,
}

impl UnitClaim {
    /// Let go of our descriptor without unlinking the file: the janitor's
    /// copy keeps the claim until it has destroyed the payload.
    pub(crate) fn keep_for_janitor(mut self) {
        drop(self.held.take());
    }
}

impl Drop for UnitClaim {
    fn drop(&mut self) {
        if let Some((path, f)) = self.held.take() {
            crate::state::lockfile::release(&path, f);
        }
    }
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

fn rel(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

impl CgroupLayout {
    /// Decide the layout for a machine from this host (nothing is created
    /// yet). With `scope_unit` the guest goes into that transient scope of
    /// systemd's.
    pub fn plan(
        name: &MachineName,
        keep_unit: bool,
        scope_unit: Option<&str>,
        slice: Option<&str>,
    ) -> Result<Self> {
        Ok(Self::decide(&Facts {
            name,
            keep_unit,
            scope_unit,
            slice,
            mount: ensure_v2_mount()?,
            own: own_v2_cgroup()?,
            own_v1: scope_unit.and_then(|_| own_v1_systemd_cgroup()),
        }))
    }

    /// The layout for these facts (no system access).
    pub fn decide(facts: &Facts<'_>) -> Self {
        let mount = facts.mount.clone();
        let slice = crate::spec::process::slice_path(facts.slice.unwrap_or("machine.slice"));
        let (base, placement, v1) = if let Some(unit) = facts.scope_unit {
            let rel_base = slice.join(unit);
            let v1 = facts.own_v1.as_ref().map(|own| V1Scope {
                scope: Path::new(SYSTEMD_V1).join(&rel_base),
                home: Path::new(SYSTEMD_V1).join(rel(own)),
            });
            (mount.join(&rel_base), Placement::SystemdScope, v1)
        } else if facts.keep_unit {
            // A launcher restarted from its own `supervisor` keeps the unit's.
            let own = &facts.own;
            let unit = if own.ends_with("supervisor") {
                own.parent().unwrap_or(own)
            } else {
                own
            };
            let supervisor = facts.own != Path::new("/");
            (
                mount.join(rel(unit)),
                Placement::KeepUnit { supervisor },
                None,
            )
        } else {
            let scope =
                crate::host::scope::unit_name(facts.name, crate::host::scope::Naming::Machined);
            (mount.join(&slice).join(scope), Placement::OwnScope, None)
        };
        CgroupLayout {
            mount,
            base,
            placement,
            v1,
            devices: None,
        }
    }

    /// In a transient scope systemd made (and will remove).
    pub fn in_systemd_scope(&self) -> bool {
        self.placement == Placement::SystemdScope
    }

    fn uses_supervisor(&self) -> bool {
        self.placement == Placement::KeepUnit { supervisor: true }
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

    /// The policy again, for a new boot in a new scope (systemd scopes:
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

    /// Claim a `--keep-unit` unit's cgroup for this launcher alone, before
    /// [`Self::check_unclaimed`] looks at its payload: two launchers
    /// started together in one unit would otherwise both find the payload
    /// empty and then share it, or one reset it under the other's guest.
    /// The claim is a lock file under /run/nixspawn/.units named after the
    /// unit's cgroup, labelled with the machine's name (for the loser's
    /// error), held for the guest's life and by the janitor until its
    /// cleanup is done; the kernel drops it with its last holder. None
    /// outside `--keep-unit` (a scope's name is the machine's, claimed
    /// with it).
    pub(crate) fn claim_unit(
        &self,
        name: &MachineName,
        janitor: &crate::launcher::janitor::claim::JanitorLink,
    ) -> Result<Option<UnitClaim>> {
        use crate::launcher::janitor::claim::Claim;
        use crate::state::lockfile;
        use std::os::fd::AsFd;
        if !matches!(self.placement, Placement::KeepUnit { .. }) {
            return Ok(None);
        }
        let dir = crate::state::run_path(UNIT_LOCK_DIR);
        crate::state::ensure_root_dir(&dir, 0o755, crate::state::Existing::SetMode)?;
        let path = dir.join(unit_lock_name(&self.base_relative()));
        janitor.note(&Claim::Unit { path: path.clone() }, None)?;
        let label = format!("{name}\n{}\n", self.base_relative().display());
        match lockfile::acquire_labelled(&path, &label)? {
            Ok(held) => {
                janitor.note(&Claim::UnitHeld { path: path.clone() }, Some(held.as_fd()))?;
                Ok(Some(UnitClaim {
                    held: Some((path, held)),
                }))
            }
            Err(holder) => Err(Error::UnitBusy {
                unit: self.base.clone(),
                machine: holder
                    .lines()
                    .next()
                    .filter(|l| !l.is_empty())
                    .unwrap_or("(unnamed)")
                    .to_owned(),
            }),
        }
    }

    /// Refuse a unit's cgroup whose payload has processes in it: that is
    /// another launcher's guest (systemd-nspawn would put a second guest in
    /// the same cgroup), never ours to kill. Called before the layout is
    /// claimed, since whoever claims it destroys the payload at the end.
    /// (In our own scope, whose name is claimed, a payload can only be left
    /// over from a killed run, and [`Self::create`] empties it.)
    pub fn check_unclaimed(&self) -> Result<()> {
        let payload = self.payload();
        if matches!(self.placement, Placement::KeepUnit { .. }) && is_populated(&payload)? {
            return Err(Error::PayloadBusy { path: payload });
        }
        Ok(())
    }

    /// Create the directories; with `--keep-unit` move ourselves (and
    /// `companion`, the janitor) to `supervisor`.
    pub fn create(&self, companion: Option<i32>) -> Result<()> {
        let mut to_make = Vec::new();
        match self.placement {
            // systemd made the scope; only payload is ours.
            Placement::SystemdScope => {}
            Placement::OwnScope => {
                let mut dir = self.base.clone();
                while dir != self.mount && !dir.exists() {
                    to_make.push(dir.clone());
                    if !dir.pop() {
                        break;
                    }
                }
                to_make.reverse();
            }
            Placement::KeepUnit { supervisor } => {
                if supervisor {
                    to_make.push(self.supervisor());
                }
            }
        }
        to_make.push(self.payload());
        for dir in to_make {
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // A payload left over from a killed run (see
                    // `check_unclaimed` for one that is not): empty it and
                    // reuse it.
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
        if self.uses_supervisor() {
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
        if self.in_systemd_scope() {
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

    /// The payload cgroup in a scope systemd just made (systemd scopes),
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
        if self.placement != Placement::OwnScope {
            return result;
        }
        also(remove_tree(&self.base));
        // Without a service manager machine.slice is ours alone: whichever
        // guest leaves it empty removes it, not only the one that made it
        // (two guests ending together would otherwise leave it behind).
        // (So is any --slice's: every empty slice above the scope goes.)
        if !Path::new("/run/systemd/system").exists() {
            let mut dir = self.base.parent();
            while let Some(d) = dir
                && d.starts_with(&self.mount)
                && d != self.mount
                && d.extension().is_some_and(|e| e == "slice")
            {
                if fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
        }
        result
    }

    /// Kill every process left in a transient scope of systemd's (after
    /// the launcher died: its placeholder, a container process not yet
    /// moved on), so that systemd stops and collects the scope.
    pub fn kill_scope(&self) {
        if self.in_systemd_scope() {
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

    fn facts<'a>(
        name: &'a MachineName,
        keep_unit: bool,
        scope: Option<&'a str>,
        own: &str,
    ) -> Facts<'a> {
        Facts {
            name,
            keep_unit,
            scope_unit: scope,
            mount: PathBuf::from("/sys/fs/cgroup/unified"),
            own: PathBuf::from(own),
            own_v1: None,
            slice: None,
        }
    }

    #[test]
    fn standalone_guests_get_a_scope_of_their_own() {
        let name = MachineName::new("web-1").unwrap();
        let l = CgroupLayout::decide(&facts(&name, false, None, "/user.slice/x"));
        assert_eq!(l.placement, Placement::OwnScope);
        assert_eq!(
            l.payload(),
            Path::new("/sys/fs/cgroup/unified/machine.slice/machine-web\\x2d1.scope/payload")
        );
        assert_eq!(
            l.payload_relative(),
            Path::new("/machine.slice/machine-web\\x2d1.scope/payload")
        );
        assert!(!l.in_systemd_scope());
        assert!(l.v1.is_none());
    }

    #[test]
    fn systemd_scopes_are_systemd_s_and_start_the_guest_at_their_root() {
        let name = MachineName::new("web").unwrap();
        let mut f = facts(&name, false, Some("web.scope"), "/system.slice/x.service");
        f.own_v1 = Some(PathBuf::from("/system.slice/x.service"));
        let l = CgroupLayout::decide(&f);
        assert_eq!(l.placement, Placement::SystemdScope);
        assert!(l.in_systemd_scope());
        assert_eq!(l.base_relative(), Path::new("/machine.slice/web.scope"));
        let v1 = l.v1.expect("a hybrid host's named hierarchy is visited");
        assert_eq!(
            v1.scope,
            Path::new("/sys/fs/cgroup/systemd/machine.slice/web.scope")
        );
        assert_eq!(
            v1.home,
            Path::new("/sys/fs/cgroup/systemd/system.slice/x.service")
        );
    }

    #[test]
    fn keep_unit_stays_in_the_callers_unit_with_a_supervisor_beside_payload() {
        let name = MachineName::new("web").unwrap();
        let l = CgroupLayout::decide(&facts(&name, true, None, "/system.slice/n@web.service"));
        assert_eq!(l.placement, Placement::KeepUnit { supervisor: true });
        assert_eq!(
            l.payload(),
            Path::new("/sys/fs/cgroup/unified/system.slice/n@web.service/payload")
        );
        assert_eq!(
            l.supervisor(),
            Path::new("/sys/fs/cgroup/unified/system.slice/n@web.service/supervisor")
        );
        // Restarted from its own supervisor cgroup: the unit is the parent.
        let again = CgroupLayout::decide(&facts(
            &name,
            true,
            None,
            "/system.slice/n@web.service/supervisor",
        ));
        assert_eq!(again.base, l.base);
        // In the hierarchy's root there is no unit to split.
        let root = CgroupLayout::decide(&facts(&name, true, None, "/"));
        assert_eq!(root.placement, Placement::KeepUnit { supervisor: false });
        assert_eq!(root.payload(), Path::new("/sys/fs/cgroup/unified/payload"));
    }
}
