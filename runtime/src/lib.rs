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
//!   guest. `network`: links, port forwarding, resolv.conf and timezone.
//!   `sys` holds every unsafe call (and is the only module allowed one);
//!   `os` is the little of it the binaries need.

#![deny(unsafe_code)]
#![warn(
    clippy::undocumented_unsafe_blocks,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

// What the container is to be.
pub mod spec;
// The launcher: claims, starts, supervises, cleans up.
pub mod launcher;
// Its record for nixspawnctl (the name's lock, state.json).
pub mod state;
// A systemd host: scope and machined registration.
pub mod host;
// The guest's cgroups and device policy.
pub mod cgroup;
// The guest's user namespace: range, idmapped mounts, ownership.
pub mod userns;
// The launcher's conversation with the container process.
mod handshake;
// The container process: root filesystem, API filesystems, exec.
pub mod guest;
// What the payload may do: capabilities and seccomp.
pub mod security;
// NixOS toplevels and their store.
pub mod nixos;
// Entering a running guest (nixspawnctl).
pub mod ctl;
// Disk images (--image): dissection, loop devices, detached mounts.
pub mod image;
// Links, port forwarding, resolv.conf and timezone.
pub mod network;

pub mod error;
// The few system calls the binaries use.
pub mod os;
// Every unsafe call, and nothing public.
#[allow(unsafe_code)]
mod sys;

pub use error::{Error, Result};
pub use guest::INIT_CANDIDATES;
pub use launcher::events::{Event, Observer, Outcome};
pub use launcher::run;
pub use spec::identity::{MachineName, Uuid};
pub use spec::{ConsoleMode, Payload, Register, Spec, StoreSpec};
