//! nixspawn's runtime: a container spec in, a running (and finally
//! cleaned-up) container out. No command line and no printing here; the
//! binaries in `src/` do that.
//!
//! The modules follow the launch:
//! - `spec`: what the container is to be, decided once from the command
//!   line and settings files; every later stage reads it.
//! - `launcher`: the privileged side that claims, starts, supervises and
//!   cleans up (`state` is its record for nixspawnctl; `host` its link to a
//!   systemd host; `cgroup` and `userns` what it prepares before the
//!   container process exists; `handshake` how it talks to that process).
//! - `guest`: the container process between clone3 and execve: the root
//!   filesystem, the API filesystems, `security` (capabilities, seccomp),
//!   then exec.
//! - `nixos`: NixOS toplevels and their store; `ctl`: entering a running
//!   guest. `sys` holds every unsafe call.

pub mod spec;

pub mod cgroup;
mod handshake;
pub mod host;
pub mod launcher;
pub mod state;
pub mod userns;

pub mod guest;
pub mod security;

pub mod ctl;
pub mod nixos;

pub mod error;
pub mod sys;

pub use error::{Error, Result};
pub use guest::INIT_CANDIDATES;
pub use launcher::events::{Event, Observer, Outcome};
pub use launcher::run;
pub use spec::identity::{MachineName, Uuid};
pub use spec::{ConsoleMode, Payload, Register, Spec, StoreSpec};
