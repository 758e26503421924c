//! Benchmark `installs` (run by `cargo xtask bench`): `caph-image build robot --sim` installing one
//! tarball with the single-disk layout, once with Hetzner's real installimage in the simulated
//! rescue system and once with the simulated installimage, side by side: the time from the
//! install's start to a verified node against the waits no tool could avoid, and installimage's
//! own time, real against simulated.
//!
//! The tarball is the end-to-end tests' (`tests/it/tarball_spec.rs`), built once by the release
//! binary with its downloads from a loopback mirror. Each install is the real release binary
//! (`CARGO_BIN_EXE_caph-image`) with `--sim --verbose --no-progress --output json`: its Robot
//! simulator runs in that process, so the benchmark reads the install's course from the
//! timestamped progress lines, where the tool's steps and the simulator's machines (`simulator |
//! server N: the rescue system is up ...`) both appear, on one clock. The upload's unavoidable part
//! is the tarball's size at the link's speed: the link here is loopback SSH, whose speed is what
//! OpenSSH's plain `ssh host 'cat > file'` reaches over it, measured in the same rounds with the
//! same file.

#[path = "../../../xtask/src/bench/harness.rs"]
mod harness;
// The end-to-end tests' release versions (`VERSIONS`), which the mirror serves.
#[allow(dead_code)]
#[path = "../../../tests/it/cloud.rs"]
mod cloud;
#[path = "../../../tests/it/tarball_spec.rs"]
mod tarball_spec;
// The sshd of the OpenSSH tests, for the link's speed; the bench uses part of it.
#[allow(unused_imports, unused_macros)]
#[path = "../../caph-ssh/tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use caph_sim::mirror::{Mirror, release_artifacts};
use caph_sim::real_installimage::{InstallimageArchive, InstallimageKind};

const TITLE: &str =
    "Dedicated-server install (`build robot --sim`): real vs simulated installimage";
/// `--sim-speed`: the simulator's resets (90 s for `sw`, which the tool tries first; the reboot
/// into the installed system is one too) take a tenth of real time, so that they do not drown
/// the rest, while they stay the same order as installimage's run.
const SPEED: f64 = 10.0;
/// The simulated server; the spec's hostname pattern makes it `node-4711`.
const SERVER: u64 = 4711;
const HOSTNAME: &str = "node-4711";
/// The shipped layout both installimages can install: one drive, BIOS.
const LAYOUT: &str = "single-disk";
/// caph-ssh's cipher, so that the link is measured as the tool's upload uses it.
const CIPHER: &str = "aes256-gcm@openssh.com";
/// What the tarball build is named from the spec.
const TARBALL_NAME: &str = "Debian-1200-bookworm-amd64-k8s-v1.34.2.tar.gz";

/// Which installimage the simulated rescue system runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Hetzner's, from the vendored archive (`--sim-installimage`).
    Real,
    /// The simulation (no `--sim-installimage`).
    Simulated,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::Real, Mode::Simulated];

    fn label(self) -> &'static str {
        match self {
            Mode::Real => "**Hetzner's installimage** (real)",
            Mode::Simulated => "simulated installimage",
        }
    }

    /// What the simulator's account of the run (`simulator.installimage`) must say.
    fn ran(self, archive: &InstallimageArchive) -> String {
        match self {
            Mode::Real => format!("running {} for real", archive.label),
            Mode::Simulated => "running the simulated installimage".to_owned(),
        }
    }
}

/// The stamps of one install's progress lines, in seconds since the process started (0.1 s
/// resolution), and what the JSON report said.
#[derive(Debug, Clone, Copy, Default)]
struct Course {
    /// `server N: preflight:`: the install starts (local checks, then the tarball's sha256).
    start: f64,
    /// `server N: connect:`: the reset into the rescue system is requested.
    reset: f64,
    /// `simulator | server N: the rescue system is up`: the simulator's machine answers.
    rescue_up: f64,
    /// `server N | rescue system up at`: the tool has logged in and checked it.
    rescue_seen: f64,
    /// `server N: provision: NAME (BYTES bytes) to PATH`.
    upload_start: f64,
    /// `server N | uploaded BYTES bytes; sha256 ... confirmed`.
    upload_end: f64,
    /// `server N: provision: installimage`.
    installimage_start: f64,
    /// `server N | installimage: INSTALLATION COMPLETE`.
    installimage_end: f64,
    /// `server N: shutdown: into HOSTNAME`: `reboot` in the rescue system.
    reboot: f64,
    /// `simulator | server N: the installed system is up`.
    node_up: f64,
    /// `server N | HOSTNAME is up`: the tool has logged in to the node.
    node_seen: f64,
    /// `server N: cleanup:`: verified.
    verified: f64,
    /// The report's `duration_seconds`: from the install's start to the verified node, measured
    /// by the tool to the nanosecond.
    duration: f64,
    /// The whole command, the simulator's setup and teardown included (real time here).
    command: f64,
    tarball_bytes: u64,
}

