//! nixspawn: boot an OS tree in a container, with systemd-nspawn's command line.

use std::process::ExitCode;

use nixspawn_cli::launcher_args;
use nixspawn_cli::launcher_spec::{self, Options};
use nixspawn_runtime::{Event, Outcome, Spec, spec::signals};

fn report<'a>(spec: &'a Spec, opts: &'a Options) -> impl FnMut(Event<'_>) + 'a {
    move |event| {
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
            Event::Ready | Event::Status(_) => {}
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
        let (spec, opts) = launcher_spec::to_spec(args)?;
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
