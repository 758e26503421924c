//! The `pack` section: the tarball writer, as `caph-image pack` (release build), side by side
//! with GNU tar piped into `zstd -T0 -3` and `pigz`, on a real Debian root filesystem.
//!
//! Without `--rootfs`, the tree is `mmdebstrap --variant=minbase --include=containerd
//! bookworm`, built once (needs root and Debian's mirror) and cached under
//! `/var/cache/caph-image-bench/`. Every command runs under GNU `time` (Debian package `time`)
//! for wall time, user+system CPU and peak RSS, writes its output to the same disk and fsyncs
//! it; the commands run round robin `--runs` times and the run with the median wall time of
//! each is reported.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, ensure};

use super::harness::{RESULT_PREFIX, kib_to_mib, read_gnu_time, under_gnu_time};
use super::{shell_quote, which};

/// Where the benchmark's root filesystem is cached between runs.
const CACHE_DIR: &str = "/var/cache/caph-image-bench";
/// The cached tree's directory name, which spells out how it was made.
const CACHED_ROOTFS: &str = "bookworm-minbase-containerd";
/// The peak RSS target for the writer, whatever the tree size.
const RSS_TARGET_MIB: f64 = 64.0;
/// The section's title.
pub const TITLE: &str = "Tarball writer vs GNU tar | zstd and | pigz";
/// Wall-time targets against the GNU pipeline (issue 14): `none` no slower than GNU tar,
/// zstd at 0.8x of `tar | zstd -T0 -3`, gzip at 0.4x of `tar | pigz`.
const TARGET_NONE: f64 = 1.0;
const TARGET_ZSTD: f64 = 0.8;
const TARGET_GZIP: f64 = 0.4;

/// What a measured command is there for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// A GNU pipeline that `caph-image pack` competes with.
    Gnu,
    /// `caph-image pack`, compared with the case at this index, whose wall time it should
    /// reach within this factor.
    Ours { against: usize, target: f64 },
    /// The floor for a compressed pack: the compressor alone on a tar stream made beforehand.
    Limit,
}

/// One measured command.
struct Case {
    label: &'static str,
    /// Shell command; `{out}` is replaced by the output path.
    command: String,
    output: PathBuf,
    role: Role,
}

/// What GNU time reported for one run, plus the output size.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    wall: f64,
    cpu: f64,
    rss_kib: u64,
    size: u64,
}

