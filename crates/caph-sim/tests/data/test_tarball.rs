//! A small installimage-compatible rootfs tarball for tests: host binaries with their libraries, a capability xattr, and entries installimage must skip.
//!
//! Included with `#[path]` by the installimage and robot machine tests (it lives below `data/` so
//! cargo does not build it as a test of its own).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The image's file name: Debian, amd64, as installimage reads names.
pub const IMAGE_NAME: &str = "Debian-1208-bookworm-amd64-test.tar.gz";
/// `cap_net_raw+ep` as a VFS capability (revision 2).
pub const CAPABILITY: &[u8] = &[
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];

pub fn sh(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A rootfs tarball with what installimage insists on, an ed25519 host key placeholder, a
/// capability xattr, and entries under
/// proc, sys and dev that installimage must skip.
pub fn make_tarball(work: &Path) -> PathBuf {
    let tree = work.join("tree");
    for dir in [
        "etc/ssh",
        "boot",
        "usr/sbin",
        "root",
        "proc",
        "sys",
        "dev",
        "var/lib/dbus",
    ] {
        std::fs::create_dir_all(tree.join(dir)).expect("dir");
    }
    // Debian's usrmerge layout: /bin and /lib64 are links into /usr.
    for binary in [
        "/usr/bin/bash",
        "/usr/bin/env",
        "/usr/bin/true",
        "/usr/bin/cat",
        "/usr/bin/hostname",
        "/usr/bin/ssh-keygen",
    ] {
        caph_sim::libraries::copy_with_libraries(Path::new(binary), &tree)
            .unwrap_or_else(|error| panic!("copying {binary} and its libraries: {error}"));
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
    ] {
        if !tree.join(link).exists() && tree.join(target).exists() {
            std::os::unix::fs::symlink(target, tree.join(link)).expect("symlink");
        }
    }
    let files = [
        ("etc/ssh/sshd_config", "PermitRootLogin prohibit-password\n"),
        // An empty placeholder: installimage regenerates exactly the key types whose files
        // exist (ed25519 here, and not rsa).
        ("etc/ssh/ssh_host_ed25519_key", ""),
        ("etc/hostname", "image-builder\n"),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
        (
            "var/lib/dbus/machine-id",
            "0123456789abcdef0123456789abcdef\n",
        ),
        ("boot/vmlinuz-6.1.0-test", "not a kernel\n"),
        ("boot/initrd.img-6.1.0-test", "not an initrd\n"),
        ("usr/sbin/update-initramfs", "#!/bin/sh\nexit 0\n"),
        ("usr/sbin/grub-install", "#!/bin/sh\nexit 0\n"),
        ("usr/bin/ping", "pretend ping\n"),
        ("proc/leftover", "must not be extracted\n"),
        ("sys/leftover", "must not be extracted\n"),
        ("dev/leftover", "must not be extracted\n"),
    ];
    for (path, content) in files {
        std::fs::write(tree.join(path), content).expect("file");
    }
    rustix::fs::setxattr(
        tree.join("usr/bin/ping"),
        "security.capability",
        CAPABILITY,
        rustix::fs::XattrFlags::empty(),
    )
    .expect("setting a capability as root");
    let tarball = work.join(IMAGE_NAME);
    std::fs::create_dir_all(tarball.parent().expect("parent")).expect("dir");
    sh(Command::new("tar")
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=security.capability",
            "-czf",
        ])
        .arg(&tarball)
        .arg("-C")
        .arg(&tree)
        .arg("."));
    tarball
}
