//! The simulated installimage end to end as a library: a small tarball made here installed onto a sparse disk image (as root), a directory install, the wait and a rejection.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "data/test_tarball.rs"]
mod test_tarball;

use test_tarball::{CAPABILITY, make_tarball, sh};

use caph_sim::installimage::{
    DiskMode, Drive, Input, InstalledDisk, MachineFacts, Options, Outcome, run,
};

const RESCUE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAr1ZspAtHOOyQlIV96XLrxBy8y45ijODbauvH3xJdjK rescue\n";
/// A small layout for a 3 GiB sparse drive: /boot 256M and / for the rest.
const DRIVE_BYTES: u64 = 3 << 30;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The rescue system's root: the image, the keys, a post-install script that leaves a mark and
/// fails.
fn make_rescue(work: &Path, config: &str) -> (PathBuf, PathBuf, PathBuf) {
    let rescue = work.join("rescue");
    std::fs::create_dir_all(rescue.join("root/.ssh")).expect("dir");
    let tarball = work.join(test_tarball::IMAGE_NAME);
    if tarball.exists() {
        std::fs::rename(&tarball, rescue.join("root").join(test_tarball::IMAGE_NAME))
            .expect("image in place");
    }
    std::fs::create_dir_all(rescue.join("etc")).expect("dir");
    std::fs::write(rescue.join("root/.ssh/robot_user_keys"), RESCUE_KEY).expect("keys");
    std::fs::write(rescue.join("etc/resolv.conf"), "nameserver 127.0.0.53\n").expect("resolv");
    let script = rescue.join("root/post-install.sh");
    std::fs::write(
        &script,
        "#!/bin/bash\nread -r name < /etc/hostname; echo post-install sees $name\necho ran > /root/post-install-ran\necho POST_INSTALL_SCRIPT_FINISHED\nexit 3\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let config_path = rescue.join("autosetup.in");
    std::fs::write(&config_path, config).expect("config");
    (rescue, config_path, script)
}

fn uefi_facts(disk_dir: &Path) -> MachineFacts {
    MachineFacts {
        uefi: true,
        ..facts(disk_dir)
    }
}

fn facts(disk_dir: &Path) -> MachineFacts {
    MachineFacts {
        arch: "x86_64".into(),
        uefi: false,
        drives: vec![Drive {
            device: "/dev/sda".into(),
            size_bytes: DRIVE_BYTES,
        }],
        ipv4: "127.77.0.5".into(),
        ipv4_prefix: 32,
        ipv4_gateway: None,
        ipv6: None,
        ipv6_gateway: None,
        interface: "eth0".into(),
        disk_dir: disk_dir.to_owned(),
        real_installimage: None,
    }
}

fn install(config: &str, mode: DiskMode, work: &Path) -> (Outcome, String, PathBuf) {
    install_on(config, mode, work, facts(&work.join("disks")))
}

fn install_on(
    config: &str,
    mode: DiskMode,
    work: &Path,
    machine: MachineFacts,
) -> (Outcome, String, PathBuf) {
    let (rescue, config_path, script) = make_rescue(work, config);
    let mut output = Vec::new();
    let outcome = run(
        Options {
            config: config_path,
            post_install: Some(script),
            facts: machine,
            system_root: rescue.clone(),
            disk_mode: mode,
            input: Input::Reader(Box::new(Cursor::new(b"x".to_vec()))),
        },
        &mut output,
    );
    (
        outcome,
        String::from_utf8_lossy(&output).into_owned(),
        rescue,
    )
}

/// A read-only loop mount of one partition, undone on drop.
struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(image: &Path, start: u64, size: u64) -> Mounted {
        let dir = tempfile::tempdir().expect("mount point");
        sh(Command::new("mount")
            .arg("-o")
            .arg(format!("ro,loop,offset={start},sizelimit={size}"))
            .arg(image)
            .arg(dir.path()));
        Mounted { dir }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

const SMALL_LAYOUT: &str = "DRIVE1 /dev/sda\nBOOTLOADER grub\nHOSTNAME node-test\nPART /boot ext4 256M\nPART / ext4 all\nIMAGE /root/Debian-1208-bookworm-amd64-test.tar.gz\n";

#[test]
fn a_tarball_installs_onto_a_partitioned_disk_image() {
    if !is_root() {
        eprintln!(
            "SKIPPED a_tarball_installs_onto_a_partitioned_disk_image: needs root (tar --numeric-owner, chroot, loop mounts)"
        );
        return;
    }
    for tool in ["sfdisk", "mke2fs", "unshare", "ssh-keygen"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            eprintln!(
                "SKIPPED a_tarball_installs_onto_a_partitioned_disk_image: {tool} is missing"
            );
            return;
        }
    }
    let work = tempfile::tempdir().expect("work dir");
    make_tarball(work.path());
    let started = Instant::now();
    let (outcome, output, rescue) = install(SMALL_LAYOUT, DiskMode::Auto, work.path());
    assert_eq!(outcome.exit_code, 0, "{output}\n{:?}", outcome.errors);
    assert!(output.contains("INSTALLATION COMPLETE"), "{output}");
    assert!(output.contains("caph-sim: disk images in"), "{output}");
    assert!(output.contains("POST_INSTALL_SCRIPT_FINISHED"), "{output}");
    assert!(output.contains("post-install sees node-test"), "{output}");
    eprintln!(
        "install of a small tarball onto a 3 GiB sparse image took {:.1?}",
        started.elapsed()
    );
    let debug = std::fs::read_to_string(rescue.join("root/debug.txt")).expect("debug.txt");
    assert!(
        debug.contains("Post-installation script didn't exit successfully (exit code = 3)"),
        "{debug}"
    );
    // Moved aside, as installimage does with `-c`.
    assert!(!rescue.join("autosetup").exists());
    let backup = std::fs::read_dir(&rescue)
        .expect("rescue root")
        .flatten()
        .find(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("autosetup.bak-")
        })
        .expect("/autosetup.bak-DATE");
    assert_eq!(
        std::fs::read_to_string(backup.path()).expect("backup"),
        SMALL_LAYOUT
    );

    let manifest = outcome.manifest.expect("a manifest");
    assert_eq!(manifest.hostname, "node-test");
    let InstalledDisk::Images { partitions } = manifest.disk else {
        panic!("expected disk images: {:?}", manifest.disk);
    };
    assert_eq!(partitions.len(), 2);
    let (boot, root) = (&partitions[0], &partitions[1]);
    assert_eq!(
        (boot.mount.as_str(), boot.device.as_str()),
        ("/boot", "/dev/sda1")
    );
    assert_eq!(boot.size_bytes, 256 << 20);
    assert_eq!(root.mount, "/");
    assert!(root.size_bytes > 2 << 30, "{root:?}");
    let image = &root.image;
    assert_eq!(std::fs::metadata(image).expect("image").len(), DRIVE_BYTES);
    let table = sh(Command::new("sfdisk").arg("--dump").arg(image));
    assert!(table.contains("label: dos"), "{table}");
    // Sparse: far less than 3 GiB is allocated.
    let allocated =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(image).expect("image")) * 512;
    assert!(allocated < 512 << 20, "allocated {allocated}");

    let root_fs = Mounted::new(image, root.start_bytes, root.size_bytes);
    let boot_fs = Mounted::new(image, boot.start_bytes, boot.size_bytes);
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    };
    let fstab = read(root_fs.path("etc/fstab"));
    assert!(
        fstab.contains(&format!("UUID={} / ext4 defaults 0 0", root.uuid)),
        "{fstab}"
    );
    assert!(
        fstab.contains(&format!("UUID={} /boot ext4 defaults 0 0", boot.uuid)),
        "{fstab}"
    );
    let blkid = sh(Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "UUID", "-O"])
        .arg(root.start_bytes.to_string())
        .arg(image));
    assert_eq!(blkid.trim(), root.uuid);
    assert_eq!(read(root_fs.path("etc/hostname")), "node-test\n");
    assert!(read(root_fs.path("etc/hosts")).contains("127.77.0.5 node-test"));
    // installimage gives each install a machine-id of its own.
    let machine_id = read(root_fs.path("etc/machine-id"));
    assert!(
        machine_id.trim().len() == 32 && machine_id.trim().bytes().all(|b| b.is_ascii_hexdigit()),
        "{machine_id:?}"
    );
    assert!(read(root_fs.path("etc/network/interfaces")).contains("address 127.77.0.5"));
    assert_eq!(read(root_fs.path("root/.ssh/authorized_keys")), RESCUE_KEY);
    assert_eq!(read(root_fs.path("root/post-install-ran")), "ran\n");
    // The ed25519 placeholder became a key; rsa, absent from the image, was skipped.
    assert!(read(root_fs.path("etc/ssh/ssh_host_ed25519_key")).contains("OPENSSH PRIVATE KEY"));
    assert!(root_fs.path("etc/ssh/ssh_host_ed25519_key.pub").exists());
    assert!(!root_fs.path("etc/ssh/ssh_host_rsa_key").exists());
    assert!(read(root_fs.path("installimage.conf")).contains("HOSTNAME node-test"));
    assert!(read(root_fs.path("installimage.debug")).contains("# validating config"));
    for skipped in ["proc", "sys", "dev"] {
        let entries: Vec<_> = std::fs::read_dir(root_fs.path(skipped))
            .expect(skipped)
            .collect();
        assert!(entries.is_empty(), "{skipped} is empty");
    }
    let capability = rustix::fs::getxattr(
        root_fs.path("usr/bin/ping"),
        "security.capability",
        &mut [0u8; 64],
    )
    .expect("the capability survived");
    assert_eq!(capability, CAPABILITY.len());
    // The kernel is on the /boot partition, and the root filesystem's /boot is only a mount point.
    assert_eq!(read(boot_fs.path("vmlinuz-6.1.0-test")), "not a kernel\n");
    assert_eq!(
        std::fs::read_dir(root_fs.path("boot"))
            .expect("boot")
            .count(),
        0
    );
    let manifest_file = work
        .path()
        .join("disks")
        .join(caph_sim::installimage::MANIFEST_NAME);
    assert!(manifest_file.exists());
}

