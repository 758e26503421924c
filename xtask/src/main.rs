//! `cargo xtask`: release builds, benchmarks and other project automation.
//!
//! Commands:
//! - `cargo xtask bench [all | pack | upload | polling | builds | installs] [--runs N]
//!   [--rootfs DIR]`: every benchmark (or one), side by side with the tools it competes with,
//!   written to one report, `BENCHMARKS.md` (see `bench/mod.rs`).
//! - `cargo xtask dist [--check]`: reproducible release archives in `dist/`, or a check of
//!   them (see `dist.rs`).
//! - `cargo xtask pins SPEC... --checksums FILE [--newest-patch]`: sha256 pins for every
//!   artifact and architecture of image specs, from kubespray's checksum table (see `pins.rs`).
//! - `cargo xtask fuzz [--minutes N]`: the property tests, with many more cases than
//!   `cargo test` runs, for N minutes (default 10; see `fuzz.rs`).

mod bench;
mod dist;
mod fuzz;
mod pins;

use std::process::ExitCode;

use anyhow::{Result, bail};

const USAGE: &str =
    "usage: cargo xtask bench [all | pack | upload | polling | builds | installs] [--runs N] [--rootfs DIR]
       cargo xtask dist [--check]
       cargo xtask pins SPEC... --checksums FILE [--newest-patch]
       cargo xtask fuzz [--minutes N]";

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
        ["bench", rest @ ..] => bench::run(&bench::BenchArgs::parse(rest)?),
        ["dist", rest @ ..] => dist::run(&dist::DistArgs::parse(rest)?),
        ["pins", rest @ ..] => pins::run(&pins::PinsArgs::parse(rest)?),
        ["fuzz", rest @ ..] => fuzz::run(&fuzz::FuzzArgs::parse(rest)?),
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("unknown command {:?}\n{USAGE}", args.join(" ")),
    }
}
