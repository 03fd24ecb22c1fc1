//! What the payload may do: the capability set it keeps and the seccomp
//! filter it runs under (systemd-nspawn's policy).

pub mod capabilities;
pub mod seccomp;
