//! What a container is to be: everything the launcher decided from its
//! command line, in one plain value the runtime consumes.

pub mod bind_user;
pub mod capabilities;
pub mod closure;
pub mod credentials;
pub mod environment;
pub mod filesystem;
pub mod filter;
pub mod identity;
pub mod image;
pub mod journal;
pub mod mounts;
pub mod network;
pub mod process;
pub mod signals;
pub mod syscalls;
pub mod terminal;
pub mod userns;

use std::path::PathBuf;

use crate::spec::identity::{MachineName, Uuid};
use crate::spec::mounts::CustomMount;

/// How the container's console (stdin/stdout/stderr and /dev/console) is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsoleMode {
    /// A pty as /dev/console, connected both ways to our terminal.
    Interactive,
    /// A pty as /dev/console; its output is copied to our stdout, no input.
    ReadOnly,
    /// A pty as /dev/console that is connected to nothing.
    Passive,
    /// No pty: our stdin/stdout/stderr are handed to the payload as they are.
    Pipe,
}

impl ConsoleMode {
    pub fn has_pty(self) -> bool {
        self != ConsoleMode::Pipe
    }
}

/// What runs as PID 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// `--boot`: the tree's init, with these extra arguments.
    Boot { args: Vec<String> },
    /// A command (argv[0] looked up in the guest's PATH).
    Command { argv: Vec<String> },
}

/// A NixOS system toplevel and the /nix/store the guest gets.
#[derive(Debug, Clone)]
pub struct StoreSpec {
    /// `$toplevel/init` is PID 1; /nix/var/nix/profiles/system points here.
    pub toplevel: PathBuf,
    /// Exactly these /nix/store entries (closure-only), or None for the
    /// whole host store (`--shared-store`).
    pub closure: Option<Vec<crate::spec::closure::Entry>>,
    /// Pass the host's nix-daemon socket (and read-only database) in.
    pub nix_daemon: bool,
}

/// `--register=yes|no|auto`: whether to register with systemd-machined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Register {
    No,
    /// Register where machined is reachable; otherwise run standalone.
    #[default]
    Auto,
    /// Register or fail.
    Yes,
}