/// Measures `writer` (a release `caph-image`) against the GNU pipelines, `runs` rounds, and
/// returns the Markdown section. Scratch files go to `scratch`.
pub fn run(writer: &Path, rootfs: Option<&Path>, runs: usize, scratch: &Path) -> Result<String> {
    for tool in ["tar", "zstd", "pigz", "sync"] {
        ensure!(
            which(tool),
            "`{tool}` is missing (Debian packages: tar zstd pigz coreutils)"
        );
    }
    let rootfs = match rootfs {
        Some(rootfs) => rootfs.to_path_buf(),
        None => cached_rootfs()?,
    };
    ensure!(rootfs.is_dir(), "{} is not a directory", rootfs.display());
    ensure!(writer.exists(), "{} was not built", writer.display());

    let out_dir = scratch.join("pack");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let (tree_bytes, tree_entries) = tree_size(&rootfs)?;
    let dir = shell_quote(&rootfs.to_string_lossy());
    // The tar stream the limit line compresses, made once (unmeasured).
    let stream = out_dir.join("stream.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&stream)
        .arg("-C")
        .arg(&rootfs)
        .arg(".")
        .status()
        .context("running tar")?;
    ensure!(status.success(), "tar -cf {} failed", stream.display());
    // What users run: `caph-image pack`, result printing included.
    let writer = shell_quote(&writer.to_string_lossy());
    let stream_quoted = shell_quote(&stream.to_string_lossy());
    let case = |label, command: &str, file: &str, role| Case {
        label,
        command: command
            .replace("{dir}", &dir)
            .replace("{pack}", &writer)
            .replace("{stream}", &stream_quoted),
        output: out_dir.join(file),
        role,
    };
    // `--plain` packs exactly what GNU tar packs (no rootfs exclusions), so sizes compare.
    let cases = [
        case(
            "GNU tar, no compression",
            "tar -cf {out} -C {dir} . && sync {out}",
            "gnu.tar",
            Role::Gnu,
        ),
        case(
            "caph-image pack --compression none",
            "{pack} pack --plain --compression none --no-progress {dir} -o {out} > /dev/null",
            "caph.tar",
            Role::Ours {
                against: 0,
                target: TARGET_NONE,
            },
        ),
        case(
            "GNU tar | zstd -T0 -3",
            "tar -cf - -C {dir} . | zstd -q -T0 -3 > {out} && sync {out}",
            "gnu.tar.zst",
            Role::Gnu,
        ),
        case(
            "caph-image pack --compression zstd:3",
            "{pack} pack --plain --compression zstd:3 --no-progress {dir} -o {out} > /dev/null",
            "caph.tar.zst",
            Role::Ours {
                against: 2,
                target: TARGET_ZSTD,
            },
        ),
        case(
            "limit: zstd -T0 -3 alone on the pre-made tar stream",
            "zstd -q -T0 -3 < {stream} > {out} && sync {out}",
            "limit.tar.zst",
            Role::Limit,
        ),
        case(
            "GNU tar | pigz (level 6)",
            "tar -cf - -C {dir} . | pigz > {out} && sync {out}",
            "gnu.tar.gz",
            Role::Gnu,
        ),
        case(
            "caph-image pack --compression gzip:6",
            "{pack} pack --plain --compression gzip:6 --no-progress {dir} -o {out} > /dev/null",
            "caph.tar.gz",
            Role::Ours {
                against: 5,
                target: TARGET_GZIP,
            },
        ),
    ];

    // One unmeasured pass reads the tree into the page cache, so no command pays for it.
    run_case(&cases[0])?;
    // Round robin, so a burst of load from elsewhere hits every command alike.
    let mut measured: Vec<Vec<Measurement>> = vec![Vec::new(); cases.len()];
    for round in 1..=runs {
        for (case, case_runs) in cases.iter().zip(&mut measured) {
            case_runs.push(run_case(case)?);
        }
        eprintln!("pack: round {round}/{runs} measured");
    }
    let results: Vec<Measurement> = measured
        .iter_mut()
        .map(|case_runs| {
            case_runs.sort_by(|left, right| left.wall.total_cmp(&right.wall));
            case_runs[case_runs.len() / 2]
        })
        .collect();
    // Every output must list the same entries as GNU tar's own archive.
    let mut listed = Vec::new();
    for case in &cases {
        listed.push(entry_count(&case.output)?);
    }
    ensure!(
        listed.iter().all(|count| *count == listed[0]),
        "the archives list different numbers of entries: {listed:?}"
    );
    let _ = fs::remove_file(&stream);
    for case in &cases {
        let _ = fs::remove_file(&case.output);
        let _ = fs::remove_file(case.output.with_extension(format!(
            "{}.sha256",
            case.output.extension().unwrap_or_default().to_string_lossy()
        )));
    }

    Ok(render(&Report {
        rootfs: &rootfs,
        tree_bytes,
        tree_entries,
        runs,
        entries_listed: listed[0],
        cases: &cases,
        results: &results,
    }))
}

fn run_case(case: &Case) -> Result<Measurement> {
    let _ = fs::remove_file(&case.output);
    let times = case.output.with_extension("time");
    let command = case
        .command
        .replace("{out}", &shell_quote(&case.output.to_string_lossy()));
    let mut shell = Command::new("sh");
    shell.args(["-c", &command]);
    let output = under_gnu_time(&shell, &times)
        .output()
        .with_context(|| format!("running {command}"))?;
    ensure!(
        output.status.success(),
        "{command} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let usage = read_gnu_time(&times).map_err(|error| anyhow!(error))?;
    let size = fs::metadata(&case.output)
        .with_context(|| format!("{} was not written", case.output.display()))?
        .len();
    Ok(Measurement {
        wall: usage.wall,
        cpu: usage.cpu,
        rss_kib: usage.rss_kib,
        size,
    })
}

struct Report<'a> {
    rootfs: &'a Path,
    tree_bytes: u64,
    tree_entries: u64,
    runs: usize,
    entries_listed: u64,
    cases: &'a [Case],
    results: &'a [Measurement],
}

/// The cores the machine has, for CPU utilisation.
fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |cores| cores.get() as f64)
}

