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
