//! `caph-image`: build Kubernetes node images for Hetzner Cloud and Hetzner dedicated servers
//! from one declarative spec.
//!
//! This crate is glue: arguments are parsed by clap (`cli`), turned into calls of the library
//! crates (`commands`), and results are printed as text or JSON. It is the only crate that knows
//! about terminals, exit codes and anyhow.

mod cli;
mod commands;
mod output;
mod progress;
mod spec_files;
mod templates;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `build robot --sim` copies this binary into its simulated rescue systems, where it runs as
    // their installimage (`caph-image installimage ARGS...`): installimage's own arguments, no
    // clap, and not a command for users, so it is not in --help.
    // args_os: a file name that is not UTF-8 must reach clap's error, not panic here.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|first| first == "installimage")
    {
        let arguments: Vec<String> = std::env::args_os()
            .skip(2)
            .map(|argument| argument.to_string_lossy().into_owned())
            .collect();
        let code = caph_sim::installimage::main_from_args(&arguments);
        return ExitCode::from(u8::try_from(code).unwrap_or(cli::EXIT_FAILURE));
    }
    // clap prints --help and usage errors itself, ignoring a closed stream.
    let arguments = cli::Cli::parse();
    match commands::run(arguments) {
        Ok(code) => code,
        Err(error) => {
            output::error(&format!("{error:#}"));
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}
