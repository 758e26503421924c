//! Benchmark `builds` (run by `cargo xtask bench`): the wall time of one two-architecture
//! `caph-image build hcloud` against two one-architecture builds run back to back, and the peak
//! RSS of each build.
//!
//! The simulated cloud of the end-to-end tests (`tests/it/cloud.rs`, included here) lives in
//! this process: caph-sim's Hetzner Cloud simulator in scaled time, whose servers are real sshd
//! machines (arm64 under qemu-user), and a loopback mirror for the release downloads. The real
//! release binary (`CARGO_BIN_EXE_caph-image`, built by `cargo bench` with the release settings)
//! runs as a child under GNU time, so its peak RSS is its own, not the simulator's.

#[path = "../../../xtask/src/bench/harness.rs"]
mod harness;
// The end-to-end tests' simulated cloud; the bench uses part of it.
#[allow(dead_code)]
#[path = "../../../tests/it/cloud.rs"]
mod cloud;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use caph_hcloud::client::ImageId;
use caph_hcloud::{Client, ClientConfig, Token};
use cloud::Cloud;

/// Simulated time at a quarter of real time: the simulator's durations (create 12 s + start
/// 16 s, shutdown 6 s, snapshot 60 s + 20 s per used GB) still weigh against the real SSH work
/// as they would on Hetzner, where they are most of a build, while a build takes a minute or two
/// instead of four.
const SCALE: f64 = 0.25;
const TITLE: &str =
    "Two-architecture build vs two one-architecture builds, and peak RSS of a build";

/// The builds compared.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Build {
    Both,
    X86,
    Arm,
}

impl Build {
    const ALL: [Build; 3] = [Build::Both, Build::X86, Build::Arm];

    fn architectures(self) -> &'static [&'static str] {
        match self {
            Build::Both => &["x86", "arm"],
            Build::X86 => &["x86"],
            Build::Arm => &["arm"],
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Build::Both => "both",
            Build::X86 => "x86",
            Build::Arm => "arm",
        }
    }
}

/// One measured build.
#[derive(Debug, Clone, Copy)]
struct Measured {
    seconds: f64,
    rss_kib: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let section = match unavailable() {
        Some(reason) => skipped(&reason),
        None => match Cloud::start_scaled(SCALE).await {
            Ok(cloud) => measure(&cloud).await,
            Err(reason) => skipped(&reason),
        },
    };
    harness::emit(&section).expect("the section is written");
}

fn skipped(reason: &str) -> String {
    eprintln!("SKIPPED builds: {reason}");
    harness::skipped_section(TITLE, reason)
}

/// What this benchmark needs beyond what [`Cloud::start_scaled`] checks (root, sshd, mmdebstrap).
fn unavailable() -> Option<String> {
    if !Path::new(harness::GNU_TIME).exists() {
        return Some(format!(
            "{} is missing (Debian package time)",
            harness::GNU_TIME
        ));
    }
    if !Cloud::architectures().contains(&"arm") {
        return Some(
            "no qemu-aarch64 binfmt handler, so no arm machines (Debian packages \
             qemu-user-static binfmt-support)"
                .to_owned(),
        );
    }
    None
}

async fn measure(cloud: &Cloud) -> String {
    let runs = harness::runs();
    let dir = tempfile::tempdir().expect("a scratch directory");
    let client = Client::new(ClientConfig::new(
        cloud.sim.api_url(),
        Token::new(cloud::TOKEN),
    ))
    .expect("a client for the simulator");
    let mut measured: Vec<Vec<Measured>> = vec![Vec::new(); Build::ALL.len()];
    for round in 1..=runs {
        // Alternating which comes first, so neither always runs on the quieter machine.
        let order = if round % 2 == 1 {
            [Build::Both, Build::X86, Build::Arm]
        } else {
            [Build::X86, Build::Arm, Build::Both]
        };
        for build in order {
            let result = run_build(cloud, &client, dir.path(), build, round).await;
            eprintln!(
                "builds: round {round}/{runs}: --arch {} took {:.1} s, peak RSS {:.1} MiB",
                build.architectures().join(","),
                result.seconds,
                harness::kib_to_mib(result.rss_kib)
            );
            let index = Build::ALL.iter().position(|b| *b == build).unwrap_or(0);
            measured[index].push(result);
        }
    }
    render(runs, &measured)
}

