//! A real container runtime in a built image: `caph-image build tarball` of a Debian 13 (trixie)
//! spec whose containerd, runc and CNI plugins are the real programs (Debian's packages,
//! repackaged in upstream's release layout by `caph_sim::runtime`, served by the test mirror);
//! then that containerd is started in the built tree (a chroot) with the config the plan wrote,
//! and a container made from a local busybox image runs `echo` through runc.
//!
//! kubelet, kubeadm and crictl stay stand-ins (no real binary is reachable here): the checks
//! below that touch them say so. No systemd runs in the chroot: containerd is started by hand,
//! and `ctr run` uses runc's cgroupfs driver, because the systemd driver (`SystemdCgroup = true`,
//! which the CRI plugin reads and kubelet's pods use) creates cgroups through systemd's D-Bus API.
//! The snapshotter is containerd's default, overlayfs (built into this kernel; the tree is on ext4).

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use caph_core::checks::{self, Outcome};
use caph_core::releases;
use caph_core::version::Version;
use caph_sim::mirror::{Mirror, ReleaseVersions, release_artifacts};
use caph_sim::runtime::{DEFAULT_CACHE, busybox_image_archive, debian_runtime};

use crate::{caph_image, is_root, stderr, stdout};

/// A spec needs no files beside it here.
struct NoFiles;

impl caph_core::spec::SpecFiles for NoFiles {
    fn read(&self, _: &str) -> Result<Vec<u8>, String> {
        Err("no such file".to_string())
    }
}

/// The image the container runs from, imported into containerd from an OCI archive.
const IMAGE: &str = "caph.test/busybox:e2e";

/// The newest Kubernetes minor release containerd's support table pairs with `containerd`, so the
/// spec passes validation whatever containerd Debian unstable carries today.
fn kubernetes_for(containerd: Version) -> Option<Version> {
    releases::CONTAINERD_FOR_KUBERNETES
        .iter()
        .rev()
        .find(|(_, floors)| {
            floors.iter().any(|floor| {
                (floor.major, floor.minor) == (containerd.major, containerd.minor)
                    && containerd >= *floor
            })
        })
        .map(|((major, minor), _)| Version {
            major: *major,
            minor: *minor,
            patch: 0,
        })
}

fn spec(mirror: &str, versions: &ReleaseVersions) -> String {
    format!(
        r#"[image]
name = "debian-13-runtime-e2e"

[base]
distribution = "debian"
version = "13"

[base.rootfs]
suite = "trixie"
variant = "minbase"

[kubernetes]
version = "{kubernetes}"
source = "binaries"
binaries_url = "{mirror}/kubernetes"

[containerd]
version = "{containerd}"
url = "{mirror}/containerd"

[runc]
version = "{runc}"
url = "{mirror}/runc"

[crictl]
version = "{crictl}"
url = "{mirror}/crictl"

[cni]
version = "{cni}"
url = "{mirror}/cni"
"#,
        kubernetes = versions.kubernetes,
        containerd = versions.containerd,
        runc = versions.runc,
        crictl = versions.crictl,
        cni = versions.cni,
    )
}

/// Runs `script` as root in a private mount and PID namespace, so every mount it makes and every
/// process it starts (containerd, its shims) ends with it.
fn in_namespaces(script: &str) -> std::process::Output {
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "--",
            "bash",
            "-c",
            script,
        ])
        .output()
        .expect("unshare runs")
}

