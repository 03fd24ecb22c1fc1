//! What the guest is to a systemd host: the system bus, systemd-machined
//! (over Varlink or D-Bus) and the transient scope, tied together per boot
//! by `link`.

pub(crate) mod bus;
pub(crate) mod link;
pub mod machined;
pub(crate) mod scope;
pub(crate) mod varlink;
