//! .nspawn settings files (they may come with a downloaded image).
#![no_main]
use clap::Parser;
use libfuzzer_sys::fuzz_target;
use nixspawn_cli::nspawn_settings::{self, Mode};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.nspawn");
    if let Ok(entries) = nspawn_settings::parse(text, path) {
        for e in &entries {
            assert!(
                !e.key.contains('\n') && matches!(e.section.as_str(), "Exec" | "Files" | "Network")
            );
        }
        for mode in [Mode::Yes, Mode::Override] {
            let mut args =
                nixspawn_cli::launcher_args::Args::try_parse_from(["nixspawn", "-D", "/tmp"])
                    .unwrap();
            let _ = nspawn_settings::apply(&entries, path, false, mode, &mut args);
        }
    }
    let _ = nspawn_settings::words(text);
});
