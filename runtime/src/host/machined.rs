//! systemd-machined: whether it can be reached (decided without a bus
//! connection, so `--register=auto` costs nothing where there is none), and
//! registering a machine the way the host's machined accepts: Varlink
//! `io.systemd.Machine.Register` (v256+), then D-Bus `RegisterMachineEx`
//! (v259+), then `RegisterMachineWithNetwork` (every version we meet).

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{Error, Result};
use crate::host::bus::{Bus, Property, property};
use crate::host::varlink;
use crate::spec::identity::{MachineName, Uuid};

/// machined's Varlink endpoint.
pub const VARLINK_SOCKET: &str = "/run/systemd/machine/io.systemd.Machine";
/// What `machinectl list` shows in its SERVICE column for our guests.
pub const SERVICE: &str = "nixspawn";

const MACHINED: &str = "org.freedesktop.machine1";
const MACHINED_PATH: &str = "/org/freedesktop/machine1";
const MACHINED_MANAGER: &str = "org.freedesktop.machine1.Manager";

/// A method of machined's manager object.
fn manager<A: dbus::arg::AppendAll, R: dbus::arg::ReadAll + 'static>(
    bus: &Bus,
    method: &str,
    args: A,
) -> std::result::Result<R, crate::host::bus::CallError> {
    bus.call(MACHINED, MACHINED_PATH, MACHINED_MANAGER, method, args)
}

/// Where the system bus listens unless `DBUS_SYSTEM_BUS_ADDRESS` says otherwise.
const DEFAULT_SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

/// Files whose presence shows machined is installed (bus-activatable) or running.
const MACHINED_MARKERS: &[&str] = &[
    "/usr/share/dbus-1/system-services/org.freedesktop.machine1.service",
    "/run/systemd/machines",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Nothing listens on the system bus socket.
    NoSystemBus { socket: PathBuf },
    /// Something listens on the bus socket but does not speak D-Bus.
    BusSilent { socket: PathBuf },
    /// A system bus, but no sign of org.freedesktop.machine1 on it.
    NoMachined { socket: PathBuf },
    /// A system bus and an installed or running machined.
    Available { socket: PathBuf },
}

impl Reach {
    /// Why registration cannot happen, with what to install.
    pub fn explain(&self) -> String {
        match self {
            Reach::NoSystemBus { socket } => format!(
                "no system D-Bus is listening on {} (install and start dbus and systemd-container)",
                socket.display()
            ),
            Reach::BusSilent { socket } => format!(
                "the system bus socket {} accepts connections but does not answer",
                socket.display()
            ),
            Reach::NoMachined { socket } => format!(
                "the system bus on {} has no org.freedesktop.machine1 (install systemd-container)",
                socket.display()
            ),
            Reach::Available { socket } => {
                format!("systemd-machined is reachable on {}", socket.display())
            }
        }
    }
}

/// The unix socket path of the system bus, from `DBUS_SYSTEM_BUS_ADDRESS`
/// (first `unix:path=` entry) or the well-known default.
pub fn system_bus_socket(address: Option<&str>) -> PathBuf {
    address
        .into_iter()
        .flat_map(|a| a.split(';'))
        .filter_map(|entry| entry.strip_prefix("unix:"))
        .flat_map(|params| params.split(','))
        .find_map(|param| param.strip_prefix("path="))
        .map_or_else(|| PathBuf::from(DEFAULT_SYSTEM_BUS), PathBuf::from)
}

/// Whether a bus daemon answers the first step of the D-Bus handshake
/// within a second (libdbus would wait for it indefinitely).
fn answers_auth(stream: &UnixStream) -> bool {
    use std::io::{Read, Write};
    let uid: String = nix::unistd::geteuid()
        .as_raw()
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    let hello = format!("\0AUTH EXTERNAL {uid}\r\n");
    let mut reply = [0u8; 64];
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .is_ok()
        && (&*stream).write_all(hello.as_bytes()).is_ok()
        && matches!((&*stream).read(&mut reply), Ok(n) if n > 0
            && (reply.starts_with(b"OK") || reply.starts_with(b"REJECTED")))
}

/// Probe this host: is the bus socket accepting connections, and is machined there.
pub fn probe() -> Reach {
    let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok();
    let socket = system_bus_socket(address.as_deref());
    let Ok(stream) = UnixStream::connect(&socket) else {
        return Reach::NoSystemBus { socket };
    };
    if !answers_auth(&stream) {
        return Reach::BusSilent { socket };
    }
    if MACHINED_MARKERS.iter().any(|m| Path::new(m).exists()) {
        Reach::Available { socket }
    } else {
        Reach::NoMachined { socket }
    }
}