#[derive(Debug, Clone)]
pub struct Spec {
    /// The OS tree (or, with a toplevel, the state directory) on the host;
    /// None means an empty tmpfs root.
    pub directory: Option<PathBuf>,
    /// Run on a throw-away overlay of the tree (tmpfs upper layer).
    pub ephemeral: bool,
    /// `--image=`: the root comes from a disk image (`directory` is None).
    pub image: Option<crate::spec::image::ImageSpec>,
    /// `--read-only`, `--volatile=`, `--pivot-root=`.
    pub filesystem: crate::spec::filesystem::Filesystem,
    /// Boot a NixOS toplevel from the store.
    pub store: Option<StoreSpec>,
    pub machine: MachineName,
    pub hostname: String,
    pub uuid: Uuid,
    pub payload: Payload,
    /// `-E NAME=VALUE`, applied last.
    pub environment: Vec<(String, String)>,
    pub console: ConsoleMode,
    /// `$TERM` for PID 1: the caller's, as systemd-nspawn passes it on
    /// (read by the binary, never from the library's environment).
    pub term: Option<String>,
    pub private_network: bool,
    /// Links, ports, namespace path, resolv.conf and timezone.
    pub network: crate::spec::network::Network,
    /// Signal sent to PID 1 to ask it to stop; None means SIGKILL at once.
    pub kill_signal: Option<i32>,
    /// Wait for the guest's READY=1 before reporting readiness upwards.
    pub notify_ready: bool,
    /// Run in the calling unit's cgroup (payload/supervisor split).
    pub keep_unit: bool,
    /// `--register`.
    pub register: Register,
    /// `--link-journal`.
    pub link_journal: crate::spec::journal::LinkJournal,
    pub mounts: Vec<CustomMount>,
    /// `--private-users`.
    pub private_users: crate::spec::userns::Mode,
    /// `--private-users-ownership` (Auto when not given with pick).
    pub ownership: crate::spec::userns::Ownership,
    /// Capabilities beyond nspawn's default set (`--capability`).
    pub added_capabilities: std::collections::HashSet<caps::Capability>,
    /// Capabilities taken away (`--drop-capability`).
    pub dropped_capabilities: std::collections::HashSet<caps::Capability>,
    /// `--system-call-filter` additions and removals.
    pub syscall_filter: crate::spec::filter::Adjustments,
    /// Install the seccomp filter (SYSTEMD_SECCOMP=0 turns it off).
    pub seccomp: bool,
    /// Set no_new_privs for the payload (`--no-new-privileges=yes`).
    pub no_new_privileges: bool,
    /// `--nested-sandbox`: /proc without nspawn's masks, so that a fresh
    /// procfs is not "too revealing" for the guest's own sandboxes (Nix's
    /// PID namespace). Only with a shifted user namespace: there the kernel
    /// refuses the guest's root what the masks hid (files of the host's
    /// root, kernel-wide sysctls), and the launcher refuses it otherwise.
    pub nested_sandbox: bool,
    /// systemd credentials for /run/host/credentials.
    pub credentials: Vec<crate::spec::credentials::Credential>,
    pub working_directory: Option<PathBuf>,
    /// The payload process: user, stub init, limits, affinity, extra
    /// seccomp rules (`--user`, `--as-pid2`, `--rlimit`, ...).
    pub process: crate::spec::process::Process,
    /// `--background=`: tint the caller's terminal behind the relayed
    /// console (the binary sets it only where stdout is a terminal that
    /// takes colors, and only for the interactive and read-only consoles).
    pub background: Option<crate::spec::terminal::Background>,
    /// `--bind-user=`: host users bound in (resolved on the host).
    pub bind_users: Vec<crate::spec::bind_user::BoundUser>,
}

impl Spec {
    pub fn is_boot(&self) -> bool {
        matches!(self.payload, Payload::Boot { .. })
    }

    /// The payload's capability set: nspawn's default (with NET_ADMIN for a
    /// private network), plus `--capability`, minus `--drop-capability`.
    pub fn capabilities(&self) -> std::collections::HashSet<caps::Capability> {
        let mut set = crate::spec::capabilities::guest_set(self.private_network);
        set.extend(self.added_capabilities.iter().copied());
        set.retain(|c| !self.dropped_capabilities.contains(c));
        set
    }

    /// What the root is, for messages: the directory or "an empty tmpfs".
    pub fn root_description(&self) -> String {
        match &self.directory {
            Some(d) => d.display().to_string(),
            None => "an empty tmpfs".to_owned(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A spec as `nixspawn -M test -- /bin/true` makes it, for unit tests
    /// of the stages that read specs.
    pub(crate) fn minimal() -> Spec {
        Spec {
            directory: None,
            ephemeral: false,
            image: None,
            filesystem: Default::default(),
            store: None,
            machine: MachineName::new("test").expect("a valid name"),
            hostname: "test".into(),
            uuid: Uuid::parse("0123456789abcdef0123456789abcdef").expect("a valid uuid"),
            payload: Payload::Command {
                argv: vec!["/bin/true".into()],
            },
            environment: Vec::new(),
            console: ConsoleMode::Interactive,
            term: None,
            private_network: false,
            network: Default::default(),
            kill_signal: None,
            notify_ready: false,
            keep_unit: false,
            register: Register::No,
            link_journal: Default::default(),
            mounts: Vec::new(),
            private_users: crate::spec::userns::Mode::No,
            ownership: crate::spec::userns::Ownership::Off,
            added_capabilities: Default::default(),
            dropped_capabilities: Default::default(),
            syscall_filter: Default::default(),
            seccomp: true,
            no_new_privileges: false,
            nested_sandbox: false,
            credentials: Vec::new(),
            working_directory: None,
            process: Default::default(),
            background: None,
            bind_users: Vec::new(),
        }
    }
}
