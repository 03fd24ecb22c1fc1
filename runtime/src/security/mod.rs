//! What the payload may do: the capability set it keeps and the seccomp
//! filter it runs under (systemd-nspawn's policy).

pub(crate) mod capabilities;
pub mod seccomp;
