//! The same tree gives the same bytes: twice in a row, after atimes change, and with any
//! number of compression threads. The outputs pass `gzip -t`, `zstd -t`, `tar -t` and
//! `sha256sum -c`.

use std::path::Path;
use std::process::Command;

use caph_rootfs::pack::{self, Compression, PackOptions, PackSummary};

use crate::support::{self, EPOCH};

fn pack(source: &Path, output: &Path, compression: Compression, threads: usize) -> PackSummary {
    let mut options = PackOptions::plain(compression);
    options.source_date_epoch = Some(EPOCH);
    options.threads = threads;
    pack::pack_to_path(source, output, &options, &mut |_| {}).unwrap()
}

fn same_bytes_every_time(compression: Compression) {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("tree");
    support::build_fixture(&source, false);

    let first = temp
        .path()
        .join(format!("first.{}", compression.extension()));
    let second = temp
        .path()
        .join(format!("second.{}", compression.extension()));
    let third = temp
        .path()
        .join(format!("third.{}", compression.extension()));
    let summary = pack(&source, &first, compression, 2);
    // Reading a file updates its atime (where the mount allows); set them all explicitly too.
    support::touch_atimes(&source, 2_000_000_000);
    let again = pack(&source, &second, compression, 1);
    support::touch_atimes(&source, 1);
    pack(&source, &third, compression, 3);

    let bytes = std::fs::read(&first).unwrap();
    assert_eq!(
        bytes,
        std::fs::read(&second).unwrap(),
        "{compression}: second run differs"
    );
    assert_eq!(
        bytes,
        std::fs::read(&third).unwrap(),
        "{compression}: third run differs"
    );
    assert_eq!(summary.sha256, again.sha256);
    assert_eq!(summary.bytes_out, bytes.len() as u64);

    // The .sha256 file is sha256sum's format and checks out.
    let checksum = std::fs::read_to_string(pack::checksum_path(&first)).unwrap();
    assert_eq!(
        checksum,
        format!(
            "{}  {}\n",
            summary.sha256,
            first.file_name().unwrap().to_str().unwrap()
        )
    );
    support::run(
        Command::new("sha256sum")
            .arg("-c")
            .arg(pack::checksum_path(&first))
            .current_dir(temp.path()),
    );

    // The standard tools accept the output.
    match compression {
        Compression::Gzip { .. } => {
            support::run(Command::new("gzip").arg("-t").arg(&first));
        }
        Compression::Zstd { .. } => {
            support::run(Command::new("zstd").arg("-q").arg("-t").arg(&first));
        }
        Compression::None => {}
    }
    let mut list = Command::new("tar");
    list.arg("-t")
        .args(support::tar_flag(compression))
        .arg("-f")
        .arg(&first);
    let listing = support::run(&mut list);
    let names = listing
        .split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
        .count();
    assert_eq!(names as u64, summary.entries.total());
    // The tar stream is a whole number of 10 KiB records, as GNU tar writes it.
    assert_eq!(summary.bytes_in % 10_240, 0);
}

#[test]
fn gzip_output_is_reproducible() {
    same_bytes_every_time(Compression::gzip());
}

#[test]
fn zstd_output_is_reproducible() {
    same_bytes_every_time(Compression::zstd());
}

#[test]
fn uncompressed_output_is_reproducible() {
    same_bytes_every_time(Compression::None);
}

#[test]
fn gzip_is_made_of_independent_members_that_gzip_reads() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("tree");
    std::fs::create_dir_all(&source).unwrap();
    // 5 MiB of incompressible data: several 1 MiB members.
    std::fs::write(source.join("noise"), support::noise(9, 5 << 20)).unwrap();
    let output = temp.path().join("noise.tar.gz");
    let summary = pack(&source, &output, Compression::Gzip { level: 1 }, 0);
    let unpacked = support::run(Command::new("gzip").arg("-dc").arg(&output));
    assert_eq!(unpacked.len() as u64, summary.bytes_in);
    assert_eq!(
        &unpacked[1024..1024 + (5 << 20)],
        support::noise(9, 5 << 20).as_slice()
    );
}

/// Text-like, compressible bytes: words from a small vocabulary picked by a fixed generator, so
/// the compressors find matches within and across their chunks and jobs.
fn compressible(seed: u64, length: usize) -> Vec<u8> {
    const WORDS: [&[u8]; 12] = [
        b"kubelet ",
        b"containerd ",
        b"/usr/lib/x86_64-linux-gnu/",
        b"sha256 ",
        b"\n",
        b"etc ",
        b"node ",
        b"image ",
        b"0123456789abcdef",
        b"\t",
        b"runc ",
        b"systemd ",
    ];
    let noise = support::noise(seed, length / 8);
    let mut text = Vec::with_capacity(length + 32);
    let mut index = 0;
    while text.len() < length {
        let pick = noise[index % noise.len()];
        text.extend_from_slice(WORDS[usize::from(pick) % WORDS.len()]);
        // Every so often a few raw bytes, so not everything is a match.
        if pick > 240 {
            text.extend_from_slice(&noise[(index * 7) % noise.len()..][..1]);
        }
        index += 1;
    }
    text.truncate(length);
    text
}

/// A stream long enough for many zstd jobs (4 MiB) and gzip members (1 MiB), packed with 1, 2
/// and 4 threads: the same bytes every time, and they unpack to the uncompressed stream.
#[test]
fn many_chunks_give_the_same_bytes_with_any_number_of_threads() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("tree");
    std::fs::create_dir_all(source.join("usr/share")).unwrap();
    for file in 0..6u64 {
        std::fs::write(
            source.join(format!("usr/share/part-{file}")),
            compressible(file, 4 << 20),
        )
        .unwrap();
    }
    // Some incompressible data in between, and small files around it.
    std::fs::write(source.join("usr/noise"), support::noise(77, 3 << 20)).unwrap();
    for file in 0..50 {
        std::fs::write(
            source.join(format!("small-{file}")),
            compressible(100 + file, 3000),
        )
        .unwrap();
    }
    let plain = temp.path().join("plain.tar");
    let plain_summary = pack(&source, &plain, Compression::None, 1);
    assert!(plain_summary.bytes_in > 26 << 20, "{plain_summary:?}");
    let stream = std::fs::read(&plain).unwrap();

    for compression in [Compression::zstd(), Compression::gzip()] {
        let mut outputs = Vec::new();
        for threads in [1, 2, 4] {
            let output = temp
                .path()
                .join(format!("threads-{threads}.{}", compression.extension()));
            let summary = pack(&source, &output, compression, threads);
            assert_eq!(summary.bytes_in, plain_summary.bytes_in);
            outputs.push((threads, std::fs::read(&output).unwrap(), output));
        }
        let (_, first, first_path) = &outputs[0];
        for (threads, bytes, _) in &outputs[1..] {
            assert!(
                bytes == first,
                "{compression}: {threads} threads gave other bytes than 1 thread"
            );
        }
        // Compressed, and the standard tool gives back the uncompressed stream exactly.
        assert!(
            first.len() < stream.len() / 2,
            "{compression}: {}",
            first.len()
        );
        let tool = match compression {
            Compression::Zstd { .. } => "zstd",
            _ => "gzip",
        };
        let unpacked = support::run(Command::new(tool).arg("-dc").arg(first_path));
        assert!(
            unpacked == stream,
            "{compression}: unpacks to another stream"
        );
    }
}
