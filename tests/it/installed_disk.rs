//! What installimage left on a drive, read from the drive image after the server went down: the
//! files the real installimage writes into the new system, and the tarball's own parts that
//! must survive it. Used for Hetzner's installimage, CAPH's fork and the simulated one alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use caph_sim::installimage::{InstalledDisk, Manifest};

/// A drive's installed system, mounted read-only (`/` and `/boot`) until dropped.
pub struct MountedSystem {
    pub manifest: Manifest,
    pub root: PathBuf,
    mounts: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Drop for MountedSystem {
    fn drop(&mut self) {
        for point in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg(point).status();
        }
    }
}

impl MountedSystem {
    /// Reads the partition table and fstab of `image` (the drive `device` in the rescue system)
    /// and mounts its ext filesystems where the fstab puts them, below a temporary directory.
    pub async fn mount(image: &Path, device: &str) -> MountedSystem {
        let manifest = caph_sim::robot::read_installed_system(image, device)
            .await
            .expect("the drive can be read")
            .unwrap_or_else(|| panic!("{}: no installed system on it", image.display()));
        let InstalledDisk::Images { partitions } = &manifest.disk else {
            panic!("installed into a directory: {manifest:?}");
        };
        let dir = tempfile::tempdir().expect("mount point");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let mut ordered: Vec<_> = partitions
            .iter()
            .filter(|partition| partition.mount.starts_with('/') && partition.fs.starts_with("ext"))
            .collect();
        ordered.sort_by_key(|partition| partition.mount.len());
        let mut mounts = Vec::new();
        for partition in ordered {
            let point = root.join(partition.mount.trim_start_matches('/'));
            let status = Command::new("mount")
                .arg("-o")
                .arg(format!(
                    "ro,loop,offset={},sizelimit={}",
                    partition.start_bytes, partition.size_bytes
                ))
                .arg(&partition.image)
                .arg(&point)
                .status()
                .expect("mount runs");
            assert!(status.success(), "mounting {}", partition.mount);
            mounts.push(point);
        }
        MountedSystem {
            manifest,
            root,
            mounts,
            _dir: dir,
        }
    }

    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.root.join(path.trim_start_matches('/')))
            .unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    pub fn exists(&self, path: &str) -> bool {
        self.root
            .join(path.trim_start_matches('/'))
            .symlink_metadata()
            .is_ok()
    }
}

/// What the caller knows about the install.
pub struct Expected<'a> {
    pub hostname: &'a str,
    /// Public key lines that must be in root's `authorized_keys` (the activation's).
    pub authorized_keys: &'a [String],
    /// Fingerprints (`SHA256:...`) of the rescue system's host keys, which the node must not
    /// share.
    pub rescue_host_key_fingerprints: &'a [String],
}

