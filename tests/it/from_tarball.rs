//! `caph-image build hcloud --from-tarball` end to end, against the simulated cloud whose servers
//! boot a real rescue system with the server's disk as `/dev/sda`: the tarball built first (the
//! end-to-end spec with `[base.rootfs]`), written onto a cloud server's disk and snapshotted; the
//! same tarball given by path for a second snapshot; Ctrl-C while it is extracted, and a tarball
//! whose `.sha256` disagrees, stop and leave nothing. The snapshot's disk then holds every member
//! of the tarball as it is, but for the files the flow writes, and boots under QEMU through its
//! own GRUB on Hetzner Cloud's hardware: cloud-init finds the Hetzner data source (SMBIOS), asks
//! the metadata service at 169.254.169.254 (the test's server, reached through QEMU's forward)
//! for the host name, SSH keys, network and user data, and runs the probe; first boot is judged
//! as `caph-image verify` judges it. The disk it boots is 2 GiB longer than the build server's,
//! as a bigger server type's is, and cloud-init grows the root partition and file system to it.
//!
//! The refusals that need no server are in their own test: a file that is not a tarball, a
//! tarball that is not one of ours, an arm64 tarball, a tarball whose name and `--arch` disagree.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use caph_boot::console;
use caph_boot::qemu::{self, HetznerCloudGuest, Vm, VmConfig, VmNetwork, Waited};
use caph_boot::tarball::TarballContents;
use caph_core::checks::{self, Finding, FindingStatus, NodePromise};
use caph_core::firstboot::{self, Evidence, Expectations, HostKeys, MachineId};
use caph_hcloud::backend::from_tarball::TARBALL_SHA256_LABEL;
use caph_sim::hcloud::{HcloudSim, HcloudSimConfig, TimeMode};
use caph_sim::mirror::{Mirror, release_artifacts};
use caph_ssh::{ConnectConfig, HostKeyPolicy, KeyPair, PublicKey};
use tokio_util::sync::CancellationToken;

use crate::cloud::{TOKEN, VERSIONS, spec_for_mirror};
use crate::hcloud_build::run_caph_image_with;
use crate::hcloud_faults::interrupt_at;
use crate::installed_disk::MountedSystem;
use crate::upload::{RescueCloud, nothing_left_but_snapshots};
use crate::verify::known_tarball_failures;
use crate::{is_root, stderr, stdout};

/// The tarball `build tarball` names for the end-to-end spec on amd64.
const TARBALL: &str = "Debian-1200-bookworm-amd64-k8s-v1.34.2.tar.gz";
/// The cloud server the disk boots as under QEMU.
const SERVER_ID: u64 = 4242;
const HOSTNAME: &str = "from-tarball-node";
/// Hetzner Cloud's MAC addresses start with 96:00:00.
const MAC: &str = "96:00:00:00:42:42";
/// How long first boot may take under emulation on two loaded cores (DHCP twice, cloud-init's
/// stages asking the metadata service, host keys made), as `verify`'s default.
const FIRST_BOOT_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// How long a clean shutdown may take under emulation.
const POWER_OFF_DEADLINE: Duration = Duration::from_secs(120);

/// The end-to-end spec with a root filesystem for the tarball.
fn spec(mirror: &str, name: &str) -> String {
    format!(
        "{}\n[base.rootfs]\nsuite = \"bookworm\"\nvariant = \"minbase\"\n",
        spec_for_mirror(mirror, name, &["x86"])
    )
}

fn json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(&stdout(output))
        .unwrap_or_else(|error| panic!("{error}: {}\n{}", stdout(output), stderr(output)))
}

/// `build hcloud SPEC --from-tarball [TARBALL]` in `dir`, as JSON.
async fn build(
    cloud: &RescueCloud,
    dir: &Path,
    spec: &str,
    tarball: Option<&str>,
) -> std::process::Output {
    let mut args = vec!["build", "hcloud", spec, "--from-tarball"];
    args.extend(tarball);
    args.extend(["-o", "out", "--no-progress", "--output", "json"]);
    run_caph_image_with(&cloud.env(), dir, &args).await
}

