//! Whether systemd-machined can be reached, for `--register=auto|yes`.
//!
//! Registration itself is not implemented yet (issue 7); this only decides,
//! without a D-Bus client, whether a host could have registered us, so that
//! `auto` can say what it is doing and `yes` can say what is missing.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

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
    /// A system bus, but no sign of org.freedesktop.machine1 on it.
    NoMachined { socket: PathBuf },
    /// A system bus and an installed or running machined.
    Available { socket: PathBuf },
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

/// Probe this host: is the bus socket accepting connections, and is machined there.
pub fn probe() -> Reach {
    let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok();
    let socket = system_bus_socket(address.as_deref());
    if UnixStream::connect(&socket).is_err() {
        return Reach::NoSystemBus { socket };
    }
    if MACHINED_MARKERS.iter().any(|m| Path::new(m).exists()) {
        Reach::Available { socket }
    } else {
        Reach::NoMachined { socket }
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
