//! Command-line front ends shared by the `nixspawn` and `nixspawnctl`
//! binaries: argument parsing and the translation into a runtime spec.

pub mod launcher_args;
pub mod nspawn_settings;
