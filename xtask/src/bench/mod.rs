//! `cargo xtask bench [all | NAME] [--runs N] [--rootfs DIR]`: every benchmark, one Markdown
//! report, `BENCHMARKS.md` at the workspace root.
//!
//! The sections: `pack` runs here (`pack.rs`: it measures the release binary against shell
//! pipelines); `upload`, `polling`, `builds` and `installs` are `harness = false` bench targets in
//! the crates they measure (caph-ssh, caph-hcloud, caph-image), run with
//! `cargo bench -p CRATE --bench NAME`;
//! each writes its section to the file named by `CAPH_BENCH_OUT` (see `harness.rs`, which they
//! include). `--runs N` sets the measured runs of every section; without it each takes three,
//! except `installs` (two: its rounds are minutes long). Everything is compiled before the first
//! measurement, so no compile competes with one. Around each section this records the UTC time, the duration and the load average before
//! and after, since a benchmark on a shared machine is only as good as what else ran.
//!
//! `ci` (`ci.rs`) runs `.ci/run` on a clean clone of `HEAD` and times it whole; `bench all` leaves it
//! out, `bench ci` runs it.
//!
//! `bench NAME` runs one section, prints it and replaces only that section of `BENCHMARKS.md`
//! (the others, each with its own date, stay); the machine description and the summary at the
//! top are rewritten from what the file then holds. `bench` and `bench all` run every section.

mod ci;
pub mod harness;
mod pack;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};

use crate::dist::{target_dir, workspace_root};
use harness::{DEFAULT_RUNS, GNU_TIME, OUT_VAR, RESULT_PREFIX, RUNS_VAR, SKIPPED_PREFIX};

/// The report, at the workspace root.
const REPORT: &str = "BENCHMARKS.md";

/// One section of the report.
#[derive(Debug, PartialEq)]
struct Section {
    name: &'static str,
    /// `(package, bench target)` for the sections that are cargo bench targets.
    bench: Option<(&'static str, &'static str)>,
    /// Whether it runs the release `caph-image` binary that `cargo build --release` makes.
    release_binary: bool,
    /// Runs when `--runs` is not given, where [`DEFAULT_RUNS`] would take too long.
    default_runs: Option<usize>,
    /// Whether `bench all` runs it (`ci` runs only when named: it takes the machine for the whole
    /// test suite).
    in_all: bool,
}

impl Section {
    /// `--runs N`, else this section's default, else [`DEFAULT_RUNS`].
    fn runs(&self, asked: Option<usize>) -> usize {
        asked.or(self.default_runs).unwrap_or(DEFAULT_RUNS)
    }
}

/// Every section, in report order.
const SECTIONS: [Section; 6] = [
    Section {
        name: "pack",
        bench: None,
        release_binary: true,
        default_runs: None,
        in_all: true,
    },
    Section {
        name: "upload",
        bench: Some(("caph-ssh", "upload")),
        release_binary: false,
        default_runs: None,
        in_all: true,
    },
    Section {
        name: "polling",
        bench: Some(("caph-hcloud", "polling")),
        release_binary: false,
        default_runs: None,
        in_all: true,
    },
    Section {
        name: "builds",
        // The bench target gets the release binary as `CARGO_BIN_EXE_caph-image`.
        bench: Some(("caph-image", "builds")),
        release_binary: false,
        default_runs: None,
        in_all: true,
    },
    Section {
        name: "installs",
        // `build robot --sim`: the release binary again, as `CARGO_BIN_EXE_caph-image`.
        bench: Some(("caph-image", "installs")),
        release_binary: false,
        // A round is two whole installs (about four minutes on two cores, the real installimage
        // most of it) after a tarball build of minutes: two rounds keep the section near ten.
        default_runs: Some(2),
        in_all: true,
    },
    Section {
        name: "ci",
        bench: None,
        release_binary: false,
        default_runs: Some(1),
        in_all: false,
    },
];

/// Arguments of `bench`.
#[derive(Debug)]
pub struct BenchArgs {
    /// One section, or `None` for all.
    only: Option<&'static Section>,
    /// `--runs N`; `None`: each section's default.
    runs: Option<usize>,
    rootfs: Option<PathBuf>,
}

