//! Shared test helpers: the fixture tree with every file kind, a tree snapshot for comparison,
//! and GNU tar / gzip / zstd invocations.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use caph_rootfs::pack::{Compression, PackEvent};
use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};
use sha2::{Digest, Sha256};

/// The `SOURCE_DATE_EPOCH` the tests pack with (2023-11-14): fixture files made now are
/// clamped to it, the old ones keep their mtime.
pub const EPOCH: i64 = 1_700_000_000;
/// Apparent size of the big sparse file: 10 GiB.
pub const BIG_SPARSE: u64 = 10 << 30;
/// A uid and gid beyond the 7-digit octal limit (2^21 - 1).
pub const BIG_ID: u32 = 3_000_000;

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn skipped(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
}

/// Parts of the fixture that could not be built here, with the reason.
#[derive(Debug, Default)]
pub struct Fixture {
    pub skipped: Vec<(&'static str, String)>,
}

/// Deterministic pseudo-random bytes (xorshift), so content is incompressible but repeatable.
pub fn noise(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn write(path: &Path, contents: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

fn raw(root: &Path, bytes: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(bytes))
}

fn set_mtime(path: &Path, seconds: i64) {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: seconds,
            tv_nsec: 0,
        },
        last_modification: Timespec {
            tv_sec: seconds,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// Sets the atime of every path under `root` to `seconds`, leaving mtimes alone.
pub fn touch_atimes(root: &Path, seconds: i64) {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: seconds,
            tv_nsec: 0,
        },
        last_modification: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
    };
    for path in walk(root) {
        rustix::fs::utimensat(CWD, &path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }
}

/// All paths under `root` (root included), sorted.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut paths = vec![root.to_owned()];
    let mut index = 0;
    while index < paths.len() {
        let path = paths[index].clone();
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            let mut children: Vec<PathBuf> = fs::read_dir(&path)
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .collect();
            children.sort();
            paths.extend(children);
        }
        index += 1;
    }
    paths.sort();
    paths
}

