//! The guest's transient scope unit on a systemd host, as systemd-nspawn
//! allocates it without `--keep-unit`: in machine.slice, delegated, with us
//! as its controller so that stopping the unit asks us to shut the guest
//! down instead of killing it.
//!
//! systemd only creates a scope around running processes, and the guest's
//! PID 1 is cloned straight into the scope's cgroup (clone3), after the
//! scope exists; so the scope is started around a placeholder process that
//! leaves as soon as the guest is in.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::bus::{Bus, CallError, Property, property};
use crate::error::{Error, Result};
use crate::identity::MachineName;
use crate::sys::{self, Forked};

const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// A method of systemd's manager object.
fn manager<A: dbus::arg::AppendAll, R: dbus::arg::ReadAll + 'static>(
    bus: &Bus,
    method: &str,
    args: A,
) -> std::result::Result<R, CallError> {
    bus.call(SYSTEMD, SYSTEMD_PATH, MANAGER, method, args)
}

/// The scope's unit name. systemd-nspawn up to v258 let machined name it
/// `machine-NAME.scope` (escaped); from v259 it names it `NAME.scope` itself.
pub fn unit_name(machine: &MachineName, machined_style: bool) -> String {
    if machined_style {
        format!("machine-{}.scope", escape_unit_prefix(machine.as_str()))
    } else {
        format!("{machine}.scope")
    }
}

