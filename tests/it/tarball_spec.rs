//! The spec of the end-to-end tests' tarball: Debian 12 minbase with Kubernetes 1.34.2 from a
//! loopback mirror (`caph_sim::mirror`, the versions of `cloud::VERSIONS`), and a `[robot]` table.
//! Its own file, so that the `installs` benchmark builds and installs the same tarball the tests
//! do (it includes this file by path).

/// The spec, with every download from `mirror` (the mirror's URL).
pub fn tarball_spec(mirror: &str) -> String {
    format!(
        r#"[image]
name = "debian-12-tarball-e2e"
description = "end-to-end tarball test image"

[base]
distribution = "debian"
version = "12"

[base.rootfs]
suite = "bookworm"
variant = "minbase"

[kubernetes]
version = "1.34.2"
source = "binaries"
binaries_url = "{mirror}/kubernetes"

[containerd]
version = "2.1.4"
url = "{mirror}/containerd"

[runc]
version = "1.3.6"
url = "{mirror}/runc"

[crictl]
version = "1.34.0"
url = "{mirror}/crictl"

[cni]
version = "1.9.1"
url = "{mirror}/cni"

[[system.files]]
path = "/etc/e2e-marker"
content = "built by the tarball test\n"

[robot]
hostname = "node-{{server_number}}"

[robot.disk]
# Resolved by `build robot` against the drives the rescue system lists.
drives = ["smallest", "smallest"]
raid_level = 1

[[robot.disk.partitions]]
mount = "/boot"
filesystem = "ext4"
size = "1024M"

[[robot.disk.partitions]]
mount = "/"
filesystem = "ext4"
size = "all"
"#
    )
}
