//! -M/--machine values, directory names made into machine names, --uuid.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nixspawn_runtime::{MachineName, Uuid};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for name in [MachineName::new(s), MachineName::from_directory_name(s)]
        .into_iter()
        .flatten()
    {
        let n = name.as_str();
        assert!(!n.is_empty() && n.len() <= 64);
        assert!(
            !n.contains('/') && !n.contains(".."),
            "{n:?} must be a safe path component"
        );
        assert_eq!(MachineName::new(n).unwrap(), name, "valid names stay valid");
    }
    if let Ok(u) = Uuid::parse(s) {
        assert_eq!(Uuid::parse(&u.to_string()).unwrap(), u);
        assert_eq!(Uuid::parse(&u.simple()).unwrap(), u);
    }
});
