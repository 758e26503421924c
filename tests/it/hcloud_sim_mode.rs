//! `caph-image build hcloud --sim` end to end: the real binary runs its own simulator and SSH
//! machines, on a shipped spec whose downloads are pointed at a loopback mirror.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Instant;

use caph_sim::machine::{SshMachines, SshMachinesConfig};
use caph_sim::mirror::{Mirror, ReleaseVersions, release_artifacts};

use crate::{is_root, repo, stderr, stdout};

/// The shipped spec the README's quick start builds.
pub const SHIPPED_SPEC: &str = "images/debian-12-k8s-1.36.toml";

/// Where `SshMachinesConfig::default()` keeps its per-run directories.
const STATE_DIR: &str = "/var/lib/caph-sim";

/// The versions the shipped spec pins, for the mirror's stand-ins.
fn shipped_versions() -> ReleaseVersions {
    let shipped = std::fs::read_to_string(repo().join(SHIPPED_SPEC)).unwrap();
    let version_of = |table: &str| {
        let start = shipped
            .find(&format!("[{table}]\nversion = \""))
            .unwrap_or_else(|| panic!("{SHIPPED_SPEC}: [{table}] starts with its version"));
        let rest = &shipped[start + table.len() + 14..];
        rest[..rest.find('"').unwrap()].to_string()
    };
    ReleaseVersions {
        kubernetes: version_of("kubernetes"),
        containerd: version_of("containerd"),
        runc: version_of("runc"),
        crictl: version_of("crictl"),
        cni: version_of("cni"),
    }
}

/// The shipped spec with its five release downloads pointed at `mirror` (the override the
/// other end-to-end tests use), everything else as shipped but the sha256 pins: they are the
/// real releases' digests, and the mirror serves stand-ins (checked against the checksum files
/// published beside them instead).
fn shipped_spec_on_mirror(mirror: &str) -> String {
    let shipped = std::fs::read_to_string(repo().join(SHIPPED_SPEC)).unwrap();
    let shipped: String = shipped
        .lines()
        .filter(|line| !line.starts_with("sha256"))
        .map(|line| format!("{line}\n"))
        .collect();
    shipped
        .replace(
            "[kubernetes]\n",
            &format!("[kubernetes]\nbinaries_url = \"{mirror}/kubernetes\"\n"),
        )
        .replace(
            "[containerd]\n",
            &format!("[containerd]\nurl = \"{mirror}/containerd\"\n"),
        )
        .replace("[runc]\n", &format!("[runc]\nurl = \"{mirror}/runc\"\n"))
        .replace(
            "[crictl]\n",
            &format!("[crictl]\nurl = \"{mirror}/crictl\"\n"),
        )
        .replace("[cni]\n", &format!("[cni]\nurl = \"{mirror}/cni\"\n"))
}