/// systemd's unit-name escaping for a free-form prefix: `/` becomes `-`,
/// and `-`, a leading `.` and anything outside `[A-Za-z0-9:_.]` become `\xNN`.
fn escape_unit_prefix(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// A process that only exists to be put into the new scope.
pub struct Placeholder {
    pid: i32,
}

impl Placeholder {
    fn spawn() -> Result<Self> {
        match sys::fork().map_err(|e| Error::syscall("fork", e))? {
            Forked::Parent { pid, .. } => Ok(Placeholder { pid }),
            Forked::Child => {
                let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
                loop {
                    nix::unistd::pause();
                }
            }
        }
    }

    fn end(&mut self) {
        if self.pid > 0 {
            let pid = nix::unistd::Pid::from_raw(self.pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            self.pid = 0;
        }
    }
}

impl Drop for Placeholder {
    fn drop(&mut self) {
        self.end();
    }
}

/// What the scope is made with, besides its name.
pub struct ScopeRequest<'a> {
    pub machine: &'a MachineName,
    pub unit: String,
    pub kill_signal: Option<i32>,
    /// Device nodes bound into the guest, with whether read-only.
    pub device_binds: Vec<(PathBuf, bool)>,
}

/// A started scope. The placeholder keeps it alive until the guest is in.
pub struct Scope {
    pub unit: String,
    /// The scope's cgroup, relative to the hierarchy root.
    pub cgroup: PathBuf,
    /// The unit's object path (its RequestStop signal comes from there).
    pub object: String,
    placeholder: Placeholder,
}

impl Scope {
    /// Start the scope and wait for its job to finish.
    pub fn start(bus: &Bus, req: &ScopeRequest<'_>) -> Result<Self> {
        let step = |what: &str| format!("{what} {}", req.unit);
        bus.add_match(&format!(
            "type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='JobRemoved'"
        ))
        .map_err(|e| e.into_error(step("watching the job for")))?;
        // JobRemoved is only broadcast while someone is subscribed.
        let _: std::result::Result<(), _> = manager(bus, "Subscribe", ());

        let placeholder = Placeholder::spawn()?;
        let job = start_unit(bus, req, placeholder.pid)
            .map_err(|e| e.into_error(step("starting the transient scope")))?;
        let result = bus.wait_signal(Duration::from_secs(30), |m| {
            let (_, path, _, result): (u32, dbus::Path, String, String) = m.read4().ok()?;
            (path == job).then_some(result)
        });
        match result.as_deref() {
            Some("done") => {}
            other => {
                return Err(Error::Bus {
                    step: step("starting the transient scope"),
                    message: format!("its job ended with {:?}", other.unwrap_or("no answer")),
                });
            }
        }
        let cgroup = crate::cgroup::v2_cgroup_of(&placeholder.pid.to_string())?;
        let (object,): (dbus::Path,) =
            manager(bus, "GetUnit", (&req.unit,)).map_err(|e| e.into_error(step("looking up")))?;
        bus.add_match(&format!(
            "type='signal',sender='{SYSTEMD}',interface='org.freedesktop.systemd1.Scope',member='RequestStop',path='{object}'"
        ))
        .map_err(|e| e.into_error(step("watching stop requests for")))?;
        Ok(Scope {
            unit: req.unit.clone(),
            cgroup,
            object: object.to_string(),
            placeholder,
        })
    }

    /// The guest is in the scope: the placeholder may go.
    pub fn release_placeholder(&mut self) {
        self.placeholder.end();
    }

    /// Whether a signal is systemd asking us to stop this scope.
    pub fn is_stop_request(&self, m: &dbus::Message) -> bool {
        m.member().as_deref() == Some("RequestStop") && m.path().is_some_and(|p| *p == *self.object)
    }

    /// Let go of the scope after the guest ended: anything left is killed
    /// and our reference dropped, so the unit is collected (as nspawn does).
    pub fn finish(mut self, bus: &Bus) {
        self.placeholder.end();
        // Each is best effort: the scope may already be gone.
        let unit = self.unit.as_str();
        let _: std::result::Result<(), _> = manager(bus, "AbandonScope", (unit,));
        let _: std::result::Result<(), _> = manager(bus, "KillUnit", (unit, "all", libc::SIGKILL));
        let _: std::result::Result<(), _> = manager(bus, "UnrefUnit", (unit,));
    }
}

fn start_unit(
    bus: &Bus,
    req: &ScopeRequest<'_>,
    pid: i32,
) -> std::result::Result<dbus::Path<'static>, CallError> {
    // A scope of the same name from the previous boot may still be on its
    // way out: retry for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let aux: Vec<(&str, Vec<Property>)> = Vec::new();
        let args = (&req.unit, "fail", scope_properties(bus, req, pid), aux);
        match manager(bus, "StartTransientUnit", args) {
            Ok((job,)) => return Ok(job),
            Err(e)
                if e.name == "org.freedesktop.systemd1.UnitExists" && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The scope's properties, as systemd-nspawn sets them.
fn scope_properties(bus: &Bus, req: &ScopeRequest<'_>, pid: i32) -> Vec<Property> {
    let mut props: Vec<Property> = vec![
        property("PIDs", vec![pid as u32]),
        property("Description", format!("Container {}", req.machine)),
        property("Delegate", true),
        property("CollectMode", "inactive-or-failed".to_string()),
        property("AddRef", true),
        property("Slice", "machine.slice".to_string()),
        property("Controller", bus.unique_name()),
        property("DevicePolicy", "closed".to_string()),
        // The API nodes a guest's own PrivateDevices= needs, and its ptys
        // (which it may use but never create).
        property(
            "DeviceAllow",
            vec![
                ("/dev/net/tun".to_string(), "rwm".to_string()),
                ("char-pts".to_string(), "rw".to_string()),
            ],
        ),
    ];
    for (node, read_only) in &req.device_binds {
        let access = if *read_only { "r" } else { "rw" };
        props.push(property(
            "DeviceAllow",
            vec![(node.display().to_string(), access.to_string())],
        ));
    }
    if let Some(sig) = req.kill_signal {
        props.push(property("KillSignal", sig));
        props.push(property("KillMode", "mixed".to_string()));
    }
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_as_systemd_spells_them() {
        let n = |s: &str| MachineName::new(s).unwrap();
        assert_eq!(unit_name(&n("web"), true), "machine-web.scope");
        assert_eq!(
            unit_name(&n("my-box.1"), true),
            "machine-my\\x2dbox.1.scope"
        );
        assert_eq!(unit_name(&n("my-box.1"), false), "my-box.1.scope");
    }
}
