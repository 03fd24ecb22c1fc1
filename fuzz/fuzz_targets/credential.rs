//! --set-credential values (C escapes) and credential ids.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nixspawn_runtime::spec::credentials;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = credentials::parse_set(s) {
        assert!(credentials::validate_id(&c.id).is_ok());
        assert!(!c.id.contains('/') && c.id != "." && c.id != "..");
        assert!(c.len() <= credentials::MAX_SIZE);
        // The value never shows in the Debug form.
        let shown = format!("{c:?}");
        assert!(shown.contains("not shown"));
    }
    let _ = credentials::unescape(s);
});
