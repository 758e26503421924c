//! The command line: every subcommand, flag and help text, as clap definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The exit code when the command ran and found a problem (an invalid spec, a failed build).
/// Success is 0, and a wrong command line is 2, which clap uses for usage errors.
pub const EXIT_FAILURE: u8 = 1;

const ABOUT: &str = "Build Kubernetes node images for Hetzner from one declarative spec";

const LONG_ABOUT: &str = "\
Build Kubernetes node images for Hetzner from one declarative spec.

One TOML spec describes a node: the base system, Kubernetes, containerd, runc and crictl at pinned
versions, kernel settings, packages, files and scripts. From it caph-image builds labelled Hetzner
Cloud snapshots that Cluster API Provider Hetzner finds by `imageName`, and installimage tarballs
for dedicated servers.";

const AFTER_HELP: &str = "\
Examples:
  caph-image validate images/*.toml
  caph-image plan images/ubuntu-24.04-k8s-1.36.toml --target hcloud --arch arm
  caph-image completions bash > /etc/bash_completion.d/caph-image

Exit codes: 0 success, 1 failure (invalid spec, failed build), 2 wrong usage.
Environment: HCLOUD_TOKEN, HCLOUD_ENDPOINT, HETZNER_ROBOT_USER, HETZNER_ROBOT_PASSWORD.";

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(name = "caph-image", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// How results are printed: text for people, json for scripts
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Print more detail, such as every line of remote command output
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// Print plain progress lines instead of redrawing the terminal
    #[arg(long, global = true)]
    pub no_progress: bool,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text
    Text,
    /// One JSON document on standard output
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check specs and report every problem with file, line and column
    #[command(after_help = "\
Examples:
  caph-image validate images/ubuntu-24.04-k8s-1.36.toml
  caph-image validate --output json images/*.toml

Exit codes: 0 all specs valid, 1 at least one invalid, 2 wrong usage.")]
    Validate {
        /// Spec files to check
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<PathBuf>,
    },
    /// Print the provisioning plan of a spec as one readable script
    #[command(after_help = "\
The plan is what a build runs on the temporary server (target hcloud) or in the chroot of the
root filesystem (target tarball). It is deterministic: the same spec gives the same plan, byte for
byte, so it can be reviewed and diffed.

Examples:
  caph-image plan images/debian-12-k8s-1.34.toml
  caph-image plan images/debian-12-k8s-1.34.toml --target tarball --arch arm64
  caph-image plan images/debian-12-k8s-1.34.toml --output json | jq '.steps[].name'")]
    Plan {
        /// The spec file
        #[arg(value_name = "SPEC")]
        spec: PathBuf,
        /// Where the plan runs
        #[arg(long, value_enum, default_value_t = PlanTarget::Hcloud)]
        target: PlanTarget,
        /// The architecture: x86 or arm (amd64 and arm64 are accepted too)
        #[arg(long, default_value = "x86", value_parser = parse_arch)]
        arch: caph_core::Arch,
    },
    /// Print a shell completion script
    #[command(after_help = "\
Examples:
  caph-image completions bash > ~/.local/share/bash-completion/completions/caph-image
  caph-image completions zsh > ~/.zfunc/_caph-image")]
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Plan targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanTarget {
    /// A Hetzner Cloud server, provisioned over SSH and snapshotted
    Hcloud,
    /// A root filesystem in a chroot, packed into an installimage tarball
    Tarball,
}

fn parse_arch(text: &str) -> Result<caph_core::Arch, String> {
    caph_core::Arch::parse(text).ok_or_else(|| {
        format!("\"{text}\" is not an architecture; use x86 or arm (or amd64, arm64)")
    })
}
