//! `caph-image verify` through the binary: bad input refused before anything is made (no root
//! needed), `verify hcloud` against the simulator on a system image with cloud-init (a whole
//! verification, and one interrupted with SIGINT), and helpers the end-to-end tests use to
//! verify what they built (`tests/it/tarball.rs`, `tests/it/hcloud_build.rs`) and to check that
//! nothing is left behind.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt as _;

use crate::cloud::Cloud;
use crate::{is_root, stderr, stdout};

/// Runs `caph-image verify ARGS` in `dir` with `env`.
fn verify(dir: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .arg("verify")
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .output()
        .expect("caph-image runs");
    eprintln!("caph-image verify {}\n{}", args.join(" "), stderr(&output));
    output
}

/// Loop devices whose backing file lies below `dir` (`losetup` lists the files).
pub fn loops_below(dir: &Path) -> Vec<String> {
    let listing = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    let needle = dir.to_string_lossy().into_owned();
    listing
        .lines()
        .filter(|line| line.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// Mounts (of this process's namespace, and of every namespace a process on the machine has)
/// whose mount point or source lies below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return found;
    };
    for process in processes.flatten() {
        let is_pid = process
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|byte| byte.is_ascii_digit());
        if !is_pid {
            continue;
        }
        let Ok(mountinfo) = std::fs::read_to_string(process.path().join("mountinfo")) else {
            continue;
        };
        for line in mountinfo.lines().filter(|line| line.contains(&needle)) {
            found.push(format!(
                "{} (pid {})",
                line,
                process.file_name().to_string_lossy()
            ));
        }
    }
    found
}

/// What `verify --work-dir dir` must leave: no work directory, no loop device on a file below
/// it, no mount of or below it in any namespace.
pub fn assert_nothing_left(what: &str, dir: &Path) {
    let entries: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("caph-image-verify-"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        entries,
        Vec::<String>::new(),
        "{what}: work directories left"
    );
    // A loop device that was busy detaches itself a moment after its last user went.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !loops_below(dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        loops_below(dir),
        Vec::<String>::new(),
        "{what}: loop devices left"
    );
    assert_eq!(
        mounts_below(dir),
        Vec::<String>::new(),
        "{what}: mounts left"
    );
}

/// What `verify hcloud` checks of every first boot, whatever the image promises.
pub const HCLOUD_FIRST_BOOT_FINDINGS: &[&str] = &[
    "ssh",
    "cloud-init-done",
    "cloud-init-status",
    "cloud-init-result",
    "cloud-init-instance",
    "hostname",
    "bootstrap-marker",
    "host-keys-new",
    "machine-id-new",
    "cloud-init-sigterm",
    "build-key-removed",
];

/// The status and detail of the finding called `name`.
pub fn finding<'a>(report: &'a serde_json::Value, name: &str) -> (&'a str, &'a str) {
    let found = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|finding| finding["name"] == name)
        .unwrap_or_else(|| panic!("no finding {name} in {report:#}"));
    (
        found["status"].as_str().unwrap_or_default(),
        found["detail"].as_str().unwrap_or_default(),
    )
}

