//! nixspawn: boot an OS tree in a container, with systemd-nspawn's command line.

use std::process::ExitCode;

use nixspawn_cli::launcher_args;
use nixspawn_cli::launcher_spec::{self, Options};
use nixspawn_runtime::{Event, Outcome, Spec, spec::signals};

fn report<'a>(spec: &'a Spec, opts: &'a Options) -> impl FnMut(Event<'_>) + 'a {
    move |event| {
        // nspawn's -q silences its own status lines, not its warnings.
        if let Event::Warning(text) = event {
            eprintln!("nixspawn: {text}");
            return;
        }
        if opts.quiet {
            return;
        }
        match event {
            Event::Spawning => {
                // Said once all input is checked, so a refused run prints only its error.
                if let Some(notice) = &opts.register_notice {
                    eprintln!("{notice}");
                }
                eprintln!(
                    "Spawning container {} on {}.",
                    spec.machine,
                    spec.root_description()
                );
                if spec.console == nixspawn_runtime::ConsoleMode::Interactive {
                    eprintln!("Press ^] three times within 1s to kill container.");
                }
            }
            Event::Started { .. } => {}
            Event::Notice(text) => eprintln!("nixspawn: {text}"),
            Event::Ready | Event::Status(_) | Event::Warning(_) => {}
            Event::Stopping => eprintln!("Container {} is being stopped.", spec.machine),
            Event::Rebooting => eprintln!("Container {} is being rebooted.", spec.machine),
            Event::EscapeKill => eprintln!("\r\nKilling container {}.", spec.machine),
        }
    }
}

fn describe(spec: &Spec, outcome: Outcome) -> String {
    let m = &spec.machine;
    match outcome {
        Outcome::Exited(0) | Outcome::PoweredOff => format!("Container {m} exited successfully."),
        Outcome::Exited(n) => format!("Container {m} failed with error code {n}."),
        Outcome::Rebooted => {
            format!("Container {m} is being rebooted (exit status 133 for the unit to restart it).")
        }
        Outcome::Killed(s) => format!("Container {m} terminated by signal {}.", signals::name(s)),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let run = || -> anyhow::Result<(Spec, bool, Outcome)> {
        let args = launcher_args::parse(&argv)?;
        let (mut spec, opts) = launcher_spec::to_spec(args)?;
        // The tint is terminal output, ours to decide: not into a pipe, a
        // file, a dumb terminal, or past NO_COLOR / SYSTEMD_COLORS=0.
        if !nixspawn_cli::terminal_colors::stdout_takes_colors() {
            spec.background = None;
        }
        for warning in &opts.warnings {
            eprintln!("nixspawn: {warning}");
        }
        if opts.debug {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_max_level(tracing::Level::DEBUG)
                .with_target(false)
                .init();
        }
        let outcome = nixspawn_runtime::run(&spec, &mut report(&spec, &opts))?;
        Ok((spec, opts.quiet, outcome))
    };
    match run() {
        Ok((spec, quiet, outcome)) => {
            if !quiet {
                eprintln!("{}", describe(&spec, outcome));
            }
            ExitCode::from(outcome.exit_code().clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!("nixspawn: {}", nixspawn_cli::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixspawn_cli::launcher_args;
    use nixspawn_cli::launcher_spec::{Facts, Place, Plan};
    use nixspawn_runtime::{MachineName, Uuid};

    #[test]
    fn the_last_line_speaks_as_systemd_nspawn_does() {
        let argv: Vec<String> = ["nixspawn", "/bin/true"].map(String::from).into();
        let place = Place {
            directory: Some("/srv/web".into()),
            toplevel: None,
            machine: MachineName::new("web").unwrap(),
            settings: None,
            image: None,
            oci: None,
        };
        let facts = Facts {
            machined: None,
            store: None,
            loaded_credentials: Vec::new(),
            uuid: Uuid::parse("0123456789abcdef0123456789abcdef").unwrap(),
            terminal: false,
            seccomp: true,
            term: None,
        };
        let (spec, _) = Plan::new(launcher_args::parse(&argv).unwrap(), place)
            .unwrap()
            .into_spec(facts)
            .unwrap();
        for (outcome, line) in [
            (Outcome::Exited(0), "Container web exited successfully."),
            (Outcome::PoweredOff, "Container web exited successfully."),
            (
                Outcome::Exited(7),
                "Container web failed with error code 7.",
            ),
            (
                Outcome::Killed(libc::SIGKILL),
                "Container web terminated by signal SIGKILL.",
            ),
            (
                Outcome::Rebooted,
                "Container web is being rebooted (exit status 133 for the unit to restart it).",
            ),
        ] {
            assert_eq!(describe(&spec, outcome), line);
        }
    }
}