/// Builds the fixture under `root`: every kind of entry the writer must handle.
/// `big_sparse` adds the 10 GiB sparse file.
pub fn build_fixture(root: &Path, big_sparse: bool) -> Fixture {
    let mut fixture = Fixture::default();
    fs::create_dir_all(root).unwrap();

    // Plain files of awkward sizes: empty, exactly one block, more than one gzip chunk.
    write(&root.join("files/empty"), b"");
    write(&root.join("files/block"), &noise(1, 512));
    write(&root.join("files/big"), &noise(2, 3 << 20 | 123));
    write(
        &root.join("files/text"),
        "hello\n".repeat(10_000).as_bytes(),
    );
    fs::set_permissions(root.join("files/text"), fs::Permissions::from_mode(0o600)).unwrap();

    // Hard link groups; `links/hard-to-long` sorts before the long path it shares an inode
    // with, so it carries the data and the long name becomes the link.
    write(&root.join("hardlinks/a"), b"group one\n");
    fs::hard_link(root.join("hardlinks/a"), root.join("hardlinks/b")).unwrap();
    fs::create_dir_all(root.join("other")).unwrap();
    fs::hard_link(root.join("hardlinks/a"), root.join("other/c")).unwrap();
    write(&root.join("hardlinks/x"), &noise(3, 70_000));
    fs::hard_link(root.join("hardlinks/x"), root.join("hardlinks/y")).unwrap();

    // A 300+ byte path (PAX path), a ~200 byte one (ustar prefix split), long link targets.
    let mut long = PathBuf::from("long");
    for index in 0..5 {
        long.push(format!("{index}{}", "d".repeat(57)));
    }
    long.push("a-file-at-the-end-of-a-very-long-path");
    assert!(long.as_os_str().len() > 300);
    write(&root.join(&long), b"far away\n");
    let mut medium = PathBuf::from("medium");
    for index in 0..3 {
        medium.push(format!("{index}{}", "m".repeat(50)));
    }
    medium.push("f".repeat(40));
    write(&root.join(&medium), b"in the prefix\n");
    fs::create_dir_all(root.join("links")).unwrap();
    fs::hard_link(root.join(&long), root.join("links/hard-to-long")).unwrap();
    symlink(Path::new("..").join(&long), root.join("links/sym-to-long")).unwrap();
    symlink("../files/text", root.join("links/relative")).unwrap();
    symlink("/nonexistent/absolute", root.join("links/dangling")).unwrap();
    symlink(
        OsStr::from_bytes(b"caf\xe9"),
        root.join("links/binary-target"),
    )
    .unwrap();

    // Names that are not UTF-8, short and long.
    write(&raw(root, b"names/caf\xe9"), b"latin-1 name\n");
    write(
        &raw(root, b"names/\xff\xfe-dir/inner"),
        b"inside a binary directory\n",
    );
    let mut long_binary = b"names/".to_vec();
    for _ in 0..3 {
        long_binary.extend_from_slice(&[b'\xe9'; 90]);
        long_binary.push(b'/');
    }
    long_binary.extend_from_slice(b"end\xff");
    write(&raw(root, &long_binary), b"long and binary\n");

    // Sparse files: 10 GiB ending in a hole, one ending in data, one all hole.
    fs::create_dir_all(root.join("sparse")).unwrap();
    if big_sparse {
        let mut big = File::create(root.join("sparse/big")).unwrap();
        big.set_len(BIG_SPARSE).unwrap();
        big.write_all(&noise(4, 4096)).unwrap();
        big.seek(SeekFrom::Start(3 << 30)).unwrap();
        big.write_all(&noise(5, 1 << 20)).unwrap();
        big.seek(SeekFrom::Start(7 << 30)).unwrap();
        big.write_all(b"a few bytes in the middle of nowhere")
            .unwrap();
    }
    let mut tail = File::create(root.join("sparse/data-at-end")).unwrap();
    tail.seek(SeekFrom::Start((64 << 20) - 4096)).unwrap();
    tail.write_all(&noise(6, 4096)).unwrap();
    File::create(root.join("sparse/all-hole"))
        .unwrap()
        .set_len(32 << 20)
        .unwrap();

    // Modes: setuid, setgid, sticky, none at all.
    fs::create_dir_all(root.join("modes")).unwrap();
    // A file nobody may read: only root can pack it.
    let unreadable = if is_root() { 0o000 } else { 0o400 };
    for (name, mode) in [("suid", 0o4755), ("sgid", 0o2711), ("none", unreadable)] {
        write(&root.join("modes").join(name), b"#!/bin/sh\n");
        fs::set_permissions(
            root.join("modes").join(name),
            fs::Permissions::from_mode(mode),
        )
        .unwrap();
    }
    for (name, mode) in [("sticky", 0o1777), ("setgid-dir", 0o2750)] {
        fs::create_dir_all(root.join("modes").join(name)).unwrap();
        fs::set_permissions(
            root.join("modes").join(name),
            fs::Permissions::from_mode(mode),
        )
        .unwrap();
    }

    // Extended attributes, including binary values and one on a directory.
    write(&root.join("xattr/file"), b"with attributes\n");
    let user_xattrs: [(&str, &str, &[u8]); 3] = [
        ("xattr/file", "user.text", b"value"),
        ("xattr/file", "user.binary", b"\0\x01\xff\n"),
        ("xattr", "user.on-dir", b"yes"),
    ];
    for (path, name, value) in user_xattrs {
        if let Err(error) = rustix::fs::lsetxattr(root.join(path), name, value, XattrFlags::empty())
        {
            // Only filesystems without user xattrs (old tmpfs) get here; the rest still runs.
            fixture
                .skipped
                .push(("user xattrs", format!("setxattr failed: {error}")));
            break;
        }
    }
    write(&root.join("xattr/cap"), b"#!/bin/sh\n");
    fs::set_permissions(root.join("xattr/cap"), fs::Permissions::from_mode(0o755)).unwrap();
    if is_root() {
        // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, permitted = CAP_NET_RAW (13): what
        // `setcap cap_net_raw+ep` writes.
        let mut capability = Vec::new();
        capability.extend_from_slice(&0x0200_0001u32.to_le_bytes());
        capability.extend_from_slice(&(1u32 << 13).to_le_bytes());
        capability.extend_from_slice(&[0; 12]);
        if let Err(error) = rustix::fs::lsetxattr(
            root.join("xattr/cap"),
            "security.capability",
            &capability,
            XattrFlags::empty(),
        ) {
            fixture
                .skipped
                .push(("security.capability", format!("setxattr failed: {error}")));
        }
    } else {
        fixture
            .skipped
            .push(("security.capability", "needs root".to_owned()));
    }

    // Owners: an ordinary uid and one beyond the octal limit.
    write(&root.join("owners/ordinary"), b"1000\n");
    write(&root.join("owners/big"), b"3000000\n");
    if is_root() {
        std::os::unix::fs::lchown(root.join("owners/ordinary"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::lchown(root.join("owners/big"), Some(BIG_ID), Some(BIG_ID + 1)).unwrap();
        symlink("big", root.join("owners/link")).unwrap();
        std::os::unix::fs::lchown(root.join("owners/link"), Some(BIG_ID), Some(42)).unwrap();
    } else {
        fixture
            .skipped
            .push(("owners", "chown needs root".to_owned()));
    }

    // Special files: fifo, devices, and a socket (which must be skipped).
    fs::create_dir_all(root.join("special")).unwrap();
    rustix::fs::mknodat(
        CWD,
        root.join("special/fifo"),
        FileType::Fifo,
        Mode::from(0o640),
        0,
    )
    .unwrap();
    let devices = [
        ("null", FileType::CharacterDevice, rustix::fs::makedev(1, 3)),
        ("loop0", FileType::BlockDevice, rustix::fs::makedev(7, 0)),
        (
            "big-minor",
            FileType::CharacterDevice,
            rustix::fs::makedev(259, 1_000_000),
        ),
    ];
    for (name, kind, dev) in devices {
        if let Err(error) = rustix::fs::mknodat(
            CWD,
            root.join("special").join(name),
            kind,
            Mode::from(0o660),
            dev,
        ) {
            fixture
                .skipped
                .push(("device nodes", format!("mknod failed: {error}")));
            break;
        }
    }
    let socket = std::os::unix::net::UnixListener::bind(root.join("special/socket")).unwrap();
    drop(socket);

    // mtimes: before 1970, before the epoch (kept), after it (clamped). Set last, because
    // creating entries changes their directories' mtimes.
    write(&root.join("times/1938"), b"old\n");
    write(&root.join("times/2001"), b"kept\n");
    symlink("1938", root.join("times/old-link")).unwrap();
    fs::create_dir_all(root.join("times/old-dir")).unwrap();
    set_mtime(&root.join("times/1938"), -1_000_000_000);
    set_mtime(&root.join("times/2001"), 1_000_000_000);
    set_mtime(&root.join("times/old-link"), -5);
    set_mtime(&root.join("times/old-dir"), 12_345);
    set_mtime(&root.join("times"), 1_600_000_000);
    fixture
}

/// What the comparison looks at for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: &'static str,
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
    pub size: u64,
    pub digest: Option<String>,
    pub link: Option<Vec<u8>>,
    pub rdev: Option<(u32, u32)>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub mtime: i64,
    /// Other paths of the tree sharing this inode (hard links), sorted.
    pub links: Vec<Vec<u8>>,
}

/// What a tree looks like, path by path (root-relative, raw bytes).
pub fn snapshot(root: &Path, owners: bool) -> BTreeMap<Vec<u8>, Record> {
    let mut records = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    for path in walk(root) {
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let metadata = fs::symlink_metadata(&path).unwrap();
        let file_type = metadata.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if file_type.is_dir() {
            "dir"
        } else if file_type.is_symlink() {
            "symlink"
        } else if file_type.is_file() {
            "file"
        } else if file_type.is_fifo() {
            "fifo"
        } else if file_type.is_char_device() {
            "char"
        } else if file_type.is_block_device() {
            "block"
        } else {
            "socket"
        };
        if !file_type.is_dir() && metadata.nlink() > 1 {
            inodes
                .entry((metadata.dev(), metadata.ino()))
                .or_default()
                .push(relative.clone());
        }
        let digest = file_type
            .is_file()
            .then(|| content_digest(&path, metadata.len()));
        let link = file_type
            .is_symlink()
            .then(|| fs::read_link(&path).unwrap().into_os_string().into_vec());
        let rdev = (file_type.is_char_device() || file_type.is_block_device()).then(|| {
            (
                rustix::fs::major(metadata.rdev()),
                rustix::fs::minor(metadata.rdev()),
            )
        });
        records.insert(
            relative,
            Record {
                kind,
                mode: metadata.mode() & 0o7777,
                owner: owners.then(|| (metadata.uid(), metadata.gid())),
                size: if file_type.is_file() {
                    metadata.len()
                } else {
                    0
                },
                digest,
                link,
                rdev,
                xattrs: xattrs(&path),
                mtime: metadata.mtime(),
                links: Vec::new(),
            },
        );
    }
    for group in inodes.values() {
        for path in group {
            let others = group
                .iter()
                .filter(|other| *other != path)
                .cloned()
                .collect();
            records.get_mut(path).unwrap().links = others;
        }
    }
    records
}

fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut names = vec![0u8; 65536];
    let length = rustix::fs::llistxattr(path, &mut names[..]).unwrap_or(0);
    names.truncate(length);
    names
        .split(|&byte| byte == 0)
        .filter(|name| !name.is_empty())
        .map(|name| {
            let mut value = vec![0u8; 65536];
            let length = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
            value.truncate(length);
            (name.to_vec(), value)
        })
        .collect()
}

