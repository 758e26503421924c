//! What a disk image to upload is, read from its first bytes: its compression (xz, zstd, bzip2,
//! gzip or none), its format (a raw disk with an MBR or GPT partition table, or qcow2), and how big
//! a disk it needs where that can be known before anything is created.

use std::process::Stdio;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Bytes of the (possibly compressed) file read to look inside it.
pub const HEAD_BYTES: usize = 1024 * 1024;

/// Decompressed bytes looked at: enough for an MBR, a GPT header, a qcow2 header and the marks
/// of what an image is not (an ext superblock at 1 KiB, an ISO 9660 volume descriptor at 32 KiB).
const INSPECTED_BYTES: usize = 64 * 1024;

pub use caph_core::compression::Compression;

/// The disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A raw disk: written as it is.
    Raw,
    /// qcow2: converted to raw on the server with `qemu-img`.
    Qcow2,
}

/// What an image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// Its compression.
    pub compression: Compression,
    /// Its format.
    pub format: Format,
    /// The disk it needs in bytes, where known: a qcow2's virtual size, an uncompressed raw
    /// file's length, else the end of what its partition table spans.
    pub needed_bytes: Option<u64>,
    /// A short description for progress: `xz-compressed raw disk (MBR)`.
    pub description: String,
}

/// Decompresses the start of a compressed file with the local decompressor: the input is cut, so
/// its complaint about the end is expected and ignored; what it wrote until then is used.
pub async fn decompress_head(compression: Compression, head: &[u8]) -> Result<Vec<u8>, String> {
    let Some(program) = compression.decompressor() else {
        return Ok(head.iter().copied().take(INSPECTED_BYTES).collect());
    };
    let mut child = tokio::process::Command::new(program)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| {
            format!("running {program} to look inside the {compression} image: {error} (install it: it comes with the package of the same name)")
        })?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let input = head.to_vec();
    let feeding = tokio::spawn(async move {
        // A decompressor that has seen enough may close its input early; that is fine.
        let _ = stdin.write_all(&input).await;
    });
    let mut output = Vec::with_capacity(INSPECTED_BYTES);
    let mut buffer = vec![0u8; 16 * 1024];
    while output.len() < INSPECTED_BYTES {
        match stdout.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(count) => output.extend_from_slice(&buffer[..count]),
        }
    }
    output.truncate(INSPECTED_BYTES);
    feeding.abort();
    let _ = child.start_kill();
    let _ = child.wait().await;
    Ok(output)
}

fn le_u32(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..at + 4).map_or(0, |b| {
        u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    })
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..at + 8).map_or(0, |b| {
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    })
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..at + 8).map_or(0, |b| {
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    })
}

/// What a file that is not a disk image looks like, for the refusal.
fn what_else(data: &[u8]) -> &'static str {
    if data.get(1080..1082) == Some(&[0x53, 0xef]) {
        "an ext2/3/4 file system without a partition table (write a whole disk: partition table, file systems, boot loader)"
    } else if data.get(32769..32774) == Some(b"CD001") {
        "an ISO 9660 image (an installer or live medium, not a disk)"
    } else if data.get(257..262) == Some(b"ustar") {
        "a tar archive (an installimage tarball goes to `build robot --tarball`)"
    } else if data.iter().take(4096).all(|byte| *byte == 0) {
        "zeros at the start: no partition table"
    } else {
        "no MBR or GPT partition table and no qcow2 header"
    }
}

/// Reads what the image is from its decompressed start; `file_bytes` is the file's length when
/// known (a path, or a URL with a Content-Length). A refusal says what the file looks like.
pub fn inspect(
    compression: Compression,
    data: &[u8],
    file_bytes: Option<u64>,
) -> Result<Inspected, String> {
    const SECTOR: u64 = 512;
    let compressed = if compression == Compression::None {
        String::new()
    } else {
        format!("{compression}-compressed ")
    };
    if data.starts_with(b"QFI\xfb") {
        let virtual_size = be_u64(data, 24);
        return Ok(Inspected {
            compression,
            format: Format::Qcow2,
            needed_bytes: (virtual_size > 0).then_some(virtual_size),
            description: format!(
                "{compressed}qcow2 image of {:.2} GB",
                virtual_size as f64 / 1e9
            ),
        });
    }
    let gpt = data.get(512..520) == Some(b"EFI PART");
    let mbr = data.get(510..512) == Some(&[0x55, 0xaa]);
    if !gpt && !mbr {
        return Err(format!("it is not a disk image: {}", what_else(data)));
    }
    let table_end = if gpt {
        // The backup header sits in the disk's last sector.
        let alternate = le_u64(data, 512 + 32);
        (alternate > 0).then(|| (alternate + 1) * SECTOR)
    } else {
        (0..4)
            .map(|entry| {
                let at = 446 + 16 * entry;
                (le_u32(data, at + 8) + le_u32(data, at + 12)) * SECTOR
            })
            .max()
            .filter(|end| *end > 0)
    };
    let needed_bytes = match (compression, file_bytes) {
        (Compression::None, Some(length)) => Some(length.max(table_end.unwrap_or(0))),
        _ => table_end,
    };
    Ok(Inspected {
        compression,
        format: Format::Raw,
        needed_bytes,
        description: format!(
            "{compressed}raw disk image ({})",
            if gpt { "GPT" } else { "MBR" }
        ),
    })
}

