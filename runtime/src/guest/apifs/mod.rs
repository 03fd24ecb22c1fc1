//! The API filesystems a systemd PID 1 expects from its container manager:
//! /proc, /sys, /dev and /run (with the /run/host interface directory).

pub(crate) mod devfs;
pub(crate) mod procfs;
pub mod runhost;
pub(crate) mod sysfs;