/// One install, broken down.
#[derive(Debug, Clone, Copy)]
struct Measured {
    course: Course,
    /// Seconds for the tarball at the link's speed (this round's measurement).
    link_upload: f64,
}

impl Measured {
    fn rescue_boot(&self) -> f64 {
        self.course.rescue_up - self.course.reset
    }

    fn installimage(&self) -> f64 {
        self.course.installimage_end - self.course.installimage_start
    }

    fn node_boot(&self) -> f64 {
        self.course.node_up - self.course.reboot
    }

    /// Everything no tool could make shorter.
    fn waits(&self) -> f64 {
        self.rescue_boot() + self.link_upload + self.installimage() + self.node_boot()
    }

    fn overhead(&self) -> f64 {
        self.course.duration - self.waits()
    }

    /// The overhead's parts (they add up to it within the stamps' resolution).
    fn before_reset(&self) -> f64 {
        self.course.reset - self.course.start
    }

    fn seeing_rescue(&self) -> f64 {
        self.course.rescue_seen - self.course.rescue_up
    }

    fn upload(&self) -> f64 {
        self.course.upload_end - self.course.upload_start
    }

    fn upload_beyond_link(&self) -> f64 {
        self.upload() - self.link_upload
    }

    /// Listing the drives, writing `/autosetup` and the post-install script, asking for the reboot.
    fn other_rescue_steps(&self) -> f64 {
        (self.course.upload_start - self.course.rescue_seen)
            + (self.course.installimage_start - self.course.upload_end)
            + (self.course.reboot - self.course.installimage_end)
    }

    fn seeing_node(&self) -> f64 {
        self.course.node_seen - self.course.node_up
    }

    /// From logging in to the node to the verdict: the node checks run there.
    fn verify(&self) -> f64 {
        self.course.verified - self.course.node_seen
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let section = match unavailable() {
        Some(reason) => skipped(&reason),
        None => match InstallimageArchive::vendored(&vendor_dir(), InstallimageKind::Hetzner) {
            Ok(archive) => measure(&archive).await,
            Err(error) => skipped(&format!(
                "Hetzner's installimage is not available: {error} (the unmodified archives of \
                 shared/vendor/installimage, see shared/vendor/README.md)"
            )),
        },
    };
    harness::emit(&section).expect("the section is written");
}

fn skipped(reason: &str) -> String {
    eprintln!("SKIPPED installs: {reason}");
    harness::skipped_section(TITLE, reason)
}

/// `../shared/vendor/installimage`, beside the repository, as the tests read it.
fn vendor_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vendor/installimage")
}

/// What this machine lacks for the benchmark, if anything.
fn unavailable() -> Option<String> {
    if !support::is_root() {
        return Some(
            "needs root: `build tarball` (mmdebstrap, chroot) and `build robot --sim` (its \
             servers are sshd machines in chroots with loop devices); run `sudo cargo xtask bench \
             installs`"
                .to_owned(),
        );
    }
    for (program, package) in [
        ("/usr/bin/mmdebstrap", "mmdebstrap"),
        (support::SSHD, "openssh-server"),
        ("/usr/bin/ssh", "openssh-client"),
    ] {
        if !Path::new(program).exists() {
            return Some(format!("{program} is missing (Debian package {package})"));
        }
    }
    None
}

