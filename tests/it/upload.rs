//! `caph-image upload hcloud` end to end: a small real disk image (an MBR partition table and an
//! ext4 file system with a marker file, made here with sfdisk and mkfs.ext4) uploaded through every
//! compression, as qcow2 and from a URL, into the simulated cloud whose servers boot a real rescue
//! system with the server's disk as `/dev/sda`; each snapshot must carry the image. Then the
//! refusals: a corrupted image (both digests, nothing left), a URL answering 404, a file that is
//! not a disk image and one bigger than the server type's disk (refused before anything exists).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use caph_sim::hcloud::{
    CLOUD_RESCUE_TEMPLATE_CACHE, CloudMachines, CloudMachinesConfig, HcloudSim, HcloudSimConfig,
    SimState, TimeMode,
};
use caph_sim::machine::SshMachinesConfig;
use caph_sim::mirror::{Mirror, sha256_hex};

use crate::cloud::TOKEN;
use crate::hcloud_build::run_caph_image_with;

/// The simulated cloud with rescue-capable machines (also `build hcloud --from-tarball`'s).
pub struct RescueCloud {
    pub sim: HcloudSim,
    pub machines: Arc<CloudMachines>,
}

impl RescueCloud {
    pub async fn start(test: &str) -> Option<RescueCloud> {
        let machines = match CloudMachines::new(CloudMachinesConfig {
            machines: SshMachinesConfig::default(),
            installimage_binary: PathBuf::from(env!("CARGO_BIN_EXE_caph-image")),
            rescue_template_cache: Some(PathBuf::from(CLOUD_RESCUE_TEMPLATE_CACHE)),
            log: None,
        }) {
            Ok(machines) => Arc::new(machines),
            Err(reason) => {
                eprintln!("SKIPPED {test}: {reason}");
                return None;
            }
        };
        machines
            .files()
            .prepare_image("debian-12", "x86")
            .await
            .expect("the debian-12 root filesystem");
        machines
            .prepare_rescue("x86")
            .await
            .expect("the rescue template");
        let sim = HcloudSim::start(HcloudSimConfig {
            token: TOKEN.into(),
            time: TimeMode::Scaled(0.001),
            machines: machines.clone(),
            record_responses: true,
            ..Default::default()
        })
        .await
        .expect("the simulator starts");
        Some(RescueCloud { sim, machines })
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HCLOUD_TOKEN", TOKEN.to_string()),
            ("HCLOUD_ENDPOINT", self.sim.api_url()),
        ]
    }

    async fn upload(&self, dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
        let mut all = vec!["upload", "hcloud"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--no-progress", "--output", "json"]);
        let output = run_caph_image_with(&self.env(), dir, &all).await;
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn run(command: &mut Command) {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A 64 MiB disk image: an MBR with one Linux partition holding ext4 with `/marker`.
fn make_disk(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("marker"), "uploaded by the end-to-end test\n").unwrap();
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .arg("-q")
        .arg(&disk)
        .stdin(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().expect("sfdisk runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, type=83\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .args(["-E", "offset=1048576"])
        .arg(&disk)
        .arg("60M"));
    disk
}

/// `disk.raw` compressed (or converted) into `name`, with `program args` writing to stdout.
fn variant(dir: &Path, disk: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let stdout = std::fs::File::create(&out).unwrap();
    let mut command = match name.rsplit('.').next().unwrap() {
        "xz" => Command::new("xz"),
        "zst" => Command::new("zstd"),
        "bz2" => Command::new("bzip2"),
        "gz" => Command::new("gzip"),
        other => panic!("no compressor for .{other}"),
    };
    let source = if name.contains(".qcow2") {
        dir.join("disk.qcow2")
    } else {
        disk.to_path_buf()
    };
    run(command.arg("-c").arg(source).stdout(stdout));
    out
}

/// The snapshot's disk must start with the raw image and be the server type's size.
fn assert_carries(cloud: &RescueCloud, snapshot_id: u64, raw: &[u8]) {
    let image = cloud
        .machines
        .snapshot_disk_image(snapshot_id)
        .unwrap_or_else(|| panic!("snapshot {snapshot_id} carries no disk image"));
    let length = std::fs::metadata(&image).unwrap().len();
    assert_eq!(length, 40_000_000_000, "the disk of a cx23");
    use std::io::Read as _;
    let mut prefix = vec![0u8; raw.len()];
    std::fs::File::open(&image)
        .unwrap()
        .read_exact(&mut prefix)
        .unwrap();
    assert!(
        prefix == raw,
        "snapshot {snapshot_id}: the disk does not start with the image"
    );
}

pub fn nothing_left_but_snapshots(state: &SimState) {
    assert!(
        state.servers.is_empty(),
        "servers left: {:?}",
        state.servers
    );
    assert!(state.ssh_keys.is_empty(), "keys left: {:?}", state.ssh_keys);
    for snapshot in state.snapshots() {
        assert!(
            !snapshot.labels.contains_key("caph-image-build"),
            "an unfinished snapshot is left: {snapshot:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_images_in_every_form_become_snapshots_that_carry_them() {
    let Some(cloud) =
        RescueCloud::start("disk_images_in_every_form_become_snapshots_that_carry_them").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = make_disk(dir.path());
    let raw = std::fs::read(&disk).unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&disk)
        .arg(dir.path().join("disk.qcow2")));
    let mut forms: Vec<(String, String)> = vec![
        ("raw".into(), disk.display().to_string()),
        (
            "qcow2".into(),
            dir.path().join("disk.qcow2").display().to_string(),
        ),
    ];
    for name in [
        "disk.raw.xz",
        "disk.raw.zst",
        "disk.raw.bz2",
        "disk.raw.gz",
        "disk.qcow2.xz",
    ] {
        let path = variant(dir.path(), &disk, name);
        forms.push((name.replace('.', "-"), path.display().to_string()));
    }
    let served = std::fs::read(dir.path().join("disk.raw.zst")).unwrap();
    let mirror = Mirror::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        BTreeMap::from([("images/disk.raw.zst".to_string(), served)]),
    )
    .await
    .unwrap();
    forms.push((
        "url".into(),
        format!("{}/images/disk.raw.zst", mirror.url()),
    ));

    for (form, image) in &forms {
        let name = format!("uploaded-{form}");
        let (code, stdout, stderr) = cloud
            .upload(dir.path(), &[image, "--name", &name, "--arch", "x86"])
            .await;
        assert_eq!(code, Some(0), "{form}: {stderr}");
        let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let id: u64 = result["snapshot"]["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            result["snapshot"]["labels"]["caph-image-name"],
            name.as_str()
        );
        // The digest of what was sent, as the server confirmed it.
        let sent = match image.strip_prefix("http") {
            Some(_) => std::fs::read(dir.path().join("disk.raw.zst")).unwrap(),
            None => std::fs::read(image).unwrap(),
        };
        assert!(
            result["snapshot"]["notes"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(format!("sha256 {}", sha256_hex(&sent)))),
            "{form}: {stdout}"
        );
        assert_carries(&cloud, id, &raw);
        nothing_left_but_snapshots(&cloud.sim.state());
    }
    // The snapshots are labelled as CAPH finds them, one per name.
    let state = cloud.sim.state();
    assert_eq!(state.snapshots().len(), forms.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_images_are_refused_and_corruption_leaves_nothing_behind() {
    let Some(cloud) =
        RescueCloud::start("bad_images_are_refused_and_corruption_leaves_nothing_behind").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = make_disk(dir.path());
    let good = sha256_hex(&std::fs::read(&disk).unwrap());

    // A flipped byte: both digests, and nothing left.
    let corrupt = dir.path().join("corrupt.raw");
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[1_048_576 + 1024 + 8] ^= 0x01;
    std::fs::write(&corrupt, &bytes).unwrap();
    let bad = sha256_hex(&bytes);
    let (code, _, stderr) = cloud
        .upload(
            dir.path(),
            &[
                corrupt.to_str().unwrap(),
                "--name",
                "corrupt",
                "--arch",
                "x86",
                "--sha256",
                &good,
            ],
        )
        .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&bad) && stderr.contains(&good),
        "both digests: {stderr}"
    );
    let state = cloud.sim.state();
    nothing_left_but_snapshots(&state);
    assert!(state.snapshots().is_empty(), "{:?}", state.snapshots());

    let posts_before = cloud
        .sim
        .request_log()
        .iter()
        .filter(|record| record.method == "POST")
        .count();
    // A URL that answers 404: its status and the URL.
    let mirror = Mirror::start(IpAddr::V4(Ipv4Addr::LOCALHOST), BTreeMap::new())
        .await
        .unwrap();
    let missing = format!("{}/images/missing.raw.xz", mirror.url());
    let (code, _, stderr) = cloud
        .upload(
            dir.path(),
            &[&missing, "--name", "missing", "--arch", "x86"],
        )
        .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{missing} answered HTTP 404 Not Found")),
        "{stderr}"
    );
    // A file system without a partition table is not a disk image.
    let bare = dir.path().join("bare.ext4");
    std::fs::File::create(&bare)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&bare));
    let (code, _, stderr) = cloud
        .upload(
            dir.path(),
            &[bare.to_str().unwrap(), "--name", "bare", "--arch", "x86"],
        )
        .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr
            .contains("it is not a disk image: an ext2/3/4 file system without a partition table"),
        "{stderr}"
    );
    // A partition table spanning 50 GB does not fit a cx23's 40 GB, compressed or not.
    let big = dir.path().join("big.raw");
    let mut table = bytes.clone();
    table.truncate(1 << 20);
    let sectors: u32 = (50_000_000_000u64 / 512) as u32;
    table[446 + 12..446 + 16].copy_from_slice(&(sectors - 2048).to_le_bytes());
    std::fs::write(&big, &table).unwrap();
    let big_xz = variant(dir.path(), &big, "big.raw.xz");
    let (code, _, stderr) = cloud
        .upload(
            dir.path(),
            &[big_xz.to_str().unwrap(), "--name", "big", "--arch", "x86"],
        )
        .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("needs a 50.00 GB disk, larger than the disk of cx23 (40 GB)"),
        "{stderr}"
    );
    // None of the refusals created anything.
    let posts_after = cloud
        .sim
        .request_log()
        .iter()
        .filter(|record| record.method == "POST")
        .count();
    assert_eq!(
        posts_before, posts_after,
        "a refused upload created something"
    );
    nothing_left_but_snapshots(&cloud.sim.state());
}

/// A `--sha256` that is not 64 hex digits is refused first, naming the flag; one in capitals is
/// a digest and goes on (here to a missing file). The endpoint is a closed loopback port, so
/// nothing could reach an API.
#[test]
fn a_malformed_sha256_flag_is_refused_before_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let upload = |digest: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_caph-image"))
            .args([
                "upload",
                "hcloud",
                "missing.img",
                "--name",
                "n",
                "--arch",
                "x86",
            ])
            .args(["--sha256", digest])
            .env("HCLOUD_TOKEN", "unused-token")
            .env("HCLOUD_ENDPOINT", "http://127.0.0.1:9/v1")
            .current_dir(dir.path())
            .output()
            .unwrap();
        (output.status.code(), crate::stderr(&output))
    };
    for digest in ["a".repeat(63), "g".repeat(64), "a".repeat(65)] {
        let (code, stderr) = upload(&digest);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("--sha256 {digest}: not a sha256 (64 hex digits)")),
            "{stderr}"
        );
    }
    let (code, stderr) = upload(&"AB".repeat(32));
    assert_ne!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("not a sha256"), "{stderr}");
}
