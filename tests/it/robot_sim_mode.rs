//! `caph-image build robot --sim` end to end: the real binary runs its own Robot simulator, whose
//! rescue system and installed node are real sshd machines and whose installimage is the binary
//! itself, and installs a tarball made by `build tarball` with the spec's own disk layout.

use std::path::Path;

use caph_sim::machine::{SshMachines, SshMachinesConfig};
use caph_sim::real_installimage::InstallimageKind;

use crate::hcloud_sim_mode::{
    SHIPPED_SPEC, run_dirs_of, run_to_success, sim_as_nobody_names_the_fix,
};
use crate::{repo, stderr, stdout};

/// Credentials that must not be used (nor printed) by a --sim run.
const UNUSED_PASSWORD: &str = "robot-password-that-must-not-be-used";

/// Installs `tarball` (made from `spec_file` in `dir`) with `build robot SPEC --server 4711
/// --sim --sim-installimage HETZNER`: the spec's own [robot] table (RAID 1 over the two drives,
/// hostname node-{server_number}), as the shipped specs have it, which this kernel cannot
/// install for real, so the simulated installimage runs and the output says why.
pub async fn install_with_sim(dir: &Path, spec_file: &str, tarball: &Path) {
    let test = "build robot --sim (after build tarball)";
    if let Err(error) = SshMachines::new(SshMachinesConfig::default()) {
        eprintln!("SKIPPED {test}: {error}");
        return;
    }
    let archive = match crate::vendored_installimage(InstallimageKind::Hetzner) {
        Ok(archive) => archive,
        Err(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            return;
        }
    };
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_caph-image"));
    command
        .args(["build", "robot", spec_file, "--server", "4711", "--tarball"])
        .arg(tarball)
        .arg("--sim-installimage")
        .arg(&archive.path)
        .args([
            "--sim",
            "--sim-speed",
            "100",
            "--no-progress",
            "--output",
            "json",
        ])
        .current_dir(dir)
        // The simulator needs neither; set, they must not lead the build anywhere else.
        .env("HETZNER_ROBOT_USER", "must-not-be-used")
        .env("HETZNER_ROBOT_PASSWORD", UNUSED_PASSWORD)
        .env_remove("HETZNER_ROBOT_ENDPOINT");
    let (output, pid) = run_to_success(&mut command, "caph-image build robot --sim").await;
    let errors = stderr(&output);
    assert!(!errors.contains(UNUSED_PASSWORD));
    assert!(
        errors.contains("HETZNER_ROBOT_USER and HETZNER_ROBOT_PASSWORD are not used"),
        "{errors}"
    );

    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["simulated"], true, "{report:#}");
    assert_eq!(report["server_number"], 4711);
    // The spec's hostname pattern, and a host key of the installed system, not the rescue's.
    assert_eq!(report["hostname"], "node-4711", "{report:#}");
    assert_ne!(
        report["host_key_fingerprint"],
        report["rescue_host_key_fingerprint"]
    );
    assert!(
        report["checks"]
            .as_array()
            .is_some_and(|checks| !checks.is_empty()),
        "{report:#}"
    );
    assert!(
        report["machine_template"]
            .as_str()
            .unwrap()
            .contains("kind: HetznerBareMetalMachineTemplate")
    );
    // The template repeats the spec's RAID 1 layout for Cluster API Provider Hetzner.
    assert!(
        report["machine_template"]
            .as_str()
            .unwrap()
            .contains("swraid: 1\n        swraidLevel: 1\n"),
        "{report:#}"
    );
    // The simulator's own account: the server was reset into the rescue system, which the
    // installation used up; nothing was left pending.
    let simulator = &report["simulator"];
    assert_eq!(simulator["rescue_active"], false, "{report:#}");
    assert!(
        simulator["rescue_boots"].as_u64().unwrap() >= 1,
        "{report:#}"
    );
    assert!(
        !simulator["resets"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    for words in [
        "Simulated run",
        "exists only in the simulator",
        "nothing was touched in a Robot account",
    ] {
        assert!(
            errors.contains(words),
            "stderr does not say {words:?}:\n{errors}"
        );
        assert!(simulator["note"].as_str().unwrap().contains(words));
    }
    // The spec's RAID 1 layout went through the simulated installimage, and the run says so.
    assert!(
        errors.contains("simulator: rescue system ready"),
        "{errors}"
    );
    assert!(
        errors.contains("the rescue system runs Hetzner's installimage"),
        "{errors}"
    );
    assert_eq!(
        simulator["installimage"],
        "caph-sim: running the simulated installimage: the layout uses more than one drive",
        "{report:#}"
    );
    // Nothing of the run is left on this machine: its machines' directory is gone with it.
    assert_eq!(run_dirs_of(pid), Vec::<String>::new());
}

#[test]
fn without_credentials_the_error_names_both_ways_forward() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args([
            "build",
            "robot",
            SHIPPED_SPEC,
            "--server",
            "1",
            "--tarball",
            "missing.tar.gz",
        ])
        .current_dir(repo())
        .env_remove("HETZNER_ROBOT_USER")
        .env_remove("HETZNER_ROBOT_PASSWORD")
        .output()
        .unwrap();
    let errors = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{errors}");
    assert!(
        errors.contains("HETZNER_ROBOT_PASSWORD must be set"),
        "{errors}"
    );
    assert!(
        errors.contains("--sim") && errors.contains("without an account"),
        "{errors}"
    );
}

#[test]
fn sim_refuses_another_endpoint_and_naming_it() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args(["build", "robot", SHIPPED_SPEC, "--server", "1", "--sim"])
        .current_dir(repo())
        .env("HETZNER_ROBOT_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let errors = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{errors}");
    assert!(errors.contains("unset HETZNER_ROBOT_ENDPOINT"), "{errors}");
    // --sim-speed alone is a usage error: it means nothing without --sim.
    let output = crate::caph_image(
        &repo(),
        &[
            "build",
            "robot",
            SHIPPED_SPEC,
            "--server",
            "1",
            "--sim-speed",
            "10",
        ],
    );
    assert_eq!(output.status.code(), Some(2));
}

/// Runs the binary as nobody, where the simulator's servers cannot run: the error must say
/// what to do.
#[test]
fn sim_without_root_says_to_run_as_root() {
    sim_as_nobody_names_the_fix(
        "robot sim_without_root_says_to_run_as_root",
        &[
            "build",
            "robot",
            "node.toml",
            "--server",
            "1",
            "--tarball",
            "node.tar.gz",
            "--sim",
        ],
        "run as root (`sudo caph-image build robot SPEC --server N --sim`",
    );
}