/// The part of `text` between `::begin NAME` and `::end NAME` lines.
fn section<'t>(text: &'t str, name: &str) -> &'t str {
    let begin = format!("::begin {name}\n");
    let end = format!("::end {name}\n");
    text.find(&begin)
        .and_then(|start| {
            let rest = &text[start + begin.len()..];
            rest.find(&end).map(|stop| &rest[..stop])
        })
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_from_the_built_image_runs_a_container_with_our_config() {
    let test = "containerd_from_the_built_image_runs_a_container_with_our_config";
    if !is_root() {
        eprintln!("SKIPPED {test}: needs root (mmdebstrap, chroot, mounts and namespaces)");
        return;
    }
    for (program, package) in [
        ("/usr/bin/mmdebstrap", "mmdebstrap"),
        ("/usr/bin/apt-get", "apt"),
        ("/usr/bin/dpkg-deb", "dpkg"),
        ("/usr/bin/unshare", "util-linux"),
    ] {
        if !Path::new(program).exists() {
            eprintln!("SKIPPED {test}: {program} is missing (Debian package {package})");
            return;
        }
    }
    let runtime = tokio::task::spawn_blocking(|| debian_runtime(Path::new(DEFAULT_CACHE), "amd64"))
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("the Debian runtime packages: {error}"));
    eprintln!(
        "real runtime from Debian {}: {:?}",
        caph_sim::runtime::SUITE,
        runtime.package_versions
    );
    let containerd = Version::parse(&runtime.containerd).unwrap();
    let kubernetes = kubernetes_for(containerd).unwrap_or_else(|| {
        panic!(
            "containerd {containerd} from Debian is in no row of containerd's Kubernetes support \
             table (caph_core::releases): update the table or the suite"
        )
    });
    let versions = ReleaseVersions {
        containerd: runtime.containerd.clone(),
        runc: runtime.runc.clone(),
        crictl: format!("{}.0", kubernetes.minor_series()),
        cni: runtime.cni.clone(),
        kubernetes: kubernetes.to_string(),
    };
    // Stand-ins for kubelet, kubeadm, kubectl and crictl; the real three over theirs.
    let mut files = release_artifacts(&versions, &["amd64"]);
    let real_paths: Vec<String> = runtime.files.keys().cloned().collect();
    files.extend(runtime.files.clone());
    let mirror = Mirror::start(IpAddr::V4(Ipv4Addr::LOCALHOST), files)
        .await
        .expect("the mirror starts");

    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().canonicalize().unwrap();
    fs::write(dir.join("spec.toml"), spec(&mirror.url(), &versions)).unwrap();
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
                    "--keep-work-dir",
                    "--no-progress",
                    "--output",
                    "json",
                ],
            )
        }
    })
    .await
    .unwrap();
    eprintln!(
        "build tarball (trixie) took {:.0}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "build tarball failed:\n{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    let requests = mirror.requests();
    for path in &real_paths {
        if !path.ends_with(".sha256") && !path.ends_with(".sha256sum") {
            assert!(
                requests.contains(path),
                "{path} was downloaded: {requests:?}"
            );
        }
    }
    let result: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let work = PathBuf::from(
        result["work_dir"]
            .as_str()
            .unwrap_or_else(|| panic!("no work_dir in {result:#}")),
    );
    let root = work.join("root");
    // The tarball itself is not needed here; the tree it was packed from is.
    let checked = check_runtime_in_tree(&root, &runtime.busybox, &versions);
    fs::remove_dir_all(&work).unwrap();
    checked.unwrap_or_else(|problem| panic!("{problem}"));
}

/// Starts the tree's containerd with the tree's `/etc/containerd/config.toml` and checks the CRI
/// plugin, the sandbox image, a container run through runc and the shared node checks that a
/// chroot can answer.
fn check_runtime_in_tree(
    root: &Path,
    busybox: &[u8],
    versions: &ReleaseVersions,
) -> Result<(), String> {
    let config = fs::read_to_string(root.join("etc/containerd/config.toml"))
        .map_err(|error| format!("the plan wrote no containerd config: {error}"))?;
    let kubernetes = Version::parse(&versions.kubernetes).unwrap();
    let pause = releases::pause_image(kubernetes).unwrap();
    fs::write(
        root.join("root/busybox-oci.tar"),
        busybox_image_archive(busybox, IMAGE, "amd64"),
    )
    .map_err(|error| error.to_string())?;

    // The shared node checks that a chroot can answer: those on the node's files, and the CRI
    // one, since containerd runs here. kubelet-version asks the stand-in kubelet, which answers
    // like the real one; it proves the binary the plan installed, not a real kubelet.
    let spec = caph_core::spec::load(
        "spec.toml",
        spec("http://127.0.0.1:1", versions).as_bytes(),
        &NoFiles,
    )
    .map_err(|diagnostics| diagnostics.to_string())?;
    let node_checks: Vec<_> = checks::node_checks(&spec)
        .into_iter()
        .filter(|check| check.needs == checks::Needs::Files || check.name == "containerd-cri")
        .collect();
    fs::write(
        root.join("root/caph-checks.sh"),
        checks::checks_script(&node_checks),
    )
    .map_err(|error| error.to_string())?;
    let inside = format!(
        r#"containerd --config /etc/containerd/config.toml >/tmp/containerd.log 2>&1 &
for _ in $(seq 100); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.1; done
echo "::begin plugins"; ctr plugins ls 2>&1; echo "::end plugins"
echo "::begin config"; containerd --config /etc/containerd/config.toml config dump 2>&1; echo "::end config"
echo "::begin import"; ctr images import /root/busybox-oci.tar 2>&1; echo "::end import"
echo "::begin run"; timeout 120 ctr run --rm {image} caph-e2e-echo /bin/echo hello from runc 2>&1; echo "exit=$?"; echo "::end run"
echo "::begin runc"; runc --version 2>&1; echo "::end runc"
echo "::begin cni"; CNI_COMMAND=VERSION /opt/cni/bin/bridge </dev/null 2>&1; echo "::end cni"
echo "::begin checks"; bash /root/caph-checks.sh; echo "::end checks"
echo "::begin log"; tail -n 40 /tmp/containerd.log; echo "::end log"
"#,
        image = IMAGE,
    );
    fs::write(root.join("root/caph-runtime.sh"), inside).map_err(|error| error.to_string())?;
    let script = format!(
        r#"set -u
root={root}
# The tree's root must be a mount point: containerd's CRI plugin looks its state directory up in
# /proc/self/mountinfo, which inside a chroot lists only mounts below the new root.
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
exec chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/bash /root/caph-runtime.sh
"#,
        root = caph_core::plan::quote(&root.to_string_lossy()),
    );
    let output = in_namespaces(&script);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let context = || {
        format!(
            "\n--- stdout\n{text}\n--- stderr\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    };

    // The CRI plugin loaded from our config.
    let cri_loaded = section(&text, "plugins").lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"cri") && fields.last() == Some(&"ok")
    });
    if !cri_loaded {
        return Err(format!("the CRI plugin did not load{}", context()));
    }
    // containerd's own reading of our config: the systemd cgroup driver and kubeadm's pause image.
    let dump = section(&text, "config");
    let dumped: toml::Table = toml::from_str(dump)
        .map_err(|error| format!("containerd config dump is not TOML: {error}{}", context()))?;
    let plugins = &dumped["plugins"];
    let (systemd_cgroup, sandbox) = if Version::parse(&versions.containerd).unwrap().major >= 2 {
        (
            plugins["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]["options"]
                .get("SystemdCgroup")
                .and_then(toml::Value::as_bool),
            plugins["io.containerd.cri.v1.images"]["pinned_images"]
                .get("sandbox")
                .and_then(toml::Value::as_str)
                .map(str::to_string),
        )
    } else {
        (
            plugins["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]["options"]
                .get("SystemdCgroup")
                .and_then(toml::Value::as_bool),
            plugins["io.containerd.grpc.v1.cri"]
                .get("sandbox_image")
                .and_then(toml::Value::as_str)
                .map(str::to_string),
        )
    };
    if systemd_cgroup != Some(true) {
        return Err(format!(
            "containerd does not read SystemdCgroup = true from our config:\n{config}{}",
            context()
        ));
    }
    if sandbox.as_deref() != Some(pause.as_str()) {
        return Err(format!(
            "containerd's sandbox image is {sandbox:?}, kubeadm {kubernetes} expects {pause}{}",
            context()
        ));
    }
    // A container from the imported busybox image ran echo through runc.
    let run = section(&text, "run");
    if !run.contains("hello from runc\n") || !run.contains("exit=0") {
        return Err(format!("the container did not run echo{}", context()));
    }
    if !section(&text, "runc").contains(&format!("runc version {}", versions.runc)) {
        return Err(format!(
            "runc in the tree is not {}{}",
            versions.runc,
            context()
        ));
    }
    if !section(&text, "cni").contains("cniVersion") {
        return Err(format!(
            "the CNI bridge plugin did not answer VERSION{}",
            context()
        ));
    }
    // The shared node checks a chroot can answer, with containerd running.
    let results = checks::judge(&node_checks, section(&text, "checks"), true);
    let failed: Vec<String> = results
        .iter()
        .filter(|result| matches!(result.outcome, Outcome::Failed(_)))
        .map(|result| result.describe())
        .collect();
    if !failed.is_empty() {
        return Err(format!("node checks failed: {failed:#?}{}", context()));
    }
    Ok(())
}