impl BenchArgs {
    pub fn parse(args: &[&str]) -> Result<BenchArgs> {
        let mut parsed = BenchArgs {
            only: None,
            runs: None,
            rootfs: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match *arg {
                "--rootfs" => {
                    parsed.rootfs = Some(args.next().context("--rootfs needs a directory")?.into());
                }
                "--runs" => {
                    let runs = args.next().context("--runs needs a number")?;
                    parsed.runs = Some(runs.parse().ok().filter(|runs| *runs > 0).with_context(
                        || format!("--runs must be a positive number, not {runs:?}"),
                    )?);
                }
                "all" => parsed.only = None,
                name => {
                    let section = SECTIONS
                        .iter()
                        .find(|section| section.name == name)
                        .with_context(|| {
                            format!(
                                "unknown benchmark {name:?} (one of all, {})",
                                section_names().join(", ")
                            )
                        })?;
                    parsed.only = Some(section);
                }
            }
        }
        Ok(parsed)
    }
}

fn section_names() -> Vec<&'static str> {
    SECTIONS.iter().map(|section| section.name).collect()
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let started = Instant::now();
    let workspace = workspace_root();
    let target = target_dir(&workspace);
    ensure!(
        Path::new(GNU_TIME).exists(),
        "{GNU_TIME} is missing (Debian package: time)"
    );
    let selected: Vec<&Section> = match args.only {
        Some(section) => vec![section],
        None => SECTIONS.iter().filter(|section| section.in_all).collect(),
    };

    // Everything is built before anything is measured.
    if selected.iter().any(|section| section.release_binary) {
        eprintln!("building caph-image (release)...");
        cargo(
            &workspace,
            &["build", "--release", "--quiet", "-p", "caph-image"],
        )?;
    }
    for (package, bench) in selected.iter().filter_map(|section| section.bench) {
        eprintln!("building the {bench} benchmark of {package} (bench profile = release)...");
        cargo(
            &workspace,
            &[
                "bench", "--no-run", "--quiet", "-p", package, "--bench", bench,
            ],
        )?;
    }

    let scratch = target.join("bench");
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let report_path = workspace.join(REPORT);
    let mut sections = match fs::read_to_string(&report_path) {
        Ok(text) => parse_sections(&text),
        Err(_) => BTreeMap::new(),
    };
    for section in selected {
        eprintln!("== bench {} ==", section.name);
        let load_before = load_average();
        let date = utc_now();
        let section_started = Instant::now();
        let runs = section.runs(args.runs);
        let body = match section.bench {
            None if section.name == "ci" => ci::run(&workspace, &scratch)?,
            None => pack::run(
                &target.join("release/caph-image"),
                args.rootfs.as_deref(),
                runs,
                &scratch,
            )?,
            Some((package, bench)) => run_bench(&workspace, &scratch, package, bench, runs)?,
        };
        let run_line = format!(
            "_Measured {date} in {:.0} s, {} runs; load average (1, 5, 15 min) before `{load_before}`, \
             after `{}`._",
            section_started.elapsed().as_secs_f64(),
            runs,
            load_average()
        );
        let text = with_run_line(&body, &run_line);
        println!("{text}");
        if let Some(reason) = skipped_reason(&text) {
            eprintln!("SKIPPED bench {}: {reason}", section.name);
        }
        sections.insert(section.name.to_owned(), text);
        // Written after every section, so an interrupted run keeps what it measured.
        fs::write(&report_path, render_report(&machine(), &sections))
            .with_context(|| format!("writing {}", report_path.display()))?;
    }
    eprintln!(
        "written to {} ({:.1} min in all)",
        report_path.display(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

fn cargo(workspace: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(env_or("CARGO", "cargo"))
        .args(args)
        .current_dir(workspace)
        .status()
        .context("running cargo")?;
    ensure!(status.success(), "cargo {} failed", args.join(" "));
    Ok(())
}

/// Runs one bench target and returns the section it wrote.
fn run_bench(
    workspace: &Path,
    scratch: &Path,
    package: &str,
    bench: &str,
    runs: usize,
) -> Result<String> {
    let out = scratch.join(format!("{bench}.md"));
    let _ = fs::remove_file(&out);
    let status = Command::new(env_or("CARGO", "cargo"))
        .args(["bench", "--quiet", "-p", package, "--bench", bench])
        .env(OUT_VAR, &out)
        .env(RUNS_VAR, runs.to_string())
        .current_dir(workspace)
        .status()
        .context("running cargo bench")?;
    ensure!(
        status.success(),
        "the {bench} benchmark of {package} failed ({status})"
    );
    fs::read_to_string(&out)
        .with_context(|| format!("the {bench} benchmark wrote no {}", out.display()))
}

/// The section with the run line after its title.
fn with_run_line(body: &str, run_line: &str) -> String {
    let body = body.trim_end();
    match body.split_once('\n') {
        Some((title, rest)) => format!("{title}\n\n{run_line}\n{rest}\n"),
        None => format!("{body}\n\n{run_line}\n"),
    }
}

fn skipped_reason(section: &str) -> Option<&str> {
    section
        .lines()
        .find_map(|line| line.strip_prefix(SKIPPED_PREFIX))
        .map(str::trim)
}

fn begin_marker(name: &str) -> String {
    format!("<!-- bench:{name} -->")
}

fn end_marker(name: &str) -> String {
    format!("<!-- /bench:{name} -->")
}

/// The sections of an existing report, by name (only names this xtask knows).
fn parse_sections(report: &str) -> BTreeMap<String, String> {
    let mut sections = BTreeMap::new();
    for name in section_names() {
        let (begin, end) = (begin_marker(name), end_marker(name));
        if let Some(start) = report.find(&begin)
            && let Some(length) = report[start..].find(&end)
        {
            let inner = &report[start + begin.len()..start + length];
            sections.insert(name.to_owned(), format!("{}\n", inner.trim()));
        }
    }
    sections
}

/// The whole report: machine, summary, then the sections in [`SECTIONS`] order.
fn render_report(machine: &[(&str, String)], sections: &BTreeMap<String, String>) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "# Benchmarks\n");
    let _ = writeln!(
        text,
        "Written by `cargo xtask bench` (all sections) or `cargo xtask bench NAME` (one section, \
         {}); do not edit by hand. Every comparison is measured side by side in the same run, \
         on the machine below; each section says when it ran and how loaded the machine was.\n",
        section_names().join(", ")
    );
    let _ = writeln!(text, "## Machine\n");
    for (key, value) in machine {
        let _ = writeln!(text, "- {key}: {value}");
    }
    let _ = writeln!(text, "\n## Summary\n");
    let ordered: Vec<(&str, &String)> = section_names()
        .into_iter()
        .filter_map(|name| sections.get(name).map(|section| (name, section)))
        .collect();
    for (name, section) in &ordered {
        let title = section
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("## "))
            .unwrap_or(name);
        let result = section
            .lines()
            .find_map(|line| line.strip_prefix(RESULT_PREFIX))
            .map(str::trim)
            .map(str::to_owned)
            .or_else(|| skipped_reason(section).map(|reason| format!("SKIPPED: {reason}")))
            .unwrap_or_else(|| "no result line".to_owned());
        let _ = writeln!(text, "- [{title}](#{}): {result}", anchor(title));
    }
    for (name, section) in &ordered {
        let _ = writeln!(
            text,
            "\n{}\n{}\n{}",
            begin_marker(name),
            section.trim_end(),
            end_marker(name)
        );
    }
    text
}

