//! --private-users and --private-users-ownership values.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nixspawn_runtime::spec::userns::{self as spec_userns, Mode};
use nixspawn_runtime::userns::range as userns;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Mode::Fixed(r)) = spec_userns::parse_mode(s) {
        assert!(r.shift % spec_userns::RANGE == 0 && r.range % spec_userns::RANGE == 0 && r.range > 0);
        assert!(u64::from(r.shift) + u64::from(r.range) <= u64::from(u32::MAX));
        assert_eq!(r.map_line().lines().count(), 1, "one uid_map line");
    }
    let _ = spec_userns::parse_ownership(s);
    let c = userns::hashed_candidate(s);
    assert!((userns::PICK_MIN..=userns::PICK_MAX).contains(&c) && c % spec_userns::RANGE == 0);
});