/// Runs one `caph-image build hcloud` and checks what it left in the simulator; panics (a
/// benchmark of a failed build is worthless) on any failure.
async fn run_build(
    cloud: &Cloud,
    client: &Client,
    dir: &Path,
    build: Build,
    round: usize,
) -> Measured {
    // A name per run, so no build finds another's snapshot.
    let name = format!("bench-{}-{round}", build.slug());
    let architectures = build.architectures();
    let spec = format!("{name}.toml");
    std::fs::write(dir.join(&spec), cloud.spec(&name, architectures)).expect("write the spec");
    let mut command = Command::new(env!("CARGO_BIN_EXE_caph-image"));
    command
        .args(["build", "hcloud", &spec, "--arch", &architectures.join(",")])
        .args(["--no-progress", "--output", "json"])
        .envs(cloud.env())
        .current_dir(dir);
    let report = dir.join(format!("{name}.time"));
    let timed = harness::under_gnu_time(&command, &report);
    let started = Instant::now();
    let output = tokio::process::Command::from(timed)
        .output()
        .await
        .expect("caph-image runs");
    let seconds = started.elapsed().as_secs_f64();
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "caph-image build hcloud --arch {} failed ({}):\n{errors}",
        architectures.join(","),
        output.status
    );
    let usage = harness::read_gnu_time(&report).expect("GNU time's report");

    let result: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("caph-image printed JSON");
    let snapshots = result["snapshots"].as_array().cloned().unwrap_or_default();
    assert_eq!(snapshots.len(), architectures.len(), "{result:#}");
    // The simulator's account: this build's snapshots, finished, and no server or key left.
    let state = cloud.state_with_nothing_left();
    let made: Vec<_> = state
        .snapshots()
        .into_iter()
        .filter(|image| image.labels.get("caph-image-name") == Some(&name))
        .collect();
    assert_eq!(made.len(), architectures.len(), "{made:?}");
    assert!(
        made.iter()
            .all(|image| !image.labels.contains_key("caph-image-build")),
        "{made:?}"
    );
    // Removed once checked, so the simulator's disk copies do not pile up over the runs.
    for snapshot in &snapshots {
        let id = snapshot["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("a snapshot id");
        client
            .delete_image(ImageId(id))
            .await
            .expect("delete the snapshot");
    }
    Measured {
        seconds,
        rss_kib: usage.rss_kib,
    }
}

fn render(runs: usize, measured: &[Vec<Measured>]) -> String {
    let seconds = |index: usize| {
        harness::median(
            &measured[index]
                .iter()
                .map(|run| run.seconds)
                .collect::<Vec<_>>(),
        )
    };
    let rss = |index: usize| {
        harness::median(
            &measured[index]
                .iter()
                .map(|run| harness::kib_to_mib(run.rss_kib))
                .collect::<Vec<_>>(),
        )
    };
    let max_rss = measured
        .iter()
        .flatten()
        .map(|run| harness::kib_to_mib(run.rss_kib))
        .fold(0.0, f64::max);
    // The pair's sum per round, then the median of those sums.
    let pairs: Vec<f64> = measured[1]
        .iter()
        .zip(&measured[2])
        .map(|(x86, arm)| x86.seconds + arm.seconds)
        .collect();
    let pair = harness::median(&pairs);
    let both = seconds(0);
    let mut text = String::new();
    let _ = writeln!(text, "## {TITLE}\n");
    let _ = writeln!(
        text,
        "- the release `caph-image build hcloud SPEC --arch ARCHES --no-progress --output json` \
         against caph-sim's Hetzner Cloud simulator (`HCLOUD_ENDPOINT`) with simulated time at \
         {SCALE} of real time (`TimeMode::Scaled({SCALE})`), whose servers are real sshd \
         machines chrooted into cached Debian 12 root filesystems (arm64 under qemu-user), and \
         the release downloads from a loopback mirror; the spec is the end-to-end tests' \
         (`tests/it/cloud.rs`)"
    );
    let _ = writeln!(
        text,
        "- each build runs the whole flow (server, SSH, plan, hygiene, shutdown, snapshot, \
         labels, cleanup); each must exit 0 and leave exactly its snapshots (finished, no \
         build label) and no server or key in the simulator, else the benchmark fails; the \
         snapshots are then deleted"
    );
    let _ = writeln!(
        text,
        "- wall time from start to exit; peak RSS of `caph-image` itself (GNU time; the \
         simulator and machines run in the benchmark's process); median of {runs} rounds, each \
         round one `--arch x86,arm` build and one `--arch x86` then `--arch arm` back to back, \
         the order alternating between rounds\n"
    );
    let _ = writeln!(text, "| build | wall s | peak RSS MiB |");
    let _ = writeln!(text, "|---|---:|---:|");
    let _ = writeln!(
        text,
        "| **`--arch x86,arm`** (both at once) | {both:.1} | {:.1} |",
        rss(0)
    );
    let _ = writeln!(text, "| `--arch x86` | {:.1} | {:.1} |", seconds(1), rss(1));
    let _ = writeln!(text, "| `--arch arm` | {:.1} | {:.1} |", seconds(2), rss(2));
    let _ = writeln!(
        text,
        "| `--arch x86` then `--arch arm` (sum) | {pair:.1} | |"
    );
    let _ = writeln!(
        text,
        "\n{} a two-architecture build takes {:.2}x the time of two one-architecture builds \
         back to back ({both:.0} s vs {pair:.0} s, {:.0}% saved; the arm build alone takes \
         {:.0} s); a build's peak RSS is at most {max_rss:.1} MiB.",
        harness::RESULT_PREFIX,
        both / pair.max(f64::EPSILON),
        100.0 * (1.0 - both / pair.max(f64::EPSILON)),
        seconds(2)
    );
    text
}
