//! Encoding of POSIX ustar headers and PAX extended headers, byte for byte.
//!
//! The writer fills a plain ustar header for every entry and adds a PAX extended header (type
//! `x`) only for what ustar cannot hold: long or non-UTF-8 names, ids above the octal limit,
//! large sizes, negative mtimes, extended attributes and sparse maps. Hand-written rather than
//! taken from the `tar` crate because the sparse 1.0 layout, raw-byte names and exact control of
//! every field (for reproducible output) are the point of this module.

/// The tar block size: every header and every data area is padded to it.
pub(crate) const BLOCK: usize = 512;

/// The largest value an octal field of `width` bytes holds (width - 1 digits, then a NUL).
const fn octal_max(width: usize) -> u64 {
    (1u64 << (3 * (width as u32 - 1))) - 1
}

/// The largest id that fits the 8-byte `uid`/`gid` fields: 2^21 - 1.
pub(crate) const MAX_OCTAL_ID: u64 = octal_max(8);
/// The largest size that fits the 12-byte `size` field: 8 GiB - 1.
pub(crate) const MAX_OCTAL_SIZE: u64 = octal_max(12);
/// The largest mtime that fits the 12-byte `mtime` field (the year 2242).
const MAX_OCTAL_TIME: u64 = octal_max(12);

/// An extended attribute: name (without the `SCHILY.xattr.` prefix) and raw value.
pub(crate) type Xattr = (Vec<u8>, Vec<u8>);

/// The entry type, as the ustar `typeflag` byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeFlag {
    Regular,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
    PaxExtended,
}

impl TypeFlag {
    fn byte(self) -> u8 {
        match self {
            TypeFlag::Regular => b'0',
            TypeFlag::HardLink => b'1',
            TypeFlag::Symlink => b'2',
            TypeFlag::CharDevice => b'3',
            TypeFlag::BlockDevice => b'4',
            TypeFlag::Directory => b'5',
            TypeFlag::Fifo => b'6',
            TypeFlag::PaxExtended => b'x',
        }
    }
}

/// Everything a header describes, before it is split into ustar fields and PAX records.
#[derive(Debug)]
pub(crate) struct EntryHeader<'a> {
    /// The archive name, e.g. `./etc/` (directories end in `/`).
    pub name: &'a [u8],
    pub link_name: Option<&'a [u8]>,
    pub type_flag: TypeFlag,
    /// Permission and setuid/setgid/sticky bits.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Bytes in the archive's data area for this entry.
    pub size: u64,
    /// Seconds since the epoch; negative before 1970.
    pub mtime: i64,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extended attributes, sorted by name.
    pub xattrs: &'a [Xattr],
    /// For a sparse file: the real size; the name then travels in `GNU.sparse.name`.
    pub sparse_real_size: Option<u64>,
}

/// A device number beyond the 7-digit octal limit: ustar cannot hold it and PAX has no keyword.
#[derive(Debug)]
pub(crate) struct DeviceNumberTooLarge;