/// GitHub's heading anchor: lower case, spaces to dashes, other punctuation dropped.
fn anchor(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The machine the numbers come from, as `(what, value)` lines.
fn machine() -> Vec<(&'static str, String)> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown", |(_, model)| model.trim())
        .to_owned();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or_else(
            || "unknown".to_owned(),
            |kib| format!("{:.1} GiB", kib / f64::from(1 << 20)),
        );
    let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let distribution = os_release
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map_or("unknown", |name| name.trim_matches('"'))
        .to_owned();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |text| text.trim().to_owned());
    let zstd = first_line("zstd", &["-V"]);
    let zstd = zstd
        .split_whitespace()
        .find(|word| word.starts_with('v') && word[1..].starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(&zstd)
        .trim_end_matches(',')
        .to_owned();
    vec![
        ("written", utc_now()),
        (
            "CPU",
            format!(
                "{cpu}, {} cores",
                std::thread::available_parallelism().map_or(1, usize::from)
            ),
        ),
        ("memory", memory),
        ("kernel", kernel),
        ("distribution", distribution),
        ("rustc", first_line(&env_or("RUSTC", "rustc"), &["-V"])),
        ("GNU tar", first_line("tar", &["--version"])),
        ("zstd", zstd),
        ("pigz", first_line("pigz", &["-V"])),
        ("OpenSSH", first_line("ssh", &["-V"])),
    ]
}

/// The current time in UTC, to the minute.
fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |output| String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        )
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|status| status.success())
}

