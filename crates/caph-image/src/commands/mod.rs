//! One module per subcommand; `run` dispatches.

mod hcloud;
mod plan;
mod tarball;
mod validate;

use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::{BuildCommand, Cli, Command, ImagesCommand};

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { specs } => validate::run(&cli.global, &specs),
        Command::Plan { spec, target, arch } => plan::run(&cli.global, &spec, target, arch),
        Command::Build(BuildCommand::Hcloud {
            spec,
            arch,
            location,
            server_type,
            replace,
            keep_on_error,
            dry_run,
            shutdown_timeout,
            api,
        }) => hcloud::build(
            &cli.global,
            hcloud::BuildOptions {
                spec: &spec,
                arch: &arch,
                location: location.as_deref(),
                server_type: server_type.as_deref(),
                replace,
                keep_on_error,
                dry_run,
                shutdown_timeout,
                api: &api,
            },
        ),
        Command::Build(BuildCommand::Tarball {
            spec,
            output_dir,
            compression,
            arch,
            work_dir,
            keep_work_dir,
        }) => tarball::build(
            &cli.global,
            tarball::BuildOptions {
                spec: &spec,
                output_dir: &output_dir,
                compression,
                arch,
                work_dir: work_dir.as_deref(),
                keep_work_dir,
            },
        ),
        Command::Pack {
            dir,
            file,
            compression,
            plain,
        } => tarball::pack(&cli.global, &dir, &file, compression, plain),
        Command::Images(ImagesCommand::List { name, api }) => {
            hcloud::list(&cli.global, name.as_deref(), &api)
        }
        Command::Images(ImagesCommand::Prune {
            keep,
            name,
            dry_run,
            api,
        }) => hcloud::prune(&cli.global, keep, name.as_deref(), dry_run, &api),
        Command::Gc {
            older_than,
            dry_run,
            api,
        } => hcloud::gc(&cli.global, older_than, dry_run, &api),
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