/// Hetzner's metadata service for one server, as cloud-init's Hetzner data source reads it:
/// `/hetzner/v1/metadata` (YAML), its `instance-id` alone (the data source's connectivity
/// check), and `/hetzner/v1/userdata`.
/// `public_key` is the key it hands out, which must reach root's `authorized_keys`; the user data
/// is `caph_core::firstboot`'s probe, shaped like CAPH's kubeadm bootstrap.
async fn metadata_service(public_key: &str) -> Mirror {
    let metadata = format!(
        "hostname: {HOSTNAME}
instance-id: {SERVER_ID}
public-ipv4: 169.254.0.100
region: eu-central
availability-zone: fsn1-dc14
public-keys:
- {public_key}
network-config:
  config:
  - mac_address: '{MAC}'
    name: eth0
    subnets:
    - ipv4: true
      type: dhcp
    type: physical
  version: 1
"
    );
    Mirror::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        BTreeMap::from([
            ("hetzner/v1/metadata".to_string(), metadata.into_bytes()),
            (
                "hetzner/v1/metadata/instance-id".to_string(),
                SERVER_ID.to_string().into_bytes(),
            ),
            (
                "hetzner/v1/userdata".to_string(),
                firstboot::probe_user_data("").into_bytes(),
            ),
        ]),
    )
    .await
    .expect("the metadata service starts")
}

/// The members of `tarball` that differ on the mounted tree at `root`, by GNU tar's own
/// comparison (contents, size, mode, owner, modification time, link target).
fn differing_members(tarball: &Path, root: &Path) -> Vec<String> {
    let output = Command::new("tar")
        .args(["--compare", "--numeric-owner", "-z", "-f"])
        .arg(tarball)
        .arg("-C")
        .arg(root)
        .output()
        .expect("tar runs");
    let mut members: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once(": ").map(|(member, _)| member.to_string()))
        .collect();
    members.sort();
    members.dedup();
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tarball_becomes_a_cloud_snapshot_that_boots_on_hetzner_metadata() {
    let test = "the_tarball_becomes_a_cloud_snapshot_that_boots_on_hetzner_metadata";
    if !is_root() || !Path::new("/usr/bin/mmdebstrap").exists() {
        eprintln!("SKIPPED {test}: needs root and mmdebstrap to build the tarball");
        return;
    }
    let Some(cloud) = RescueCloud::start(test).await else {
        return;
    };
    let mirror = Mirror::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        release_artifacts(&VERSIONS(), &["amd64"]),
    )
    .await
    .expect("the mirror starts");
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().canonicalize().unwrap();
    std::fs::write(
        dir.join("built.toml"),
        spec(&mirror.url(), "from-tarball-built"),
    )
    .unwrap();
    std::fs::write(
        dir.join("given.toml"),
        spec(&mirror.url(), "from-tarball-given"),
    )
    .unwrap();

    // Built first, then written.
    let output = build(&cloud, &dir, "built.toml", None).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let tarball = dir.join("out").join(TARBALL);
    let recorded = std::fs::read_to_string(dir.join("out").join(format!("{TARBALL}.sha256")))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let result = json(&output);
    assert_eq!(result["tarball"]["sha256"], recorded.as_str(), "{result:#}");
    assert_eq!(result["tarball"]["file"], tarball.to_str().unwrap());
    let built = &result["snapshots"][0];
    assert_eq!(built["labels"]["caph-image-name"], "from-tarball-built");
    assert_eq!(built["labels"][TARBALL_SHA256_LABEL], &recorded[..12]);
    assert!(
        built["notes"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(format!(
                "written from the tarball {TARBALL}, sha256 {recorded}"
            ))),
        "{built:#}"
    );
    // The flow prints the digest as the server confirmed it.
    assert!(
        stderr(&output).contains(&format!(
            "tarball sha256 {recorded} (computed here and on the server)"
        )),
        "{}",
        stderr(&output)
    );
    nothing_left_but_snapshots(&cloud.sim.state());

    // The same tarball by path (its .sha256 beside it is checked): the same bytes again.
    let output = build(&cloud, &dir, "given.toml", Some(tarball.to_str().unwrap())).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let given = json(&output)["snapshots"][0].clone();
    assert_eq!(given["labels"][TARBALL_SHA256_LABEL], &recorded[..12]);
    // The template CAPH takes: its schemas, the name and the type the snapshot was built on.
    let template = given["machine_template"].as_str().unwrap();
    assert!(
        template.contains("imageName: from-tarball-given\n") && template.contains("type: cx23\n"),
        "{template}"
    );
    if let Some(crds) = crate::crd::crds_or_skip(test) {
        assert_eq!(crds.check(template), Vec::<String>::new(), "{template}");
    }
    let snapshot_id: u64 = given["id"].as_str().unwrap().parse().unwrap();
    let state = cloud.sim.state();
    nothing_left_but_snapshots(&state);
    let snapshot = state
        .snapshots()
        .into_iter()
        .find(|image| image.id == snapshot_id)
        .expect("the snapshot");
    assert!(
        snapshot
            .description
            .contains(&format!("(sha256 {recorded})")),
        "{snapshot:?}"
    );

    // Ctrl-C while the tarball is extracted on the server: the ledger's cleanup, nothing left.
    let snapshots_before = cloud.sim.state().snapshots().len();
    let (code, text) = interrupt_at(
        cloud.env(),
        &dir,
        &[
            "build",
            "hcloud",
            "given.toml",
            "--from-tarball",
            tarball.to_str().unwrap(),
            "--replace",
            "--no-progress",
        ],
        "x86: provision: step 2/3: extract",
    )
    .await
    .unwrap();
    assert_eq!(code, 130, "{text}");
    assert!(text.contains("cancelled during provision"), "{text}");
    let state = cloud.sim.state();
    nothing_left_but_snapshots(&state);
    assert_eq!(state.snapshots().len(), snapshots_before, "{text}");

    // A .sha256 that disagrees: both digests, and nothing left.
    let corrupt_dir = dir.join("corrupt");
    std::fs::create_dir_all(&corrupt_dir).unwrap();
    let copy = corrupt_dir.join(TARBALL);
    std::fs::copy(&tarball, &copy).unwrap();
    let wrong = "0".repeat(64);
    std::fs::write(
        corrupt_dir.join(format!("{TARBALL}.sha256")),
        format!("{wrong}  {TARBALL}\n"),
    )
    .unwrap();
    let snapshots_before = cloud.sim.state().snapshots().len();
    let output = run_caph_image_with(
        &cloud.env(),
        &dir,
        &[
            "build",
            "hcloud",
            "given.toml",
            "--from-tarball",
            copy.to_str().unwrap(),
            "--replace",
            "--no-progress",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("has sha256 {recorded}"))
            && stderr(&output).contains(&format!("not the expected {wrong}")),
        "{}",
        stderr(&output)
    );
    let state = cloud.sim.state();
    nothing_left_but_snapshots(&state);
    assert_eq!(
        state.snapshots().len(),
        snapshots_before,
        "the old one stays"
    );

    // The snapshot's disk: every member of the tarball as it is, but what the flow writes.
    let disk = dir.join("cloud-disk.img");
    let copied = Command::new("cp")
        .arg("--sparse=always")
        .arg(cloud.machines.snapshot_disk_image(snapshot_id).unwrap())
        .arg(&disk)
        .status()
        .unwrap();
    assert!(copied.success());
    drop(cloud);
    disk_holds_the_tarball(&disk, &tarball).await;
    // A server of a bigger type than the build's: the same disk, longer.
    let built = RootPartition::of_disk_image(&disk).await;
    let file = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    file.set_len(file.metadata().unwrap().len() + BIGGER_SERVER_TYPE_DISK)
        .unwrap();
    drop(file);
    first_boot_on_hetzner_metadata(test, &disk, &tarball, &built).await;
}

