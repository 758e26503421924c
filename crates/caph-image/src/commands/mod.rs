//! One module per subcommand; `run` dispatches.

mod from_tarball;
mod hcloud;
mod plan;
mod robot;
mod sim;
mod tarball;
mod upload;
mod validate;
mod verify;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory;

use crate::cli::{
    BuildCommand, Cli, Command, ImagesCommand, RobotCommand, UploadCommand, VerifyCommand,
};

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { specs, strict } => validate::run(&cli.global, &specs, strict),
        Command::Plan { spec, target, arch } => plan::run(&cli.global, &spec, target, arch),
        Command::Build(BuildCommand::Hcloud {
            spec,
            arch,
            locations,
            server_types,
            replace,
            keep_on_error,
            dry_run,
            from_tarball,
            output_dir,
            shutdown_timeout,
            sim,
            sim_speed,
            api,
        }) => hcloud::build(
            &cli.global,
            hcloud::BuildOptions {
                spec: &spec,
                arch: &arch,
                locations: &locations,
                server_types: &server_types,
                replace,
                keep_on_error,
                dry_run,
                from_tarball: from_tarball.as_ref().map(|tarball| from_tarball::Source {
                    tarball: tarball.as_deref(),
                    output_dir: output_dir.as_deref().unwrap_or(std::path::Path::new(".")),
                }),
                shutdown_timeout,
                sim: sim.then_some(sim_speed),
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
        Command::Upload(UploadCommand::Hcloud {
            image,
            name,
            arch,
            description,
            locations,
            server_types,
            sha256,
            replace,
            keep_on_error,
            api,
        }) => upload::hcloud(
            &cli.global,
            upload::UploadOptions {
                image: &image,
                name,
                arch,
                description,
                locations,
                server_types,
                sha256,
                replace,
                keep_on_error,
                api: &api,
            },
        ),
        Command::Verify(VerifyCommand::Tarball {
            tarball,
            user_data,
            hostname,
            boot_timeout,
            work_dir,
            console_log,
        }) => verify::tarball(
            &cli.global,
            verify::TarballOptions {
                tarball,
                user_data,
                hostname,
                boot_timeout,
                work_dir,
                console_log,
            },
        ),
        Command::Verify(VerifyCommand::Hcloud {
            snapshot,
            arch,
            locations,
            server_types,
            boot_timeout,
            sim,
            sim_speed,
            api,
        }) => verify::hcloud(
            &cli.global,
            verify::HcloudOptions {
                snapshot,
                arch,
                locations,
                server_types,
                boot_timeout,
                sim: sim.then_some(sim_speed),
                api: &api,
            },
        ),
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
        Command::Build(BuildCommand::Robot {
            spec,
            server,
            tarball,
            layout,
            hostname,
            output_dir,
            arch,
            authorize_keys,
            poll_interval,
            reset_timeout,
            sim,
            sim_speed,
            sim_installimage,
            api,
        }) => robot::build(
            &cli.global,
            robot::BuildOptions {
                spec: &spec,
                server,
                tarball: tarball.as_deref(),
                layout: layout.as_deref(),
                hostname: hostname.as_deref(),
                output_dir: &output_dir,
                arch,
                authorize_keys: &authorize_keys,
                poll_interval,
                reset_timeout,
                sim: sim.then_some(sim_speed),
                sim_installimage: sim_installimage.as_deref(),
                api: &api,
            },
        ),
        Command::Robot(RobotCommand::Servers { api }) => robot::servers(&cli.global, &api),
        Command::Completions { shell } => {
            // Generated into memory first: the generator panics on a closed stdout.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "caph-image", &mut script);
            crate::output::raw(&script);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: None } => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .context("writing the man page")?;
            crate::output::raw(&page);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: Some(dir) } => {
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The exit code after Ctrl-C or SIGTERM, once cleanup ran (128 + SIGINT, as shells report it).
pub(crate) const EXIT_CANCELLED: u8 = 130;

/// The async runtime of one command.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs one command's async work on a runtime of its own, with progress for people, the first
/// Ctrl-C or SIGTERM turned into cancellation of `context.cancel` (and `leftover` printed after
/// a second one, which exits at once). `work` gets the context, with `build_id`, and the progress
/// renderer (for a simulator's log).
pub(crate) fn run_cancellable<T, F: std::future::Future<Output = T>>(
    global: &crate::cli::GlobalArgs,
    build_id: String,
    leftover: &str,
    work: impl FnOnce(caph_core::backend::Context, std::sync::Arc<crate::progress::Progress>) -> F,
) -> anyhow::Result<T> {
    let runtime = runtime()?;
    let progress = std::sync::Arc::new(crate::progress::Progress::new(
        global.no_progress,
        global.verbose,
    ));
    let context = caph_core::backend::Context {
        progress: progress.clone(),
        cancel: tokio_util::sync::CancellationToken::new(),
        build_id,
    };
    let token = context.cancel.clone();
    cancel_on_signals(&runtime, move || token.cancel(), leftover.to_string());
    let result = runtime.block_on(work(context, progress.clone()));
    progress.finish();
    Ok(result)
}

/// Calls `cancel` on the first Ctrl-C or SIGTERM, so the run can clean up; a second one exits at
/// once, after printing `leftover` (what the user may have to clean by hand).
pub(crate) fn cancel_on_signals(
    runtime: &tokio::runtime::Runtime,
    cancel: impl Fn() + Send + 'static,
    leftover: String,
) {
    runtime.spawn(async move {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        for round in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            if round == 0 {
                crate::output::note(
                    "interrupted: stopping and cleaning up (interrupt again to exit at once)",
                );
                cancel();
            } else {
                crate::output::note(&format!(
                    "interrupted again: exiting without cleanup; {leftover}"
                ));
                std::process::exit(i32::from(EXIT_CANCELLED));
            }
        }
    });
}
