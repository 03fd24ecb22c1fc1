//! Closure file entries and --toplevel values: store path names.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nixspawn_runtime::nixos::closure;
use std::os::unix::ffi::OsStrExt;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(data));
    if let Some(name) = closure::store_entry(path) {
        assert!(!name.as_bytes().contains(&b'/'));
        assert_ne!(name.as_bytes(), b"..");
        assert!(name.len() > 33);
    }
});
