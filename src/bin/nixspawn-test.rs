//! nixspawn-test: run a multi-node test (a JSON description and a test
//! script in the NixOS test driver's dialect) against nixspawn containers
//! on private vlans. See the README's "Multi-node tests" section.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "nixspawn-test",
    version,
    about = "Run a NixOS-style multi-node test script against nixspawn containers"
)]
struct Cli {
    /// The test description (JSON)
    description: PathBuf,
    /// Write the console logs, the timeline and copied files here (default:
    /// a temporary directory, kept only when the test fails)
    #[arg(short = 'o', long = "output-dir", value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Leave the nodes running under their machine names at the end
    #[arg(short = 'K', long)]
    keep: bool,
    /// Open a Python prompt with the nodes defined instead of running the script
    #[arg(short = 'I', long)]
    interactive: bool,
    /// Write a JUnit XML report
    #[arg(long, value_name = "PATH", alias = "junit-xml")]
    junit: Option<PathBuf>,
    /// Seconds the whole run may take (overrides the description's)
    #[arg(long, value_name = "SECS")]
    global_timeout: Option<f64>,
    /// The nixspawn binary (default: next to this one, else on PATH)
    #[arg(long, value_name = "PATH")]
    nixspawn: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__entry") && args.len() == 3 {
        return ExitCode::from(nixspawn_cli::test_runner::entry(&args[2]));
    }
    let cli = Cli::parse();
    let opts = nixspawn_cli::test_runner::Options {
        description: cli.description,
        output_dir: cli.output_dir,
        keep: cli.keep,
        interactive: cli.interactive,
        junit: cli.junit,
        global_timeout: cli.global_timeout,
        nixspawn: cli.nixspawn,
    };
    match nixspawn_cli::test_runner::run(opts) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("nixspawn-test: {}", nixspawn_cli::error_line(&e));
            ExitCode::from(2)
        }
    }
}