/// The first line a program prints (stdout, or stderr where it prints its version there).
fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program).args(args).output().map_or_else(
        |_| "unknown".to_owned(),
        |output| {
            let text = if output.stdout.is_empty() {
                output.stderr
            } else {
                output.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("unknown")
                .trim()
                .to_owned()
        },
    )
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Single-quotes a value for `sh -c`.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_select_one_section_or_all() {
        let all = BenchArgs::parse(&[]).unwrap();
        assert_eq!((all.only, all.runs), (None, None));
        let one = BenchArgs::parse(&["upload", "--runs", "5"]).unwrap();
        assert_eq!(one.only.map(|section| section.name), Some("upload"));
        assert_eq!(one.runs, Some(5));
        // Each section's own default where --runs is not given, and --runs where it is.
        let installs = BenchArgs::parse(&["installs"]).unwrap().only.unwrap();
        assert_eq!(installs.runs(None), 2);
        assert_eq!(installs.runs(Some(5)), 5);
        assert_eq!(one.only.unwrap().runs(None), DEFAULT_RUNS);
        assert!(
            BenchArgs::parse(&["all", "--runs", "2"])
                .unwrap()
                .only
                .is_none()
        );
        let error = BenchArgs::parse(&["uplaod"]).unwrap_err().to_string();
        assert!(
            error.contains("one of all, pack, upload, polling, builds, installs"),
            "{error}"
        );
        assert!(BenchArgs::parse(&["--runs", "0"]).is_err());
    }

    #[test]
    fn one_section_is_replaced_and_the_others_stay_with_the_summary_rebuilt() {
        let machine = vec![("CPU", "test cpu, 2 cores".to_owned())];
        let mut sections = BTreeMap::new();
        sections.insert(
            "upload".to_owned(),
            format!("## SSH upload\n\nold table\n\n{RESULT_PREFIX} 1.0x scp\n"),
        );
        sections.insert(
            "builds".to_owned(),
            harness::skipped_section("Builds", "not root"),
        );
        let report = render_report(&machine, &sections);
        // Builds comes after upload whatever the map's order.
        assert!(report.find("bench:upload").unwrap() < report.find("bench:builds").unwrap());
        assert!(
            report.contains("- [SSH upload](#ssh-upload): 1.0x scp\n"),
            "{report}"
        );
        assert!(
            report.contains("- [Builds](#builds): SKIPPED: not root\n"),
            "{report}"
        );

        let mut parsed = parse_sections(&report);
        assert_eq!(parsed, sections);
        parsed.insert(
            "upload".to_owned(),
            with_run_line(
                &format!("## SSH upload\n\nnew table\n\n{RESULT_PREFIX} 2.0x scp\n"),
                "_Measured now._",
            ),
        );
        let rewritten = render_report(&machine, &parsed);
        assert!(rewritten.contains("## SSH upload\n\n_Measured now._\n\nnew table"));
        assert!(!rewritten.contains("old table"));
        assert!(rewritten.contains("): 2.0x scp\n"));
        assert!(rewritten.contains("SKIPPED: not root"));
        assert_eq!(parse_sections(&rewritten), parsed);
    }
}