#[test]
fn layouts_disk_images_cannot_model_install_into_a_directory_and_say_so() {
    if !is_root() {
        eprintln!(
            "SKIPPED layouts_disk_images_cannot_model_install_into_a_directory_and_say_so: needs root"
        );
        return;
    }
    let work = tempfile::tempdir().expect("work dir");
    make_tarball(work.path());
    let config = SMALL_LAYOUT.replace(
        "PART / ext4 all",
        "PART lvm vg0 all\nLV vg0 root / ext4 1500M",
    );
    let (outcome, output, _) = install(&config, DiskMode::Auto, work.path());
    assert_eq!(outcome.exit_code, 0, "{output}\n{:?}", outcome.errors);
    assert!(
        output.contains("instead of disk images: LVM is not modelled on disk images"),
        "{output}"
    );
    let root = work.path().join("disks/root");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).expect("hostname"),
        "node-test\n"
    );
    assert!(
        std::fs::read_to_string(root.join("etc/fstab"))
            .expect("fstab")
            .contains("/dev/vg0/root / ext4")
    );
    assert_eq!(
        std::fs::read_to_string(root.join("root/post-install-ran")).expect("mark"),
        "ran\n"
    );
    assert!(output.contains("INSTALLATION COMPLETE"));
}

#[test]
fn a_rejected_config_is_cancelled_with_the_error_in_debug_txt() {
    let work = tempfile::tempdir().expect("work dir");
    let config = SMALL_LAYOUT.replace("PART /boot ext4 256M", "PART /boot ext4 100M");
    let (outcome, output, rescue) = install(&config, DiskMode::Auto, work.path());
    assert_eq!(outcome.exit_code, 1);
    assert_eq!(
        outcome.errors,
        vec!["ERROR: Your /boot partition has to be at least 200M (current size: 100)".to_string()]
    );
    assert!(output.trim_end().ends_with("Cancelled."), "{output}");
    assert!(!output.contains("Starting installation"), "{output}");
    let debug = std::fs::read_to_string(rescue.join("root/debug.txt")).expect("debug.txt");
    assert!(
        debug.contains(":   ERROR: Your /boot partition has to be at least 200M"),
        "{debug}"
    );
    assert!(!work.path().join("disks").exists(), "nothing was touched");
}