/// Appends the encoded header (PAX header and data first if needed, then the ustar header)
/// to `out`. Data and padding of the entry itself are the caller's.
pub(crate) fn encode(
    entry: &EntryHeader<'_>,
    out: &mut Vec<u8>,
) -> Result<(), DeviceNumberTooLarge> {
    let dev_max = octal_max(8);
    if u64::from(entry.dev_major) > dev_max || u64::from(entry.dev_minor) > dev_max {
        return Err(DeviceNumberTooLarge);
    }

    let mut records = PaxRecords::default();
    // Names are bytes. One that fits the ustar name/prefix fields goes there as it is, UTF-8 or
    // not: GNU tar and bsdtar both restore such bytes unchanged and silently. A longer one goes
    // to a PAX `path` as raw bytes, as GNU tar itself writes it. POSIX would flag non-UTF-8
    // values with `hdrcharset=BINARY`, but GNU tar (installimage's extractor) warns about that
    // keyword on every entry, while restoring the raw bytes unchanged without it (bsdtar
    // restores them too, but reports the name as not convertible from UTF-8).
    let ustar_name: &[u8];
    let mut ustar_prefix: &[u8] = b"";
    let sparse_name;
    if let Some(real_size) = entry.sparse_real_size {
        records.add(b"GNU.sparse.major", b"1");
        records.add(b"GNU.sparse.minor", b"0");
        records.add(b"GNU.sparse.name", entry.name);
        records.add(b"GNU.sparse.realsize", real_size.to_string().as_bytes());
        // GNU tar names the stand-in `dir/GNUSparseFile.<pid>/base`; a fixed `0` keeps the
        // output reproducible. Readers that know sparse 1.0 never use this name.
        sparse_name = sparse_stand_in_name(entry.name);
        ustar_name = &sparse_name;
    } else {
        match split_ustar_name(entry.name) {
            Some((prefix, name)) => {
                ustar_prefix = prefix;
                ustar_name = name;
            }
            None => {
                records.add(b"path", entry.name);
                ustar_name = truncate(entry.name, 100);
            }
        }
    }

    let mut ustar_link: &[u8] = b"";
    if let Some(link) = entry.link_name {
        if link.len() > 100 {
            records.add(b"linkpath", link);
            ustar_link = truncate(link, 100);
        } else {
            ustar_link = link;
        }
    }

    if entry.size > MAX_OCTAL_SIZE {
        records.add(b"size", entry.size.to_string().as_bytes());
    }
    if entry.uid > MAX_OCTAL_ID {
        records.add(b"uid", entry.uid.to_string().as_bytes());
    }
    if entry.gid > MAX_OCTAL_ID {
        records.add(b"gid", entry.gid.to_string().as_bytes());
    }
    let mtime_fits = u64::try_from(entry.mtime).is_ok_and(|mtime| mtime <= MAX_OCTAL_TIME);
    if !mtime_fits {
        records.add(b"mtime", entry.mtime.to_string().as_bytes());
    }
    for (name, value) in entry.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        records.add(&key, value);
    }

    if !records.data.is_empty() {
        let pax_name = pax_header_name(entry.name);
        let pax = Ustar {
            name: &pax_name,
            prefix: b"",
            link: b"",
            type_flag: TypeFlag::PaxExtended,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: records.data.len() as u64,
            mtime: clamp_octal_time(entry.mtime),
            dev_major: 0,
            dev_minor: 0,
        };
        pax.write(out);
        out.extend_from_slice(&records.data);
        pad_to_block(out);
    }

    let ustar = Ustar {
        name: ustar_name,
        prefix: ustar_prefix,
        link: ustar_link,
        type_flag: entry.type_flag,
        mode: entry.mode & 0o7777,
        uid: entry.uid.min(MAX_OCTAL_ID),
        gid: entry.gid.min(MAX_OCTAL_ID),
        size: entry.size.min(MAX_OCTAL_SIZE),
        mtime: clamp_octal_time(entry.mtime),
        dev_major: entry.dev_major,
        dev_minor: entry.dev_minor,
    };
    ustar.write(out);
    Ok(())
}

/// Pads `out` with NULs to the next block boundary.
pub(crate) fn pad_to_block(out: &mut Vec<u8>) {
    let rem = out.len() % BLOCK;
    if rem != 0 {
        out.resize(out.len() + BLOCK - rem, 0);
    }
}

/// NUL bytes needed after `len` bytes of data to reach a block boundary.
pub(crate) fn padding_for(len: u64) -> usize {
    let rem = (len % BLOCK as u64) as usize;
    if rem == 0 { 0 } else { BLOCK - rem }
}

/// The map that opens the data area of a sparse 1.0 member: the number of segments, then
/// offset and length of each, one decimal number a line, padded to a block.
pub(crate) fn sparse_map(segments: &[(u64, u64)]) -> Vec<u8> {
    let mut map = Vec::with_capacity(32 + segments.len() * 24);
    map.extend_from_slice(segments.len().to_string().as_bytes());
    map.push(b'\n');
    for (offset, length) in segments {
        map.extend_from_slice(offset.to_string().as_bytes());
        map.push(b'\n');
        map.extend_from_slice(length.to_string().as_bytes());
        map.push(b'\n');
    }
    pad_to_block(&mut map);
    map
}

/// mtimes that ustar cannot hold go to PAX; the ustar field then carries the nearest value.
fn clamp_octal_time(mtime: i64) -> u64 {
    u64::try_from(mtime).map_or(0, |mtime| mtime.min(MAX_OCTAL_TIME))
}

/// Splits a name into ustar `prefix` (≤ 155 bytes) and `name` (≤ 100 bytes) at a `/`, or
/// `None` when it cannot be split.
fn split_ustar_name(full: &[u8]) -> Option<(&[u8], &[u8])> {
    if full.len() <= 100 {
        return Some((b"", full));
    }
    if full.len() > 256 {
        return None;
    }
    // The leftmost slash that leaves at most 100 bytes for the name gives the shortest prefix.
    let first_allowed = full.len().saturating_sub(101);
    let slash = full[first_allowed..]
        .iter()
        .position(|&byte| byte == b'/')
        .map(|index| index + first_allowed)?;
    let (prefix, name) = (&full[..slash], &full[slash + 1..]);
    if prefix.len() > 155 || name.is_empty() {
        return None;
    }
    Some((prefix, name))
}