/// CPU seconds over wall seconds over cores: 100% is every core busy for the whole run.
fn utilisation(result: &Measurement) -> f64 {
    100.0 * result.cpu / result.wall.max(0.001) / cores()
}

fn render(report: &Report<'_>) -> String {
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    let mut text = String::new();
    let _ = writeln!(text, "## {TITLE}\n");
    let _ = writeln!(
        text,
        "- tree: `{}`, {:.1} MiB in {} entries (apparent sizes)",
        report.rootfs.display(),
        mib(report.tree_bytes),
        report.tree_entries
    );
    let _ = writeln!(
        text,
        "- `caph-image pack` is the release build; GNU tar, zstd and pigz are the versions in \
         the machine section; the limit line is `zstd -T0 -3` alone on GNU tar's stream, made \
         beforehand: what a compressed pack would take if reading the tree and framing it cost \
         nothing"
    );
    let _ = writeln!(
        text,
        "- median of {} round-robin runs by wall time; page cache warm; every output fsynced; \
         peak RSS is the largest process of a pipeline (GNU time); CPU use is CPU s / wall s / \
         {} cores",
        report.runs,
        cores()
    );
    let _ = writeln!(
        text,
        "- every archive lists the same {} entries (`tar -t`); `caph-image pack` runs with `--plain`, \
         so it packs what GNU tar packs\n",
        report.entries_listed
    );
    let _ = writeln!(
        text,
        "| command | wall s | CPU s (user+sys) | CPU use | output MiB | of tree | peak RSS MiB |"
    );
    let _ = writeln!(text, "|---|---:|---:|---:|---:|---:|---:|");
    for (case, result) in report.cases.iter().zip(report.results) {
        // A `|` inside a cell would end it.
        let label = case.label.replace('|', "\\|");
        let label = match case.role {
            Role::Ours { .. } => format!("**{label}**"),
            Role::Limit => format!("_{label}_"),
            Role::Gnu => label,
        };
        let _ = writeln!(
            text,
            "| {label} | {:.2} | {:.2} | {:.0}% | {:.1} | {:.1}% | {:.1} |",
            result.wall,
            result.cpu,
            utilisation(result),
            mib(result.size),
            100.0 * result.size as f64 / report.tree_bytes.max(1) as f64,
            kib_to_mib(result.rss_kib)
        );
    }
    let _ = writeln!(text);
    let limit = report
        .cases
        .iter()
        .position(|case| case.role == Role::Limit)
        .map(|index| &report.results[index]);
    let mut summary = Vec::new();
    for (case, ours) in report.cases.iter().zip(report.results) {
        let Role::Ours { against, target } = case.role else {
            continue;
        };
        let gnu = &report.results[against];
        let ratio = ours.wall / gnu.wall.max(0.001);
        let size = 100.0 * (ours.size as f64 - gnu.size as f64) / gnu.size.max(1) as f64;
        let rss = kib_to_mib(ours.rss_kib);
        let compression = case
            .label
            .trim_start_matches("caph-image pack --compression ");
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        let mut line = format!(
            "- {}: {ratio:.2}x the wall time of {} (target {target}x: {}), output {size:+.2}% in \
             size (target at most +0%: {}), CPU use {:.0}% against {:.0}%, peak RSS {rss:.1} MiB \
             (target {RSS_TARGET_MIB} MiB: {})",
            case.label,
            report.cases[against].label,
            verdict(ratio <= target),
            verdict(size <= 0.0),
            utilisation(ours),
            utilisation(gnu),
            verdict(rss <= RSS_TARGET_MIB),
        );
        if compression.starts_with("zstd")
            && let Some(limit) = limit
        {
            let _ = write!(
                line,
                "; {:.2}x the wall time of the limit ({:.2} s)",
                ours.wall / limit.wall.max(0.001),
                limit.wall
            );
        }
        let _ = writeln!(text, "{line}");
        summary.push(format!(
            "{compression} {ratio:.2}x the wall time of GNU tar{} (target {target}x), {size:+.1}% size, \
             {:.0}% CPU use, {rss:.0} MiB RSS",
            match compression.split(':').next() {
                Some("zstd") => " | zstd",
                Some("gzip") => " | pigz",
                _ => "",
            },
            utilisation(ours),
        ));
    }
    let limit_note = limit.map_or_else(String::new, |limit| {
        format!(
            "; the limit (zstd -3 alone on the tar stream) {:.2} s",
            limit.wall
        )
    });
    let _ = writeln!(
        text,
        "\n{RESULT_PREFIX} `caph-image pack`: {}{limit_note}.",
        summary.join("; ")
    );
    text
}