/// The script the rescue system runs with the image on its standard input: decompress, then
/// write the raw disk to `device`, or for qcow2 keep it in a temporary file and convert it onto
/// the disk with `qemu-img` (qcow2 needs random access). bash for `pipefail`, so that a broken
/// decompression fails the write.
pub fn write_script(inspected: &Inspected, device: &str) -> String {
    use caph_core::plan::quote;
    let device = quote(device);
    let decompress = match inspected.compression.decompressor() {
        Some(program) => format!("{program} -dc"),
        None => "cat".to_string(),
    };
    let body = match inspected.format {
        Format::Raw => format!(
            "test -b {device}\n{decompress} | dd of={device} bs=4M iflag=fullblock conv=fsync status=none\nsync"
        ),
        Format::Qcow2 => format!(
            "test -b {device}\nimage=$(mktemp /tmp/caph-image-upload.XXXXXX)\ntrap 'rm -f \"$image\"' EXIT\n{decompress} > \"$image\"\nqemu-img convert -n -f qcow2 -O raw \"$image\" {device}\nsync"
        ),
    };
    format!("bash -c {}", quote(&format!("set -euo pipefail\n{body}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr(partitions: &[(u32, u32)]) -> Vec<u8> {
        let mut data = vec![0u8; 4096];
        for (index, (start, count)) in partitions.iter().enumerate() {
            let at = 446 + 16 * index;
            data[at + 4] = 0x83;
            data[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
            data[at + 12..at + 16].copy_from_slice(&count.to_le_bytes());
        }
        data[510] = 0x55;
        data[511] = 0xaa;
        data
    }

    #[test]
    fn raw_images_need_what_their_partition_table_spans() {
        let data = mbr(&[(2048, 4096), (6144, 10240)]);
        let inspected = inspect(Compression::Xz, &data, Some(1000)).unwrap();
        assert_eq!(inspected.format, Format::Raw);
        assert_eq!(inspected.needed_bytes, Some(16384 * 512));
        assert_eq!(inspected.description, "xz-compressed raw disk image (MBR)");
        // Uncompressed, the file's length counts too.
        let plain = inspect(Compression::None, &data, Some(50_000_000)).unwrap();
        assert_eq!(plain.needed_bytes, Some(50_000_000));
    }

    #[test]
    fn gpt_needs_up_to_its_backup_header_and_qcow2_its_virtual_size() {
        let mut data = mbr(&[(1, 0xffff_ffff)]);
        data[512..520].copy_from_slice(b"EFI PART");
        data[544..552].copy_from_slice(&204_799u64.to_le_bytes());
        let gpt = inspect(Compression::None, &data, None).unwrap();
        assert_eq!(gpt.needed_bytes, Some(204_800 * 512));
        let mut qcow2 = vec![0u8; 512];
        qcow2[..4].copy_from_slice(b"QFI\xfb");
        qcow2[24..32].copy_from_slice(&(40u64 << 30).to_be_bytes());
        let inspected = inspect(Compression::Zstd, &qcow2, Some(10)).unwrap();
        assert_eq!(inspected.format, Format::Qcow2);
        assert_eq!(inspected.needed_bytes, Some(40 << 30));
    }

    #[test]
    fn what_is_not_a_disk_image_is_named() {
        let mut ext4 = vec![0u8; 4096];
        ext4[1080] = 0x53;
        ext4[1081] = 0xef;
        let refusal = inspect(Compression::None, &ext4, None).unwrap_err();
        assert!(refusal.contains("ext2/3/4 file system"), "{refusal}");
        let text = b"hello, this is a text file".to_vec();
        assert!(inspect(Compression::None, &text, None).is_err());
        assert_eq!(Compression::detect(b"\xfd7zXZ\x00rest"), Compression::Xz);
        assert_eq!(Compression::detect(b"BZh91AY"), Compression::Bzip2);
    }
}
