//! `caph-image build tarball` end to end (a Debian 12 root filesystem by mmdebstrap, the plan in a
//! chroot, Kubernetes artifacts from a loopback mirror) and `caph-image pack`, through the real
//! binary. The built tarball is shared ([`built_tarball`]) by the tests that take it further: the
//! installs through a rescue system, CAPH's provisioning, and `verify tarball`.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use caph_sim::mirror::{Mirror, release_artifacts};

use crate::cloud::VERSIONS;
use crate::tarball_spec::tarball_spec;
use crate::{caph_image, is_root, stderr, stdout};

/// Lines of /proc/self/mountinfo that mention `path`.
fn mounts_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(&needle))
        .map(str::to_owned)
        .collect()
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The end-to-end tarball's file name.
const E2E_TARBALL: &str = "Debian-1200-bookworm-amd64-k8s-v1.34.2.tar.gz";

/// The end-to-end tarball, built and checked once per build of this test binary and then taken
/// further by several tests (each a process of its own under nextest, so they run side by side).
pub struct BuiltTarball {
    /// The build's directory: `spec.toml`, and `out/` with the tarball.
    pub dir: PathBuf,
    /// The tarball.
    pub tarball: PathBuf,
}

/// What the shared build left when it failed, for the tests that waited for it.
const BUILD_FAILED: &str = "build-failed";
/// What the shared build leaves when it is done and checked.
const BUILD_DONE: &str = "build-done";

