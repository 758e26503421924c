//! The assembly's chroot machinery through its public API: the build environment is undone on
//! errors (lazily when busy), a failing plan step is named with its output, and a base tarball
//! with the wrong sha256 is refused before anything is extracted.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use caph_core::Arch;
use caph_core::backend::{ProgressEvent, ProgressSink};
use caph_core::plan::{Action, BuildStamp, Plan, Step, Target};
use caph_rootfs::assemble::{
    AssembleError, BuildEnvironment, POLICY_RC_D, mounts_under, remove_work_dir,
    run_plan_in_chroot, unpack_base_tarball,
};
use caph_rootfs::pack::Cancel;
use sha2::{Digest, Sha256};

use crate::support::{is_root, skipped};

/// Collects every event, for assertions.
#[derive(Debug, Default)]
struct Collect(Mutex<Vec<ProgressEvent>>);

impl ProgressSink for Collect {
    fn event(&self, event: ProgressEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Collect {
    fn output_lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|event| match event {
                ProgressEvent::Output { line, .. } => Some(line.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A temporary directory resolved to its real path, as mountinfo lists it.
fn real_tempdir() -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().canonicalize().unwrap();
    (temp, path)
}

/// A minimal chroot: the host's bash and the libraries `ldd` names, at the same paths.
fn bash_tree(root: &Path) {
    let bash = Path::new("/usr/bin/bash");
    let target = root.join("bin/bash");
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::copy(bash, &target).unwrap();
    let ldd = Command::new("ldd").arg(bash).output().expect("ldd runs");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|word| word.starts_with('/'))
            .map(PathBuf::from);
        if let Some(path) = path {
            let inside = root.join(path.strip_prefix("/").unwrap());
            fs::create_dir_all(inside.parent().unwrap()).unwrap();
            fs::copy(&path, &inside).unwrap();
        }
    }
}

fn stamp() -> BuildStamp {
    BuildStamp {
        build_id: "test-build".into(),
        build_time: "2026-01-01T00:00:00Z".into(),
        builder: "caph-rootfs test".into(),
        build_public_key: None,
    }
}

fn run_step(name: &str, script: &str) -> Step {
    Step {
        name: name.into(),
        action: Action::Run {
            script: format!("set -euo pipefail\n{script}\n"),
        },
    }
}

#[test]
fn build_environment_mounts_and_is_undone_when_a_build_fails() {
    if !is_root() {
        return skipped(
            "build_environment_mounts_and_is_undone_when_a_build_fails",
            "mounting needs root",
        );
    }
    let (_temp, root) = real_tempdir();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("dev/pts")).unwrap();
    // Ubuntu's resolv.conf is a symlink into /run, dangling in a chroot; it must come back as is.
    symlink(
        "../run/systemd/resolve/stub-resolv.conf",
        root.join("etc/resolv.conf"),
    )
    .unwrap();

    fn failing_build(root: &Path) -> Result<(), AssembleError> {
        let environment = BuildEnvironment::enter(root)?;
        let mounted = mounts_under(root);
        for expected in ["proc", "sys", "dev", "dev/pts", "etc/resolv.conf"] {
            assert!(
                mounted.contains(&root.join(expected)),
                "{expected} is mounted: {mounted:?}"
            );
        }
        assert_eq!(environment.mount_points().len(), 5);
        assert_eq!(
            fs::read_to_string(root.join("usr/sbin/policy-rc.d")).unwrap(),
            POLICY_RC_D
        );
        assert_eq!(
            fs::read(root.join("etc/resolv.conf")).unwrap(),
            fs::read("/etc/resolv.conf").unwrap()
        );
        Err(AssembleError::Base("the build broke".into()))
    }
    let error = failing_build(&root).unwrap_err();
    assert!(error.to_string().contains("the build broke"));
    assert_eq!(
        mounts_under(&root),
        Vec::<PathBuf>::new(),
        "nothing stays mounted"
    );
    assert!(
        !root.join("usr/sbin/policy-rc.d").exists(),
        "policy-rc.d is removed"
    );
    assert_eq!(
        fs::read_link(root.join("etc/resolv.conf")).unwrap(),
        Path::new("../run/systemd/resolve/stub-resolv.conf"),
        "the tree's resolv.conf symlink is restored"
    );
    assert!(!root.join("etc/resolv.conf.caph-image-saved").exists());
    remove_work_dir(&root).unwrap();
    assert!(!root.exists());
}

/// The chroot's /dev is a file system of its own with working device nodes, so a tree whose
/// mounts outlived a killed build can be deleted without touching the host's /dev.
#[test]
fn the_chroot_has_a_dev_of_its_own() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if !is_root() {
        return skipped("the_chroot_has_a_dev_of_its_own", "mounting needs root");
    }
    let (_temp, root) = real_tempdir();
    let environment = BuildEnvironment::enter(&root).unwrap();
    let host_dev = fs::metadata("/dev").unwrap().dev();
    assert_ne!(
        fs::metadata(root.join("dev")).unwrap().dev(),
        host_dev,
        "the tree's /dev is not the host's"
    );
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let node = fs::metadata(root.join("dev").join(name)).unwrap();
        assert!(node.file_type().is_char_device(), "{name}");
        assert_eq!(node.mode() & 0o777, 0o666, "{name}");
    }
    fs::write(root.join("dev/null"), b"discarded").unwrap();
    let mut zeros = [1u8; 8];
    std::io::Read::read_exact(
        &mut fs::File::open(root.join("dev/zero")).unwrap(),
        &mut zeros,
    )
    .unwrap();
    assert_eq!(zeros, [0u8; 8]);
    assert!(
        fs::metadata(root.join("dev/pts/ptmx")).is_ok(),
        "a private devpts"
    );
    // What a step creates in its /dev stays there.
    fs::write(root.join("dev/caph-probe"), b"").unwrap();
    assert!(!Path::new("/dev/caph-probe").exists());
    environment.leave().unwrap();
    assert_eq!(mounts_under(&root), Vec::<PathBuf>::new());
}