#[test]
fn the_wait_takes_a_second_a_dot_unless_x_is_typed_and_ends_at_end_of_input() {
    // An image that does not exist: validation passes, the install fails right after the wait.
    let work = tempfile::tempdir().expect("work dir");
    let (rescue, config_path, _) = make_rescue(work.path(), SMALL_LAYOUT);
    let run_with = |input: Input| {
        let mut output = Vec::new();
        let started = Instant::now();
        let outcome = run(
            Options {
                config: config_path.clone(),
                post_install: None,
                facts: facts(&work.path().join("disks")),
                system_root: rescue.clone(),
                disk_mode: DiskMode::Directory,
                input,
            },
            &mut output,
        );
        (
            outcome,
            String::from_utf8_lossy(&output).into_owned(),
            started.elapsed(),
        )
    };
    let (_, output, elapsed) = run_with(Input::Reader(Box::new(Cursor::new(b"ax".to_vec()))));
    assert!(
        output.contains("Press X to continue immediately"),
        "{output}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "x skips the wait: {elapsed:?}"
    );
    let (_, output, elapsed) = run_with(Input::Reader(Box::new(std::io::empty())));
    assert!(
        elapsed < Duration::from_secs(3),
        "end of input: {elapsed:?}"
    );
    assert!(output.contains("=> ...................."), "{output}");
    // Silence: a reader that blocks. Two dots take about two seconds; cut it short after that by
    // sending x from another thread.
    let (reader, mut writer) = std::io::pipe().expect("pipe");
    let typist = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2500));
        let _ = std::io::Write::write_all(&mut writer, b"x");
    });
    let (_, output, elapsed) = run_with(Input::Reader(Box::new(reader)));
    typist.join().expect("typist");
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert!(output.contains("=> ...\n"), "{output}");
}