/// How much bigger than the build server's disk the disk is that the snapshot boots on.
const BIGGER_SERVER_TYPE_DISK: u64 = 2 << 30;

/// The root partition of a disk (its last), and the size of the ext4 file system on it.
#[derive(Debug, PartialEq, Eq)]
struct RootPartition {
    /// Where it starts and how long it is, in 512-byte sectors.
    start: u64,
    sectors: u64,
    /// The disk's length, in sectors.
    disk_sectors: u64,
    /// The file system's block count times its block size.
    filesystem_bytes: u64,
}

impl RootPartition {
    /// Reads a disk image: its root partition as the installed-drive reader finds it
    /// (`caph_sim::robot::read_installed_system`, the partition table and fstab), the file
    /// system's size from its superblock (`s_blocks_count` at byte 4, with its high half at 0x150
    /// where the `64bit` feature is on; `s_log_block_size` at 24).
    async fn of_disk_image(disk: &Path) -> Self {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let manifest = caph_sim::robot::read_installed_system(disk, "/dev/sda")
            .await
            .expect("the disk can be read")
            .expect("a system is installed on the disk");
        let caph_sim::installimage::InstalledDisk::Images { partitions } = &manifest.disk else {
            panic!("not a disk image: {manifest:?}");
        };
        let root = partitions
            .iter()
            .find(|partition| partition.mount == "/")
            .expect("the fstab mounts a partition on /");
        let (start, sectors) = (root.start_bytes / 512, root.size_bytes / 512);
        let mut file = std::fs::File::open(disk).unwrap();
        let mut superblock = [0u8; 1024];
        file.seek(SeekFrom::Start(start * 512 + 1024)).unwrap();
        file.read_exact(&mut superblock).unwrap();
        let le32 = |at: usize| {
            u64::from(u32::from_le_bytes(
                superblock[at..at + 4].try_into().unwrap(),
            ))
        };
        assert_eq!(&superblock[0x38..0x3a], &[0x53, 0xef], "an ext4 superblock");
        let high = if le32(0x60) & 0x80 != 0 {
            le32(0x150) << 32
        } else {
            0
        };
        let blocks = le32(4) | high;
        Self {
            start,
            sectors,
            disk_sectors: file.metadata().unwrap().len() / 512,
            filesystem_bytes: blocks * (1024 << le32(24)),
        }
    }