#[test]
fn busy_mounts_are_detached_lazily_and_the_tree_can_go() {
    if !is_root() {
        return skipped(
            "busy_mounts_are_detached_lazily_and_the_tree_can_go",
            "mounting needs root",
        );
    }
    let (_temp, root) = real_tempdir();
    let environment = BuildEnvironment::enter(&root).unwrap();
    // An open file keeps /proc busy, as a daemon left behind by a step would.
    let held = fs::File::open(root.join("proc/self/status")).unwrap();
    // While mounted, the work directory is refused for removal: proc and sysfs are inside.
    let refused = remove_work_dir(&root).unwrap_err();
    assert!(
        matches!(refused, AssembleError::StillMounted { .. }),
        "{refused}"
    );
    assert!(Path::new("/dev/null").exists());
    let lazily = environment.leave().unwrap();
    assert_eq!(lazily, vec![root.join("proc")]);
    assert_eq!(mounts_under(&root), Vec::<PathBuf>::new());
    drop(held);
    remove_work_dir(&root).unwrap();
    assert!(Path::new("/dev/null").exists(), "the host's /dev is intact");
}

#[test]
fn a_failing_step_is_named_with_its_status_and_last_output() {
    if !is_root() {
        return skipped(
            "a_failing_step_is_named_with_its_status_and_last_output",
            "chroot needs root",
        );
    }
    let (_temp, root) = real_tempdir();
    bash_tree(&root);
    let plan = Plan {
        image_name: "test".into(),
        spec_digest: "sha256:0".into(),
        target: Target::Tarball,
        arch: Arch::X86,
        steps: vec![
            run_step(
                "first",
                "echo \"build $CAPH_BUILD_ID in $(pwd)\"; echo inside > /marker",
            ),
            run_step(
                "second",
                "for i in $(seq 1 30 2>/dev/null || echo 1 2 3); do :; done\n\
                 for n in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25; do echo \"line $n\"; done\n\
                 echo 'last words' >&2\nexit 7",
            ),
            run_step("third", "echo never > /third"),
        ],
    };
    let sink = Collect::default();
    let error = {
        let _environment = BuildEnvironment::enter(&root).unwrap();
        run_plan_in_chroot(&root, &plan, &stamp(), "amd64", &Cancel::new(), &sink).unwrap_err()
    };
    assert_eq!(
        mounts_under(&root),
        Vec::<PathBuf>::new(),
        "unmounted after the failure"
    );
    let AssembleError::Step {
        number,
        count,
        ref name,
        ref status,
        ref tail,
    } = error
    else {
        panic!("expected a step error, got {error}");
    };
    assert_eq!(
        (number, count, name.as_str(), status.as_str()),
        (2, 3, "second", "7")
    );
    assert!(tail.ends_with("  | last words"), "{tail}");
    assert_eq!(tail.lines().count(), 20, "the last 20 lines: {tail}");
    assert!(
        error
            .to_string()
            .starts_with("step 2/3 \"second\" exited with status 7; its last output:\n"),
        "{error}"
    );
    // The steps ran in the chroot, with the stamp exported, and left no script behind.
    assert_eq!(fs::read_to_string(root.join("marker")).unwrap(), "inside\n");
    assert!(!root.join("third").exists(), "no step runs after a failure");
    let lines = sink.output_lines();
    assert_eq!(
        lines.first().map(String::as_str),
        Some("build test-build in /")
    );
    assert!(lines.contains(&"line 25".to_owned()));
    let leftovers: Vec<_> = fs::read_dir(root.join("root")).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "step scripts are removed: {leftovers:?}"
    );
}