/// The checks of a real install (`shared/reference/real-consumers.md`): host keys, fstab by
/// UUID, hostname and hosts, the network configuration for the interface installimage found,
/// resolv.conf, time sync, our sysctls winning over installimage's, the post-install marker,
/// root's keys, and GRUB in the MBR.
pub async fn check_real_install(image: &Path, device: &str, expected: &Expected<'_>) {
    let system = MountedSystem::mount(image, device).await;
    let InstalledDisk::Images { partitions } = &system.manifest.disk else {
        unreachable!()
    };
    let what = format!("the disk installed on {}", image.display());

    // Host keys: every type the tarball left a placeholder for, with key material now, and none
    // shared with the rescue system.
    for key_type in caph_core::plan::HOST_KEY_PLACEHOLDER_TYPES {
        let private = system.read(&format!("/etc/ssh/ssh_host_{key_type}_key"));
        assert!(
            private.contains("PRIVATE KEY"),
            "{what}: ssh_host_{key_type}_key is still the tarball's empty placeholder"
        );
        let listing = Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(
                system
                    .root
                    .join(format!("etc/ssh/ssh_host_{key_type}_key.pub")),
            )
            .output()
            .expect("ssh-keygen runs");
        let listing = String::from_utf8_lossy(&listing.stdout);
        let fingerprint = listing.split_whitespace().nth(1).unwrap_or_default();
        assert!(
            fingerprint.starts_with("SHA256:"),
            "{what}: ssh_host_{key_type}_key.pub: {listing}"
        );
        assert!(
            !expected
                .rescue_host_key_fingerprints
                .iter()
                .any(|rescue| rescue == fingerprint),
            "{what}: the {key_type} host key is the rescue system's"
        );
    }

    // fstab by UUID, for / and /boot.
    let fstab = system.read("/etc/fstab");
    for mount in ["/", "/boot"] {
        let partition = partitions
            .iter()
            .find(|partition| partition.mount == mount)
            .unwrap_or_else(|| panic!("{what}: no {mount} partition in {partitions:?}"));
        assert!(
            fstab.contains(&format!("UUID={} {mount} ext4", partition.uuid)),
            "{what}: {mount} is not mounted by UUID:\n{fstab}"
        );
    }

    // Hostname, and hosts in installimage's format: its header, then "address hostname".
    assert_eq!(
        system.read("/etc/hostname").trim(),
        expected.hostname,
        "{what}"
    );
    let interfaces = system.read("/etc/network/interfaces");
    let stanza = |key: &str| {
        interfaces
            .lines()
            .find_map(|line| line.trim().strip_prefix(&format!("{key} ")))
            .map(str::to_owned)
            .unwrap_or_else(|| {
                panic!("{what}: no `{key}` in /etc/network/interfaces:\n{interfaces}")
            })
    };
    let address = stanza("address");
    let hosts = system.read("/etc/hosts");
    assert!(
        hosts.starts_with("### Hetzner Online GmbH installimage"),
        "{what}:\n{hosts}"
    );
    assert!(
        hosts
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>()
                == [address.as_str(), expected.hostname]),
        "{what}: /etc/hosts has no `{address} {}` line:\n{hosts}",
        expected.hostname
    );

    // The network for the interface installimage found, and the `route` its stanza calls.
    let interface = interfaces
        .lines()
        .find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            (words.len() == 4 && words[0] == "iface" && words[2] == "inet" && words[3] == "static")
                .then(|| words[1].to_owned())
        })
        .unwrap_or_else(|| panic!("{what}: no static IPv4 stanza:\n{interfaces}"));
    assert!(
        interfaces.contains(&format!("auto {interface}")),
        "{what}:\n{interfaces}"
    );
    stanza("gateway");
    if interfaces.contains("up route add") {
        assert!(
            system.exists("/usr/sbin/route") || system.exists("/sbin/route"),
            "{what}: the network stanza runs `route`, which the image lacks (net-tools)"
        );
    }

    // resolv.conf with Hetzner's resolvers.
    let resolv = system.read("/etc/resolv.conf");
    assert!(
        resolv.contains("nameserver 185.12.64.1"),
        "{what}:\n{resolv}"
    );

    // Time sync: installimage configures the daemon the image has.
    let timesyncd: String = std::fs::read_dir(system.root.join("etc/systemd/timesyncd.conf.d"))
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| std::fs::read_to_string(entry.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        timesyncd.contains("NTP=ntp1.hetzner.de"),
        "{what}: systemd-timesyncd is not configured with Hetzner's servers: {timesyncd:?}"
    );

    // sysctl: installimage's file is there, and ours comes after it, so no key of ours is set
    // again by a later file.
    let sysctl_dir = system.root.join("etc/sysctl.d");
    let mut files: Vec<String> = std::fs::read_dir(&sysctl_dir)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".conf"))
        .collect();
    files.sort();
    let ours = caph_core::plan::SYSCTL_CONFIG_PATH
        .rsplit('/')
        .next()
        .unwrap();
    let position = |name: &str| files.iter().position(|file| file == name);
    assert!(
        position("99-hetzner.conf").is_some() && position(ours) > position("99-hetzner.conf"),
        "{what}: {files:?}"
    );
    let settings = |text: &str| -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|line| line.split_once('='))
            .filter(|(key, _)| !key.trim().starts_with('#'))
            .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
            .collect()
    };
    let our_settings = settings(&system.read(&format!("/etc/sysctl.d/{ours}")));
    for later in &files[position(ours).unwrap() + 1..] {
        let overridden: Vec<_> = settings(&system.read(&format!("/etc/sysctl.d/{later}")))
            .into_keys()
            .filter(|key| our_settings.contains_key(key))
            .collect();
        assert!(
            overridden.is_empty(),
            "{what}: {later} overrides {overridden:?}"
        );
    }

    // The post-install script ran in the new system; root's keys are the activation's.
    assert!(
        system
            .read("/etc/caph-image-install")
            .contains(&format!("hostname={}", expected.hostname)),
        "{what}: the post-install marker"
    );
    let authorized = system.read("/root/.ssh/authorized_keys");
    for key in expected.authorized_keys {
        let material = key.split_whitespace().nth(1).unwrap_or_default();
        assert!(authorized.contains(material), "{what}:\n{authorized}");
    }
    // A machine-id of this install's own (installimage makes one where the image has the file,
    // empty in the tarball); the first-boot host key unit is still enabled.
    let machine_id = system.read("/etc/machine-id");
    assert!(
        machine_id.trim().len() == 32 && machine_id.trim().bytes().all(|b| b.is_ascii_hexdigit()),
        "{what}: machine-id {machine_id:?}"
    );
    assert!(
        system.exists("/etc/systemd/system/ssh.service.wants/caph-image-host-keys.service"),
        "{what}"
    );

    // GRUB in the MBR: its boot code names itself in the first sector.
    let mut sector = vec![0u8; 512];
    use std::io::Read as _;
    std::fs::File::open(image)
        .and_then(|mut file| file.read_exact(&mut sector))
        .unwrap();
    assert!(
        sector.windows(4).any(|window| window == b"GRUB"),
        "{what}: no GRUB boot code in the MBR"
    );
}