async fn measure(archive: &InstallimageArchive) -> String {
    let runs = harness::runs();
    let work = tempfile::tempdir().expect("a scratch directory");
    let dir = work.path().canonicalize().expect("the scratch directory");
    let (tarball, build_seconds) = build_tarball(&dir).await;
    let tarball_bytes = fs::metadata(&tarball).expect("the tarball").len();

    let mut sshd = support::Sshd::prepare();
    sshd.start();
    let link = Link::new(sshd);
    let mut measured: Vec<Vec<Measured>> = vec![Vec::new(); Mode::ALL.len()];
    let mut link_seconds = Vec::new();
    for round in 1..=runs {
        let link_upload = link.upload(&tarball);
        link_seconds.push(link_upload);
        // Alternating which comes first, so neither always runs on the quieter machine.
        let order = if round % 2 == 1 {
            [Mode::Real, Mode::Simulated]
        } else {
            [Mode::Simulated, Mode::Real]
        };
        for mode in order {
            let course = install(&dir, &tarball, mode, archive).await;
            assert_eq!(course.tarball_bytes, tarball_bytes, "{course:?}");
            let run = Measured {
                course,
                link_upload,
            };
            eprintln!(
                "installs: round {round}/{runs}: {mode:?} installimage: {:.1} s to a verified \
                 node, waits {:.1} s (installimage {:.1} s), overhead {:.1} s",
                course.duration,
                run.waits(),
                run.installimage(),
                run.overhead()
            );
            let index = Mode::ALL.iter().position(|m| *m == mode).unwrap_or(0);
            measured[index].push(run);
        }
    }
    render(&Report {
        runs,
        archive,
        tarball_bytes,
        build_seconds,
        link_seconds: &link_seconds,
        measured: &measured,
    })
}

/// Builds the tests' tarball with the release binary; returns it and how long the build took.
async fn build_tarball(dir: &Path) -> (PathBuf, f64) {
    let mirror = Mirror::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        release_artifacts(&cloud::VERSIONS(), &["amd64"]),
    )
    .await
    .expect("the mirror starts");
    fs::write(
        dir.join("spec.toml"),
        tarball_spec::tarball_spec(&mirror.url()),
    )
    .expect("write the spec");
    eprintln!("installs: building the tarball once (build tarball, not measured)...");
    let started = Instant::now();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args([
            "build",
            "tarball",
            "spec.toml",
            "-o",
            "out",
            "--arch",
            "amd64",
        ])
        .args(["--no-progress"])
        .current_dir(dir)
        .output()
        .await
        .expect("caph-image runs");
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "caph-image build tarball failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let tarball = dir.join("out").join(TARBALL_NAME);
    assert!(tarball.is_file(), "no {}", tarball.display());
    (tarball, seconds)
}

/// OpenSSH to a loopback sshd with one key: the link the tarball crosses.
struct Link {
    sshd: support::Sshd,
    key: PathBuf,
    known_hosts: PathBuf,
    destination: PathBuf,
}

impl Link {
    fn new(sshd: support::Sshd) -> Link {
        let key = sshd.dir.path().join("client_key");
        support::write_private(
            &key,
            sshd.client_key
                .private_key_openssh()
                .expect("the client key")
                .expose(),
        );
        let known_hosts = sshd.dir.path().join("known_hosts");
        fs::write(
            &known_hosts,
            format!(
                "[{}]:{} {}\n",
                sshd.addr.ip(),
                sshd.addr.port(),
                sshd.host_key.public_key().to_openssh()
            ),
        )
        .expect("write known_hosts");
        let destination = sshd.dir.path().join("uploaded.tar.gz");
        Link {
            sshd,
            key,
            known_hosts,
            destination,
        }
    }

    /// Seconds for `ssh -c CIPHER host 'cat > file' < tarball`, connection included; the file
    /// that arrived must have the tarball's size.
    fn upload(&self, tarball: &Path) -> f64 {
        let source = fs::File::open(tarball).expect("open the tarball");
        let started = Instant::now();
        let output = Command::new("/usr/bin/ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(&self.key)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null", "-c", CIPHER, "-p"])
            .arg(self.sshd.addr.port().to_string())
            .arg(format!("{}@{}", self.sshd.user, self.sshd.addr.ip()))
            .arg(format!("cat > '{}'", self.destination.display()))
            .stdin(Stdio::from(source))
            .output()
            .expect("ssh runs");
        let seconds = started.elapsed().as_secs_f64();
        assert!(
            output.status.success(),
            "ssh 'cat > file' failed ({}): {}\nsshd: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.sshd.log_text()
        );
        let arrived = fs::metadata(&self.destination).map_or(0, |meta| meta.len());
        let sent = fs::metadata(tarball).map_or(0, |meta| meta.len());
        assert_eq!(arrived, sent, "the upload over OpenSSH arrived whole");
        let _ = fs::remove_file(&self.destination);
        seconds
    }
}