/// sha256 of the content. Large files are hashed by their data segments only (4 KiB blocks that
/// are not all zero, with their offsets), so a 10 GiB sparse file costs milliseconds and the
/// digest does not depend on where the filesystem put its holes.
fn content_digest(path: &Path, size: u64) -> String {
    let mut file = File::open(path).unwrap();
    let mut hasher = Sha256::new();
    if size <= 16 << 20 {
        let mut contents = Vec::new();
        file.read_to_end(&mut contents).unwrap();
        hasher.update(&contents);
        return hex::encode(hasher.finalize());
    }
    let mut position = 0;
    let mut block = vec![0u8; 4096];
    while position < size {
        let data = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(position)) {
            Ok(data) => data,
            Err(rustix::io::Errno::NXIO) => break,
            Err(error) => panic!("SEEK_DATA on {}: {error}", path.display()),
        };
        let hole = rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(data)).unwrap();
        let mut offset = data / 4096 * 4096;
        while offset < hole {
            file.seek(SeekFrom::Start(offset)).unwrap();
            let length = (size - offset).min(4096) as usize;
            file.read_exact(&mut block[..length]).unwrap();
            if block[..length].iter().any(|&byte| byte != 0) {
                hasher.update(offset.to_le_bytes());
                hasher.update(&block[..length]);
            }
            offset += 4096;
        }
        position = hole;
    }
    hasher.update(size.to_le_bytes());
    hex::encode(hasher.finalize())
}

