//! nixspawn's whole command line (NUL-separated arguments), with the
//! promises the launcher makes about it:
//! - parsing never panics and never exits the process;
//! - an accepted argv round-trips: its canonical form parses to the same;
//! - a refused one gives one printable line that names an argument given;
//! - turning accepted arguments into a Spec never panics, and its refusals
//!   are one line too. The steps that reach outside (finding the tree and
//!   its settings file, probing machined, the Nix database, credential
//!   files) are stood in for: the pure steps, `Plan::new` and
//!   `Plan::into_spec`, get a made-up place and made-up facts.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nixspawn_cli::launcher_args::{self, ArgvError};
use nixspawn_cli::launcher_spec::{Facts, Place, Plan};
use nixspawn_runtime::host::machined::Reach;
use nixspawn_runtime::{MachineName, Uuid};

fn one_printable_line(text: &str) -> bool {
    !text.is_empty() && !text.contains(|c: char| c.is_control())
}

/// Whether a refusal names one of `args`: a quoted prefix of a token (clap
/// cuts a name at characters it does not expect), a token's name as given,
/// a flag of a short cluster, or the long name of a short option.
fn names_an_argument(body: &str, args: &[String]) -> bool {
    use clap::CommandFactory;
    let cmd = launcher_args::Args::command();
    let long_of_short = |c: char| {
        cmd.get_arguments()
            .find(|a| a.get_short() == Some(c))
            .and_then(|a| a.get_long())
            .map(|l| format!("--{l}"))
    };
    args.iter()
        .filter(|a| a.starts_with('-') && a.len() > 1)
        .any(|a| {
            let chars: Vec<char> = a.chars().collect();
            let quoted_prefix = (1..=chars.len())
                .any(|n| body.contains(&format!("{:?}", chars[..n].iter().collect::<String>())));
            let name = a.split('=').next().unwrap_or(a);
            let plain = !name.contains(char::is_control) && name.len() > 1 && body.contains(name);
            let short = !a.starts_with("--")
                && chars[1..].iter().any(|&c| {
                    let flag = format!("-{c}");
                    body.contains(&flag)
                        || body.contains(&format!("{flag:?}"))
                        || long_of_short(c).is_some_and(|l| body.contains(&l))
                });
            quoted_prefix || plain || short
        })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let argv: Vec<String> = std::iter::once("nixspawn")
        .chain(s.split('\0'))
        .take(64)
        .map(String::from)
        .collect();
    let args = match launcher_args::try_parse(&argv) {
        Ok(args) => args,
        Err(ArgvError::Info(_)) => return,
        Err(ArgvError::Refused(line)) => {
            assert!(one_printable_line(&line), "refusal {line:?} for {argv:?}");
            // It names one of the arguments given: as given (quoted and
            // escaped, perhaps cut short by clap), or by its long name.
            let body = line.trim_end_matches("; see nixspawn --help");
            let named = names_an_argument(body, &argv[1..]);
            assert!(named, "refusal {line:?} names no argument of {argv:?}");
            return;
        }
    };
    let canonical = args.to_argv();
    match launcher_args::try_parse(&canonical) {
        Ok(again) => assert_eq!(again, args, "{argv:?} -> {canonical:?}"),
        Err(e) => panic!("canonical form {canonical:?} of {argv:?} refused: {e}"),
    }

    let place = Place {
        directory: Some("/srv/fuzz".into()),
        toplevel: args
            .toplevel
            .as_ref()
            .map(|_| "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-fuzz".into()),
        machine: MachineName::new("fuzz").unwrap(),
        settings: None,
        image: None,
        oci: None,
    };
    let facts = Facts {
        machined: Some(Reach::NoSystemBus {
            socket: "/run/dbus/system_bus_socket".into(),
        }),
        store: None,
        loaded_credentials: Vec::new(),
        uuid: Uuid::parse("0123456789abcdef0123456789abcdef").unwrap(),
        terminal: data.len() % 2 == 0,
        seccomp: true,
        term: None,
    };
    if let Err(e) = Plan::new(args, place).and_then(|plan| plan.into_spec(facts)) {
        let line = nixspawn_cli::error_line(&e);
        assert!(
            one_printable_line(&line),
            "to_spec refusal {line:?} for {argv:?}"
        );
    }
});
