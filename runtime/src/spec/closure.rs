//! The paths of a NixOS toplevel's closure, as the spec carries them to the
//! store setup. Computing a closure is `nixos::closure`'s business.

use std::ffi::OsString;
use std::path::PathBuf;

/// What a store path is, learnt once when the closure is checked, so the
/// container process does not look at each path again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File,
    /// A symlink store path, with its target.
    Symlink(PathBuf),
}

/// One path of a closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `HASH-name`, the path's name in /nix/store.
    pub name: OsString,
    pub kind: EntryKind,
}