/// Runs one `build robot --sim` install of `tarball`; panics (a benchmark of a failed or wrong
/// install is worthless) when it fails, when another installimage ran than `mode` asks for, or
/// when its progress lines lack a step.
async fn install(dir: &Path, tarball: &Path, mode: Mode, archive: &InstallimageArchive) -> Course {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_caph-image"));
    command
        .args([
            "build",
            "robot",
            "spec.toml",
            "--server",
            &SERVER.to_string(),
        ])
        .arg("--tarball")
        .arg(tarball)
        .args([
            "--layout",
            LAYOUT,
            "--sim",
            "--sim-speed",
            &SPEED.to_string(),
        ])
        .args(["--verbose", "--no-progress", "--output", "json"])
        .current_dir(dir)
        .env_remove("HETZNER_ROBOT_USER")
        .env_remove("HETZNER_ROBOT_PASSWORD")
        .env_remove("HETZNER_ROBOT_ENDPOINT");
    if mode == Mode::Real {
        command.arg("--sim-installimage").arg(&archive.path);
    }
    let started = Instant::now();
    let output = command.output().await.expect("caph-image runs");
    let seconds = started.elapsed().as_secs_f64();
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "caph-image build robot --sim ({mode:?} installimage) failed ({}):\n{errors}",
        output.status
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("caph-image printed JSON");
    // The install is what it should be: simulated, on the node, verified, with the installimage
    // asked for, and the rescue activation used up.
    assert_eq!(report["simulated"], true, "{report:#}");
    assert_eq!(report["hostname"], HOSTNAME, "{report:#}");
    assert_ne!(
        report["host_key_fingerprint"], report["rescue_host_key_fingerprint"],
        "{report:#}"
    );
    assert!(
        report["checks"]
            .as_array()
            .is_some_and(|checks| !checks.is_empty()),
        "{report:#}"
    );
    let ran = report["simulator"]["installimage"]
        .as_str()
        .unwrap_or_default();
    assert!(
        ran.contains(&mode.ran(archive)),
        "{mode:?}: the rescue system ran {ran:?}"
    );
    assert_eq!(report["simulator"]["rescue_active"], false, "{report:#}");
    let mut course = course(&errors)
        .unwrap_or_else(|missing| panic!("{mode:?}: no progress line for {missing} in:\n{errors}"));
    course.duration = report["duration_seconds"]
        .as_f64()
        .expect("the report's duration_seconds");
    course.command = seconds;
    course
}

