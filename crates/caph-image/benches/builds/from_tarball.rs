//! The `builds` benchmark's comparison of `build hcloud SPEC --from-tarball TARBALL` with the
//! SSH-provisioned `build hcloud SPEC` of the same spec: one x86 snapshot each, side by side in
//! every round, against one simulator whose servers also boot a rescue system with their disk
//! (caph-sim's `CloudMachines`). The tarball is built once beforehand (`build tarball`), timed on
//! its own, since a user who builds for dedicated servers has it anyway.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use caph_hcloud::{Client, ClientConfig, Token};
use caph_sim::hcloud::{CLOUD_RESCUE_TEMPLATE_CACHE, CloudMachines, CloudMachinesConfig};
use caph_sim::machine::SshMachinesConfig;

use super::cloud::{self, Cloud};
use super::{Measured, harness, run_measured};

/// The two builds compared.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Flow {
    Ssh,
    Tarball,
}

/// The end-to-end spec of one x86 image, with the root filesystem a tarball build needs.
fn spec(cloud: &Cloud, name: &str) -> String {
    format!(
        "{}\n[base.rootfs]\nsuite = \"bookworm\"\nvariant = \"minbase\"\n",
        cloud.spec(name, &["x86"])
    )
}

/// The comparison's table and its part of the result sentence; a line saying why where this
/// machine cannot run it.
pub async fn measure(scale: f64) -> (String, String) {
    match start(scale).await {
        Ok(cloud) => compare(&cloud).await,
        Err(reason) => {
            eprintln!("SKIPPED builds (--from-tarball): {reason}");
            (
                format!("- `--from-tarball`: not measured on this machine: {reason}\n"),
                format!("`--from-tarball` not measured ({reason})"),
            )
        }
    }
}

/// The simulator with rescue-capable x86 servers, their system image and rescue system ready.
async fn start(scale: f64) -> Result<Cloud, String> {
    let machines = CloudMachines::new(CloudMachinesConfig {
        machines: SshMachinesConfig::default(),
        installimage_binary: PathBuf::from(env!("CARGO_BIN_EXE_caph-image")),
        rescue_template_cache: Some(PathBuf::from(CLOUD_RESCUE_TEMPLATE_CACHE)),
        log: None,
    })
    .map_err(|error| error.to_string())?;
    machines
        .files()
        .prepare_image("debian-12", "x86")
        .await
        .map_err(|error| format!("preparing debian-12: {error}"))?;
    machines
        .prepare_rescue("x86")
        .await
        .map_err(|error| format!("preparing the rescue system: {error}"))?;
    Ok(Cloud::start_on(scale, Arc::new(machines), None).await)
}

/// Builds the tarball under GNU time: its path, wall seconds and peak RSS in KiB.
fn build_tarball(cloud: &Cloud, dir: &Path) -> (PathBuf, f64, u64) {
    std::fs::write(dir.join("bench-tarball.toml"), spec(cloud, "bench-tarball"))
        .expect("write the spec");
    let mut command = Command::new(env!("CARGO_BIN_EXE_caph-image"));
    command
        .args(["build", "tarball", "bench-tarball.toml", "--arch", "amd64"])
        .args(["-o", "tarball", "--no-progress"])
        .current_dir(dir);
    let report = dir.join("tarball.time");
    let started = Instant::now();
    let output = harness::under_gnu_time(&command, &report)
        .output()
        .expect("caph-image runs");
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "caph-image build tarball failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let usage = harness::read_gnu_time(&report).expect("GNU time's report");
    let tarball = std::fs::read_dir(dir.join("tarball"))
        .expect("the output directory")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().ends_with(".tar.gz"))
        .expect("the tarball");
    (tarball, seconds, usage.rss_kib)
}