/// The per-run directories of `SshMachines` under [`STATE_DIR`] owned by process `pid`.
pub fn run_dirs_of(pid: u32) -> Vec<String> {
    let prefix = format!("run-{pid}-");
    std::fs::read_dir(STATE_DIR)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_mode_builds_a_shipped_spec_and_leaves_nothing_else() {
    let test = "sim_mode_builds_a_shipped_spec_and_leaves_nothing_else";
    // The same prerequisites the binary checks; a machine without them is a skip, not a failure
    // (the error the binary gives then is checked by the test below).
    if let Err(error) = SshMachines::new(SshMachinesConfig::default()) {
        eprintln!("SKIPPED {test}: {error}");
        return;
    }
    let mirror = Mirror::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        release_artifacts(&shipped_versions(), &["amd64"]),
    )
    .await
    .expect("the mirror starts");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        shipped_spec_on_mirror(&mirror.url()),
    )
    .unwrap();

    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_caph-image"));
    command
        .args([
            "build",
            "hcloud",
            "node.toml",
            "--sim",
            "--sim-speed",
            "1000",
            "--arch",
            "x86",
            "--no-progress",
            "--output",
            "json",
        ])
        .current_dir(dir.path())
        // The simulator needs neither; set, they must not lead the build anywhere else.
        .env("HCLOUD_TOKEN", "must-not-be-used")
        .env_remove("HCLOUD_ENDPOINT");
    let (output, pid) = run_to_success(&mut command, "caph-image build hcloud --sim").await;
    let errors = stderr(&output);

    let result: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(result["simulated"], true, "{result:#}");
    let snapshots = result["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 1, "{result:#}");
    assert_eq!(snapshots[0]["architecture"], "x86");
    assert_eq!(
        snapshots[0]["labels"]["caph-image-name"],
        format!("debian-12-k8s-v{}", shipped_versions().kubernetes)
    );
    // The simulator's own account of what it held at the end: the snapshot, nothing else.
    let simulator = &result["simulator"];
    assert_eq!(simulator["snapshots"], 1, "{result:#}");
    assert_eq!(simulator["servers_left"], 0, "{result:#}");
    assert_eq!(simulator["ssh_keys_left"], 0, "{result:#}");
    for words in [
        "Simulated run",
        "exist only in the simulator",
        "nothing was created in a Hetzner Cloud project",
    ] {
        assert!(
            errors.contains(words),
            "stderr does not say {words:?}:\n{errors}"
        );
        assert!(simulator["note"].as_str().unwrap().contains(words));
    }
    assert!(errors.contains("HCLOUD_TOKEN is not used"), "{errors}");
    assert!(
        errors.contains("simulator: preparing the debian-12 root filesystem for x86"),
        "{errors}"
    );
    // The downloads came from the mirror, checked against published checksums.
    let requests = mirror.requests();
    assert!(
        requests.iter().any(|path| path.ends_with("kubelet.sha256")),
        "{requests:?}"
    );
    // Nothing of the run is left on this machine: its machines' directory is gone with it.
    assert_eq!(run_dirs_of(pid), Vec::<String>::new());
}

/// Runs `command` with its output captured, prints how long it took and its stderr, checks that
/// it succeeded, and returns its output and process id.
pub async fn run_to_success(
    command: &mut tokio::process::Command,
    what: &str,
) -> (std::process::Output, u32) {
    let started = Instant::now();
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("caph-image runs");
    let pid = child.id().expect("the child has a pid");
    let output = child.wait_with_output().await.unwrap();
    let errors = stderr(&output);
    eprintln!(
        "{what} took {:.1}s\n{errors}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(output.status.code(), Some(0), "stderr:\n{errors}");
    (output, pid)
}

#[test]
fn without_a_token_the_error_names_both_ways_forward() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args(["build", "hcloud", SHIPPED_SPEC])
        .current_dir(repo())
        .env_remove("HCLOUD_TOKEN")
        .env_remove("HCLOUD_ENDPOINT")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let errors = stderr(&output);
    assert!(errors.contains("export a read-write API token"), "{errors}");
    assert!(
        errors.contains("--sim") && errors.contains("without an account"),
        "{errors}"
    );
}

#[test]
fn sim_refuses_another_endpoint_and_naming_it() {
    for (args, env) in [
        (vec!["--endpoint", "http://127.0.0.1:9/v1"], None),
        (vec![], Some("http://127.0.0.1:9/v1")),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_caph-image"));
        command
            .args(["build", "hcloud", SHIPPED_SPEC, "--sim"])
            .args(&args)
            .current_dir(repo())
            .env_remove("HCLOUD_ENDPOINT");
        if let Some(endpoint) = env {
            command.env("HCLOUD_ENDPOINT", endpoint);
        }
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(
            stderr(&output).contains("unset HCLOUD_ENDPOINT"),
            "{}",
            stderr(&output)
        );
    }
    // --sim-speed alone is a usage error: it means nothing without --sim.
    let output = crate::caph_image(
        &repo(),
        &["build", "hcloud", SHIPPED_SPEC, "--sim-speed", "10"],
    );
    assert_eq!(output.status.code(), Some(2));
}

/// Runs the binary as nobody, where the simulator's servers cannot run: the error must say
/// what to do.
#[test]
fn sim_without_root_says_to_run_as_root() {
    sim_as_nobody_names_the_fix(
        "sim_without_root_says_to_run_as_root",
        &["build", "hcloud", "node.toml", "--sim", "--arch", "x86"],
        "run as root (`sudo caph-image build hcloud SPEC --sim`",
    );
}

/// Runs `caph-image ARGS` as nobody in a directory holding the shipped spec as `node.toml` and
/// an empty `node.tar.gz`, and checks that the error names what is missing and `fix`.
pub fn sim_as_nobody_names_the_fix(test: &str, args: &[&str], fix: &str) {
    if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("SKIPPED {test}: needs root and setpriv (util-linux) to become nobody");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    // nobody must be able to read the spec and the tarball.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::copy(repo().join(SHIPPED_SPEC), dir.join("node.toml")).unwrap();
    std::fs::write(dir.join("node.tar.gz"), b"").unwrap();
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_caph-image"))
        .args(args)
        .current_dir(dir)
        .env_remove("HCLOUD_ENDPOINT")
        .env_remove("HETZNER_ROBOT_ENDPOINT")
        .output()
        .unwrap();
    let errors = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{errors}");
    assert!(
        errors.contains("--sim cannot run the simulator's servers on this machine"),
        "{errors}"
    );
    assert!(errors.contains("root (running as uid 65534)"), "{errors}");
    assert!(errors.contains(fix), "{errors}");
}