    /// A shell script that prints the booted node's root partition as `key=value` lines.
    const ON_THE_NODE: &str = r#"set -eu
root=$(findmnt --noheadings --output SOURCE /)
partition=$(basename "$root")
disk=$(basename "$(readlink -f "/sys/class/block/$partition/..")")
echo "start=$(cat "/sys/class/block/$partition/start")"
echo "sectors=$(cat "/sys/class/block/$partition/size")"
echo "disk_sectors=$(cat "/sys/class/block/$disk/size")"
blocks=$(dumpe2fs -h "$root" 2>/dev/null | sed -n 's/^Block count: *//p')
block_size=$(dumpe2fs -h "$root" 2>/dev/null | sed -n 's/^Block size: *//p')
echo "filesystem_bytes=$((blocks * block_size))"
"#;

    /// Reads what [`Self::ON_THE_NODE`] printed.
    fn from_node(printed: &str) -> Self {
        let value = |key: &str| -> u64 {
            printed
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {key} in what the node printed:\n{printed}"))
        };
        Self {
            start: value("start"),
            sectors: value("sectors"),
            disk_sectors: value("disk_sectors"),
            filesystem_bytes: value("filesystem_bytes"),
        }
    }
}

/// The disk holds every member of the tarball as it is, but for what the flow writes, and GRUB.
async fn disk_holds_the_tarball(disk: &Path, tarball: &Path) {
    {
        let node = MountedSystem::mount(disk, "/dev/sda").await;
        let differing = differing_members(tarball, &node.root);
        assert_eq!(
            differing,
            [
                // Hetzner's metadata service instead of the NoCloud seed.
                "./etc/cloud/cloud.cfg.d/99-caph-image.cfg",
                // The kernel command line installimage writes.
                "./etc/default/grub",
                "./etc/fstab",
                // grub-pc's install device, which debconf keeps in its database (and the
                // backups it writes along).
                "./var/cache/debconf/config.dat",
                "./var/cache/debconf/config.dat-old",
                "./var/cache/debconf/templates.dat",
                "./var/cache/debconf/templates.dat-old",
            ],
            "the members of the tarball that differ on the disk"
        );
        assert_eq!(
            node.read(caph_core::plan::CLOUD_INIT_CONFIG_PATH),
            caph_core::plan::CLOUD_INIT_HCLOUD_DISK_CONFIG
        );
        let fstab = node.read("/etc/fstab");
        assert!(
            fstab.contains("UUID=") && fstab.contains(" / ext4 ") && fstab.contains(" /boot ext4 "),
            "{fstab}"
        );
        let grub = node.read("/boot/grub/grub.cfg");
        assert!(grub.contains("root=UUID="), "{grub}");
        assert_eq!(
            node.read("/etc/e2e-marker"),
            "built by the end-to-end test\n"
        );
        // Nothing of a server yet: no machine id, empty host key placeholders.
        assert_eq!(node.read("/etc/machine-id"), "");
        assert_eq!(node.read("/etc/ssh/ssh_host_ed25519_key"), "");
    }
    let mut mbr = vec![0u8; 512];
    {
        use std::io::Read as _;
        std::fs::File::open(disk)
            .unwrap()
            .read_exact(&mut mbr)
            .unwrap();
    }
    assert!(
        mbr.windows(4).any(|window| window == b"GRUB"),
        "GRUB's boot code is in the MBR"
    );
}

