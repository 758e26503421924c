//! One module per subcommand; `run` dispatches.

mod plan;
mod validate;

use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::{Cli, Command};

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { specs } => validate::run(&cli.global, &specs),
        Command::Plan { spec, target, arch } => plan::run(&cli.global, &spec, target, arch),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "caph-image",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
