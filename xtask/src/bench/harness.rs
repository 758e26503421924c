//! What `cargo xtask bench` and the benchmark targets it runs agree on. The benchmarks that need
//! workspace crates are `harness = false` bench targets in the crates they measure; they include
//! this file by path (`#[path = ".../xtask/src/bench/harness.rs"]`), so the variable names, the
//! summary line and the GNU time format exist once. Only `std`: every includer compiles it.

// Each includer uses a different part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// The file a benchmark writes its Markdown section to; unset, it prints the section.
pub const OUT_VAR: &str = "CAPH_BENCH_OUT";
/// How many measured runs of each command (`--runs N` of `cargo xtask bench`).
pub const RUNS_VAR: &str = "CAPH_BENCH_RUNS";
/// Runs per command: three gives a median that one noisy neighbour cannot move much.
pub const DEFAULT_RUNS: usize = 3;
/// The start of the one line of a section that the report's summary quotes.
pub const RESULT_PREFIX: &str = "**Result:**";
/// The start of the line of a section that could not be measured on this machine.
pub const SKIPPED_PREFIX: &str = "**SKIPPED:**";
/// GNU time (Debian package `time`): wall time, CPU time and peak RSS of a child process.
pub const GNU_TIME: &str = "/usr/bin/time";
/// Wall seconds, user seconds, system seconds, peak RSS in KiB.
const GNU_TIME_FORMAT: &str = "%e %U %S %M";

/// `CAPH_BENCH_RUNS`, or [`DEFAULT_RUNS`].
pub fn runs() -> usize {
    std::env::var(RUNS_VAR)
        .ok()
        .and_then(|runs| runs.parse().ok())
        .filter(|runs| *runs > 0)
        .unwrap_or(DEFAULT_RUNS)
}

/// The median (the mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        len if len % 2 == 1 => sorted[len / 2],
        len => f64::midpoint(sorted[len / 2 - 1], sorted[len / 2]),
    }
}

/// Writes a finished section where `CAPH_BENCH_OUT` says, or prints it.
pub fn emit(section: &str) -> std::io::Result<()> {
    match std::env::var_os(OUT_VAR) {
        Some(path) => std::fs::write(path, section),
        None => {
            print!("{section}");
            Ok(())
        }
    }
}

/// A section for a benchmark this machine cannot run: the reason, no numbers.
pub fn skipped_section(title: &str, reason: &str) -> String {
    format!("## {title}\n\n{SKIPPED_PREFIX} {reason}\n")
}

/// What GNU time reported for one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub wall: f64,
    /// User plus system seconds.
    pub cpu: f64,
    /// Peak resident memory of the largest process (the child and whatever it waited for).
    pub rss_kib: u64,
}

/// `command` (program, arguments, environment and directory) run under GNU time, which writes
/// its report to `report`.
pub fn under_gnu_time(command: &Command, report: &Path) -> Command {
    let mut timed = Command::new(GNU_TIME);
    timed
        .args(["-f", GNU_TIME_FORMAT, "-o"])
        .arg(report)
        .arg(command.get_program())
        .args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => timed.env(name, value),
            None => timed.env_remove(name),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        timed.current_dir(dir);
    }
    timed
}

/// Reads (and removes) a report of [`under_gnu_time`]. A failed command adds a line before it,
/// so the last line is the one in our format.
pub fn read_gnu_time(report: &Path) -> Result<Usage, String> {
    let text = std::fs::read_to_string(report)
        .map_err(|error| format!("reading {}: {error}", report.display()))?;
    let _ = std::fs::remove_file(report);
    let line = text.lines().last().unwrap_or_default();
    let fields: Vec<f64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("unexpected GNU time output {text:?}"))?;
    let [wall, user, system, rss] = fields[..] else {
        return Err(format!("unexpected GNU time output {text:?}"));
    };
    Ok(Usage {
        wall,
        cpu: user + system,
        rss_kib: rss as u64,
    })
}

/// Mebibytes of `kib` kibibytes.
pub fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