#[test]
fn a_uefi_layout_gets_a_gpt_table_and_an_esp() {
    if !is_root() {
        eprintln!("SKIPPED a_uefi_layout_gets_a_gpt_table_and_an_esp: needs root");
        return;
    }
    let work = tempfile::tempdir().expect("work dir");
    make_tarball(work.path());
    let config = SMALL_LAYOUT.replace(
        "PART /boot ext4 256M",
        "PART /boot/efi esp 256M\nPART /boot ext4 256M",
    );
    let machine = uefi_facts(&work.path().join("disks"));
    let (outcome, output, _) = install_on(&config, DiskMode::Auto, work.path(), machine);
    assert_eq!(outcome.exit_code, 0, "{output}\n{:?}", outcome.errors);
    let Some(InstalledDisk::Images { partitions }) = outcome.manifest.map(|manifest| manifest.disk)
    else {
        panic!("expected disk images: {output}");
    };
    let mounts: Vec<&str> = partitions
        .iter()
        .map(|partition| partition.mount.as_str())
        .collect();
    assert_eq!(mounts, vec!["/boot/efi", "/boot", "/"]);
    let table = sh(Command::new("sfdisk")
        .arg("--dump")
        .arg(&partitions[0].image));
    assert!(table.contains("label: gpt"), "{table}");
    assert!(
        table.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        "an ESP type: {table}"
    );
    let has_mkfs_fat = Command::new("sh")
        .args(["-c", "command -v mkfs.fat"])
        .output()
        .is_ok_and(|output| output.status.success());
    assert_eq!(
        partitions[0].formatted, has_mkfs_fat,
        "the ESP is formatted where mkfs.fat exists"
    );
    if has_mkfs_fat {
        let esp = &partitions[0];
        let blkid = sh(Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "UUID", "-O"])
            .arg(esp.start_bytes.to_string())
            .arg(&esp.image));
        assert_eq!(
            blkid.trim(),
            esp.uuid,
            "the FAT volume id is the one in fstab"
        );
    }
    let root = &partitions[2];
    let root_fs = Mounted::new(&root.image, root.start_bytes, root.size_bytes);
    let fstab = std::fs::read_to_string(root_fs.path("etc/fstab")).expect("fstab");
    assert!(
        fstab.contains(&format!("UUID={} /boot/efi vfat", partitions[0].uuid)),
        "{fstab}"
    );
}

#[test]
fn an_ubuntu_named_image_without_netplan_fails_like_on_a_real_server() {
    if !is_root() {
        eprintln!(
            "SKIPPED an_ubuntu_named_image_without_netplan_fails_like_on_a_real_server: needs root"
        );
        return;
    }
    let work = tempfile::tempdir().expect("work dir");
    let tarball = make_tarball(work.path());
    let ubuntu = "Ubuntu-2404-noble-amd64-test.tar.gz";
    std::fs::rename(&tarball, work.path().join(ubuntu)).expect("renamed");
    let config = SMALL_LAYOUT.replace(test_tarball::IMAGE_NAME, ubuntu);
    let (rescue, config_path, script) = make_rescue(work.path(), &config);
    std::fs::rename(work.path().join(ubuntu), rescue.join("root").join(ubuntu)).expect("in place");
    let mut output = Vec::new();
    let outcome = run(
        Options {
            config: config_path,
            post_install: Some(script),
            facts: facts(&work.path().join("disks")),
            system_root: rescue,
            disk_mode: DiskMode::Auto,
            input: Input::SkipWait,
        },
        &mut output,
    );
    let output = String::from_utf8_lossy(&output);
    assert_eq!(outcome.exit_code, 1, "{output}");
    assert!(
        outcome.errors[0].contains("netplan generate failed"),
        "{:?}",
        outcome.errors
    );
    assert!(!output.contains("INSTALLATION COMPLETE"));
}