#[test]
fn a_cancelled_step_stops_and_says_so() {
    if !is_root() {
        return skipped("a_cancelled_step_stops_and_says_so", "chroot needs root");
    }
    let (_temp, root) = real_tempdir();
    bash_tree(&root);
    let plan = Plan {
        image_name: "test".into(),
        spec_digest: "sha256:0".into(),
        target: Target::Tarball,
        arch: Arch::X86,
        // A read from a coprocess that never writes: bash alone waits, with no other binary.
        steps: vec![run_step(
            "sleepy",
            "echo started; coproc { read -r _; }; read -r -t 60 -u \"${COPROC[0]}\" _ || true",
        )],
    };
    let cancel = Cancel::new();
    let trigger = cancel.clone();
    let started = std::time::Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        trigger.cancel();
    });
    let error = {
        let _environment = BuildEnvironment::enter(&root).unwrap();
        run_plan_in_chroot(
            &root,
            &plan,
            &stamp(),
            "amd64",
            &cancel,
            &Collect::default(),
        )
        .unwrap_err()
    };
    assert!(matches!(error, AssembleError::Cancelled), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    assert_eq!(mounts_under(&root), Vec::<PathBuf>::new());
}

#[test]
fn a_base_tarball_with_the_wrong_sha256_is_refused_before_extraction() {
    let (_temp, dir) = real_tempdir();
    let content = dir.join("content");
    fs::create_dir_all(content.join("etc")).unwrap();
    fs::write(content.join("etc/os-release"), "ID=debian\n").unwrap();
    let status = Command::new("tar")
        .args(["--create", "--gzip", "--file"])
        .arg(dir.join("base.tar.gz"))
        .arg("--directory")
        .arg(&content)
        .arg(".")
        .status()
        .expect("GNU tar runs");
    assert!(status.success());
    let right = hex::encode(Sha256::digest(fs::read(dir.join("base.tar.gz")).unwrap()));
    let wrong = "0".repeat(64);

    let work = dir.join("work");
    fs::create_dir_all(&work).unwrap();
    let root = work.join("root");
    let sink = Collect::default();
    let error = unpack_base_tarball(
        "base.tar.gz",
        &wrong,
        &dir,
        &work,
        &root,
        "amd64",
        &Cancel::new(),
        &sink,
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&right) && text.contains(&wrong),
        "both digests: {text}"
    );
    assert!(
        matches!(error, AssembleError::ChecksumMismatch { .. }),
        "{text}"
    );
    assert!(!root.exists(), "nothing was extracted");
    assert_eq!(
        fs::read_dir(&work).unwrap().count(),
        0,
        "the download is gone"
    );

    // With the right pin the same tarball is taken.
    unpack_base_tarball(
        "base.tar.gz",
        &right.to_uppercase(),
        &dir,
        &work,
        &root,
        "amd64",
        &Cancel::new(),
        &sink,
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(root.join("etc/os-release")).unwrap(),
        "ID=debian\n"
    );
}
