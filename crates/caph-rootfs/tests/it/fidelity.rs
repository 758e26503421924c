//! Every kind of entry survives a round trip through the writer and GNU tar: type, mode,
//! owner, size, content, link target, device number, xattrs, mtime and hard-link groups.

use std::collections::BTreeMap;

use caph_rootfs::pack::{self, Compression, PackEvent, PackOptions, PackWarning, Phase};

use crate::support::{self, BIG_SPARSE, EPOCH, Record};

fn round_trip(compression: Compression) {
    let test = format!("fidelity_{}", compression.name());
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("tree");
    let fixture = support::build_fixture(&source, true);
    for (part, reason) in &fixture.skipped {
        support::skipped(&format!("{test} ({part})"), reason);
    }

    let archive = temp
        .path()
        .join(format!("tree.{}", compression.extension()));
    let mut options = PackOptions::plain(compression);
    options.source_date_epoch = Some(EPOCH);
    let mut events = Vec::new();
    let summary = pack::pack_to_path(
        &source,
        &archive,
        &options,
        &mut support::recorder(&mut events),
    )
    .unwrap();

    // The socket is reported and left out; the run ends with a `Done` report.
    let warnings: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            PackEvent::Warning(warning) => Some(warning.clone()),
            PackEvent::Progress(_) => None,
        })
        .collect();
    assert_eq!(
        warnings,
        [PackWarning::SocketSkipped {
            path: source.join("special/socket")
        }]
    );
    assert!(matches!(
        events.last(),
        Some(PackEvent::Progress(progress)) if progress.phase == Phase::Done
            && progress.bytes_out == summary.bytes_out
    ));
    assert_eq!(summary.entries.sockets_skipped, 1);
    assert_eq!(summary.entries.sparse, 3);
    assert_eq!(summary.entries.hardlinks, 4);
    // The 10 GiB file costs its data, not its size.
    assert!(
        summary.bytes_in < 64 << 20,
        "tar stream of {} bytes",
        summary.bytes_in
    );

    let extracted = temp.path().join("extracted");
    support::extract(&archive, compression, &extracted);

    let owners = support::is_root();
    let mut expected: BTreeMap<Vec<u8>, Record> = support::snapshot(&source, owners);
    expected.remove(b"special/socket".as_slice());
    for record in expected.values_mut() {
        record.mtime = record.mtime.min(EPOCH);
    }
    let actual = support::snapshot(&extracted, owners);
    if !owners {
        support::skipped(
            &format!("{test} (owner comparison)"),
            "extracting owners needs root",
        );
    }
    let expected_paths: Vec<_> = expected.keys().collect();
    let actual_paths: Vec<_> = actual.keys().collect();
    assert_eq!(actual_paths, expected_paths, "the same paths");
    for (path, expected) in &expected {
        assert_eq!(&actual[path], expected, "{}", String::from_utf8_lossy(path));
    }

    // Spot checks that the comparison really covered the hard cases.
    assert_eq!(expected[b"times/1938".as_slice()].mtime, -1_000_000_000);
    assert_eq!(expected[b"files/big".as_slice()].mtime, EPOCH);
    assert_eq!(expected[b"modes/suid".as_slice()].mode, 0o4755);
    assert!(expected.keys().any(|path| path.len() > 300));
    assert!(
        expected
            .keys()
            .any(|path| std::str::from_utf8(path).is_err())
    );
    assert_eq!(expected[b"hardlinks/a".as_slice()].links.len(), 2);
    if owners {
        assert_eq!(
            expected[b"owners/big".as_slice()].owner,
            Some((3_000_000, 3_000_001))
        );
    }
    if !fixture
        .skipped
        .iter()
        .any(|(part, _)| *part == "user xattrs")
    {
        let file = &expected[b"xattr/file".as_slice()].xattrs;
        assert_eq!(file[b"user.binary".as_slice()], b"\0\x01\xff\n");
        assert_eq!(expected[b"xattr".as_slice()].xattrs.len(), 1);
    }
    if !fixture
        .skipped
        .iter()
        .any(|(part, _)| *part == "security.capability")
    {
        let cap = &expected[b"xattr/cap".as_slice()].xattrs;
        assert!(
            cap.contains_key(b"security.capability".as_slice()),
            "{cap:?}"
        );
    }

    // Sparse files come out sparse.
    let big = extracted.join("sparse/big");
    assert_eq!(std::fs::metadata(&big).unwrap().len(), BIG_SPARSE);
    let allocated = support::allocated(&big);
    assert!(
        allocated < 16 << 20,
        "sparse/big extracted with {allocated} bytes allocated"
    );
    assert!(support::allocated(&extracted.join("sparse/all-hole")) < 1 << 20);
}

#[test]
fn gzip_round_trip_keeps_everything() {
    round_trip(Compression::gzip());
}

#[test]
fn zstd_round_trip_keeps_everything() {
    round_trip(Compression::zstd());
}

#[test]
fn uncompressed_round_trip_keeps_everything() {
    round_trip(Compression::None);
}