async fn compare(cloud: &Cloud) -> (String, String) {
    let runs = harness::runs();
    let dir = tempfile::tempdir().expect("a scratch directory");
    let client = Client::new(ClientConfig::new(
        cloud.sim.api_url(),
        Token::new(cloud::TOKEN),
    ))
    .expect("a client for the simulator");
    let (tarball, tarball_seconds, tarball_rss) = build_tarball(cloud, dir.path());
    eprintln!("builds: the tarball took {tarball_seconds:.1} s");
    let tarball_arg = tarball.to_string_lossy().into_owned();
    let mut ssh = Vec::new();
    let mut from_tarball = Vec::new();
    for round in 1..=runs {
        // Alternating which comes first, so neither always runs on the quieter machine.
        let order = if round % 2 == 1 {
            [Flow::Ssh, Flow::Tarball]
        } else {
            [Flow::Tarball, Flow::Ssh]
        };
        for flow in order {
            let name = match flow {
                Flow::Ssh => format!("bench-ssh-x86-{round}"),
                Flow::Tarball => format!("bench-from-tarball-{round}"),
            };
            std::fs::write(dir.path().join(format!("{name}.toml")), spec(cloud, &name))
                .expect("write the spec");
            let mut extra = vec!["--arch", "x86"];
            if flow == Flow::Tarball {
                extra.extend(["--from-tarball", tarball_arg.as_str()]);
            }
            let measured = run_measured(cloud, &client, dir.path(), &name, &extra, 1).await;
            eprintln!(
                "builds: round {round}/{runs}: {flow:?} took {:.1} s, peak RSS {:.1} MiB",
                measured.seconds,
                harness::kib_to_mib(measured.rss_kib)
            );
            match flow {
                Flow::Ssh => ssh.push(measured),
                Flow::Tarball => from_tarball.push(measured),
            }
        }
    }
    render(
        runs,
        &ssh,
        &from_tarball,
        tarball_seconds,
        harness::kib_to_mib(tarball_rss),
    )
}

fn render(
    runs: usize,
    ssh: &[Measured],
    from_tarball: &[Measured],
    tarball_seconds: f64,
    tarball_rss: f64,
) -> (String, String) {
    let median = |measured: &[Measured], value: &dyn Fn(&Measured) -> f64| {
        harness::median(&measured.iter().map(value).collect::<Vec<_>>())
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "- `--from-tarball`: the same spec, one x86 snapshot either way, against a second \
         simulator (same time scale) whose servers also boot a rescue system with their disk as \
         `/dev/sda`; per round one SSH-provisioned `build hcloud SPEC --arch x86` and one \
         `build hcloud SPEC --arch x86 --from-tarball TARBALL` (partition, the tarball streamed \
         into `tar` with its sha256 checked on the server, fstab, cloud-init, GRUB), the order \
         alternating; median of {runs} rounds; the tarball was built once beforehand by \
         `build tarball` (mmdebstrap, the plan in a chroot, packing), timed on its own; \
         \"provision\" is the plan's steps over SSH, or the three rescue steps, from the tool's \
         progress lines; each build must leave exactly its snapshot and nothing else\n"
    );
    let _ = writeln!(
        text,
        "| x86 snapshot | wall s | server start s | provision s | shutdown s | snapshot s | delete s | tool overhead s | peak RSS MiB |"
    );
    let _ = writeln!(text, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (label, measured) in [
        ("`build hcloud` (SSH-provisioned)", ssh),
        ("**`build hcloud --from-tarball TARBALL`**", from_tarball),
    ] {
        let _ = writeln!(
            text,
            "| {label} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            median(measured, &|run| run.seconds),
            median(measured, &|run| run.waits.server_start),
            median(measured, &|run| run.waits.plan),
            median(measured, &|run| run.waits.shutdown),
            median(measured, &|run| run.waits.snapshot),
            median(measured, &|run| run.waits.delete),
            median(measured, &|run| run.seconds - run.waits.total()),
            median(measured, &|run| harness::kib_to_mib(run.rss_kib)),
        );
    }
    let _ = writeln!(
        text,
        "| `build tarball` beforehand (once) | {tarball_seconds:.1} | | | | | | | {tarball_rss:.1} |"
    );
    let ssh_seconds = median(ssh, &|run| run.seconds);
    let tarball_flow = median(from_tarball, &|run| run.seconds);
    let ratio = tarball_flow / ssh_seconds.max(f64::EPSILON);
    let _ = writeln!(
        text,
        "\n- from the tarball: {ratio:.2}x the SSH-provisioned build's wall time ({tarball_flow:.1} s \
         vs {ssh_seconds:.1} s); with the tarball's build counted, {:.1} s",
        tarball_flow + tarball_seconds
    );
    let sentence = format!(
        "an x86 snapshot written from its tarball takes {ratio:.2}x the time of one provisioned \
         over SSH ({tarball_flow:.0} s vs {ssh_seconds:.0} s), the tarball's own build \
         {tarball_seconds:.0} s beforehand"
    );
    (text, sentence)
}
