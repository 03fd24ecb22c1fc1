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

use crate::error::{Error, Result};
use crate::host::bus::{Bus, CallError, Property, property};
use crate::spec::identity::MachineName;
use crate::sys::{self, Forked};

const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const SCOPE_INTERFACE: &str = "org.freedesktop.systemd1.Scope";
/// The bus itself: the only sender a client cannot pretend to be.
const BUS_DRIVER: &str = "org.freedesktop.DBus";

/// Which connection speaks for systemd. Any local user may send us a
/// signal (the system bus lets anyone address a unicast signal to anyone),
/// naming whatever path and interface it likes; only the sender field is
/// set by the bus. So a signal counts as systemd's only if it comes from
/// the unique name that owns org.freedesktop.systemd1, looked up when the
/// scope is started and followed through the bus's NameOwnerChanged
/// (systemd reconnects with a new name when it re-executes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdOwner(Option<String>);

impl SystemdOwner {
    /// Ask the bus who owns systemd's name now.
    fn resolve(bus: &Bus) -> std::result::Result<Self, CallError> {
        let (owner,): (String,) = bus.call(
            BUS_DRIVER,
            "/org/freedesktop/DBus",
            BUS_DRIVER,
            "GetNameOwner",
            (SYSTEMD,),
        )?;
        Ok(SystemdOwner(Some(owner)))
    }

    /// Follow an ownership change the bus announces.
    pub fn observe(&mut self, m: &dbus::Message) {
        if m.sender().as_deref() == Some(BUS_DRIVER)
            && m.interface().as_deref() == Some(BUS_DRIVER)
            && m.member().as_deref() == Some("NameOwnerChanged")
            && let Ok((name, _old, new)) = m.read3::<String, String, String>()
            && name == SYSTEMD
        {
            self.0 = (!new.is_empty()).then_some(new);
        }
    }

    /// Whether systemd sent `m`.
    pub fn sent(&self, m: &dbus::Message) -> bool {
        self.0.is_some() && m.sender().as_deref() == self.0.as_deref()
    }
}

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
pub fn unit_name(machine: &MachineName, naming: Naming) -> String {
    match naming {
        Naming::Machined => format!("machine-{}.scope", escape_unit_prefix(machine.as_str())),
        Naming::Own => format!("{machine}.scope"),
    }
}

/// Who names the scope: machined (`machine-NAME.scope`, systemd up to
/// v258's way) or the launcher itself (`NAME.scope`, v259 on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    Machined,
    Own,
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
    /// `--slice` (machine.slice when None).
    pub slice: Option<&'a str>,
    /// `--property`.
    pub properties: &'a [crate::spec::process::UnitProperty],
}

/// A started scope. The placeholder keeps it alive until the guest is in.
pub struct Scope {
    pub unit: String,
    /// The scope's cgroup, relative to the hierarchy root.
    pub cgroup: PathBuf,
    /// The unit's object path (its RequestStop signal comes from there).
    pub object: String,
    /// Who may ask us to stop it.
    pub systemd: SystemdOwner,
    placeholder: Placeholder,
}

impl Scope {
    /// Start the scope and wait for its job to finish.
    pub fn start(bus: &Bus, req: &ScopeRequest<'_>) -> Result<Self> {
        let step = |what: &str| format!("{what} {}", req.unit);
        bus.add_match(&format!(
            "type='signal',sender='{BUS_DRIVER}',interface='{BUS_DRIVER}',member='NameOwnerChanged',arg0='{SYSTEMD}'"
        ))
        .map_err(|e| e.into_error(step("watching systemd's bus name for")))?;
        bus.add_match(&format!(
            "type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='JobRemoved'"
        ))
        .map_err(|e| e.into_error(step("watching the job for")))?;
        // JobRemoved is only broadcast while someone is subscribed.
        let _: std::result::Result<(), _> = manager(bus, "Subscribe", ());
        let mut systemd = SystemdOwner::resolve(bus)
            .map_err(|e| e.into_error(step("looking up systemd's bus name for")))?;

        let placeholder = Placeholder::spawn()?;
        let job = start_unit(bus, req, placeholder.pid)
            .map_err(|e| e.into_error(step("starting the transient scope")))?;
        let result = bus.wait_signal(Duration::from_secs(30), |m| {
            systemd.observe(m);
            if !systemd.sent(m)
                || m.interface().as_deref() != Some(MANAGER)
                || m.member().as_deref() != Some("JobRemoved")
            {
                return None;
            }
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
        let cgroup = crate::cgroup::hierarchy::v2_cgroup_of(&placeholder.pid.to_string())?;
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
            systemd,
            placeholder,
        })
    }

