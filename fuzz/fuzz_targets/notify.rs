//! sd_notify datagrams from the guest (untrusted: any process in it may send).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let m = nixspawn_runtime::launcher::notify::parse(data);
    if let Some(status) = m.status {
        assert!(!status.contains('\n'));
    }
});