#[test]
fn a_zstd_tarball_extracts_with_the_same_tar_options() {
    if !is_root() {
        eprintln!("SKIPPED a_zstd_tarball_extracts_with_the_same_tar_options: needs root");
        return;
    }
    if Command::new("zstd").arg("--version").output().is_err() {
        eprintln!("SKIPPED a_zstd_tarball_extracts_with_the_same_tar_options: zstd is missing");
        return;
    }
    let work = tempfile::tempdir().expect("work dir");
    let gzip = make_tarball(work.path());
    let name = "Debian-1208-bookworm-amd64-test.tar.zst";
    let plain = work.path().join("image.tar");
    sh(Command::new("sh").arg("-c").arg(format!(
        "gzip -dc '{}' > '{}' && zstd -q --rm '{}' -o '{}'",
        gzip.display(),
        plain.display(),
        plain.display(),
        work.path().join(name).display()
    )));
    let config = SMALL_LAYOUT.replace(test_tarball::IMAGE_NAME, name);
    let (rescue, config_path, script) = make_rescue(work.path(), &config);
    std::fs::rename(work.path().join(name), rescue.join("root").join(name)).expect("in place");
    let mut output = Vec::new();
    let outcome = run(
        Options {
            config: config_path,
            post_install: Some(script),
            facts: facts(&work.path().join("disks")),
            system_root: rescue,
            disk_mode: DiskMode::Directory,
            input: Input::SkipWait,
        },
        &mut output,
    );
    let output = String::from_utf8_lossy(&output);
    assert_eq!(outcome.exit_code, 0, "{output}\n{:?}", outcome.errors);
    let root = work.path().join("disks/root");
    let capability = rustix::fs::getxattr(
        root.join("usr/bin/ping"),
        "security.capability",
        &mut [0u8; 64],
    )
    .expect("the capability survived");
    assert_eq!(capability, CAPABILITY.len());
    assert!(output.contains("a directory"), "{output}");
}

#[test]
fn issue_12_encrypted_partitions_get_a_crypttab_and_mapper_devices() {
    if !is_root() {
        eprintln!(
            "SKIPPED issue_12_encrypted_partitions_get_a_crypttab_and_mapper_devices: needs root"
        );
        return;
    }
    let work = tempfile::tempdir().expect("work dir");
    make_tarball(work.path());
    let config = SMALL_LAYOUT
        .replace("PART / ext4 all", "PART / ext4 all crypt")
        .replace(
            "BOOTLOADER grub\n",
            "BOOTLOADER grub\nCRYPTPASSWORD correct horse # battery\n",
        );
    let (outcome, output, _) = install(&config, DiskMode::Auto, work.path());
    assert_eq!(outcome.exit_code, 0, "{output}\n{:?}", outcome.errors);
    assert!(
        output.contains("instead of disk images: encryption is not modelled on disk images"),
        "{output}"
    );
    assert!(
        output.contains("Encrypt partitions and create /etc/crypttab"),
        "{output}"
    );
    let manifest = outcome.manifest.expect("a manifest");
    let [encrypted] = manifest.encrypted.as_slice() else {
        panic!("one encrypted partition: {:?}", manifest.encrypted);
    };
    assert_eq!(encrypted.mount, "/");
    // The LUKS stand-in opens with the passphrase as installimage read it, and nothing else.
    assert!(encrypted.opens_with("correct horse # battery"));
    assert!(!encrypted.opens_with("correct horse"));
    let root = work.path().join("disks/root");
    let crypttab = std::fs::read_to_string(root.join("etc/crypttab")).expect("crypttab");
    assert_eq!(
        crypttab,
        format!("luks-{0} UUID={0} none luks\n", encrypted.uuid)
    );
    let fstab = std::fs::read_to_string(root.join("etc/fstab")).expect("fstab");
    assert!(
        fstab.contains(&format!(
            "/dev/mapper/luks-{} / ext4 defaults 0 0 # crypted",
            encrypted.uuid
        )),
        "{fstab}"
    );
    assert!(!fstab.contains("horse"));
    // The passphrase is in no file this simulation wrote for people to read.
    let manifest_text =
        std::fs::read_to_string(work.path().join("disks/installed.json")).expect("manifest");
    assert!(!manifest_text.contains("horse"), "{manifest_text}");
}
