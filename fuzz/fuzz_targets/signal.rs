//! --kill-signal values.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nixspawn_runtime::spec::signals;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sig) = signals::parse(s) {
        assert!((1..=libc_sigrtmax()).contains(&sig));
        assert_eq!(
            signals::parse(&signals::name(sig)).unwrap(),
            sig,
            "names round-trip"
        );
    }
});

fn libc_sigrtmax() -> i32 {
    64
}
