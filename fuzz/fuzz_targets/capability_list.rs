//! --capability / --drop-capability values.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nixspawn_runtime::spec::capabilities;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(set) = capabilities::parse_list("--capability", s) {
        assert!(!set.is_empty());
        assert_eq!(capabilities::from_mask(capabilities::mask(&set)), set);
    }
});