/// The shared end-to-end tarball: the first test to ask builds it (`build tarball` through the
/// binary, from a loopback mirror) and checks it, under a file lock; the others wait for the lock
/// and take it. Its directory is keyed by this test binary (path, size, modification time), so a
/// rebuilt binary builds again, and older directories are removed. `None` (with the reason
/// printed) where this machine cannot build it.
pub async fn built_tarball(test: &str) -> Option<BuiltTarball> {
    if !is_root() {
        eprintln!("SKIPPED {test}: needs root (mmdebstrap, chroot and mounts)");
        return None;
    }
    if !Path::new("/usr/bin/mmdebstrap").exists() {
        eprintln!("SKIPPED {test}: mmdebstrap is not installed (Debian package mmdebstrap)");
        return None;
    }
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-tarball");
    fs::create_dir_all(&base).unwrap();
    let key = {
        use std::hash::{Hash as _, Hasher as _};
        let exe = std::env::current_exe().expect("the test binary");
        let meta = fs::metadata(&exe).expect("the test binary's metadata");
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (exe, meta.len(), meta.modified().ok()).hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    };
    let dir = base.join(&key);
    let lock = fs::File::create(base.join("lock")).unwrap();
    let lock = tokio::task::spawn_blocking(move || {
        lock.lock().expect("the shared build's lock");
        lock
    })
    .await
    .unwrap();
    if let Ok(message) = fs::read_to_string(dir.join(BUILD_FAILED)) {
        panic!("{test}: the shared end-to-end tarball failed in another test: {message}");
    }
    if !dir.join(BUILD_DONE).exists() {
        // Older builds' directories: a test binary that is gone will not read them again.
        for entry in fs::read_dir(&base).unwrap().flatten() {
            if entry.file_name() != *key.as_str() && entry.path().is_dir() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let building = tokio::spawn(build_and_check(dir.clone()));
        if let Err(failure) = building.await {
            let message = failure
                .try_into_panic()
                .ok()
                .and_then(|panic| {
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                })
                .unwrap_or_else(|| "cancelled".to_string());
            fs::write(dir.join(BUILD_FAILED), &message).unwrap();
            panic!("{test}: {message}");
        }
        fs::write(dir.join(BUILD_DONE), "").unwrap();
    }
    drop(lock);
    Some(BuiltTarball {
        tarball: dir.join("out").join(E2E_TARBALL),
        dir,
    })
}

/// `build tarball` through the binary in `dir`, from a loopback mirror, and the checks of what it
/// made: the output files and the printed template, GNU tar and gzip on it, the unpacked tree
/// (boot chain, the plan's work, placeholders, cloud-init), the manifest.
async fn build_and_check(dir: PathBuf) {
    let mirror = Mirror::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        release_artifacts(&VERSIONS(), &["amd64"]),
    )
    .await
    .expect("the mirror starts");
    fs::write(dir.join("spec.toml"), tarball_spec(&mirror.url())).unwrap();
    let out = dir.join("out");
    let name = E2E_TARBALL;

    let started = Instant::now();
    let output = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            caph_image(
                &dir,
                &[
                    "build",
                    "tarball",
                    "spec.toml",
                    "-o",
                    "out",
                    "--arch",
                    "amd64",
                    "--no-progress",
                ],
            )
        }
    })
    .await
    .unwrap();
    let took = started.elapsed();
    eprintln!("build tarball took {:.0}s", took.as_secs_f64());
    assert!(
        output.status.success(),
        "build tarball failed:\n{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    assert_eq!(
        mounts_mentioning(&dir),
        Vec::<String>::new(),
        "nothing stays mounted"
    );

    let tarball = out.join(name);
    let mut left: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            name.to_owned(),
            format!("{name}.manifest.json"),
            format!("{name}.sha256"),
        ],
        "the tarball, its checksum and manifest, and no work directory"
    );
    let printed = stdout(&output);
    assert!(
        printed.contains(&format!("file:      {}", tarball.display())),
        "{printed}"
    );
    assert!(
        printed.contains("kind: HetznerBareMetalMachineTemplate"),
        "{printed}"
    );
    assert!(
        printed.contains("name: Debian-1200-bookworm-amd64-k8s-v1.34.2\n"),
        "{printed}"
    );
    assert!(printed.contains("url: \"https://"), "{printed}");

    // GNU tar and gzip accept it; the checksum file matches.
    run(Command::new("gzip").arg("-t").arg(&tarball));
    let listing = run(Command::new("tar").arg("-tzf").arg(&tarball));
    let sha = run(Command::new("sha256sum").arg(&tarball));
    let recorded = fs::read_to_string(out.join(format!("{name}.sha256"))).unwrap();
    assert_eq!(
        recorded.split_whitespace().next(),
        sha.split_whitespace().next()
    );
    for empty in ["./proc/", "./sys/", "./dev/", "./run/"] {
        assert!(
            listing.lines().any(|line| line == empty),
            "{empty} is there"
        );
        assert!(
            !listing
                .lines()
                .any(|line| line.starts_with(empty) && line != empty),
            "{empty} is empty"
        );
    }
    let mut host_key_files: Vec<&str> = listing
        .lines()
        .filter(|line| line.starts_with("./etc/ssh/ssh_host_"))
        .collect();
    host_key_files.sort();
    assert_eq!(
        host_key_files,
        [
            "./etc/ssh/ssh_host_ecdsa_key",
            "./etc/ssh/ssh_host_ed25519_key",
            "./etc/ssh/ssh_host_rsa_key"
        ],
        "one placeholder per key type for installimage, and no public keys"
    );

    // Unpacked, it holds the boot chain and the plan's work.
    let root = dir.join("unpacked");
    fs::create_dir_all(&root).unwrap();
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xzf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&root));
    let boot: Vec<String> = fs::read_dir(root.join("boot"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(boot.iter().any(|f| f.starts_with("vmlinuz-")), "{boot:?}");
    assert!(
        boot.iter().any(|f| f.starts_with("initrd.img-")),
        "{boot:?}"
    );
    let kubelet = run(Command::new("sh")
        .arg(root.join("usr/local/bin/kubelet"))
        .arg("--version"));
    assert_eq!(kubelet.trim(), "Kubernetes v1.34.2");
    let containerd = fs::read_to_string(root.join("etc/containerd/config.toml")).unwrap();
    assert!(containerd.contains("SystemdCgroup = true"), "{containerd}");
    let release = fs::read_to_string(root.join("etc/caph-image-release")).unwrap();
    assert!(release.contains("debian-12-tarball-e2e"), "{release}");
    assert!(release.contains("TARGET=tarball"), "{release}");
    assert_eq!(
        fs::read_to_string(root.join("etc/e2e-marker")).unwrap(),
        "built by the tarball test\n"
    );
    assert_eq!(fs::metadata(root.join("etc/machine-id")).unwrap().len(), 0);
    for key_type in caph_core::plan::HOST_KEY_PLACEHOLDER_TYPES {
        let placeholder = root.join(format!("etc/ssh/ssh_host_{key_type}_key"));
        assert_eq!(
            fs::metadata(&placeholder).unwrap().len(),
            0,
            "{} carries no key material",
            placeholder.display()
        );
    }
    assert!(
        // The link is absolute (into the image's /etc): look at the link, not through it.
        root.join("etc/systemd/system/ssh.service.wants/caph-image-host-keys.service")
            .symlink_metadata()
            .is_ok(),
        "the first-boot host key unit is enabled"
    );
    assert!(root.join("usr/sbin/route").exists() || root.join("sbin/route").exists());
    assert!(root.join("lib/systemd/systemd-timesyncd").exists());
    // cloud-init for Cluster API Provider Hetzner's NoCloud seed, its network left to installimage.
    assert!(root.join("usr/bin/cloud-init").exists());
    let cloud_config = fs::read_to_string(
        root.join(caph_core::plan::CLOUD_INIT_CONFIG_PATH.trim_start_matches('/')),
    )
    .unwrap();
    assert!(
        cloud_config.contains("datasource_list: [ NoCloud, None ]"),
        "{cloud_config}"
    );
    assert!(root.join("usr/sbin/sshd").exists() && root.join("etc/ssh/sshd_config").exists());
    assert!(root.join("sbin/mdadm").exists() || root.join("usr/sbin/mdadm").exists());
    assert!(root.join("etc/network/interfaces").exists() || root.join("sbin/ifup").exists());
    assert!(
        !root.join("usr/sbin/policy-rc.d").exists(),
        "policy-rc.d is gone"
    );
    let leftovers: Vec<PathBuf> = fs::read_dir(root.join("root"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().contains(".caph-step"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The manifest names the spec, the versions and the packages.
    let manifest: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(out.join(format!("{name}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["spec"]["name"], "debian-12-tarball-e2e");
    assert_eq!(manifest["versions"]["kubernetes"], "1.34.2");
    assert_eq!(manifest["tarball"]["file_name"], name);
    let packages = manifest["packages"].as_array().unwrap();
    for wanted in [
        "linux-image-amd64",
        "grub-pc",
        "openssh-server",
        "ifupdown",
        "curl",
    ] {
        assert!(
            packages.iter().any(|p| p["name"] == wanted),
            "{wanted} is in the manifest"
        );
    }
    assert!(manifest["file_count"].as_u64().unwrap() > 1000);
    let _ = fs::remove_dir_all(&root);
}

/// The built tarball, installed on a dedicated server through the rescue system by the real
/// installimage (and booted under QEMU), by CAPH's installimage fork against the simulated one,
/// and by `build robot --sim`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_tarball_makes_an_installimage_tarball_of_the_plan() {
    let test = "build_tarball_makes_an_installimage_tarball_of_the_plan";
    let Some(built) = built_tarball(test).await else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().canonicalize().unwrap();
    fs::copy(built.dir.join("spec.toml"), dir.join("spec.toml")).unwrap();
    // The same tarball, installed on a dedicated server through the rescue system and installimage.
    crate::robot::install_and_log_in(&dir, "spec.toml", &built.tarball, "1.34.2").await;
    // CAPH's installimage fork on the same tarball, and the simulated installimage held to it.
    crate::installimage_differential::real_and_simulated(&dir, &built.tarball).await;
    // And once more with --sim, on a simulated server of the binary's own, with the spec's
    // [robot] table.
    crate::robot_sim_mode::install_with_sim(&dir, "spec.toml", &built.tarball).await;
}

/// Cluster API Provider Hetzner's own provisioning of the built tarball, up to cloud-init's
/// status done, then the installed drive's first boot under QEMU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caph_provisions_the_built_tarball_and_the_drive_boots() {
    let test = "caph_provisions_the_built_tarball_and_the_drive_boots";
    let Some(built) = built_tarball(test).await else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().canonicalize().unwrap();
    crate::caph_replay::caph_provisions_a_node_from_the_tarball(&dir, &built.tarball).await;
}

/// `caph-image verify tarball` on the built tarball: installed as installimage does, booted under
/// QEMU, its first boot checked; interrupted twice first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_tarball_boots_the_built_tarball() {
    let test = "verify_tarball_boots_the_built_tarball";
    let Some(built) = built_tarball(test).await else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().canonicalize().unwrap();
    crate::verify::verify_the_tarball(&dir, &built.tarball).await;
}

#[test]
fn pack_writes_a_tarball_with_checksum_and_template() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let tree = dir.join("rootfs");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::create_dir_all(tree.join("proc/1")).unwrap();
    fs::write(tree.join("etc/hostname"), "node\n").unwrap();
    fs::write(tree.join("proc/1/status"), "not in the archive\n").unwrap();
    let name = "Ubuntu-2404-noble-arm64-custom.tar.gz";

    let output = Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args(["pack", "rootfs", "-o", name, "--no-progress"])
        .current_dir(dir)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    let sha = run(Command::new("sha256sum").arg(dir.join(name)));
    let sha = sha.split_whitespace().next().unwrap();
    assert!(printed.contains(&format!("sha256:    {sha}")), "{printed}");
    assert!(
        printed.contains("entries:   4 (1 files, 3 directories"),
        "{printed}"
    );
    assert!(
        printed.contains(
            "      installImage:\n        image:\n          name: Ubuntu-2404-noble-arm64-custom\n"
        ),
        "{printed}"
    );
    assert!(
        fs::read_to_string(dir.join(format!("{name}.sha256")))
            .unwrap()
            .starts_with(sha)
    );
    let listing = run(Command::new("tar")
        .arg("-tvzf")
        .arg(dir.join(name))
        .arg("--numeric-owner"));
    assert!(listing.contains("2023-11-14"), "mtimes clamped: {listing}");
    assert!(
        !listing.contains("status"),
        "proc is stored empty: {listing}"
    );

    // zstd: by URL all the same (CAPH takes none ending in .tar.zst, so with `#.tar`; see
    // machine_templates.rs); JSON carries the template too.
    let output = caph_image(
        dir,
        &["pack", "rootfs", "-o", "image.tar.zst", "--output", "json"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["compression"], "zstd:3");
    assert_eq!(json["provider_url_accepted"], false);
    assert!(
        json["machine_template"]
            .as_str()
            .unwrap()
            .contains("/image.tar.zst#.tar\""),
        "{json}"
    );
    run(Command::new("zstd")
        .arg("-t")
        .arg(dir.join("image.tar.zst")));

    // A contradicting extension is refused with exit code 1.
    let output = caph_image(
        dir,
        &["pack", "rootfs", "-o", "x.tar.gz", "--compression", "zstd"],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("name it .tar.zst"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn build_tarball_as_a_normal_user_says_it_needs_root() {
    let test = "build_tarball_as_a_normal_user_says_it_needs_root";
    // As root, the check is exercised by re-running the binary as nobody.
    if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("SKIPPED {test}: needs root and setpriv (util-linux) to become nobody");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    // nobody must be able to read the spec.
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs::write(dir.join("spec.toml"), tarball_spec("http://127.0.0.1:9")).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_caph-image"))
        .args([
            "build",
            "tarball",
            "spec.toml",
            "-o",
            "out",
            "--arch",
            "amd64",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains(
            "building a root filesystem needs root (mmdebstrap, chroot and mounts): run \
             caph-image as root, for example with sudo"
        ),
        "{message}"
    );
    assert!(!dir.join("out").exists(), "nothing was made");
}