/// A gzip tarball of a tree that looks like an x86 Debian system with a kernel and GRUB, but
/// without cloud-init.
fn tarball_without_cloud_init(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("tree");
    for (path, content) in [
        (
            "usr/lib/os-release",
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
        ),
        ("usr/lib64/ld-linux-x86-64.so.2", ""),
        ("boot/vmlinuz-6.1.0-57-amd64", "kernel"),
        ("boot/initrd.img-6.1.0-57-amd64", "initrd"),
        ("usr/sbin/grub-install", ""),
        ("usr/sbin/update-initramfs", ""),
        ("etc/machine-id", ""),
    ] {
        let file = tree.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }
    std::os::unix::fs::symlink("../usr/lib/os-release", tree.join("etc/os-release")).unwrap();
    let tarball = dir.join("Debian-1200-bookworm-amd64-no-cloud-init.tar.gz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    tarball
}

#[test]
fn verify_refuses_bad_input_before_making_anything() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let work_arg = work.to_string_lossy().into_owned();
    let tarball = tarball_without_cloud_init(dir);
    let tarball_arg = tarball.to_string_lossy().into_owned();

    // User data that cloud-init would not take as cloud-config, each named for what it is.
    for (name, text, says) in [
        (
            "no-header.yaml",
            "runcmd:\n  - echo hi\n",
            "not cloud-config: its first line is \"runcmd:\"; user data must start with #cloud-config (then a YAML mapping) or be a script starting with #!",
        ),
        (
            "list.yaml",
            "#cloud-config\n- runcmd\n",
            "#cloud-config, but its YAML is a list instead of a mapping of cloud-init modules",
        ),
        (
            "broken.yaml",
            "#cloud-config\nruncmd:\n  - [unclosed\n",
            "#cloud-config, but not YAML: ",
        ),
        (
            "multipart.txt",
            "Content-Type: multipart/mixed; boundary=x\n",
            "it is MIME multi-part user data",
        ),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
        let output = verify(
            dir,
            &[],
            &[
                "tarball",
                &tarball_arg,
                "--user-data",
                name,
                "--work-dir",
                &work_arg,
            ],
        );
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{name}: {message}");
        assert!(
            message.contains(&format!("error: --user-data {name}: ")) && message.contains(says),
            "{name}: {message}"
        );
        assert!(stdout(&output).is_empty(), "{name}: no report");
    }
    let output = verify(
        dir,
        &[],
        &["tarball", &tarball_arg, "--user-data", "missing.yaml"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--user-data missing.yaml: "),
        "{}",
        stderr(&output)
    );

    // A tarball without cloud-init: refused after looking inside, before any disk is made.
    let output = verify(
        dir,
        &[],
        &["tarball", &tarball_arg, "--work-dir", &work_arg],
    );
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(
        message.contains(&format!(
            "error: {tarball_arg}: it has no cloud-init (usr/bin/cloud-init): Cluster API Provider Hetzner seeds cloud-init's NoCloud data source"
        )),
        "{message}"
    );
    // Something that is not a tarball at all.
    std::fs::write(dir.join("notes.txt"), "not a tarball\n").unwrap();
    let output = verify(dir, &[], &["tarball", "notes.txt", "--work-dir", &work_arg]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("error: notes.txt is not a tar archive"),
        "{}",
        stderr(&output)
    );
    // A hostname that is not one is a usage error, from clap.
    let output = verify(dir, &[], &["tarball", &tarball_arg, "--hostname", "Node_1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("is not a hostname"));

    assert_nothing_left("refused input", &work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_hcloud_refuses_an_image_that_does_not_exist() {
    let test = "verify_hcloud_refuses_an_image_that_does_not_exist";
    let Some(cloud) = Cloud::start(test).await else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let env: Vec<(&str, String)> = cloud.env().into_iter().collect();
    let refused = [
        (
            vec!["hcloud", "987654"],
            "error: snapshot 987654 does not exist in this project",
        ),
        (
            vec!["hcloud", "no-such-image"],
            "error: no x86 image is named no-such-image: Cluster API Provider Hetzner finds none by imageName no-such-image",
        ),
        (
            vec!["hcloud", "debian-12", "--location", "atlantis"],
            "atlantis",
        ),
    ];
    for (args, says) in refused {
        let output = tokio::task::spawn_blocking({
            let dir = temp.path().to_path_buf();
            let env = env.clone();
            move || verify(&dir, &env, &args)
        })
        .await
        .unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(stderr(&output).contains(says), "{}", stderr(&output));
    }
    let state = cloud.state_with_nothing_left();
    assert!(state.snapshots().is_empty());
}

/// Starts `caph-image verify ARGS` with progress lines on stderr, waits until a line contains
/// `when`, waits `then` more, sends SIGINT (as Ctrl-C does), and returns its exit code and
/// stderr.
pub async fn verify_interrupted(
    dir: &Path,
    env: &[(&str, String)],
    args: &[&str],
    when: &str,
    then: Duration,
) -> (Option<i32>, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .arg("verify")
        .args(args)
        .arg("--no-progress")
        .current_dir(dir)
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("caph-image runs");
    let pid = child.id().expect("a pid");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut text = String::new();
    let started = Instant::now();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(600), lines.next_line())
            .await
            .expect("progress within ten minutes")
            .expect("stderr readable");
        let Some(line) = line else {
            panic!("verify ended before `{when}`:\n{text}");
        };
        text.push_str(&line);
        text.push('\n');
        if line.contains(when) {
            break;
        }
    }
    tokio::time::sleep(then).await;
    eprintln!(
        "SIGINT to caph-image verify after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    while let Ok(Some(line)) = lines.next_line().await {
        text.push_str(&line);
        text.push('\n');
    }
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("verify ends within two minutes of SIGINT")
        .unwrap();
    eprintln!("caph-image verify {} (interrupted)\n{text}", args.join(" "));
    (status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_hcloud_checks_a_system_image_and_cleans_up_after_sigint() {
    let test = "verify_hcloud_checks_a_system_image_and_cleans_up_after_sigint";
    if !is_root() {
        eprintln!("SKIPPED {test}: needs root (the simulator's servers are sshd chroots)");
        return;
    }
    let Some(cloud) = Cloud::start(test).await else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let env: Vec<(&str, String)> = cloud.env().into_iter().collect();
    // The simulator's debian-12 is a system image with cloud-init, as Hetzner's are: found by
    // name as CAPH finds imageName, booted with the probe, its first boot checked.
    let output = tokio::task::spawn_blocking({
        let dir = temp.path().to_path_buf();
        let env = env.clone();
        move || verify(&dir, &env, &["hcloud", "debian-12", "--output", "json"])
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["kind"], "hcloud");
    assert_eq!(report["image"]["name"], "debian-12");
    assert_eq!(report["passed"], true);
    for name in HCLOUD_FIRST_BOOT_FINDINGS {
        let (status, detail) = finding(&report, name);
        assert_eq!(status, "ok", "{name}: {detail}");
    }
    let (status, detail) = finding(&report, "node-checks");
    assert_eq!(status, "not-checked", "{detail}");
    assert!(
        detail.contains("/etc/caph-image-release is missing"),
        "{detail}"
    );
    let run_id = report["run_id"].as_str().unwrap().to_string();
    let (_, detail) = finding(&report, "hostname");
    assert!(
        detail.contains(&format!("caph-image-{run_id}-x86")),
        "{detail}"
    );
    cloud.state_with_nothing_left();

    // The same as a table, for people.
    let output = tokio::task::spawn_blocking({
        let dir = temp.path().to_path_buf();
        let env = env.clone();
        move || verify(&dir, &env, &["hcloud", "debian-12", "--no-progress"])
    })
    .await
    .unwrap();
    let table = stdout(&output);
    eprintln!("{table}");
    assert_eq!(output.status.code(), Some(0), "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("image ")
            && lines[0].contains("(debian-12, x86): first boot on cx23 in fsn1 took"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("CHECK")
            && lines[1].contains("STATUS")
            && lines[1].ends_with("DETAIL"),
        "{table}"
    );
    let row = |name: &str| {
        lines
            .iter()
            .find(|line| line.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name}:\n{table}"))
            .to_string()
    };
    assert!(row("cloud-init-done").contains(" ok "), "{table}");
    assert!(row("node-checks").contains(" not checked "), "{table}");
    assert!(
        lines
            .last()
            .unwrap()
            .ends_with(" ok, 0 FAILED, 1 not checked"),
        "{table}"
    );
    cloud.state_with_nothing_left();

    // Interrupted once its server exists: the server and key go, as after a build.
    let (code, text) = verify_interrupted(
        temp.path(),
        &env,
        &["hcloud", "debian-12"],
        "x86: connect:",
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(code, Some(130), "{text}");
    assert!(text.contains("cancelled during "), "{text}");
    let state = cloud.state_with_nothing_left();
    assert!(state.snapshots().is_empty());
}

/// Findings `verify tarball` reports FAILED on the end-to-end tarball, each with its reason. The
/// first three because the tarball carries a stand-in containerd; the last is a problem of the
/// image that `verify` found, kept here until it is fixed, so that the test notices when it
/// changes either way.
pub const KNOWN_TARBALL_FAILURES: &[(&str, &str)] = &[
    (
        "failed-units",
        "containerd.service: the end-to-end tarball carries the mirror's stand-in containerd, which prints its version and exits",
    ),
    ("containerd-active", "the same stand-in containerd"),
    ("containerd-cri", "the same stand-in containerd"),
];

/// The names of [`KNOWN_TARBALL_FAILURES`], sorted.
pub fn known_tarball_failures() -> Vec<&'static str> {
    let mut known: Vec<&str> = KNOWN_TARBALL_FAILURES
        .iter()
        .map(|(name, _)| *name)
        .collect();
    known.sort_unstable();
    known
}

/// `caph-image verify tarball` on an end-to-end tarball: interrupted by SIGINT while it installs
/// and while it boots (exit 130, nothing left), then run to its end: every finding ok but the
/// [`KNOWN_TARBALL_FAILURES`], the report in JSON and the console log kept, nothing left.
pub async fn verify_the_tarball(dir: &Path, tarball: &Path) {
    let test = "caph-image verify tarball";
    if !is_root() {
        eprintln!("SKIPPED {test}: needs root (loop devices, mounts, chroot)");
        return;
    }
    if let Some(reason) = caph_boot::qemu::qemu_missing() {
        eprintln!("SKIPPED {test}: {reason}");
        return;
    }
    let work = dir.join("verify-work");
    std::fs::create_dir_all(&work).unwrap();
    let work_arg = work.to_string_lossy().into_owned();
    let tarball_arg = tarball.to_string_lossy().into_owned();
    let args = [
        "tarball",
        tarball_arg.as_str(),
        "--work-dir",
        work_arg.as_str(),
    ];

    // Ctrl-C while the tarball is extracted onto the loop device's partitions, in the install's
    // own mount namespace.
    let (code, text) =
        verify_interrupted(dir, &[], &args, "tarball: create:", Duration::from_secs(5)).await;
    assert_eq!(code, Some(130), "{text}");
    assert!(
        text.contains("error: cancelled during installing the tarball on a local disk"),
        "{text}"
    );
    assert_nothing_left("verify tarball, interrupted while installing", &work);
    // Ctrl-C while the VM boots.
    let (code, text) =
        verify_interrupted(dir, &[], &args, "provision: ", Duration::from_secs(15)).await;
    assert_eq!(code, Some(130), "{text}");
    assert!(
        text.contains("error: cancelled during first boot"),
        "{text}"
    );
    assert_nothing_left("verify tarball, interrupted while booting", &work);
    let qemus = Command::new("pgrep")
        .args(["-f", &work_arg])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    assert!(qemus.trim().is_empty(), "processes left: {qemus}");

    // To its end.
    let console_log = dir.join("verify-console.log");
    let started = Instant::now();
    let output = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        let tarball = tarball_arg.clone();
        let work = work_arg.clone();
        let console = console_log.to_string_lossy().into_owned();
        move || {
            verify(
                &dir,
                &[],
                &[
                    "tarball",
                    &tarball,
                    "--work-dir",
                    &work,
                    "--hostname",
                    "bm-e2e-node",
                    "--console-log",
                    &console,
                    "--no-progress",
                    "--output",
                    "json",
                ],
            )
        }
    })
    .await
    .unwrap();
    eprintln!("{test} took {:.0}s", started.elapsed().as_secs_f64());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", stdout(&output)));
    assert_nothing_left("verify tarball", &work);
    assert_eq!(report["kind"], "tarball");
    assert_eq!(
        report["tarball"]["distribution"],
        "Debian GNU/Linux 12 (bookworm)"
    );
    let mut failed: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|finding| finding["status"] == "failed")
        .map(|finding| finding["name"].as_str().unwrap_or_default())
        .collect();
    failed.sort_unstable();
    assert_eq!(failed, known_tarball_failures(), "{report:#}");
    assert_eq!(output.status.code(), Some(1), "a failed check is exit 1");
    assert_eq!(report["passed"], false);
    let (_, detail) = finding(&report, "failed-units");
    assert_eq!(
        detail, "failed to start: containerd…0m - containerd container runtime",
        "only the stand-in containerd"
    );
    for (name, says) in [
        ("boot-loader", "GRUB"),
        ("sshd", "ssh.service started"),
        ("login-prompt", "`bm-e2e-node login:` on the serial console"),
        (
            "first-boot",
            "cloud-init's final stage and the node checks were over",
        ),
        ("power-off", "shut down cleanly"),
        ("cloud-init-instance", "a new instance: caph-image-verify-"),
        ("hostname", "bm-e2e-node, as CAPH checks it"),
        (
            "bootstrap-marker",
            "runcmd wrote \"kubeadm join would run on bm-e2e-node\"",
        ),
        ("host-keys-new", "made for this node: "),
        ("machine-id-new", "the image carries none"),
        ("cloud-init-sigterm", "no SIGTERM"),
        (
            "cloud-init-status",
            "done: every stage finished without errors",
        ),
        ("cloud-init-result", "no errors; DataSourceNoCloud"),
        ("cloud-init", "status: done"),
        ("kubelet-version", "Kubernetes v1.34.2"),
        ("module br_netfilter", "loaded"),
        ("sysctl net.ipv4.ip_forward", "\"1\""),
        ("ssh-host-keys", "anything but \"0\""),
    ] {
        let (status, detail) = finding(&report, name);
        assert_eq!(status, "ok", "{name}: {detail}");
        assert!(detail.contains(says), "{name}: {detail}");
    }
    let console = std::fs::read_to_string(&console_log).expect("the console log is kept");
    assert!(
        console.contains("caph-image verify: node checks done"),
        "{console}"
    );
}

#[test]
fn verify_hcloud_sim_runs_a_simulator_of_its_own_and_leaves_nothing() {
    let test = "verify_hcloud_sim_runs_a_simulator_of_its_own_and_leaves_nothing";
    // The prerequisites the binary checks; a machine without them is a skip, not a failure.
    if let Err(error) =
        caph_sim::machine::SshMachines::new(caph_sim::machine::SshMachinesConfig::default())
    {
        eprintln!("SKIPPED {test}: {error}");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args([
            "verify",
            "hcloud",
            "debian-12",
            "--sim",
            "--sim-speed",
            "10",
            "--no-progress",
            "--output",
            "json",
        ])
        .current_dir(temp.path())
        .env_remove("HCLOUD_TOKEN")
        .env_remove("HCLOUD_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    eprintln!("{}", stderr(&output));
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["passed"], true, "{report:#}");
    for name in HCLOUD_FIRST_BOOT_FINDINGS {
        assert_eq!(finding(&report, name).0, "ok", "{name}");
    }
    assert!(
        stderr(&output).contains("nothing is created in a Hetzner Cloud project"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        crate::hcloud_sim_mode::run_dirs_of(pid),
        Vec::<String>::new(),
        "the simulator's machines and directory went with the command"
    );
    // An id is not how the simulator's system images are named.
    let output = verify(temp.path(), &[], &["hcloud", "114690387", "--sim"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--sim verifies a system image of the simulator by its name"),
        "{}",
        stderr(&output)
    );
}