fn truncate(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[..bytes.len().min(max)]
}

fn base_name(name: &[u8]) -> &[u8] {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    match trimmed.iter().rposition(|&byte| byte == b'/') {
        Some(slash) => &trimmed[slash + 1..],
        None => trimmed,
    }
}

/// `./PaxHeaders/<base name>`, as GNU tar names them, cut to the 100-byte name field.
fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let mut pax_name = b"./PaxHeaders/".to_vec();
    pax_name.extend_from_slice(base_name(name));
    pax_name.truncate(100);
    pax_name
}

fn sparse_stand_in_name(name: &[u8]) -> Vec<u8> {
    let mut stand_in = b"./GNUSparseFile.0/".to_vec();
    stand_in.extend_from_slice(base_name(name));
    stand_in.truncate(100);
    stand_in
}

/// PAX records, `"<len> <key>=<value>\n"` where `len` counts the whole record.
#[derive(Default)]
struct PaxRecords {
    data: Vec<u8>,
}

impl PaxRecords {
    fn add(&mut self, key: &[u8], value: &[u8]) {
        // " " + key + "=" + value + "\n", plus the digits of the total length itself.
        let rest = key.len() + value.len() + 3;
        let mut digits = 1;
        while (rest + digits).to_string().len() > digits {
            digits += 1;
        }
        self.data
            .extend_from_slice((rest + digits).to_string().as_bytes());
        self.data.push(b' ');
        self.data.extend_from_slice(key);
        self.data.push(b'=');
        self.data.extend_from_slice(value);
        self.data.push(b'\n');
    }
}

/// The fields of one 512-byte ustar header, all already within their limits.
struct Ustar<'a> {
    name: &'a [u8],
    prefix: &'a [u8],
    link: &'a [u8],
    type_flag: TypeFlag,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    dev_major: u32,
    dev_minor: u32,
}

impl Ustar<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        let mut block = [0u8; BLOCK];
        block[..self.name.len()].copy_from_slice(self.name);
        octal(&mut block[100..108], u64::from(self.mode));
        octal(&mut block[108..116], self.uid);
        octal(&mut block[116..124], self.gid);
        octal(&mut block[124..136], self.size);
        octal(&mut block[136..148], self.mtime);
        block[156] = self.type_flag.byte();
        block[157..157 + self.link.len()].copy_from_slice(self.link);
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        // uname and gname (265..329) stay empty: owners are numeric only.
        octal(&mut block[329..337], u64::from(self.dev_major));
        octal(&mut block[337..345], u64::from(self.dev_minor));
        block[345..345 + self.prefix.len()].copy_from_slice(self.prefix);

        // The checksum is computed with its own field read as eight spaces.
        block[148..156].copy_from_slice(b"        ");
        let sum: u64 = block.iter().map(|&byte| u64::from(byte)).sum();
        octal(&mut block[148..155], sum);
        block[155] = b' ';
        out.extend_from_slice(&block);
    }
}

