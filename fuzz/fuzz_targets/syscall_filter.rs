//! --system-call-filter values and the program they produce.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nixspawn_runtime::security::seccomp;
use nixspawn_runtime::spec::filter::Adjustments;
use nixspawn_runtime::spec::syscalls::is_known;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut adjust = Adjustments::default();
    for part in s.split('\n').take(8) {
        let _ = adjust.add_option(part);
    }
    for name in adjust.allow.iter().chain(&adjust.deny) {
        assert!(is_known(name));
    }
    // Every architecture we have tables for, whatever this build's is.
    let caps = nixspawn_runtime::spec::capabilities::guest_set(false);
    for arch in [seccomp::HostArch::X86_64, seccomp::HostArch::Aarch64] {
        let prog = seccomp::program_for(arch, &caps, &adjust);
        assert!(
            !prog.is_empty() && prog.len() < 4096,
            "{arch:?}: {} instructions",
            prog.len()
        );
    }
});
