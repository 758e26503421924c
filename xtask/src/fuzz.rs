//! `cargo xtask fuzz --minutes N`: the property tests, run for longer than `cargo test` runs
//! them. Each round runs every property test once with many more cases (each round draws new
//! random inputs), until the time is up (the first round runs whole); the first failure stops
//! it, with proptest's smallest failing input in the output.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

/// The property tests: package, test target, the test's name filter, and the cases per round
/// (sized so that one round of each takes half a minute or so on two cores; `cargo test` runs
/// 128, 512 and 12).
const PROPERTIES: &[(&str, &str, &str, u32)] = &[
    ("caph-core", "it", "properties::", 200_000),
    ("caph-robot", "it", "properties::", 100_000),
    ("caph-rootfs", "it", "properties::", 400),
];

/// Parsed arguments of `cargo xtask fuzz`.
#[derive(Debug)]
pub struct FuzzArgs {
    minutes: u64,
}

impl FuzzArgs {
    pub fn parse(args: &[&str]) -> Result<FuzzArgs> {
        match args {
            ["--minutes", minutes] => {
                let minutes = minutes
                    .parse()
                    .with_context(|| format!("--minutes {minutes}: not a whole number"))?;
                ensure!(minutes > 0, "--minutes must be at least 1");
                Ok(FuzzArgs { minutes })
            }
            [] => Ok(FuzzArgs { minutes: 10 }),
            other => bail!("unknown arguments {:?}: use --minutes N", other.join(" ")),
        }
    }
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    let workspace = crate::dist::workspace_root();
    let deadline = Instant::now() + Duration::from_secs(args.minutes * 60);
    // Built once, so the rounds spend their time on cases.
    for (package, target, _, _) in PROPERTIES {
        cargo_test(&workspace, package, target, &["--no-run"], None)?;
    }
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        for (package, target, filter, cases) in PROPERTIES {
            // The first round runs every property test, however short the time.
            if round > 1 && Instant::now() >= deadline {
                break;
            }
            eprintln!("fuzz round {round}: {package} {filter} with {cases} cases");
            cargo_test(&workspace, package, target, &["--", filter], Some(*cases))?;
        }
    }
    eprintln!(
        "fuzz: {round} rounds in {} minutes, no failure",
        args.minutes
    );
    Ok(())
}

fn cargo_test(
    workspace: &Path,
    package: &str,
    target: &str,
    extra: &[&str],
    cases: Option<u32>,
) -> Result<()> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["test", "--quiet", "-p", package, "--test", target])
        .args(extra)
        .current_dir(workspace);
    if let Some(cases) = cases {
        command.env("PROPTEST_CASES", cases.to_string());
    }
    let status = command.status().context("running cargo test")?;
    ensure!(
        status.success(),
        "the property tests of {package} failed (proptest printed the smallest failing input above)"
    );
    Ok(())
}