/// The install's course from its progress lines (`[   12.3s] TEXT`), or the step whose line is
/// missing.
fn course(stderr: &str) -> Result<Course, String> {
    let scope = format!("server {SERVER}");
    let stamp = |what: &str, starts: &str| -> Result<f64, String> {
        stderr
            .lines()
            .find_map(|line| {
                let (stamp, text) = line.strip_prefix('[')?.split_once("s] ")?;
                text.starts_with(starts)
                    .then(|| stamp.trim().parse::<f64>().ok())?
            })
            .ok_or_else(|| format!("{what} (a line starting `{starts}`)"))
    };
    let upload_line = format!("{scope}: provision: ");
    let installimage_line = format!("{scope}: provision: installimage ");
    // The upload's phase line is the first provision line; installimage's has its own detail.
    let upload_start = stderr
        .lines()
        .filter_map(|line| line.strip_prefix('[')?.split_once("s] "))
        .find(|(_, text)| text.starts_with(&upload_line) && !text.starts_with(&installimage_line))
        .and_then(|(stamp, _)| stamp.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("the upload (a line starting `{upload_line}`)"))?;
    let tarball_bytes = stderr
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once(&format!("{scope} | uploaded "))?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .ok_or("the uploaded byte count")?;
    Ok(Course {
        start: stamp("the start", &format!("{scope}: preflight: "))?,
        reset: stamp("the reset", &format!("{scope}: connect: "))?,
        rescue_up: stamp(
            "the rescue boot",
            &format!("simulator | {scope}: the rescue system is up"),
        )?,
        rescue_seen: stamp(
            "the rescue login",
            &format!("{scope} | rescue system up at "),
        )?,
        upload_start,
        upload_end: stamp("the upload's end", &format!("{scope} | uploaded "))?,
        installimage_start: stamp("installimage's start", &installimage_line)?,
        installimage_end: stamp(
            "installimage's end",
            &format!("{scope} | installimage: INSTALLATION COMPLETE"),
        )?,
        reboot: stamp("the reboot", &format!("{scope}: shutdown: into "))?,
        node_up: stamp(
            "the node's boot",
            &format!("simulator | {scope}: the installed system is up"),
        )?,
        node_seen: stamp("the node login", &format!("{scope} | {HOSTNAME} is up"))?,
        verified: stamp("the cleanup", &format!("{scope}: cleanup: "))?,
        duration: 0.0,
        command: 0.0,
        tarball_bytes,
    })
}

struct Report<'a> {
    runs: usize,
    archive: &'a InstallimageArchive,
    tarball_bytes: u64,
    build_seconds: f64,
    link_seconds: &'a [f64],
    measured: &'a [Vec<Measured>],
}

