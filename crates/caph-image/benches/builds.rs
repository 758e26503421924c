//! Benchmark `builds` (run by `cargo xtask bench`): the wall time of one two-architecture
//! `caph-image build hcloud` against two one-architecture builds run back to back, and the peak
//! RSS of each build.
//!
//! The simulated cloud of the end-to-end tests (`tests/it/cloud.rs`, included here) lives in
//! this process: caph-sim's Hetzner Cloud simulator in scaled time, whose servers are real sshd
//! machines (arm64 under qemu-user), and a loopback mirror for the release downloads. The real
//! release binary (`CARGO_BIN_EXE_caph-image`, built by `cargo bench` with the release settings)
//! runs as a child under GNU time, so its peak RSS is its own, not the simulator's.
//!
//! While a build runs, the benchmark watches the simulator's state every 20 ms and notes, per
//! server, when it appeared, ran, was asked to shut down, was off, and when its snapshot action
//! started and ended: the waits the simulator imposes. With the time the plan's steps took (from
//! the tool's own progress lines), they give the tool's overhead: the wall time no simulator
//! wait explains.

#[path = "../../../xtask/src/bench/harness.rs"]
mod harness;
// Beside this file, not in benches/, where cargo would take it for a bench target of its own.
#[path = "builds/from_tarball.rs"]
mod from_tarball;
// The end-to-end tests' simulated cloud; the bench uses part of it.
#[allow(dead_code)]
#[path = "../../../tests/it/cloud.rs"]
mod cloud;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caph_hcloud::client::ImageId;
use caph_hcloud::{Client, ClientConfig, Token};
use caph_sim::hcloud::{ActionStatus, ServerStatus};
use cloud::Cloud;

/// Simulated time at a quarter of real time: the simulator's durations (create 12 s + start
/// 16 s, shutdown 6 s, snapshot 60 s + 20 s per used GB) still weigh against the real SSH work
/// as they would on Hetzner, where they are most of a build, while a build takes a minute or two
/// instead of four.
const SCALE: f64 = 0.25;
const TITLE: &str = "Two-architecture build vs two one-architecture builds, --from-tarball vs SSH provisioning, and peak RSS of a build";
/// How often the benchmark looks at the simulator's state while a build runs: the resolution
/// of the measured waits.
const WATCH_INTERVAL: Duration = Duration::from_millis(20);
/// Issue 14's targets: a two-architecture build within 1.05x of the slower one-architecture
/// build, and at most 2 s per build beyond the simulator's waits and the plan's steps.
const PAIR_TARGET: f64 = 1.05;
const OVERHEAD_TARGET_SECONDS: f64 = 2.0;

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
    /// The unavoidable waits of the architecture that took longest to get through them.
    waits: Waits,
}

/// The waits of one architecture's build that no tool could avoid, in seconds.
#[derive(Debug, Clone, Copy, Default)]
struct Waits {
    /// From the server's appearance to `running` (create and boot).
    server_start: f64,
    /// From the shutdown request to `off`.
    shutdown: f64,
    /// The `create_image` action, start to end.
    snapshot: f64,
    /// The `delete_server` action, start to end: the tool waits for it, so that it reports
    /// only what is really gone (nothing a build makes may outlive it).
    delete: f64,
    /// From the first plan step's start to the last one's end, as the tool's progress lines
    /// stamp them (0.1 s resolution).
    plan: f64,
}

impl Waits {
    fn total(&self) -> f64 {
        self.server_start + self.shutdown + self.snapshot + self.delete + self.plan
    }
}

/// When the benchmark first saw each step of one server's life (real time).
#[derive(Debug, Clone, Default)]
struct ServerSeen {
    architecture: String,
    appeared: Option<Instant>,
    running: Option<Instant>,
    shutdown_requested: Option<Instant>,
    off: Option<Instant>,
    snapshot_started: Option<Instant>,
    snapshot_ended: Option<Instant>,
    delete_started: Option<Instant>,
    delete_ended: Option<Instant>,
}

