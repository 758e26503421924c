//! Root-filesystem rules (empty virtual filesystems, excluded caches), the manifest, option
//! parsing, and errors that name their path.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use caph_rootfs::manifest::{self, Manifest, ManifestInput, Package};
use caph_rootfs::pack::{self, Compression, PackError, PackOptions, ROOTFS_EXCLUDES};

use crate::support;

fn listing(archive: &std::path::Path) -> Vec<String> {
    let output = support::run(Command::new("tar").arg("-tzf").arg(archive));
    String::from_utf8(output)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn rootfs_tree(root: &std::path::Path) {
    for file in [
        "proc/cpuinfo",
        "sys/kernel/x",
        "dev/pts/0",
        "run/lock/y",
        "tmp/scratch",
        "var/tmp/scratch",
        "var/cache/apt/archives/containerd_1.6.20_amd64.deb",
        "var/cache/apt/archives/partial/half.deb",
        "var/cache/apt/archives/lock",
        "var/cache/apt/pkgcache.bin",
        "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
        "var/lib/apt/lists/partial/x",
        "etc/hostname",
        "usr/lib/os-release",
        "nested/proc/kept",
    ] {
        let path = root.join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, file).unwrap();
    }
}

#[test]
fn rootfs_options_empty_the_virtual_filesystems_and_drop_caches() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("rootfs");
    rootfs_tree(&root);
    let archive = temp.path().join("rootfs.tar.gz");
    let summary = pack::pack_to_path(
        &root,
        &archive,
        &PackOptions::rootfs(Compression::gzip()),
        &mut |_| {},
    )
    .unwrap();
    let expected = [
        "./",
        "./dev/",
        "./etc/",
        "./etc/hostname",
        "./nested/",
        "./nested/proc/",
        "./nested/proc/kept",
        "./proc/",
        "./run/",
        "./sys/",
        "./tmp/",
        "./usr/",
        "./usr/lib/",
        "./usr/lib/os-release",
        "./var/",
        "./var/cache/",
        "./var/cache/apt/",
        "./var/cache/apt/archives/",
        "./var/cache/apt/archives/lock",
        "./var/cache/apt/archives/partial/",
        "./var/lib/",
        "./var/lib/apt/",
        "./var/lib/apt/lists/",
        "./var/tmp/",
    ];
    assert_eq!(listing(&archive), expected);
    // tmp/scratch, var/tmp/scratch, the .deb, partial/half.deb, pkgcache.bin, 2 list entries.
    assert_eq!(summary.entries.excluded, 7);

    // The same tree packed plainly keeps everything.
    let plain = temp.path().join("plain.tar.gz");
    pack::pack_to_path(
        &root,
        &plain,
        &PackOptions::plain(Compression::gzip()),
        &mut |_| {},
    )
    .unwrap();
    assert!(listing(&plain).contains(&"./proc/cpuinfo".to_owned()));
    assert!(listing(&plain).contains(&"./var/lib/apt/lists/partial/x".to_owned()));
    assert_eq!(ROOTFS_EXCLUDES.len(), 6);
}

#[test]
fn manifest_sits_next_to_the_tarball() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("rootfs");
    rootfs_tree(&root);
    let archive = temp
        .path()
        .join("Debian-1200-bookworm-amd64-k8s-v1.31.2.tar.zst");
    let summary = pack::pack_to_path(
        &root,
        &archive,
        &PackOptions::rootfs(Compression::zstd()),
        &mut |_| {},
    )
    .unwrap();
    let input = ManifestInput {
        spec_name: "debian-12-k8s".to_owned(),
        spec_digest: "sha256:abc".to_owned(),
        versions: BTreeMap::from([("kubernetes".to_owned(), "v1.31.2".to_owned())]),
        packages: vec![
            Package {
                name: "runc".to_owned(),
                version: "1.1.5".to_owned(),
                architecture: None,
            },
            Package {
                name: "containerd".to_owned(),
                version: "1.6.20".to_owned(),
                architecture: Some("amd64".to_owned()),
            },
        ],
    };
    let built = manifest::build_time(Some(1_700_000_000));
    let manifest = Manifest::new(
        input,
        "Debian-1200-bookworm-amd64-k8s-v1.31.2.tar.zst",
        &summary,
        built,
    );
    let path = manifest::write_manifest(&archive, &manifest).unwrap();
    assert_eq!(
        path,
        temp.path()
            .join("Debian-1200-bookworm-amd64-k8s-v1.31.2.tar.zst.manifest.json")
    );

    let text = fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["spec"]["name"], "debian-12-k8s");
    assert_eq!(json["versions"]["kubernetes"], "v1.31.2");
    assert_eq!(
        json["packages"][0]["name"], "containerd",
        "packages are sorted"
    );
    assert_eq!(json["tarball"]["sha256"], summary.sha256.as_str());
    assert_eq!(json["tarball"]["compression"]["kind"], "zstd");
    assert_eq!(
        json["tarball"]["size"],
        fs::metadata(&archive).unwrap().len()
    );
    assert_eq!(json["file_count"], summary.entries.total());
    assert_eq!(json["total_size"], summary.file_bytes);
    assert_eq!(json["build_time"], "2023-11-14T22:13:20Z");
    let back: Manifest = serde_json::from_str(&text).unwrap();
    assert_eq!(back, manifest);
}

