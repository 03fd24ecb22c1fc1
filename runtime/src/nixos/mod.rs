//! NixOS systems: a toplevel's closure, the guest's /nix/store (closure-only
//! or shared), and live updates of a running guest's closure.

pub mod closure;
pub mod overlay;
pub(crate) mod store;
pub mod update;