/// First boot on a Hetzner Cloud server's hardware (`caph_boot::qemu::HetznerCloudGuest`), with
/// the metadata service handing out the host name, root's key, the network and the probe user
/// data: the console as every boot's must be (`caph_boot::console::findings`); root logs in with
/// the metadata's key over the network the metadata configured, the host key pinned to the one
/// cloud-init printed on the console; there the first-boot evidence (`caph_core::firstboot`) and
/// the node checks the image promises (`caph_core::checks`, as `verify tarball` runs them) are
/// gathered and judged; then a clean power off. Every finding is ok but the known failures of the
/// end-to-end tarball (`crate::verify::KNOWN_TARBALL_FAILURES`).
///
/// The disk is [`BIGGER_SERVER_TYPE_DISK`] longer than the one the snapshot was made on
/// (`built`): the root partition and its file system must have grown to its end.
async fn first_boot_on_hetzner_metadata(
    test: &str,
    disk: &Path,
    tarball: &Path,
    built: &RootPartition,
) {
    if let Some(missing) = qemu::qemu_missing().or_else(qemu::socat_missing) {
        eprintln!("SKIPPED {test} (first boot under QEMU): {missing}");
        return;
    }
    let contents = TarballContents::read(tarball, &CancellationToken::new())
        .await
        .expect("the tarball reads");
    let (release, modules, sysctls) = contents.promise_files();
    let promise =
        NodePromise::from_image_files(release, modules, sysctls).expect("the image's promise");
    let node_checks = checks::promised_checks(&promise);
    // The key a user of the server logs in with: the metadata service hands it out.
    let root_key = KeyPair::generate_ed25519("e2e@metadata").unwrap();
    let metadata = metadata_service(&root_key.public_key().to_openssh()).await;
    let ssh_address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let vm_dir = tempfile::tempdir().unwrap();
    let mut config = VmConfig::new(disk, vm_dir.path());
    config.network = VmNetwork::HetznerCloud(HetznerCloudGuest {
        server_id: SERVER_ID,
        mac: MAC.to_string(),
        metadata: metadata
            .url()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("the metadata service's address"),
        ssh: Some(ssh_address),
    });
    let mut vm = Vm::start(config).await.expect("QEMU starts");
    let prompt = format!("{HOSTNAME} login:");
    // cloud-init's final stage says "Cloud-init v. N finished at ..." on the console.
    let waited = vm
        .wait_for(
            &[&prompt, "Cloud-init v.", " finished at "],
            FIRST_BOOT_DEADLINE,
            &CancellationToken::new(),
            &mut |_, _| {},
        )
        .await
        .expect("not cancelled");
    let booted_after = vm.uptime();
    let lines = vm.lines();
    assert_eq!(
        waited,
        Waited::Found,
        "{test}: no login prompt and cloud-init end within {FIRST_BOOT_DEADLINE:?}; the console ended with:\n{}",
        lines[lines.len().saturating_sub(80)..].join("\n")
    );
    eprintln!(
        "{test}: `{prompt}` and cloud-init finished after {:.0}s",
        booted_after.as_secs_f64()
    );

    // Logged in as a user of the server would, the host key pinned to the console's.
    let console_text = lines.join("\n");
    let host_key = console_text
        .split("-----BEGIN SSH HOST KEY KEYS-----")
        .nth(1)
        .and_then(|keys| keys.lines().find(|line| line.starts_with("ssh-ed25519 ")))
        .map(|line| PublicKey::from_openssh(line.trim()).expect("an OpenSSH key line"))
        .unwrap_or_else(|| {
            panic!("{test}: cloud-init printed no ed25519 host key:\n{console_text}")
        });
    let mut connect = ConnectConfig::new(
        ssh_address,
        "root",
        root_key,
        HostKeyPolicy::Pinned(host_key),
    );
    connect.deadline = Duration::from_secs(120);
    let session = caph_ssh::connect_when_ready(&connect, &mut |_| {})
        .await
        .unwrap_or_else(|error| panic!("{test}: root logs in with the metadata's key: {error}"));
    let run = async |script: &str| {
        let output = session.exec_capture(script).await.expect("the script runs");
        assert_eq!(output.exit_code, 0, "{script}: {}", output.stderr);
        output.stdout
    };
    let evidence = Evidence::parse(&run(&firstboot::evidence_script("", &[])).await);
    let facts = run(&checks::facts_script(&node_checks)).await;
    let root_partition = RootPartition::from_node(&run(RootPartition::ON_THE_NODE).await);
    session.close().await;
    let powered_off = vm.power_off(POWER_OFF_DEADLINE).await;
    let lines = vm.lines();
    drop(vm);

    let mut findings = console::findings(&lines, HOSTNAME);
    findings.push(Finding::judged(
        "power-off",
        powered_off,
        "a clean shutdown on Ctrl-Alt-Del",
    ));
    findings.extend(firstboot::judge_first_boot(
        &evidence,
        &Expectations {
            hostname: HOSTNAME.to_string(),
            // The Hetzner data source's instance id is the server id.
            instance_id: SERVER_ID.to_string(),
            probe: true,
            host_keys: HostKeys::NotAnyOf(contents.host_public_keys()),
            machine_id: MachineId::Not(contents.machine_id()),
        },
    ));
    let (results, systemd_ran) = checks::judge_facts(&node_checks, &facts);
    findings.push(Finding::judged(
        "systemd",
        systemd_ran,
        "systemd is the init system",
    ));
    findings.extend(results.iter().map(Finding::from));
    let report: Vec<String> = findings
        .iter()
        .map(|finding| format!("{:?} {}: {}", finding.status, finding.name, finding.detail))
        .collect();
    let mut failed: Vec<&str> = findings
        .iter()
        .filter(|finding| finding.status != FindingStatus::Ok)
        .map(|finding| finding.name.as_str())
        .collect();
    failed.sort_unstable();
    assert_eq!(
        failed,
        known_tarball_failures(),
        "{test}: the findings of first boot:\n{}\nthe console:\n{}",
        report.join("\n"),
        lines.join("\n")
    );
    // On a bigger disk, cloud-init grew the root partition to the disk's end (growpart, which
    // leaves at most an alignment's worth) and its file system with it (resize2fs online, which
    // leaves a few hundred blocks at the end that do not make a whole group).
    let grown = BIGGER_SERVER_TYPE_DISK / 512;
    assert_eq!(root_partition.disk_sectors, built.disk_sectors + grown);
    assert_eq!(root_partition.start, built.start);
    let end = root_partition.start + root_partition.sectors;
    assert!(
        end <= root_partition.disk_sectors && root_partition.disk_sectors - end < 2048,
        "the root partition reaches the end of the bigger disk: {root_partition:?}, built {built:?}"
    );
    assert!(
        root_partition.filesystem_bytes + (16 << 20) >= root_partition.sectors * 512
            && root_partition.filesystem_bytes
                >= built.filesystem_bytes + BIGGER_SERVER_TYPE_DISK - (1 << 20),
        "the root file system fills the grown partition: {root_partition:?}, built {built:?}"
    );
    // The Hetzner data source, not a seed: the node asked the metadata service for all of it.
    let asked = metadata.requests();
    for path in ["hetzner/v1/metadata", "hetzner/v1/userdata"] {
        assert!(
            asked.iter().any(|requested| requested == path),
            "the node asked the metadata service for {path}: {asked:?}"
        );
    }
}

