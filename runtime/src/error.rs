//! The library's error type: one variant per step that can fail, carrying
//! the path or syscall involved and, where there is one, the remedy.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nixspawn must run as root (it creates namespaces and mounts); run it with sudo")]
    NotRoot,

    #[error("directory {path}: {reason}")]
    BadTree { path: PathBuf, reason: String },

    #[error(
        "directory {path} is in use by another container (lock held); stop it first{}",
        if *ephemeral { " (an ephemeral run shares a tree only with other ephemeral or read-only runs)" } else { " or use --ephemeral" }
    )]
    TreeBusy { path: PathBuf, ephemeral: bool },

    #[error(
        "{path} has no os-release (neither etc/os-release nor usr/lib/os-release); --boot needs one to treat the tree as an OS"
    )]
    NoOsRelease { path: PathBuf },

    #[error("no init found in {root} (looked for {candidates}); is systemd installed in the tree?")]
    NoInit { root: String, candidates: String },

    #[error("command {command:?} not found in the guest's PATH ({search_path})")]
    CommandNotFound {
        command: String,
        search_path: String,
    },

    #[error("toplevel {path}: {reason}")]
    Toplevel { path: PathBuf, reason: String },

    #[error("closure of {toplevel}: {reason}")]
    Closure { toplevel: PathBuf, reason: String },

    #[error(
        "{path}: the filesystem refuses idmapped mounts ({source}); use --private-users-ownership=chown (or auto)"
    )]
    Idmap {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("credential {id}: {reason}")]
    Credential { id: String, reason: String },

    #[error("invalid machine name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("invalid {what} {value:?}: {reason}")]
    InvalidValue {
        what: &'static str,
        value: String,
        reason: String,
    },

    #[error("a container named {name} is already running (state in {path})")]
    NameInUse { name: String, path: PathBuf },

    #[error("no container named {name} is running")]
    NoSuchContainer { name: String },

    #[error(
        "{name}: its {what} (PID {pid}) recorded in the state is {reason}; refusing to act on a stale PID"
    )]
    StaleProcess {
        name: String,
        what: &'static str,
        pid: i32,
        reason: String,
    },

    #[error(
        "nixspawn has no system call tables for this architecture ({arch}), so it cannot build systemd-nspawn's seccomp filter; set SYSTEMD_SECCOMP=0 to run without one"
    )]
    SeccompUnsupported { arch: &'static str },

    #[error("entering {name} failed at {step} (the command was not run): {message}")]
    Enter {
        name: String,
        step: String,
        message: String,
    },

    #[error("{name} has no running payload right now ({phase}); try again once it runs")]
    NotRunning { name: String, phase: String },

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo); mount one with: mount -t cgroup2 none /sys/fs/cgroup/unified"
    )]
    NoCgroup2,

    /// No cgroup2 anywhere and /sys/fs/cgroup is not ours to mount it on.
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo); {fix}")]
    Cgroup2NotMounted { fix: String },

    #[error("mounting {what} on {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },

    /// sysfs refused because the network namespace belongs to a user
    /// namespace above ours: a launcher inside a guest that shares its
    /// host's network namespace.
    #[error(
        "mounting sysfs on {target}: Operation not permitted: the network namespace here belongs to a user namespace above this launcher's (in a guest that shares its host's network?), and only that one may mount sysfs; start the outer guest with --private-network or --network-veth"
    )]
    SysfsNetnsNotOwned { target: PathBuf },

    #[error(
        "{path} holds another container's processes (a second --keep-unit launcher in this unit's cgroup?); run each launcher in a unit of its own, or stop the other first"
    )]
    PayloadBusy { path: PathBuf },

    #[error(
        "{unit} already runs machine {machine} (another --keep-unit launcher in this unit's cgroup); run each launcher in a unit of its own, or stop {machine} first"
    )]
    UnitBusy { unit: PathBuf, machine: String },

    #[error("cgroup {step} {path}: {source}")]
    Cgroup {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{syscall} failed: {source}")]
    Syscall {
        syscall: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("container setup failed: {0}")]
    Child(Failure),

    #[error("container setup failed: {0}")]
    Handshake(#[from] HandshakeError),

    #[error("updating {name}: {reason}")]
    Update { name: String, reason: String },

    #[error("--link-journal: {reason}")]
    Journal { reason: String },

    #[error("image {path}: {reason}")]
    Image { path: PathBuf, reason: String },

    #[error("{step}: {message}")]
    Bus { step: String, message: String },

    /// A network option or operation failed (one line, often in
    /// systemd-nspawn's own words).
    #[error("{message}")]
    Network { message: String },

    #[error("talking to the container process: {0}")]
    Protocol(String),

    #[error(
        "the janitor (the helper that cleans up if nixspawn is killed) is gone: {0}; not going on without it"
    )]
    Janitor(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// The errno behind the error, if a system call failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } | Error::Syscall { source, .. } => source.raw_os_error(),
            Error::Idmap { source, .. } => source.raw_os_error(),
            Error::Child(f) => f.errno,
            _ => None,
        }
    }

    /// The path the error concerns, if it names one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Io { path, .. } | Error::Idmap { path, .. } => Some(path),
            Error::BadTree { path, .. }
            | Error::TreeBusy { path, .. }
            | Error::PayloadBusy { path }
            | Error::UnitBusy { unit: path, .. } => Some(path),
            Error::Child(f) => f.path.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn syscall(syscall: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Syscall {
            syscall,
            source: source.into(),
        }
    }
}

/// A setup step that failed in a container process, as it crosses over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    pub step: String,
    /// The errno behind it, if the failure came from a system call.
    pub errno: Option<i32>,
    /// The path it concerned, if any.
    pub path: Option<PathBuf>,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(step: impl Into<String>, error: &Error) -> Self {
        Failure {
            step: step.into(),
            errno: error.errno(),
            path: error.path().map(PathBuf::from),
            message: error.to_string(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.message)
    }
}

/// How a step of the handshake went wrong on the other side of it.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the {peer} went away while the {us} waited for {expected}")]
    PeerGone {
        peer: &'static str,
        us: &'static str,
        expected: &'static str,
    },
    #[error("the {us} waited for {expected} and got {got}")]
    Unexpected {
        us: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error("{step} came with {got} descriptors instead of {want}")]
    Descriptors {
        step: &'static str,
        want: usize,
        got: usize,
    },
}
