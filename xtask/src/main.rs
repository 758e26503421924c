//! `cargo xtask`: release builds, benchmarks and other project automation.
//!
//! Commands:
//! - `cargo xtask bench pack [--rootfs DIR] [--runs N]`: the tarball writer against GNU tar
//!   piped into zstd and pigz, on a real Debian root filesystem (see `bench.rs`).
//! - `cargo xtask dist [--check]`: reproducible release archives in `dist/`, or a check of
//!   them (see `dist.rs`).

mod bench;
mod dist;

use std::process::ExitCode;

use anyhow::{Result, bail};

const USAGE: &str =
    "usage: cargo xtask bench pack [--rootfs DIR] [--runs N]\n       cargo xtask dist [--check]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["bench", "pack", rest @ ..] => bench::pack(&bench::PackArgs::parse(rest)?),
        ["dist", rest @ ..] => dist::run(&dist::DistArgs::parse(rest)?),
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("unknown command {:?}\n{USAGE}", args.join(" ")),
    }
}
