//! .nspawn settings files (they may come with a downloaded image).
#![no_main]
use clap::Parser;
use libfuzzer_sys::fuzz_target;
use nixspawn_cli::nspawn_settings::{self, Mode, Trust};
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
        for (trust, mode) in [(Trust::Untrusted, Mode::Yes), (Trust::Trusted, Mode::Override)] {
            let mut args =
                nixspawn_cli::launcher_args::Args::try_parse_from(["nixspawn", "-D", "/tmp"])
                    .unwrap();
            let masked = |g| mode != Mode::Override && args.sets(g);
            if let Ok(settings) = nspawn_settings::read(&entries, path, trust, &masked) {
                // An untrusted file never gets a privileged setting through.
                // (RestrictAddressFamilies= is not one: nspawn 262 takes it
                // from any file, as it only restricts.)
                if trust == Trust::Untrusted {
                    for s in &settings.values {
                        use nspawn_settings::Setting::*;
                        assert!(
                            !matches!(
                                s,
                                Ephemeral(_)
                                    | Capability(_)
                                    | MachineId(_)
                                    | PrivateUsers(_)
                                    | PrivateUsersOwnership(_)
                                    | LinkJournal(_)
                                    | Bind(_)
                                    | BindReadOnly(_)
                                    | TemporaryFileSystem(_)
                                    | Overlay(_)
                                    | OverlayReadOnly(_)
                                    | Inaccessible(_)
                                    | BindUser(_)
                                    | BindUserShell(_)
                                    | PrivateNetwork(_)
                            ),
                            "untrusted {s:?}"
                        );
                        if let SystemCallFilter(f) = s {
                            assert!(f.trim_start().starts_with('~'), "untrusted filter {f:?}");
                        }
                    }
                }
                args.merge(&settings.values, mode);
            }
        }
    }
    let _ = nspawn_settings::words(text);
});