/// Allocated bytes of a file (for the sparse check).
pub fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// GNU tar's flag for a compression.
pub fn tar_flag(compression: Compression) -> Option<&'static str> {
    match compression {
        Compression::None => None,
        Compression::Gzip { .. } => Some("--gzip"),
        Compression::Zstd { .. } => Some("--zstd"),
    }
}

/// Extracts `archive` into `into` with GNU tar as installimage would, plus all xattrs.
pub fn extract(archive: &Path, compression: Compression, into: &Path) {
    fs::create_dir_all(into).unwrap();
    let mut command = Command::new("tar");
    command.args([
        "-x",
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        "-p",
    ]);
    // GNU tar warns about (and still restores) the fixture's deliberate pre-1970 mtimes.
    command.arg("--warning=no-timestamp");
    if is_root() {
        command.arg("--same-owner");
    }
    command.args(tar_flag(compression));
    command.arg("-f").arg(archive).arg("-C").arg(into);
    run(&mut command);
}

/// Runs a command; panics with its output if it fails or writes to stderr.
pub fn run(command: &mut Command) -> Vec<u8> {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{command:?}: {error}"));
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{command:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A progress sink that keeps every event.
pub fn recorder(events: &mut Vec<PackEvent>) -> impl FnMut(PackEvent) + '_ {
    move |event| events.push(event)
}
