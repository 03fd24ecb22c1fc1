//! The system bus, through libdbus (the `dbus` crate): blocking, and with no
//! threads of its own, which matters to a process that clones children.
//! It is built from the crate's bundled source and linked statically
//! (`vendored`): the system's libdbus pulls in libsystemd, libgcrypt and
//! five more libraries, whose loading cost every launch ~1.5 ms.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use dbus::Message;
use dbus::arg::{AppendAll, ReadAll, RefArg, Variant};
use dbus::blocking::Connection;

use crate::error::{Error, Result};

/// One `(sv)` entry of a property array.
pub type Property = (&'static str, Variant<Box<dyn RefArg>>);

pub fn property<T: RefArg + 'static>(name: &'static str, value: T) -> Property {
    (name, Variant(Box::new(value)))
}

/// How long one method call may take (machined and systemd answer in
/// milliseconds; a hung bus must not hang the launcher forever).
const CALL_TIMEOUT: Duration = Duration::from_secs(25);

pub struct Bus {
    conn: Connection,
}

/// A D-Bus error: its name (e.g. `org.freedesktop.DBus.Error.UnknownMethod`) and text.
#[derive(Debug, Clone)]
pub struct CallError {
    pub name: String,
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.name)
    }
}

impl From<dbus::Error> for CallError {
    fn from(e: dbus::Error) -> Self {
        CallError {
            name: e.name().unwrap_or("unknown").to_string(),
            message: e.message().unwrap_or("no message").to_string(),
        }
    }
}

impl CallError {
    pub fn is_unknown_method(&self) -> bool {
        matches!(
            self.name.as_str(),
            "org.freedesktop.DBus.Error.UnknownMethod"
                | "org.freedesktop.DBus.Error.UnknownInterface"
        )
    }

    pub fn into_error(self, step: impl Into<String>) -> Error {
        Error::Bus {
            step: step.into(),
            message: self.to_string(),
        }
    }
}

impl Bus {
    pub fn system() -> Result<Self> {
        let mut channel = dbus::channel::Channel::get_private(dbus::channel::BusType::System)
            .map_err(|e| CallError::from(e).into_error("connecting to the system bus"))?;
        // Lets the supervisor poll the socket for stop requests.
        channel.set_watch_enabled(true);
        Ok(Bus {
            conn: Connection::from(channel),
        })
    }

    pub fn unique_name(&self) -> String {
        self.conn.unique_name().to_string()
    }

    pub fn call<A: AppendAll, R: ReadAll + 'static>(
        &self,
        dest: &str,
        path: &str,
        interface: &str,
        method: &str,
        args: A,
    ) -> std::result::Result<R, CallError> {
        self.conn
            .with_proxy(dest, path, CALL_TIMEOUT)
            .method_call(interface, method, args)
            .map_err(CallError::from)
    }

    /// Ask the bus to route signals matching `rule` to us.
    pub fn add_match(&self, rule: &str) -> std::result::Result<(), CallError> {
        self.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "AddMatch",
            (rule,),
        )
    }

    /// The socket, for the supervisor's poll loop.
    pub fn fd(&self) -> BorrowedFd<'_> {
        crate::sys::dbus_socket(&self.conn)
    }

    /// Read what arrived without blocking and hand over every signal.
    pub fn drain_signals(&self) -> Vec<Message> {
        let _ = self.conn.channel().read_write(Some(Duration::ZERO));
        std::iter::from_fn(|| self.conn.channel().pop_message())
            .filter(|m| m.msg_type() == dbus::MessageType::Signal)
            .collect()
    }

    /// Wait up to `timeout` for a signal `accept` takes (queued ones first).
    pub fn wait_signal<T>(
        &self,
        timeout: Duration,
        mut accept: impl FnMut(&Message) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(m) = self.conn.channel().pop_message() {
                if m.msg_type() == dbus::MessageType::Signal
                    && let Some(v) = accept(&m)
                {
                    return Some(v);
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if self.conn.channel().read_write(Some(left)).is_err() {
                return None;
            }
        }
    }
}
