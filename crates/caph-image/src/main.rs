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

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let arguments = cli::Cli::parse();
    match commands::run(arguments) {
        Ok(code) => code,
        Err(error) => {
            output::error(&format!("{error:#}"));
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}
