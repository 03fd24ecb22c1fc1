//! --bind / --bind-ro / --tmpfs values.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nixspawn_runtime::spec::mounts::{BindAccess, CustomMount};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for access in [BindAccess::ReadWrite, BindAccess::ReadOnly] {
        if let Ok(CustomMount::Bind { source, target, .. }) = CustomMount::parse_bind(s, access)
        {
            for p in [&source, &target] {
                assert!(p.is_absolute(), "{p:?}");
                assert!(
                    !p.components().any(|c| c == std::path::Component::ParentDir),
                    "{p:?}"
                );
            }
        }
    }
    if let Ok(CustomMount::Tmpfs { target, options }) = CustomMount::parse_tmpfs(s) {
        assert!(target.is_absolute());
        assert!(!options.contains('\n'));
    }
});