#[test]
fn compression_names_parse_and_levels_are_checked() {
    assert_eq!(
        "gzip".parse::<Compression>().unwrap(),
        Compression::Gzip { level: 6 }
    );
    assert_eq!(
        "zstd:19".parse::<Compression>().unwrap(),
        Compression::Zstd { level: 19 }
    );
    assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
    for bad in ["gzip:0", "gzip:13", "zstd:23", "zstd:x", "xz", "none:1"] {
        assert!(bad.parse::<Compression>().is_err(), "{bad} accepted");
    }
    assert_eq!(Compression::Zstd { level: 7 }.to_string(), "zstd:7");
}

#[test]
fn errors_name_the_path_and_leave_nothing_behind() {
    let temp = tempfile::tempdir().unwrap();
    let missing = temp.path().join("missing");
    let output = temp.path().join("out.tar");
    let error = pack::pack_to_path(
        &missing,
        &output,
        &PackOptions::plain(Compression::None),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&error, PackError::Read { path, .. } if *path == missing),
        "{error:?}"
    );
    assert!(error.to_string().contains("missing"), "{error}");

    let file = temp.path().join("file");
    fs::write(&file, b"x").unwrap();
    let error = pack::pack_to_path(
        &file,
        &output,
        &PackOptions::plain(Compression::None),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(error, PackError::NotADirectory { .. }),
        "{error:?}"
    );

    let tree = temp.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    let nowhere = temp.path().join("no/such/dir/out.tar.gz");
    let error = pack::pack_to_path(
        &tree,
        &nowhere,
        &PackOptions::plain(Compression::gzip()),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&error, PackError::Write { path, .. } if *path == nowhere),
        "{error:?}"
    );

    let mut options = PackOptions::plain(Compression::None);
    options.excludes = vec!["/tmp/*".to_owned()];
    let error = pack::pack_to_path(&tree, &output, &options, &mut |_| {}).unwrap_err();
    assert!(matches!(error, PackError::Pattern { .. }), "{error:?}");

    // Nothing half-written is left in the output directory.
    let leftovers: Vec<_> = fs::read_dir(temp.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name.to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn packs_to_a_stream_with_the_same_bytes_as_to_a_file() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("rootfs");
    rootfs_tree(&root);
    let mut options = PackOptions::rootfs(Compression::gzip());
    options.source_date_epoch = Some(1);
    let file = temp.path().join("a.tar.gz");
    let to_file = pack::pack_to_path(&root, &file, &options, &mut |_| {}).unwrap();
    let mut stream = Vec::new();
    let to_stream = pack::pack_to_writer(&root, &mut stream, &options, &mut |_| {}).unwrap();
    assert_eq!(stream, fs::read(&file).unwrap());
    assert_eq!(to_file.sha256, to_stream.sha256);
}

/// installimage extracts with exactly these flags (see the reference): the archive must unpack
/// without a warning and keep `security.capability`.
#[test]
fn installimage_extraction_keeps_capabilities() {
    let test = "installimage_extraction_keeps_capabilities";
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("rootfs");
    rootfs_tree(&root);
    let ping = root.join("usr/bin/ping");
    fs::create_dir_all(ping.parent().unwrap()).unwrap();
    fs::write(&ping, b"#!/bin/sh\n").unwrap();
    // What `setcap cap_net_raw+ep` writes: revision 2, effective, permitted CAP_NET_RAW.
    let mut capability = 0x0200_0001u32.to_le_bytes().to_vec();
    capability.extend_from_slice(&(1u32 << 13).to_le_bytes());
    capability.extend_from_slice(&[0; 12]);
    let capability_set = support::is_root()
        && rustix::fs::lsetxattr(
            &ping,
            "security.capability",
            &capability,
            rustix::fs::XattrFlags::empty(),
        )
        .is_ok();
    if !capability_set {
        support::skipped(test, "setting security.capability needs root");
    }

    let archive = temp.path().join("Debian-1200-bookworm-amd64-test.tar.gz");
    pack::pack_to_path(
        &root,
        &archive,
        &PackOptions::rootfs(Compression::gzip()),
        &mut |_| {},
    )
    .unwrap();
    let target = temp.path().join("target");
    fs::create_dir_all(&target).unwrap();
    support::run(
        Command::new("tar")
            .args([
                "-x",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=security.capability",
            ])
            .args(["--exclude", "sys", "--exclude", "proc", "--exclude", "dev"])
            .arg("-f")
            .arg(&archive)
            .arg("-C")
            .arg(&target),
    );
    assert_eq!(
        fs::read(target.join("etc/hostname")).unwrap(),
        b"etc/hostname"
    );
    assert!(!target.join("proc").exists() && !target.join("sys").exists());
    if capability_set {
        let mut value = [0u8; 64];
        let length = rustix::fs::lgetxattr(
            target.join("usr/bin/ping"),
            "security.capability",
            &mut value[..],
        )
        .unwrap();
        assert_eq!(&value[..length], capability.as_slice());
    }
}

