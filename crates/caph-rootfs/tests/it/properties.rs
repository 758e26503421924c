//! Property tests (issue 12) of `pack` on random trees: whatever the names (blanks, line breaks,
//! bytes that are not UTF-8, names past ustar's 100 bytes), contents (empty, holes), modes,
//! symlinks and hard links, GNU tar extracts exactly the tree that was packed.
//!
//! `PROPTEST_CASES` sets the number of cases (default 12: each packs and extracts a tree);
//! `cargo xtask fuzz --minutes N` runs them longer.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use caph_rootfs::pack::{self, Compression, PackOptions};
use proptest::prelude::*;

use crate::support;

#[path = "../../../caph-core/tests/it/proptest_config.rs"]
mod proptest_config;

use proptest_config::config;

/// One entry to make in the tree, below the directory at `parent` (an index into the
/// directories made so far, the root being 0).
#[derive(Debug, Clone)]
enum Entry {
    Directory {
        parent: usize,
        name: Vec<u8>,
        mode: u32,
    },
    File {
        parent: usize,
        name: Vec<u8>,
        content: Content,
        mode: u32,
    },
    Symlink {
        parent: usize,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    /// A second name for the file made `file` entries ago (if any).
    HardLink {
        parent: usize,
        name: Vec<u8>,
        file: usize,
    },
}

#[derive(Debug, Clone)]
enum Content {
    Bytes(Vec<u8>),
    /// Data at an offset, a hole before it (and after it, to `length`).
    Sparse {
        offset: u64,
        data: Vec<u8>,
        length: u64,
    },
}

/// A file name: one path component, not `.` or `..`, no `/` or NUL.
fn name() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        8 => "[a-z0-9._-]{1,8}".prop_map(String::into_bytes),
        1 => Just(b" ".to_vec()),
        1 => Just(b"\n".to_vec()),
        1 => Just(vec![0xff, 0xfe]),
        1 => Just("é✓".as_bytes().to_vec()),
        1 => Just(vec![b'x'; 120]),
    ];
    prop::collection::vec(piece, 1..4)
        .prop_map(|pieces| pieces.concat())
        .prop_filter("a name", |name| name != b"." && name != b"..")
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..3000).prop_map(Content::Bytes),
        1 => (0u64..(8 << 20), prop::collection::vec(any::<u8>(), 1..5000), 0u64..(8 << 20)).prop_map(
            |(offset, data, tail)| Content::Sparse {
                length: offset + data.len() as u64 + tail,
                offset,
                data,
            }
        ),
    ]
}

fn mode() -> impl Strategy<Value = u32> {
    prop::sample::select(&[0o644u32, 0o600, 0o755, 0o700, 0o4755, 0o2755, 0o1777, 0o444][..])
}

fn entry() -> impl Strategy<Value = Entry> {
    let parent = 0usize..8;
    prop_oneof![
        2 => (parent.clone(), name(), prop::sample::select(&[0o755u32, 0o700, 0o1777, 0o2775][..]))
            .prop_map(|(parent, name, mode)| Entry::Directory { parent, name, mode }),
        5 => (parent.clone(), name(), content(), mode())
            .prop_map(|(parent, name, content, mode)| Entry::File { parent, name, content, mode }),
        1 => (parent.clone(), name(), prop_oneof![name(), Just(b"../../../etc/passwd".to_vec()), Just(b"/etc".to_vec())])
            .prop_map(|(parent, name, target)| Entry::Symlink { parent, name, target }),
        1 => (parent, name(), 0usize..4).prop_map(|(parent, name, file)| Entry::HardLink { parent, name, file }),
    ]
}

/// Makes `entries` under `root`; an entry whose name is taken is left out.
fn make_tree(root: &Path, entries: &[Entry]) {
    fs::create_dir_all(root).expect("root");
    let mut directories = vec![root.to_path_buf()];
    let mut files: Vec<PathBuf> = Vec::new();
    let path_in = |directories: &[PathBuf], parent: usize, name: &[u8]| {
        directories[parent % directories.len()].join(std::ffi::OsStr::from_bytes(name))
    };
    for entry in entries {
        match entry {
            Entry::Directory { parent, name, mode } => {
                let path = path_in(&directories, *parent, name);
                if fs::create_dir(&path).is_ok() {
                    fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).expect("mode");
                    directories.push(path);
                }
            }
            Entry::File {
                parent,
                name,
                content,
                mode,
            } => {
                let path = path_in(&directories, *parent, name);
                if path.symlink_metadata().is_ok() {
                    continue;
                }
                match content {
                    Content::Bytes(bytes) => fs::write(&path, bytes).expect("file"),
                    Content::Sparse {
                        offset,
                        data,
                        length,
                    } => {
                        use std::os::unix::fs::FileExt;
                        let file = fs::File::create(&path).expect("file");
                        file.write_all_at(data, *offset).expect("data");
                        file.set_len(*length).expect("length");
                    }
                }
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).expect("mode");
                files.push(path);
            }
            Entry::Symlink {
                parent,
                name,
                target,
            } => {
                let path = path_in(&directories, *parent, name);
                let _ = std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path);
            }
            Entry::HardLink { parent, name, file } => {
                let Some(original) = files.iter().rev().nth(*file) else {
                    continue;
                };
                let path = path_in(&directories, *parent, name);
                let _ = fs::hard_link(original, &path);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(12))]

    #[test]
    fn gnu_tar_extracts_the_tree_that_was_packed(
        entries in prop::collection::vec(entry(), 0..40),
        compression in prop::sample::select(vec![Compression::None, Compression::gzip(), Compression::zstd()]),
    ) {
        let temp = tempfile::tempdir().expect("temp");
        let source = temp.path().join("tree");
        make_tree(&source, &entries);
        let archive = temp.path().join(format!("tree.{}", compression.extension()));
        let summary = pack::pack_to_path(
            &source,
            &archive,
            &PackOptions::plain(compression),
            &mut |_| {},
        );
        prop_assert!(summary.is_ok(), "{:?}", summary.err());
        let extracted = temp.path().join("extracted");
        support::extract(&archive, compression, &extracted);
        let owners = support::is_root();
        let expected = support::snapshot(&source, owners);
        let actual = support::snapshot(&extracted, owners);
        prop_assert_eq!(
            actual.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        for (path, record) in &expected {
            prop_assert_eq!(&actual[path], record, "{}", String::from_utf8_lossy(path));
        }
    }
}
