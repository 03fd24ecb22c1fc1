//! nixspawn's whole command line (NUL-separated arguments).
#![no_main]
use clap::Parser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let argv: Vec<&str> = std::iter::once("nixspawn")
        .chain(s.split('\0'))
        .take(64)
        .collect();
    let _ = nixspawn_cli::launcher_args::Args::try_parse_from(argv);
});