    /// The guest is in the scope: the placeholder may go.
    pub fn release_placeholder(&mut self) {
        self.placeholder.end();
    }

    /// Whether a signal is systemd asking us to stop this scope (and
    /// follow systemd's name if the bus says it moved).
    pub fn is_stop_request(&mut self, m: &dbus::Message) -> bool {
        self.systemd.observe(m);
        self.systemd.sent(m) && is_stop_signal(m, &self.object)
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

/// RequestStop of the scope at `object`, whoever sent it.
fn is_stop_signal(m: &dbus::Message, object: &str) -> bool {
    m.interface().as_deref() == Some(SCOPE_INTERFACE)
        && m.member().as_deref() == Some("RequestStop")
        && m.path().is_some_and(|p| *p == *object)
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
        property("PIDs", vec![pid.cast_unsigned()]),
        property("Description", format!("Container {}", req.machine)),
        property("Delegate", true),
        property("CollectMode", "inactive-or-failed".to_string()),
        property("AddRef", true),
        property("Slice", req.slice.unwrap_or("machine.slice").to_string()),
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
    for p in req.properties {
        use crate::spec::process::PropertyValue;
        props.push(match p.value {
            PropertyValue::U64(n) => property(p.name, n),
            PropertyValue::Bool(b) => property(p.name, b),
        });
    }
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(sender: &str, path: &str, iface: &str, member: &str) -> dbus::Message {
        let mut m = dbus::Message::new_signal(path, iface, member).unwrap();
        m.set_sender(Some(sender.into()));
        m
    }

    #[test]
    fn only_systemds_connection_may_ask_us_to_stop() {
        let object = "/org/freedesktop/systemd1/unit/machine_2dweb_2escope";
        let mut owner = SystemdOwner(Some(":1.1".into()));
        let stop = |sender| signal(sender, object, SCOPE_INTERFACE, "RequestStop");
        assert!(owner.sent(&stop(":1.1")) && is_stop_signal(&stop(":1.1"), object));
        // Another local process, whatever it names.
        assert!(!owner.sent(&stop(":1.99")));
        assert!(!is_stop_signal(
            &signal(":1.1", "/other", SCOPE_INTERFACE, "RequestStop"),
            object
        ));
        // A client claiming to be the bus is not believed...
        let mut fake = signal(
            ":1.99",
            "/org/freedesktop/DBus",
            BUS_DRIVER,
            "NameOwnerChanged",
        );
        fake = fake.append3(SYSTEMD, ":1.1", ":1.99");
        owner.observe(&fake);
        assert_eq!(owner, SystemdOwner(Some(":1.1".into())));
        // ...the bus is: systemd re-executed under a new name.
        let mut real = signal(
            BUS_DRIVER,
            "/org/freedesktop/DBus",
            BUS_DRIVER,
            "NameOwnerChanged",
        );
        real = real.append3(SYSTEMD, ":1.1", ":1.7");
        owner.observe(&real);
        assert!(owner.sent(&stop(":1.7")) && !owner.sent(&stop(":1.1")));
        let mut gone = signal(
            BUS_DRIVER,
            "/org/freedesktop/DBus",
            BUS_DRIVER,
            "NameOwnerChanged",
        );
        gone = gone.append3(SYSTEMD, ":1.7", "");
        owner.observe(&gone);
        assert!(!owner.sent(&stop(":1.7")));
    }

    #[test]
    fn unit_names_as_systemd_spells_them() {
        let n = |s: &str| MachineName::new(s).unwrap();
        assert_eq!(unit_name(&n("web"), Naming::Machined), "machine-web.scope");
        assert_eq!(
            unit_name(&n("my-box.1"), Naming::Machined),
            "machine-my\\x2dbox.1.scope"
        );
        assert_eq!(unit_name(&n("my-box.1"), Naming::Own), "my-box.1.scope");
    }
}