#[test]
fn an_output_inside_the_tree_is_not_packed_into_itself() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("rootfs");
    rootfs_tree(&root);
    let archive = root.join("self.tar.gz");
    let summary = pack::pack_to_path(
        &root,
        &archive,
        &PackOptions::plain(Compression::gzip()),
        &mut |_| {},
    )
    .unwrap();
    let names = listing(&archive);
    assert!(
        !names.iter().any(|name| name.contains("self.tar.gz")),
        "{names:?}"
    );
    assert_eq!(summary.entries.excluded, 1);
}

#[test]
fn source_date_epoch_is_an_integer_or_absent() {
    use std::ffi::OsStr;
    assert_eq!(pack::source_date_epoch(None).unwrap(), None);
    assert_eq!(pack::source_date_epoch(Some(OsStr::new(""))).unwrap(), None);
    assert_eq!(
        pack::source_date_epoch(Some(OsStr::new("1700000000"))).unwrap(),
        Some(1_700_000_000)
    );
    for bad in ["1.5", "yesterday", " 1", "0x10"] {
        let error = pack::source_date_epoch(Some(OsStr::new(bad))).unwrap_err();
        assert!(
            matches!(error, PackError::SourceDateEpoch { .. }),
            "{bad}: {error:?}"
        );
    }
}

#[test]
fn cancelling_stops_the_run_and_leaves_no_file() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("tree");
    fs::create_dir_all(&root).unwrap();
    // 200 MiB of zeros: long enough that the run is still going when the flag is set.
    fs::write(root.join("zeros"), vec![0u8; 200 << 20]).unwrap();
    let options = PackOptions::plain(Compression::None);
    let cancel = options.cancel.clone();
    let output = temp.path().join("out.tar");
    let mut reports = 0;
    let error = pack::pack_to_path(&root, &output, &options, &mut |event| {
        if let pack::PackEvent::Progress(_) = event {
            reports += 1;
            cancel.cancel();
        }
    })
    .unwrap_err();
    assert!(matches!(error, PackError::Cancelled), "{error:?}");
    assert!(reports >= 1);
    let left: Vec<_> = fs::read_dir(temp.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(left, ["tree"], "nothing but the tree is left");
}

/// The rescue system also has bsdtar (libarchive): it must read the archives cleanly too, as
/// long as no name longer than ustar's fields is non-UTF-8.
#[test]
fn bsdtar_reads_the_archives_too() {
    let test = "bsdtar_reads_the_archives_too";
    if Command::new("bsdtar").arg("--version").output().is_err() {
        support::skipped(
            test,
            "bsdtar is not installed (Debian package libarchive-tools)",
        );
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("tree");
    let deep = root.join(format!(
        "{}/{}/{}",
        "a".repeat(120),
        "b".repeat(120),
        "c".repeat(120)
    ));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("file"), b"deep\n").unwrap();
    fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"caf\xe9")),
        b"latin-1\n",
    )
    .unwrap();
    let sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(1 << 30).unwrap();
    fs::hard_link(root.join("sparse"), root.join("sparse-link")).unwrap();
    std::os::unix::fs::symlink("sparse", root.join("symlink")).unwrap();

    for compression in [Compression::gzip(), Compression::zstd(), Compression::None] {
        let archive = temp
            .path()
            .join(format!("tree.{}", compression.extension()));
        pack::pack_to_path(
            &root,
            &archive,
            &PackOptions::plain(compression),
            &mut |_| {},
        )
        .unwrap();
        let target = temp.path().join(format!("bsdtar-{}", compression.name()));
        fs::create_dir_all(&target).unwrap();
        support::run(
            Command::new("bsdtar")
                .arg("-xf")
                .arg(&archive)
                .arg("-C")
                .arg(&target),
        );
        assert_eq!(
            fs::read(target.join(deep.strip_prefix(&root).unwrap()).join("file")).unwrap(),
            b"deep\n"
        );
        assert_eq!(
            fs::read(target.join(std::ffi::OsStr::from_bytes(b"caf\xe9"))).unwrap(),
            b"latin-1\n"
        );
        assert_eq!(fs::metadata(target.join("sparse")).unwrap().len(), 1 << 30);
        assert!(
            support::allocated(&target.join("sparse")) < 1 << 20,
            "{compression}: not sparse"
        );
        assert_eq!(
            fs::read_link(target.join("symlink")).unwrap(),
            std::path::Path::new("sparse")
        );
    }
}
