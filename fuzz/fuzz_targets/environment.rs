//! -E/--setenv assignments and os-release files.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nixspawn_runtime::spec::environment;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((k, v)) = environment::parse_assignment(s) {
        assert!(!k.is_empty() && !k.contains('=') && !v.contains('\0'));
    }
    for (k, _) in environment::parse_os_release(s) {
        assert!(!k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    }
});