/// A free TCP port on 127.0.0.1 (for QEMU's forward to the guest's sshd).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// `tree` packed into the gzip-compressed tarball `tarball`.
fn pack(tree: &Path, tarball: &Path) {
    let packed = Command::new("tar")
        .arg("-czf")
        .arg(tarball)
        .arg("-C")
        .arg(tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(packed.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_become_a_cloud_disk_is_refused_before_anything_is_made() {
    let sim = HcloudSim::start(HcloudSimConfig {
        token: TOKEN.into(),
        time: TimeMode::Scaled(0.001),
        ..Default::default()
    })
    .await
    .expect("the simulator starts");
    let env = vec![
        ("HCLOUD_TOKEN", TOKEN.to_string()),
        ("HCLOUD_ENDPOINT", sim.api_url()),
    ];
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    std::fs::write(dir.join("node.toml"), spec("http://127.0.0.1:9", "refused")).unwrap();
    // Each is refused with exit code 1 and `wanted` in the error.
    let refused = async |tarball: &Path, extra: &[&str], wanted: &str| {
        let mut args = vec!["build", "hcloud", "node.toml", "--from-tarball"];
        args.push(tarball.to_str().unwrap());
        args.extend(extra);
        let output = run_caph_image_with(&env, dir, &args).await;
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(stderr(&output).contains(wanted), "{}", stderr(&output));
    };

    // A disk image is not a tarball.
    let raw = dir.join("Debian-1200-bookworm-amd64-k8s.tar.gz");
    let mut bytes = vec![0u8; 4096];
    bytes[510] = 0x55;
    bytes[511] = 0xaa;
    std::fs::write(&raw, &bytes).unwrap();
    refused(&raw, &[], "not a tar archive; name an installimage tarball").await;
    // An arm64 tarball, by its name: Hetzner Cloud's arm servers boot UEFI.
    let arm = dir.join("Debian-1200-bookworm-arm64-k8s.tar.gz");
    std::fs::copy(&raw, &arm).unwrap();
    refused(
        &arm,
        &[],
        "--from-tarball --arch arm: Hetzner Cloud's arm servers boot UEFI",
    )
    .await;
    // A name that says amd64, and --arch arm.
    refused(
        &raw,
        &["--arch", "arm"],
        "its name says amd64, but --arch says arm",
    )
    .await;
    // A malformed .sha256 beside it.
    std::fs::write(
        dir.join("Debian-1200-bookworm-amd64-k8s.tar.gz.sha256"),
        "not a digest\n",
    )
    .unwrap();
    refused(
        &raw,
        &[],
        "not a sha256 file (64 hex digits, then the file name)",
    )
    .await;

    // A tar archive, but not one of ours: what it lacks, every reason at once, before any server.
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "node\n").unwrap();
    let foreign = dir.join("Debian-1200-bookworm-amd64-foreign.tar.gz");
    pack(&tree, &foreign);
    for wanted in [
        "--from-tarball ",
        "it is not a caph-image tarball (no /etc/caph-image-release): make one with `caph-image build tarball`",
        "/boot holds no kernel (vmlinuz-*)",
        "it has no grub-install",
        "it has no cloud-init (usr/bin/cloud-init)",
        "it has no /etc/systemd/system/caph-image-host-keys.service",
    ] {
        refused(&foreign, &[], wanted).await;
    }

    // --dry-run: the preflight, what the tarball is, and the rescue system's three steps. The
    // tarball holds (empty) what the flow needs of one of ours.
    for path in [
        "etc/caph-image-release",
        "lib64/ld-linux-x86-64.so.2",
        "boot/vmlinuz-6.1.0-42-amd64",
        "usr/sbin/grub-install",
        "usr/bin/cloud-init",
        "etc/systemd/system/caph-image-host-keys.service",
    ] {
        let file = tree.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, "").unwrap();
    }
    let small = dir.join("Debian-1200-bookworm-amd64-small.tar.gz");
    pack(&tree, &small);
    let output = run_caph_image_with(
        &env,
        dir,
        &[
            "build",
            "hcloud",
            "node.toml",
            "--from-tarball",
            small.to_str().unwrap(),
            "--dry-run",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed = stdout(&output);
    for wanted in [
        "ok: x86: builds on cx23 in fsn1",
        "Debian-1200-bookworm-amd64-small.tar.gz: gzip-compressed tar archive of",
        "# step 1/3: partition",
        "gzip -dc | tar --extract",
        "chroot \"$target\" grub-install --target=i386-pc /dev/sda",
    ] {
        assert!(printed.contains(wanted), "{wanted}: {printed}");
    }
    assert!(stderr(&output).contains("dry run: nothing was created"));

    // Without TARBALL the tarball is built first, which needs root: said before anything else.
    if is_root() && Path::new("/usr/bin/setpriv").exists() {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let output = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_caph-image"))
            .args(["build", "hcloud", "node.toml", "--from-tarball"])
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .current_dir(dir)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(
            stderr(&output).contains(
                "--from-tarball without TARBALL builds the tarball first, and building a root filesystem needs root"
            ),
            "{}",
            stderr(&output)
        );
    }

    // --sim has no rescue systems: a usage error.
    let output = run_caph_image_with(
        &env,
        dir,
        &["build", "hcloud", "node.toml", "--from-tarball", "--sim"],
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));

    let state = sim.state();
    assert!(state.servers.is_empty() && state.ssh_keys.is_empty());
    assert!(
        sim.request_log()
            .iter()
            .all(|record| record.method == "GET"),
        "a refusal created something: {:?}",
        sim.request_log()
    );
}