/// Entries GNU tar lists in an archive (compression detected from the content).
fn entry_count(archive: &Path) -> Result<u64> {
    let output = Command::new("tar")
        .arg("-tf")
        .arg(archive)
        .output()
        .with_context(|| format!("listing {}", archive.display()))?;
    ensure!(
        output.status.success() && output.stderr.is_empty(),
        "tar -tf {} failed: {}",
        archive.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output.stdout.iter().filter(|&&byte| byte == b'\n').count() as u64)
}

/// The cached benchmark tree, built with mmdebstrap on first use.
fn cached_rootfs() -> Result<PathBuf> {
    let rootfs = Path::new(CACHE_DIR).join(CACHED_ROOTFS);
    if rootfs.is_dir() {
        return Ok(rootfs);
    }
    ensure!(
        which("mmdebstrap"),
        "mmdebstrap is missing (Debian package: mmdebstrap), or pass --rootfs DIR"
    );
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    ensure!(
        String::from_utf8_lossy(&uid.stdout).trim() == "0",
        "building the benchmark rootfs with mmdebstrap needs root; run as root once or pass --rootfs DIR"
    );
    fs::create_dir_all(CACHE_DIR).with_context(|| format!("creating {CACHE_DIR}"))?;
    // Built beside its final place and renamed, so an interrupted build is never mistaken
    // for a cached tree.
    let partial = Path::new(CACHE_DIR).join(format!("{CACHED_ROOTFS}.partial"));
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    eprintln!("building {} with mmdebstrap (once)...", rootfs.display());
    let status = Command::new("mmdebstrap")
        .args(["--variant=minbase", "--include=containerd", "bookworm"])
        .arg(&partial)
        .status()
        .context("running mmdebstrap")?;
    ensure!(status.success(), "mmdebstrap failed");
    fs::rename(&partial, &rootfs).with_context(|| format!("renaming to {}", rootfs.display()))?;
    Ok(rootfs)
}

/// Apparent bytes of regular files and the number of entries under `root`.
fn tree_size(root: &Path) -> Result<(u64, u64)> {
    let (mut bytes, mut entries) = (0, 0);
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let metadata = entry
                .metadata()
                .with_context(|| format!("stat {}", entry.path().display()))?;
            entries += 1;
            if metadata.is_dir() {
                stack.push(entry.path());
            } else if metadata.is_file() {
                bytes += metadata.len();
            }
        }
    }
    Ok((bytes, entries))
}