/// Looks at the simulator's state every [`WATCH_INTERVAL`] until `done` is set; returns what it
/// saw of every server that appeared meanwhile.
async fn watch_servers(
    cloud: &Cloud,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> BTreeMap<u64, ServerSeen> {
    let mut seen: BTreeMap<u64, ServerSeen> = BTreeMap::new();
    let known_before: Vec<u64> = cloud
        .state()
        .servers
        .iter()
        .map(|server| server.id)
        .collect();
    loop {
        let state = cloud.state();
        let now = Instant::now();
        for server in &state.servers {
            if known_before.contains(&server.id) {
                continue;
            }
            let entry = seen.entry(server.id).or_default();
            entry.architecture.clone_from(&server.architecture);
            entry.appeared.get_or_insert(now);
            if server.status == ServerStatus::Running {
                entry.running.get_or_insert(now);
            }
            if server.status == ServerStatus::Off && entry.running.is_some() {
                entry.off.get_or_insert(now);
            }
        }
        for action in &state.actions {
            let Some(server) = action
                .resources
                .iter()
                .find(|resource| resource.kind == "server")
                .and_then(|resource| seen.get_mut(&resource.id))
            else {
                continue;
            };
            match action.command.as_str() {
                // A rescue flow (--from-tarball) powers off hard: `poweroff` is `stop_server`.
                "shutdown_server" | "stop_server" => {
                    server.shutdown_requested.get_or_insert(now);
                }
                "create_image" => {
                    server.snapshot_started.get_or_insert(now);
                    if action.status != ActionStatus::Running {
                        server.snapshot_ended.get_or_insert(now);
                    }
                }
                "delete_server" => {
                    server.delete_started.get_or_insert(now);
                    if action.status != ActionStatus::Running {
                        server.delete_ended.get_or_insert(now);
                    }
                }
                _ => {}
            }
        }
        if done.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
    seen
}

/// Seconds from `from` to `to`, both seen.
fn between(from: Option<Instant>, to: Option<Instant>, what: &str) -> f64 {
    match (from, to) {
        (Some(from), Some(to)) => to.saturating_duration_since(from).as_secs_f64(),
        _ => panic!("the benchmark did not see the {what} of a build server"),
    }
}

/// The time between the first `ARCH: provision:` line and the `ARCH: shutdown:` line of the
/// tool's progress output (`[   12.3s] x86: provision: step 1/9: ...`).
fn plan_seconds(stderr: &str, architecture: &str) -> f64 {
    let stamp = |phase: &str| {
        let marker = format!("] {architecture}: {phase}: ");
        stderr.lines().find_map(|line| {
            if !line.contains(&marker) {
                return None;
            }
            let seconds = line.strip_prefix('[')?.split_once("s]")?.0.trim();
            seconds.parse::<f64>().ok()
        })
    };
    match (stamp("provision"), stamp("shutdown")) {
        (Some(start), Some(end)) => end - start,
        _ => panic!("no provision and shutdown lines for {architecture} in:\n{stderr}"),
    }
}

/// The waits per architecture of one build, and those of the architecture with the most.
fn longest_waits(seen: &BTreeMap<u64, ServerSeen>, stderr: &str) -> Waits {
    let mut longest = Waits::default();
    for server in seen.values() {
        let waits = Waits {
            server_start: between(server.appeared, server.running, "start"),
            shutdown: between(server.shutdown_requested, server.off, "shutdown"),
            snapshot: between(server.snapshot_started, server.snapshot_ended, "snapshot"),
            delete: between(server.delete_started, server.delete_ended, "deletion"),
            plan: plan_seconds(stderr, &server.architecture),
        };
        if waits.total() > longest.total() {
            longest = waits;
        }
    }
    longest
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let section = match unavailable() {
        Some(reason) => skipped(&reason),
        None => match Cloud::start_scaled(SCALE).await {
            Ok(cloud) => {
                let (architectures, sentence) = measure(&cloud).await;
                // The simulator's machines go before the next simulator's start.
                drop(cloud);
                let (tarball, tarball_sentence) = from_tarball::measure(SCALE).await;
                format!(
                    "## {TITLE}\n\n{architectures}\n{tarball}\n{} {sentence}; {tarball_sentence}.\n",
                    harness::RESULT_PREFIX
                )
            }
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

async fn measure(cloud: &Cloud) -> (String, String) {
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

/// Runs one `caph-image build hcloud --arch ...` of `build`; see [`run_measured`].
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
    std::fs::write(
        dir.join(format!("{name}.toml")),
        cloud.spec(&name, architectures),
    )
    .expect("write the spec");
    let arch_list = architectures.join(",");
    run_measured(
        cloud,
        client,
        dir,
        &name,
        &["--arch", &arch_list],
        architectures.len(),
    )
    .await
}

/// Runs one `caph-image build hcloud NAME.toml EXTRA...` and checks what it left in the
/// simulator (`snapshots` snapshots, finished, and nothing else); panics (a benchmark of a failed
/// build is worthless) on any failure.
async fn run_measured(
    cloud: &Cloud,
    client: &Client,
    dir: &Path,
    name: &str,
    extra: &[&str],
    snapshots: usize,
) -> Measured {
    let spec = format!("{name}.toml");
    let mut command = Command::new(env!("CARGO_BIN_EXE_caph-image"));
    command
        .args(["build", "hcloud", &spec])
        .args(extra)
        .args(["--no-progress", "--output", "json"])
        .envs(cloud.env())
        .current_dir(dir);
    let report = dir.join(format!("{name}.time"));
    let timed = harness::under_gnu_time(&command, &report);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_servers(cloud, Arc::clone(&done));
    let started = Instant::now();
    let build = async {
        let output = tokio::process::Command::from(timed)
            .output()
            .await
            .expect("caph-image runs");
        let seconds = started.elapsed().as_secs_f64();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (output, seconds)
    };
    let ((output, seconds), seen) = tokio::join!(build, watcher);
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "caph-image build hcloud {spec} {} failed ({}):\n{errors}",
        extra.join(" "),
        output.status
    );
    let usage = harness::read_gnu_time(&report).expect("GNU time's report");

    let result: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("caph-image printed JSON");
    let made_snapshots = result["snapshots"].as_array().cloned().unwrap_or_default();
    assert_eq!(made_snapshots.len(), snapshots, "{result:#}");
    // The simulator's account: this build's snapshots, finished, and no server or key left.
    let state = cloud.state_with_nothing_left();
    let made: Vec<_> = state
        .snapshots()
        .into_iter()
        .filter(|image| image.labels.get("caph-image-name").map(String::as_str) == Some(name))
        .collect();
    assert_eq!(made.len(), snapshots, "{made:?}");
    assert!(
        made.iter()
            .all(|image| !image.labels.contains_key("caph-image-build")),
        "{made:?}"
    );
    // Removed once checked, so the simulator's disk copies do not pile up over the runs.
    for snapshot in &made_snapshots {
        let id = snapshot["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("a snapshot id");
        client
            .delete_image(ImageId(id))
            .await
            .expect("delete the snapshot");
    }
    assert_eq!(seen.len(), snapshots, "{seen:?}");
    Measured {
        seconds,
        rss_kib: usage.rss_kib,
        waits: longest_waits(&seen, &errors),
    }
}

/// The part of the section on builds of two architectures and one, and the result's sentence.
fn render(runs: usize, measured: &[Vec<Measured>]) -> (String, String) {
    let median_of = |index: usize, value: &dyn Fn(&Measured) -> f64| {
        harness::median(&measured[index].iter().map(value).collect::<Vec<_>>())
    };
    let seconds = |index: usize| median_of(index, &|run| run.seconds);
    let rss = |index: usize| median_of(index, &|run| harness::kib_to_mib(run.rss_kib));
    let waits = |index: usize| median_of(index, &|run| run.waits.total());
    let overhead = |index: usize| median_of(index, &|run| run.seconds - run.waits.total());
    let part = |index: usize, value: fn(&Waits) -> f64| median_of(index, &|run| value(&run.waits));
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
    let slower = seconds(1).max(seconds(2));
    let worst_overhead = (0..Build::ALL.len()).map(overhead).fold(f64::MIN, f64::max);
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let mut text = String::new();
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
         the order alternating between rounds"
    );
    let _ = writeln!(
        text,
        "- unavoidable waits, per architecture: the server's start (from its appearance in the \
         simulator to `running`: create, the machine's root filesystem and boot), its shutdown \
         (request to `off`), the snapshot (`create_image` start to end) and the server's \
         deletion (`delete_server` start to end, which the tool waits for so that it reports only \
         what is gone), seen in the simulator's state every {} ms, and the plan's steps (first step to shutdown, from the \
         tool's progress lines); a two-architecture build counts the architecture with the \
         most; tool overhead is wall time minus those waits: process start, keys, API calls \
         and polling, SSH connection, naming, cleanup\n",
        WATCH_INTERVAL.as_millis()
    );
    let _ = writeln!(
        text,
        "| build | wall s | server start s | plan s | shutdown s | snapshot s | delete s | waits s | tool overhead s | peak RSS MiB |"
    );
    let _ = writeln!(text, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let labels = [
        "**`--arch x86,arm`** (both at once)",
        "`--arch x86`",
        "`--arch arm`",
    ];
    for (index, label) in labels.iter().enumerate() {
        let _ = writeln!(
            text,
            "| {label} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            seconds(index),
            part(index, |waits| waits.server_start),
            part(index, |waits| waits.plan),
            part(index, |waits| waits.shutdown),
            part(index, |waits| waits.snapshot),
            part(index, |waits| waits.delete),
            waits(index),
            overhead(index),
            rss(index)
        );
    }
    let _ = writeln!(
        text,
        "| `--arch x86` then `--arch arm` (sum) | {pair:.1} | | | | | | | | |"
    );
    let _ = writeln!(
        text,
        "\n- two architectures at once: {:.2}x the slower one-architecture build ({both:.1} s vs \
         {slower:.1} s; target {PAIR_TARGET}x: {}), {:.2}x the two back to back ({pair:.1} s)",
        both / slower.max(f64::EPSILON),
        verdict(both / slower.max(f64::EPSILON) <= PAIR_TARGET),
        both / pair.max(f64::EPSILON),
    );
    let _ = writeln!(
        text,
        "- tool overhead: at most {worst_overhead:.1} s per build (median per kind of build; \
         target {OVERHEAD_TARGET_SECONDS} s: {})",
        verdict(worst_overhead <= OVERHEAD_TARGET_SECONDS)
    );
    let sentence = format!(
        "a two-architecture build takes {:.2}x the time of the slower one-architecture \
         build (target {PAIR_TARGET}x; {both:.0} s vs {slower:.0} s) and {:.2}x two \
         one-architecture builds back to back ({:.0}% saved); tool overhead beyond the \
         simulator's waits and the plan is at most {worst_overhead:.1} s per build (target \
         {OVERHEAD_TARGET_SECONDS} s); a build's peak RSS is at most {max_rss:.1} MiB",
        both / slower.max(f64::EPSILON),
        both / pair.max(f64::EPSILON),
        100.0 * (1.0 - both / pair.max(f64::EPSILON)),
    );
    (text, sentence)
}