fn render(report: &Report<'_>) -> String {
    let Report {
        runs,
        archive,
        tarball_bytes,
        build_seconds,
        link_seconds,
        measured,
    } = report;
    let median = |index: usize, value: fn(&Measured) -> f64| {
        harness::median(&measured[index].iter().map(value).collect::<Vec<_>>())
    };
    let link = harness::median(link_seconds);
    let megabytes = *tarball_bytes as f64 / 1e6;
    let link_rate = megabytes / link.max(f64::EPSILON);
    let reset_seconds = 90.0 / SPEED;
    let mut text = String::new();
    let _ = writeln!(text, "## {TITLE}\n");
    let _ = writeln!(
        text,
        "- one tarball, built once beforehand by the release `caph-image build tarball` ({build_seconds:.0} s, \
         not measured): the end-to-end tests' spec (`tests/it/tarball_spec.rs`, Debian 12 \
         minbase, Kubernetes 1.34.2 from a loopback mirror), {megabytes:.0} MB; installed by the \
         release `caph-image build robot SPEC --server {SERVER} --tarball FILE --layout {LAYOUT} \
         --sim --sim-speed {SPEED} --verbose --no-progress --output json`, with \
         `--sim-installimage` {} for the real installimage (which the simulated rescue system \
         hands a single-disk BIOS layout to) and without it for the simulated one",
        archive.label
    );
    let _ = writeln!(
        text,
        "- each install runs the whole flow against the simulator in the command's process \
         (rescue activation, reset, login, drives, upload, `/autosetup`, installimage, reboot, \
         login to the node, the node checks, cleanup); each must exit 0 with a verified node \
         whose host key is not the rescue system's, the installimage asked for (the simulator's \
         own account) and the activation used up, else the benchmark fails"
    );
    let _ = writeln!(
        text,
        "- start to verified node: the report's `duration_seconds` (the install's start, after \
         the local checks of the layout, to the node checks passed; the cleanup after it and the \
         simulator's setup and teardown are in the whole command's time); the parts from the \
         command's progress lines (0.1 s resolution): the tool's steps and the simulator's \
         machines (`simulator | server {SERVER}: the rescue system is up`) on one clock; median \
         of {runs} rounds, the order of the two alternating between rounds"
    );
    let _ = writeln!(
        text,
        "- unavoidable waits: the rescue boot (reset request to the simulator's rescue system \
         answering: its `sw` reset of 90 s at {SPEED}x, {reset_seconds:.0} s, and the machine's \
         boot), the upload at the link's speed (the tarball's size over what OpenSSH's `ssh -c \
         {CIPHER} host 'cat > file'` reaches to a loopback sshd with the same file, median \
         {link:.2} s, {link_rate:.0} MB/s, measured once per round), installimage's run \
         (its command's start to `INSTALLATION COMPLETE`) and the reboot into the node (`reboot` \
         to the simulator's installed system answering: 90 s at {SPEED}x and reading the system \
         off the drive); tool overhead is the rest\n"
    );
    let _ = writeln!(
        text,
        "| installimage | start to verified node s | rescue boot s | upload at link speed s | installimage s | reboot into node s | waits s | tool overhead s | whole command s |"
    );
    let _ = writeln!(text, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (index, mode) in Mode::ALL.iter().enumerate() {
        let _ = writeln!(
            text,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            mode.label(),
            median(index, |run| run.course.duration),
            median(index, Measured::rescue_boot),
            median(index, |run| run.link_upload),
            median(index, Measured::installimage),
            median(index, Measured::node_boot),
            median(index, Measured::waits),
            median(index, Measured::overhead),
            median(index, |run| run.course.command),
        );
    }
    let _ = writeln!(
        text,
        "\nWhere the tool's overhead goes (the median of each part; in every run the parts add up \
         to that run's overhead within the lines' resolution):\n"
    );
    let _ = writeln!(
        text,
        "| installimage | before the reset s | seeing the rescue system s | upload beyond the link s | drives, autosetup, reboot s | seeing the node s | node checks s |"
    );
    let _ = writeln!(text, "|---|---:|---:|---:|---:|---:|---:|");
    for (index, mode) in Mode::ALL.iter().enumerate() {
        let _ = writeln!(
            text,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            mode.label(),
            median(index, Measured::before_reset),
            median(index, Measured::seeing_rescue),
            median(index, Measured::upload_beyond_link),
            median(index, Measured::other_rescue_steps),
            median(index, Measured::seeing_node),
            median(index, Measured::verify),
        );
    }
    let real_installimage = median(0, Measured::installimage);
    let simulated_installimage = median(1, Measured::installimage);
    let ratio = real_installimage / simulated_installimage.max(f64::EPSILON);
    let upload = median(0, Measured::upload);
    // Every run, round by round (each mode's runs are in round order), since two rounds on a
    // shared machine can differ by far more than the medians' difference.
    let every = |index: usize, value: fn(&Measured) -> f64| {
        measured[index]
            .iter()
            .map(|run| format!("{:.1}", value(run)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let per_round: Vec<String> = measured[0]
        .iter()
        .zip(&measured[1])
        .map(|(real, simulated)| {
            format!(
                "{:.1}x",
                real.installimage() / simulated.installimage().max(f64::EPSILON)
            )
        })
        .collect();
    let _ = writeln!(
        text,
        "\n- installimage itself: the real one {real_installimage:.1} s, the simulated one \
         {simulated_installimage:.1} s on the same tarball and layout: the real one takes \
         {ratio:.1}x as long (round by round: {})",
        per_round.join(", ")
    );
    let _ = writeln!(
        text,
        "- every run, round by round: start to verified node {} s with the real installimage, \
         {} s with the simulated one; installimage {} s real, {} s simulated",
        every(0, |run| run.course.duration),
        every(1, |run| run.course.duration),
        every(0, Measured::installimage),
        every(1, Measured::installimage),
    );
    let _ = writeln!(
        text,
        "- the tool's verified upload: {upload:.1} s against {link:.1} s at the link's speed \
         ({:.2}x; the real-installimage runs' median)",
        upload / link.max(f64::EPSILON)
    );
    let _ = writeln!(
        text,
        "\n{} `build robot --sim` ({SPEED}x resets) from start to verified node: with Hetzner's \
         real installimage {:.1} s against {:.1} s of unavoidable waits (tool overhead {:.1} \
         s), with the simulated one {:.1} s against {:.1} s ({:.1} s); installimage itself \
         {real_installimage:.1} s real against {simulated_installimage:.1} s simulated \
         ({ratio:.1}x) for the same {megabytes:.0} MB tarball.",
        harness::RESULT_PREFIX,
        median(0, |run| run.course.duration),
        median(0, Measured::waits),
        median(0, Measured::overhead),
        median(1, |run| run.course.duration),
        median(1, Measured::waits),
        median(1, Measured::overhead),
    );
    text
}