/// Zero-padded octal digits filling all but the last byte of `field`, then a NUL. The caller
/// has checked that the value fits.
fn octal(field: &mut [u8], mut value: u64) {
    let digits = field.len() - 1;
    for index in (0..digits).rev() {
        field[index] = b'0' + (value & 7) as u8;
        value >>= 3;
    }
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &[u8]) -> EntryHeader<'_> {
        EntryHeader {
            name,
            link_name: None,
            type_flag: TypeFlag::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            dev_major: 0,
            dev_minor: 0,
            xattrs: &[],
            sparse_real_size: None,
        }
    }

    fn pax_text(out: &[u8]) -> String {
        assert_eq!(out[156], b'x', "expected a PAX header first");
        let size = usize::from_str_radix(std::str::from_utf8(&out[124..135]).unwrap(), 8).unwrap();
        String::from_utf8_lossy(&out[BLOCK..BLOCK + size]).into_owned()
    }

    #[test]
    fn record_length_counts_its_own_digits() {
        let mut records = PaxRecords::default();
        records.add(b"path", &[b'a'; 93]);
        // 3 + 1 + 4 + 1 + 93 + 1 = 103 bytes including the three-digit length.
        assert!(records.data.starts_with(b"103 path="));
        assert_eq!(records.data.len(), 103);
        // 98 bytes besides the length: two digits would make 100, which has three.
        let mut records = PaxRecords::default();
        records.add(b"path", &[b'a'; 91]);
        assert!(records.data.starts_with(b"101 path="));
        assert_eq!(records.data.len(), 101);
        let mut records = PaxRecords::default();
        records.add(b"path", &[b'a'; 90]);
        assert!(records.data.starts_with(b"99 path="));
        assert_eq!(records.data.len(), 99);
    }

    #[test]
    fn plain_entry_has_no_pax_header_and_a_valid_checksum() {
        let mut out = Vec::new();
        encode(&entry(b"./etc/hostname"), &mut out).unwrap();
        assert_eq!(out.len(), BLOCK);
        let stored = u64::from_str_radix(std::str::from_utf8(&out[148..154]).unwrap(), 8).unwrap();
        let mut copy = out.clone();
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(
            stored,
            copy.iter().map(|&byte| u64::from(byte)).sum::<u64>()
        );
        assert_eq!(&out[257..265], b"ustar\x0000");
    }

    #[test]
    fn names_up_to_255_bytes_use_the_prefix_field() {
        let name = format!("./{}/{}", "d".repeat(150), "f".repeat(99));
        let mut out = Vec::new();
        encode(&entry(name.as_bytes()), &mut out).unwrap();
        assert_eq!(out.len(), BLOCK, "no PAX header expected");
        assert_eq!(&out[..99], "f".repeat(99).as_bytes());
        assert_eq!(&out[345..347], b"./");
    }

    #[test]
    fn long_names_binary_names_and_large_values() {
        let long = format!("./{}", "x/".repeat(150));
        let mut header = entry(long.as_bytes());
        header.uid = MAX_OCTAL_ID + 1;
        header.size = MAX_OCTAL_SIZE + 1;
        header.mtime = -86_400;
        let mut out = Vec::new();
        encode(&header, &mut out).unwrap();
        let text = pax_text(&out);
        assert!(text.contains(&format!(" path={long}\n")), "{text}");
        assert!(text.contains(" uid=2097152\n"), "{text}");
        assert!(text.contains(" size=8589934592\n"), "{text}");
        assert!(text.contains(" mtime=-86400\n"), "{text}");

        // A short non-UTF-8 name stays in the ustar field; a long one goes to PAX as is.
        let mut out = Vec::new();
        encode(&entry(b"./caf\xe9"), &mut out).unwrap();
        assert_eq!(out.len(), BLOCK);
        assert_eq!(&out[..7], b"./caf\xe9\0");
        let mut long = b"./".to_vec();
        long.extend_from_slice(&[0xe9; 300]);
        let mut out = Vec::new();
        encode(&entry(&long), &mut out).unwrap();
        let mut record = b"path=".to_vec();
        record.extend_from_slice(&long);
        assert!(
            out[BLOCK..]
                .windows(record.len())
                .any(|window| window == record)
        );
    }

    /// A 9 GiB member cannot be written in a test, but its header can: in an archive file
    /// whose data area is a hole, GNU tar lists the size from the PAX record.
    #[test]
    fn gnu_tar_reads_sizes_beyond_8_gib_from_pax() {
        let size = 9u64 << 30;
        let mut header = entry(b"./huge");
        header.size = size;
        header.uid = 3_000_000;
        let mut out = Vec::new();
        encode(&header, &mut out).unwrap();
        let temp = tempfile::tempdir().unwrap();
        let archive = temp.path().join("huge.tar");
        let mut file = std::fs::File::create(&archive).unwrap();
        use std::io::{Seek, Write};
        file.write_all(&out).unwrap();
        file.seek(std::io::SeekFrom::Current(size as i64)).unwrap();
        file.write_all(&[0; 2 * BLOCK]).unwrap();
        drop(file);
        let listing = std::process::Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&archive)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(
            listing.status.success(),
            "{}",
            String::from_utf8_lossy(&listing.stderr)
        );
        assert!(
            text.contains(&size.to_string()) && text.contains("3000000/0"),
            "{text}"
        );
    }

    #[test]
    fn sparse_map_is_block_padded_decimal_lines() {
        let map = sparse_map(&[(0, 4096), (1 << 30, 0)]);
        assert_eq!(map.len(), BLOCK);
        assert!(map.starts_with(b"2\n0\n4096\n1073741824\n0\n\0"));
    }
}