/// Whether machined speaks Varlink (systemd v256 and later).
pub fn has_varlink() -> bool {
    Path::new(VARLINK_SOCKET).exists()
}

/// How a machine was registered, so it is unregistered the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Via {
    Varlink,
    DBus,
}

/// What machined is told about the guest.
pub struct Machine<'a> {
    pub name: &'a MachineName,
    pub uuid: &'a Uuid,
    /// The guest's root directory on the host ("" when it has none there).
    pub root: String,
    /// Host-side network interfaces of the guest (none without veths).
    pub ifindices: Vec<i32>,
}

/// Register `leader` (the guest's PID 1, with its pidfd) as the machine.
pub fn register(bus: &Bus, m: &Machine<'_>, leader: i32, pidfd: BorrowedFd<'_>) -> Result<Via> {
    let step = || format!("registering {} with systemd-machined", m.name);
    // The pidfd's inode number names the process for good (pidfs, Linux 6.9).
    let pidfd_id = nix::sys::stat::fstat(pidfd).ok().map(|st| st.st_ino);
    let mut leader_id = json!({ "pid": leader });
    if let Some(id) = pidfd_id {
        leader_id["pidfdId"] = json!(id);
    }
    let params = json!({
        "name": m.name.as_str(),
        "id": m.uuid.simple(),
        "service": SERVICE,
        "class": "container",
        "leader": leader,
        "leaderProcessId": leader_id,
        "rootDirectory": m.root,
        "ifIndices": m.ifindices,
        "allocateUnit": false,
    });
    match varlink::call(
        Path::new(VARLINK_SOCKET),
        "io.systemd.Machine.Register",
        params,
    ) {
        Ok(_) => return Ok(Via::Varlink),
        // Older machined: no Varlink, or without these parameters.
        Err(varlink::CallError::Unreachable(_)) => {}
        Err(varlink::CallError::Failed { error, .. })
            if error == "org.varlink.service.InvalidParameter"
                || error == "org.varlink.service.MethodNotFound" => {}
        Err(e) => {
            return Err(Error::Bus {
                step: step(),
                message: e.to_string(),
            });
        }
    }
    let id = m.uuid.0.to_vec();
    let mut props: Vec<Property> = vec![
        property("Id", id.clone()),
        property("Service", SERVICE.to_string()),
        property("Class", "container".to_string()),
        property("LeaderPID", leader.cast_unsigned()),
        property("RootDirectory", m.root.clone()),
        property("NetworkInterfaces", m.ifindices.clone()),
    ];
    if let Some(id) = pidfd_id {
        props.push(property("LeaderPIDFDID", id));
    }
    let ex: std::result::Result<(dbus::Path,), _> =
        manager(bus, "RegisterMachineEx", (m.name.as_str(), props));
    match ex {
        Ok(_) => return Ok(Via::DBus),
        Err(e) if e.is_unknown_method() => {}
        Err(e) => return Err(e.into_error(step())),
    }
    manager::<_, (dbus::Path,)>(
        bus,
        "RegisterMachineWithNetwork",
        (
            m.name.as_str(),
            id,
            SERVICE,
            "container",
            leader.cast_unsigned(),
            m.root.as_str(),
            m.ifindices.clone(),
        ),
    )
    .map(|_| Via::DBus)
    .map_err(|e| e.into_error(step()))
}

/// Remove the machine from machined's list (best effort: machined drops
/// it by itself once its unit is gone).
pub fn unregister(bus: Option<&Bus>, name: &MachineName, via: Via) {
    match via {
        Via::Varlink => {
            let _ = varlink::call(
                Path::new(VARLINK_SOCKET),
                "io.systemd.Machine.Unregister",
                json!({ "name": name.as_str() }),
            );
        }
        Via::DBus => {
            let own;
            let bus = match bus {
                Some(b) => b,
                None => match Bus::system() {
                    Ok(b) => {
                        own = b;
                        &own
                    }
                    Err(_) => return,
                },
            };
            let _: std::result::Result<(), _> = manager(bus, "UnregisterMachine", (name.as_str(),));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_address_parsing() {
        assert_eq!(system_bus_socket(None), PathBuf::from(DEFAULT_SYSTEM_BUS));
        assert_eq!(
            system_bus_socket(Some("unix:path=/x/bus")),
            PathBuf::from("/x/bus")
        );
        assert_eq!(
            system_bus_socket(Some("tcp:host=a;unix:guid=1,path=/y")),
            PathBuf::from("/y")
        );
        assert_eq!(
            system_bus_socket(Some("unix:abstract=z")),
            PathBuf::from(DEFAULT_SYSTEM_BUS)
        );
    }
}
