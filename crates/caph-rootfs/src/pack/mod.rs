//! The reproducible, streaming tarball writer: any directory tree in, one POSIX (PAX) tar
//! stream out, compressed with parallel gzip, multithreaded zstd, or not at all.
//!
//! How it works, and why:
//! - **Streaming.** The tree is walked depth first; each directory's names are read and
//!   sorted when it is entered, and only the listings on the current path are held. File data
//!   goes through a 1 MiB buffer straight into the compressor and the output file. Memory does
//!   not grow with the tree (the one exception: inodes with several links, remembered until all
//!   their links were seen).
//! - **Reproducible.** Names sorted bytewise per directory; mtimes clamped to
//!   `source_date_epoch`; numeric owners only (no user or group names); no atime or ctime;
//!   fixed names for PAX and sparse stand-in headers; compression chunked by input bytes only.
//! - **Faithful.** Regular files, directories, symlinks, hard links (the first name in archive
//!   order carries the data), character and block devices and fifos, with setuid, setgid and
//!   sticky bits and every extended attribute (`SCHILY.xattr.*`). Sockets cannot be archived
//!   and are skipped with a [`PackWarning`]. Sparse files are written in GNU's PAX sparse format
//!   1.0, found with `SEEK_DATA`/`SEEK_HOLE`, so holes are neither read nor stored.
//! - **Bounded memory.** About 16 MiB of buffers plus about 5 MiB per gzip thread (four 1 MiB
//!   chunks in flight each) or about 14 MiB per zstd worker (4 MiB jobs), whatever the tree
//!   size. Measured peak RSS with 2 threads: 47 to 50 MiB (zstd) and 31 to 35 MiB (gzip), on a
//!   265 MiB Debian rootfs and on a 1.4 GiB tree alike.
//! - **Pipelined.** The walker (reading, tar framing) hands the stream in 1 MiB blocks to a
//!   compressor thread, which only feeds the compressor's workers; its output goes in blocks to
//!   an output thread that hashes and writes it, starting the file's writeback as it goes.
//!   Reading, compressing and writing overlap, and none waits for another beyond a few blocks.
//! - **Rootfs aware.** With [`PackOptions::rootfs`], `proc`, `sys`, `dev` and `run` at the root
//!   are stored as empty directories and the caches in [`ROOTFS_EXCLUDES`] are left out.
//! - **Walked by handles, not paths.** Every directory is opened (`openat`, `O_NOFOLLOW`) from
//!   its parent's handle, and every entry is looked at from its directory's handle (`fstatat`,
//!   `readlinkat`, `openat`): a directory swapped for a symlink during the walk is never
//!   followed out of the tree. A file that changes while it is read is packed as it was opened
//!   and warned about ([`PackWarning::Changed`]), as GNU tar does: one that grew is cut at its
//!   size when opened, one that shrank is padded with zeros.
//! - **Its own outputs stay out.** An output that exists and is not a regular file is refused;
//!   an output inside the tree, its `.sha256` and temporary files of earlier runs are left out.

mod compress;
mod exclude;
mod header;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use compress::{EarlyWriteback, HashingWriter};
use exclude::Pattern;
use header::{BLOCK, EntryHeader, TypeFlag, Xattr};

/// Root-relative directories that [`PackOptions::rootfs`] stores without their contents:
/// the kernel's virtual filesystems and runtime state, which are mounted or created at boot.
/// installimage also skips them on extraction.
pub const ROOTFS_EMPTY_DIRS: &[&str] = &["proc", "sys", "dev", "run"];

/// Root-relative patterns that [`PackOptions::rootfs`] leaves out: package caches and
/// temporary files that a fresh node neither needs nor wants to ship.
///
/// - `var/cache/apt/archives/*.deb`, `var/cache/apt/archives/partial/*`: downloaded packages.
/// - `var/cache/apt/*.bin`: apt's binary caches, rebuilt on the next apt run.
/// - `var/lib/apt/lists/*`: package indexes, stale on arrival; apt recreates the directory's
///   contents (including `partial/`) on `apt-get update`.
/// - `tmp/*`, `var/tmp/*`: temporary files (the directories themselves are kept).
///
/// `*` and `?` match within one path component; a matching directory goes with its contents.
pub const ROOTFS_EXCLUDES: &[&str] = &[
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/archives/partial/*",
    "var/cache/apt/*.bin",
    "var/lib/apt/lists/*",
    "tmp/*",
    "var/tmp/*",
];

/// gzip level used by [`Compression::gzip`]: gzip's and pigz's own default (libdeflate's 6 is
/// smaller than gzip's 6).
pub const DEFAULT_GZIP_LEVEL: u32 = 6;
/// zstd level used by [`Compression::zstd`]: zstd's own default.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Bytes read from a file per `read` call: large enough to keep syscall overhead negligible.
const READ_BUFFER: usize = 1 << 20;
/// Bytes buffered before the output file (after compression).
const OUTPUT_BUFFER: usize = 256 * 1024;
/// A tar archive is a whole number of 10 KiB records (GNU tar's default blocking factor 20).
const RECORD: u64 = 20 * BLOCK as u64;
/// Progress is reported at most this often...
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// ...or after this many more uncompressed bytes, whichever comes first.
const PROGRESS_BYTES: u64 = 64 << 20;
/// `llistxattr` can race with a writer adding attributes; reading the list is retried this
/// often before giving up (a tree that changes that fast is not a tree to pack).
const XATTR_LIST_ATTEMPTS: usize = 3;

/// How the tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Compression {
    /// A plain `.tar`.
    None,
    /// gzip (`.tar.gz`), as independent 1 MiB members compressed on all threads.
    Gzip {
        /// 1 (fastest) to 12 (smallest; 10 to 12 are libdeflate's slow near-optimal levels).
        level: u32,
    },
    /// zstd (`.tar.zst`) in its multithreaded mode, with a content checksum.
    Zstd {
        /// 1 (fastest) to 22 (smallest).
        level: i32,
    },
}

impl Compression {
    /// gzip at [`DEFAULT_GZIP_LEVEL`].
    pub fn gzip() -> Compression {
        Compression::Gzip {
            level: DEFAULT_GZIP_LEVEL,
        }
    }

    /// zstd at [`DEFAULT_ZSTD_LEVEL`].
    pub fn zstd() -> Compression {
        Compression::Zstd {
            level: DEFAULT_ZSTD_LEVEL,
        }
    }

    /// `none`, `gzip` or `zstd`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip { .. } => "gzip",
            Compression::Zstd { .. } => "zstd",
        }
    }

    /// The file extension without a leading dot: `tar`, `tar.gz` or `tar.zst`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip { .. } => "tar.gz",
            Compression::Zstd { .. } => "tar.zst",
        }
    }

    /// Checks the level against the compressor's range.
    pub fn validate(self) -> Result<(), PackError> {
        let (ok, range) = match self {
            Compression::None => (true, ""),
            Compression::Gzip { level } => ((1..=12).contains(&level), "gzip levels are 1 to 12"),
            Compression::Zstd { level } => ((1..=22).contains(&level), "zstd levels are 1 to 22"),
        };
        if ok {
            Ok(())
        } else {
            Err(PackError::Compression {
                value: self.to_string(),
                reason: range.to_owned(),
            })
        }
    }
}

impl fmt::Display for Compression {
    /// `none`, `gzip:6`, `zstd:3`: the form [`FromStr`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Gzip { level } => write!(f, "gzip:{level}"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

impl FromStr for Compression {
    type Err = PackError;

    /// Reads `none`, `gzip`, `zstd`, or `gzip:LEVEL` / `zstd:LEVEL`.
    fn from_str(text: &str) -> Result<Compression, PackError> {
        let (kind, level) = match text.split_once(':') {
            Some((kind, level)) => (kind, Some(level)),
            None => (text, None),
        };
        let bad = |reason: &str| PackError::Compression {
            value: text.to_owned(),
            reason: reason.to_owned(),
        };
        let compression = match (kind, level) {
            ("none", None) => Compression::None,
            ("none", Some(_)) => return Err(bad("`none` takes no level")),
            ("gzip", None) => Compression::gzip(),
            ("gzip", Some(level)) => Compression::Gzip {
                level: level
                    .parse()
                    .map_err(|_| bad("the level must be a number from 1 to 12"))?,
            },
            ("zstd", None) => Compression::zstd(),
            ("zstd", Some(level)) => Compression::Zstd {
                level: level
                    .parse()
                    .map_err(|_| bad("the level must be a number from 1 to 22"))?,
            },
            _ => return Err(bad("expected none, gzip, zstd, gzip:LEVEL or zstd:LEVEL")),
        };
        compression.validate()?;
        Ok(compression)
    }
}

/// What to pack and how. Start from [`PackOptions::rootfs`] or [`PackOptions::plain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackOptions {
    /// The compressor and its level.
    pub compression: Compression,
    /// mtimes later than this (seconds since the epoch) are stored as this; `None` keeps them.
    /// The CLI takes it from `SOURCE_DATE_EPOCH`, as reproducible-builds.org specifies.
    pub source_date_epoch: Option<i64>,
    /// Root-relative directories stored without their contents (patterns as in `excludes`).
    pub empty_dirs: Vec<String>,
    /// Root-relative patterns left out with everything below them; see [`ROOTFS_EXCLUDES`].
    pub excludes: Vec<String>,
    /// Compression threads; 0 means one per available core. The output does not depend on it;
    /// memory grows by about 5 MiB (gzip) or 14 MiB (zstd) per thread.
    pub threads: usize,
    /// Checked before every entry and every 1 MiB of data; once set, the run stops with
    /// [`PackError::Cancelled`] and leaves no output file behind.
    pub cancel: Cancel,
}

/// A cancellation flag shared between the writer and whoever may stop it (a Ctrl-C handler, or
/// a task waiting on a `CancellationToken`). Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Sets the flag: the writer stops at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the flag is set.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl PartialEq for Cancel {
    /// The same flag, not merely the same state.
    fn eq(&self, other: &Cancel) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Cancel {}

impl PackOptions {
    /// For a root filesystem: [`ROOTFS_EMPTY_DIRS`] and [`ROOTFS_EXCLUDES`] apply.
    pub fn rootfs(compression: Compression) -> PackOptions {
        PackOptions {
            compression,
            source_date_epoch: None,
            empty_dirs: ROOTFS_EMPTY_DIRS
                .iter()
                .map(|dir| (*dir).to_owned())
                .collect(),
            excludes: ROOTFS_EXCLUDES
                .iter()
                .map(|pattern| (*pattern).to_owned())
                .collect(),
            threads: 0,
            cancel: Cancel::new(),
        }
    }

    /// For any directory: everything is packed as it is.
    pub fn plain(compression: Compression) -> PackOptions {
        PackOptions {
            compression,
            source_date_epoch: None,
            empty_dirs: Vec::new(),
            excludes: Vec::new(),
            threads: 0,
            cancel: Cancel::new(),
        }
    }
}

impl Default for PackOptions {
    /// A gzip-compressed root filesystem, installimage's and the provider's common ground.
    fn default() -> PackOptions {
        PackOptions::rootfs(Compression::gzip())
    }
}

/// Where the writer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Walking the tree and writing entries.
    Archiving,
    /// All entries written; the compressor is draining.
    Finishing,
    /// The output is complete (and, for a file, persisted with its `.sha256`).
    Done,
}

/// A progress report, sent at most every 100 ms or 64 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Where the writer is.
    pub phase: Phase,
    /// Entries written so far.
    pub files: u64,
    /// Uncompressed tar bytes produced so far.
    pub bytes_in: u64,
    /// Compressed bytes written so far.
    pub bytes_out: u64,
    /// Time since the writer started.
    pub elapsed: Duration,
}

/// Something worth telling the user that does not stop the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackWarning {
    /// A socket cannot be stored in a tar archive; it was left out.
    SocketSkipped {
        /// The socket.
        path: PathBuf,
    },
    /// An entry changed while it was packed: it is stored as it was opened (a file that
    /// shrank is padded with zeros), or left out when it is no longer what it was.
    Changed {
        /// The entry.
        path: PathBuf,
        /// What happened, in GNU tar's words where it has them.
        detail: String,
    },
}

impl fmt::Display for PackWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackWarning::SocketSkipped { path } => {
                write!(
                    f,
                    "{}: socket skipped (tar cannot store sockets)",
                    path.display()
                )
            }
            PackWarning::Changed { path, detail } => write!(f, "{}: {detail}", path.display()),
        }
    }
}

/// What the writer tells its caller while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackEvent {
    /// Throttled progress.
    Progress(Progress),
    /// A warning; sent as it happens.
    Warning(PackWarning),
}

/// Entries in the archive, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryCounts {
    /// Regular files stored with their data (sparse ones included).
    pub regular: u64,
    /// Of `regular`, those stored in sparse format.
    pub sparse: u64,
    /// Directories, the root `./` included.
    pub directories: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Further names of an inode already stored.
    pub hardlinks: u64,
    /// Character devices.
    pub char_devices: u64,
    /// Block devices.
    pub block_devices: u64,
    /// Named pipes.
    pub fifos: u64,
    /// Sockets left out (each with a warning).
    pub sockets_skipped: u64,
    /// Paths left out by an exclude pattern (a directory counts once, not its contents).
    pub excluded: u64,
}

impl EntryCounts {
    /// Entries in the archive.
    pub fn total(&self) -> u64 {
        self.regular
            + self.directories
            + self.symlinks
            + self.hardlinks
            + self.char_devices
            + self.block_devices
            + self.fifos
    }
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackSummary {
    /// The compression used.
    pub compression: Compression,
    /// Entries by kind.
    pub entries: EntryCounts,
    /// Sum of the (apparent) sizes of the regular files stored, each inode once.
    pub file_bytes: u64,
    /// Size of the uncompressed tar stream.
    pub bytes_in: u64,
    /// Size of the output.
    pub bytes_out: u64,
    /// Lowercase hex sha256 of the output.
    pub sha256: String,
    /// Wall time of the run (for [`pack_to_path`], until both files are in place).
    pub duration: Duration,
}

/// Why packing failed. Every variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The source is not a directory.
    #[error("{}: not a directory", path.display())]
    NotADirectory {
        /// The source given.
        path: PathBuf,
    },
    /// Reading the tree failed.
    #[error("cannot read {}", path.display())]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The output (or `<output stream>` for [`pack_to_writer`]).
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The output exists and is not a regular file (a device, a FIFO, a symlink, a
    /// directory): replacing it is not what anyone means.
    #[error("{}: {reason}", path.display())]
    Output {
        /// The output given.
        path: PathBuf,
        /// The rule, with what the path is.
        reason: String,
    },
    /// A file changed under the writer in a way it cannot pack around.
    #[error("{} changed while it was being packed: {detail}", path.display())]
    Changed {
        /// The file.
        path: PathBuf,
        /// What was noticed.
        detail: String,
    },
    /// A device number too large for the 7-digit octal fields (PAX has no keyword for it).
    #[error("{}: device number {major}:{minor} does not fit a tar header", path.display())]
    DeviceNumber {
        /// The device node.
        path: PathBuf,
        /// Its major number.
        major: u32,
        /// Its minor number.
        minor: u32,
    },
    /// An exclude or empty-directory pattern is malformed.
    #[error("invalid pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// [`PackOptions::cancel`] was set.
    #[error("packing was cancelled")]
    Cancelled,
    /// `SOURCE_DATE_EPOCH` is set but not an integer.
    #[error("SOURCE_DATE_EPOCH={value:?} is not a number of seconds since 1970")]
    SourceDateEpoch {
        /// The value found.
        value: String,
    },
    /// A compression name or level is not valid.
    #[error("invalid compression {value:?}: {reason}")]
    Compression {
        /// What was given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
}

/// Interprets a `SOURCE_DATE_EPOCH` value as reproducible-builds.org specifies: unset or empty
/// means none; anything else must be a decimal integer (seconds since the epoch). The CLI
/// passes `std::env::var_os("SOURCE_DATE_EPOCH")`.
pub fn source_date_epoch(value: Option<&std::ffi::OsStr>) -> Result<Option<i64>, PackError> {
    let Some(value) = value.filter(|value| !value.is_empty()) else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    if !text
        .bytes()
        .all(|byte| byte.is_ascii_digit() || byte == b'-')
    {
        return Err(PackError::SourceDateEpoch {
            value: text.into_owned(),
        });
    }
    text.parse()
        .map(Some)
        .map_err(|_| PackError::SourceDateEpoch {
            value: text.into_owned(),
        })
}

/// The checksum file written next to `output`: `<output>.sha256`.
pub fn checksum_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Packs `source` into the file `output`, and writes `<output>.sha256` (`sha256sum` format,
/// computed while writing).
///
/// The archive is written to a temporary file in `output`'s directory, synced, and renamed
/// into place only on success; on error nothing is left behind. Both files get mode 0644.
pub fn pack_to_path(
    source: &Path,
    output: &Path,
    options: &PackOptions,
    progress: &mut dyn FnMut(PackEvent),
) -> Result<PackSummary, PackError> {
    let started = Instant::now();
    let write_error = |source: io::Error| PackError::Write {
        path: output.to_owned(),
        source,
    };
    let directory = match output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let file_name = output.file_name().ok_or_else(|| {
        write_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the output needs a file name",
        ))
    })?;
    refuse_special_output(output)?;
    refuse_special_output(&checksum_path(output))?;
    // The name is a line of the `.sha256` file: a line break would add one of its own.
    if let Err(problem) = caph_core::text::check_line(&file_name.to_string_lossy()) {
        return Err(PackError::Output {
            path: output.to_owned(),
            reason: format!(
                "the file name {}, which its .sha256 file cannot hold in one line",
                problem.describe()
            ),
        });
    }

    let temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", file_name.to_string_lossy()))
        .suffix(".partial")
        .tempfile_in(directory)
        .map_err(write_error)?;
    let (temp_file, temp_path) = temp.into_parts();
    // The output may lie inside the tree being packed; the archive must not contain itself,
    // nor the outputs of earlier runs.
    let own = temp_file.metadata().map_err(write_error)?;
    let output_directory = fs::metadata(directory).map_err(write_error)?;
    let own_outputs = OwnOutputs {
        temp: (own.dev(), own.ino()),
        directory: (output_directory.dev(), output_directory.ino()),
        name: file_name.to_owned(),
    };
    let buffered = BufWriter::with_capacity(OUTPUT_BUFFER, EarlyWriteback::new(temp_file));
    let (buffered, mut summary) = pack_into(
        source,
        buffered,
        output,
        Some(own_outputs),
        options,
        progress,
    )?;
    let file = buffered
        .into_inner()
        .map_err(|error| write_error(error.into_error()))?
        .into_inner();
    set_public_mode(&file).map_err(write_error)?;
    // Synced before the rename, so a crash never leaves a complete-looking but empty file.
    file.sync_all().map_err(write_error)?;
    drop(file);
    temp_path
        .persist(output)
        .map_err(|error| write_error(error.error))?;

    let checksum_line = format!("{}  {}\n", summary.sha256, file_name.to_string_lossy());
    write_file_atomically(&checksum_path(output), checksum_line.as_bytes())?;
    // The whole run, the sync and both renames included.
    summary.duration = started.elapsed();

    progress(PackEvent::Progress(Progress {
        phase: Phase::Done,
        files: summary.entries.total(),
        bytes_in: summary.bytes_in,
        bytes_out: summary.bytes_out,
        elapsed: summary.duration,
    }));
    Ok(summary)
}

/// Packs `source` into `writer` (for example stdout). The sha256 in the summary covers exactly
/// the bytes written.
pub fn pack_to_writer<W: Write + Send>(
    source: &Path,
    writer: W,
    options: &PackOptions,
    progress: &mut dyn FnMut(PackEvent),
) -> Result<PackSummary, PackError> {
    let (_, summary) = pack_into(
        source,
        writer,
        Path::new("<output stream>"),
        None,
        options,
        progress,
    )?;
    progress(PackEvent::Progress(Progress {
        phase: Phase::Done,
        files: summary.entries.total(),
        bytes_in: summary.bytes_in,
        bytes_out: summary.bytes_out,
        elapsed: summary.duration,
    }));
    Ok(summary)
}

/// Refuses an output path that exists and is not a regular file: the output is renamed into
/// place, which would replace a device node, a FIFO or a symlink (not what it points to).
fn refuse_special_output(path: &Path) -> Result<(), PackError> {
    let kind = match fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(metadata) => {
            use std::os::unix::fs::FileTypeExt as _;
            let file_type = metadata.file_type();
            if file_type.is_file() {
                return Ok(());
            } else if file_type.is_symlink() {
                "a symlink"
            } else if file_type.is_dir() {
                "a directory"
            } else if file_type.is_char_device() || file_type.is_block_device() {
                "a device node"
            } else if file_type.is_fifo() {
                "a FIFO"
            } else {
                "not a regular file"
            }
        }
    };
    Err(PackError::Output {
        path: path.to_owned(),
        reason: format!(
            "exists and is not a regular file ({kind}): pack writes a new file or replaces a regular one, nothing else"
        ),
    })
}

/// What a run writes into the output's directory, to be left out when that directory is in
/// the tree: the archive's temporary file (by inode), and by name the archive, its `.sha256`
/// and the temporary files of this and earlier runs.
#[derive(Debug, Clone)]
struct OwnOutputs {
    temp: (u64, u64),
    directory: (u64, u64),
    name: OsString,
}

impl OwnOutputs {
    /// Whether `name` in the directory `directory` is one of them.
    fn contains(&self, directory: (u64, u64), name: &OsStr) -> bool {
        if directory != self.directory {
            return false;
        }
        let name = name.as_bytes();
        let own = self.name.as_bytes();
        let partial = |prefix: &[u8]| name.starts_with(prefix) && name.ends_with(b".partial");
        name == own
            || name.strip_prefix(own) == Some(b".sha256".as_slice())
            || partial(&[b".", own, b"."].concat())
            || partial(b".caph-")
    }
}

/// Writes `contents` to `path` through a temporary file in the same directory, mode 0644.
pub(crate) fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<(), PackError> {
    let write_error = |source: io::Error| PackError::Write {
        path: path.to_owned(),
        source,
    };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".caph-")
        .suffix(".partial")
        .tempfile_in(directory)
        .map_err(write_error)?;
    temp.write_all(contents).map_err(write_error)?;
    set_public_mode(temp.as_file()).map_err(write_error)?;
    temp.as_file().sync_all().map_err(write_error)?;
    temp.persist(path)
        .map_err(|error| write_error(error.error))?;
    Ok(())
}

/// Release artifacts are meant to be served and read: 0644 rather than tempfile's 0600.
fn set_public_mode(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(0o644))
}

fn pack_into<W: Write + Send>(
    source: &Path,
    sink: W,
    output_label: &Path,
    own_outputs: Option<OwnOutputs>,
    options: &PackOptions,
    progress: &mut dyn FnMut(PackEvent),
) -> Result<(W, PackSummary), PackError> {
    let started = Instant::now();
    options.compression.validate()?;
    let excludes = parse_patterns(&options.excludes)?;
    let empty_dirs = parse_patterns(&options.empty_dirs)?;
    let metadata = fs::metadata(source).map_err(|source_error| read_error(source, source_error))?;
    if !metadata.is_dir() {
        return Err(PackError::NotADirectory {
            path: source.to_owned(),
        });
    }
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        threads => threads,
    };

    let bytes_out = Arc::new(AtomicU64::new(0));
    let write_error = |source: io::Error| PackError::Write {
        path: output_label.to_owned(),
        source,
    };
    let hashing = HashingWriter::new(sink, Arc::clone(&bytes_out));
    let (pipe, compressor) = compress::tar_pipe();

    // Compression and output (sha256 and the writes) run on their own thread, fed through a
    // bounded pipe, so the walker never waits for a compressor or the disk, nor they for a file
    // being opened; scoped, so the sink may borrow.
    let compression = options.compression;
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || compressor.run(compression, threads, hashing));
        let walked = (|| {
            let mut walker = Walker {
                root: source.to_owned(),
                output_label,
                own_outputs,
                proc_fds: Path::new("/proc/self/fd").is_dir(),
                cancel: options.cancel.clone(),
                epoch: options.source_date_epoch,
                excludes,
                empty_dirs,
                out: pipe,
                bytes_in: 0,
                bytes_out: Arc::clone(&bytes_out),
                links: HashMap::new(),
                header: Vec::with_capacity(4 * BLOCK),
                buffer: vec![0; READ_BUFFER],
                counts: EntryCounts::default(),
                file_bytes: 0,
                progress,
                started,
                last_report: started,
                last_report_bytes: 0,
                shrunk: false,
            };
            walker.walk()?;
            walker.finish_archive()?;
            walker.report(Phase::Finishing, true);
            let Walker {
                out,
                bytes_in,
                counts,
                file_bytes,
                ..
            } = walker;
            out.close().map_err(write_error)?;
            Ok((bytes_in, counts, file_bytes))
        })();
        // When the walk failed, the pipe is gone by now and the output thread ends too.
        let written = writer.join();
        let hashing = match written {
            Ok(Ok(hashing)) => hashing,
            // A failed write is the cause of whatever the walker saw.
            Ok(Err(error)) => return Err(write_error(error)),
            Err(_) => return Err(write_error(io::Error::other("the output thread panicked"))),
        };
        let (bytes_in, counts, file_bytes) = walked?;
        let (sink, sha256) = hashing.into_parts();
        let summary = PackSummary {
            compression: options.compression,
            entries: counts,
            file_bytes,
            bytes_in,
            bytes_out: bytes_out.load(Ordering::Relaxed),
            sha256,
            duration: started.elapsed(),
        };
        Ok((sink, summary))
    })
}

fn parse_patterns(patterns: &[String]) -> Result<Vec<Pattern>, PackError> {
    patterns
        .iter()
        .map(|pattern| {
            Pattern::parse(pattern).map_err(|reason| PackError::Pattern {
                pattern: pattern.clone(),
                reason: reason.to_string(),
            })
        })
        .collect()
}

fn read_error(path: &Path, source: io::Error) -> PackError {
    PackError::Read {
        path: path.to_owned(),
        source,
    }
}

/// A directory being walked: its handle, its sorted names and how far we got.
struct Frame {
    /// Root-relative path, components joined by `/`; empty for the root.
    relative: Vec<u8>,
    /// For messages only: entries are reached through `directory`, never by this path.
    absolute: PathBuf,
    /// The open directory every entry of it is looked at from.
    directory: File,
    /// Its device and inode.
    id: (u64, u64),
    names: std::vec::IntoIter<OsString>,
}

/// What the writer needs of an inode, from `fstat` or `fstatat` on a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    file_type: rustix::fs::FileType,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    blocks: u64,
    mtime: (i64, u64),
    ctime: (i64, u64),
    dev: u64,
    ino: u64,
    nlink: u64,
    rdev: u64,
}

impl From<rustix::fs::Stat> for Meta {
    // `From` rather than `as`: the field types differ between architectures.
    #[allow(clippy::useless_conversion)]
    fn from(stat: rustix::fs::Stat) -> Meta {
        Meta {
            file_type: rustix::fs::FileType::from_raw_mode(stat.st_mode),
            mode: u32::from(stat.st_mode),
            uid: stat.st_uid,
            gid: stat.st_gid,
            size: u64::try_from(stat.st_size).unwrap_or(0),
            blocks: u64::try_from(stat.st_blocks).unwrap_or(0),
            mtime: (
                i64::from(stat.st_mtime),
                u64::try_from(stat.st_mtime_nsec).unwrap_or(0),
            ),
            ctime: (
                i64::from(stat.st_ctime),
                u64::try_from(stat.st_ctime_nsec).unwrap_or(0),
            ),
            dev: u64::from(stat.st_dev),
            ino: u64::from(stat.st_ino),
            nlink: u64::from(stat.st_nlink),
            rdev: u64::from(stat.st_rdev),
        }
    }
}

fn fstat(file: &File, path: &Path) -> Result<Meta, PackError> {
    rustix::fs::fstat(file)
        .map(Meta::from)
        .map_err(|errno| read_error(path, errno.into()))
}

/// An inode with several links: its first archive name, and how many links are still unseen.
struct FirstLink {
    name: Vec<u8>,
    remaining: u64,
}

struct Walker<'a> {
    root: PathBuf,
    output_label: &'a Path,
    /// What this run writes, skipped if met in the tree.
    own_outputs: Option<OwnOutputs>,
    /// Whether `/proc/self/fd` reaches an entry through its directory's handle (for the
    /// extended attributes of entries that are not opened).
    proc_fds: bool,
    cancel: Cancel,
    epoch: Option<i64>,
    excludes: Vec<Pattern>,
    empty_dirs: Vec<Pattern>,
    out: compress::TarPipe,
    bytes_in: u64,
    bytes_out: Arc<AtomicU64>,
    links: HashMap<(u64, u64), FirstLink>,
    header: Vec<u8>,
    buffer: Vec<u8>,
    counts: EntryCounts,
    file_bytes: u64,
    progress: &'a mut dyn FnMut(PackEvent),
    started: Instant,
    last_report: Instant,
    last_report_bytes: u64,
    /// Whether the file being stored shrank while it was read (and was padded).
    shrunk: bool,
}

impl Walker<'_> {
    fn walk(&mut self) -> Result<(), PackError> {
        let root = self.root.clone();
        // The root may be a symlink to a directory: the directory it points to is stored. Below
        // it, nothing is followed.
        let handle = rustix::fs::open(
            &root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| read_error(&root, errno.into()))?;
        let directory = File::from(handle);
        let meta = fstat(&directory, &root)?;
        let mut stack = Vec::new();
        stack.extend(self.directory(directory, &root, b"", &meta)?);

        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.next() else {
                stack.pop();
                continue;
            };
            let absolute = frame.absolute.join(&name);
            let mut relative = Vec::with_capacity(frame.relative.len() + 1 + name.len());
            if !frame.relative.is_empty() {
                relative.extend_from_slice(&frame.relative);
                relative.push(b'/');
            }
            relative.extend_from_slice(name.as_bytes());
            if self.cancel.is_cancelled() {
                return Err(PackError::Cancelled);
            }
            let parent = (frame.directory.as_fd(), frame.id);
            let entered = self.entry(parent, &name, &absolute, &relative)?;
            stack.extend(entered);
            self.report(Phase::Archiving, false);
        }
        Ok(())
    }

    fn changed(&mut self, path: &Path, detail: impl Into<String>) {
        (self.progress)(PackEvent::Warning(PackWarning::Changed {
            path: path.to_owned(),
            detail: detail.into(),
        }));
    }

    /// One entry of the directory `parent` (its handle and id); a directory entered is
    /// returned, to be walked next.
    fn entry(
        &mut self,
        (parent, parent_id): (BorrowedFd<'_>, (u64, u64)),
        file_name: &OsStr,
        absolute: &Path,
        relative: &[u8],
    ) -> Result<Option<Frame>, PackError> {
        if matches_any(&self.excludes, relative) {
            self.counts.excluded += 1;
            return Ok(None);
        }
        if self
            .own_outputs
            .as_ref()
            .is_some_and(|own| own.contains(parent_id, file_name))
        {
            self.counts.excluded += 1;
            return Ok(None);
        }
        let mut metadata = match rustix::fs::statat(parent, file_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Meta::from(stat),
            Err(Errno::NOENT) => {
                self.changed(absolute, "file removed before we read it");
                return Ok(None);
            }
            Err(errno) => return Err(read_error(absolute, errno.into())),
        };
        let file_type = metadata.file_type;
        if file_type == FileType::Socket {
            self.counts.sockets_skipped += 1;
            (self.progress)(PackEvent::Warning(PackWarning::SocketSkipped {
                path: absolute.to_owned(),
            }));
            return Ok(None);
        }
        if file_type == FileType::Directory {
            let opened = rustix::fs::openat(
                parent,
                file_name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            );
            let directory = match opened {
                Ok(handle) => File::from(handle),
                // Replaced by a symlink or a file since it was looked at: not followed.
                Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => {
                    self.changed(absolute, "directory changed as we read it; left out");
                    return Ok(None);
                }
                Err(errno) => return Err(read_error(absolute, errno.into())),
            };
            let meta = fstat(&directory, absolute)?;
            return self.directory(directory, absolute, relative, &meta);
        }
        if self
            .own_outputs
            .as_ref()
            .is_some_and(|own| own.temp == (metadata.dev, metadata.ino))
        {
            self.counts.excluded += 1;
            return Ok(None);
        }
        // A regular file is opened first, and packed as the open handle says it is.
        let mut opened = None;
        if file_type == FileType::RegularFile {
            let Some(file) = open_for_reading(parent, file_name, absolute)? else {
                self.changed(absolute, "file changed as we read it; left out");
                return Ok(None);
            };
            metadata = fstat(&file, absolute)?;
            if metadata.file_type != FileType::RegularFile {
                self.changed(absolute, "file changed as we read it; left out");
                return Ok(None);
            }
            opened = Some(file);
        }

        let mut name = Vec::with_capacity(relative.len() + 2);
        name.extend_from_slice(b"./");
        name.extend_from_slice(relative);

        if metadata.nlink > 1 {
            let key = (metadata.dev, metadata.ino);
            if let Some(first) = self.links.get_mut(&key) {
                let target = first.name.clone();
                first.remaining -= 1;
                if first.remaining == 0 {
                    // All links seen: forget the inode, so memory stays flat.
                    self.links.remove(&key);
                }
                let header = self.base_header(&name, TypeFlag::HardLink, &metadata, &[]);
                let header = EntryHeader {
                    link_name: Some(&target),
                    ..header
                };
                self.write_header(absolute, &header)?;
                self.counts.hardlinks += 1;
                return Ok(None);
            }
            self.links.insert(
                key,
                FirstLink {
                    name: name.clone(),
                    remaining: metadata.nlink - 1,
                },
            );
        }

        let xattrs = match &opened {
            Some(file) => read_xattrs(&XattrSource::Handle(file.as_fd()), absolute)?,
            None => {
                let through_parent = if self.proc_fds {
                    proc_path(parent, file_name)
                } else {
                    absolute.to_owned()
                };
                read_xattrs(&XattrSource::Path(&through_parent), absolute)?
            }
        };
        if let Some(file) = opened {
            self.regular_file(file, absolute, &name, &metadata, &xattrs)?;
        } else if file_type == FileType::Symlink {
            let target = rustix::fs::readlinkat(parent, file_name, Vec::new())
                .map_err(|errno| read_error(absolute, errno.into()))?;
            let target = target.into_bytes();
            let header = self.base_header(&name, TypeFlag::Symlink, &metadata, &xattrs);
            let header = EntryHeader {
                link_name: Some(&target),
                ..header
            };
            self.write_header(absolute, &header)?;
            self.counts.symlinks += 1;
        } else if file_type == FileType::CharacterDevice || file_type == FileType::BlockDevice {
            let (type_flag, counter) = if file_type == FileType::CharacterDevice {
                (TypeFlag::CharDevice, &mut self.counts.char_devices)
            } else {
                (TypeFlag::BlockDevice, &mut self.counts.block_devices)
            };
            *counter += 1;
            let rdev = metadata.rdev;
            let header = self.base_header(&name, type_flag, &metadata, &xattrs);
            let header = EntryHeader {
                dev_major: rustix::fs::major(rdev),
                dev_minor: rustix::fs::minor(rdev),
                ..header
            };
            self.write_header(absolute, &header)?;
        } else if file_type == FileType::Fifo {
            let header = self.base_header(&name, TypeFlag::Fifo, &metadata, &xattrs);
            self.write_header(absolute, &header)?;
            self.counts.fifos += 1;
        }
        Ok(None)
    }

    /// Stores the open directory `directory` and returns it as a frame to walk (unless it is
    /// stored empty).
    fn directory(
        &mut self,
        directory: File,
        absolute: &Path,
        relative: &[u8],
        metadata: &Meta,
    ) -> Result<Option<Frame>, PackError> {
        let mut name = Vec::with_capacity(relative.len() + 3);
        name.extend_from_slice(b"./");
        if !relative.is_empty() {
            name.extend_from_slice(relative);
            name.push(b'/');
        }
        let xattrs = read_xattrs(&XattrSource::Handle(directory.as_fd()), absolute)?;
        let header = self.base_header(&name, TypeFlag::Directory, metadata, &xattrs);
        self.write_header(absolute, &header)?;
        self.counts.directories += 1;

        if !relative.is_empty() && matches_any(&self.empty_dirs, relative) {
            return Ok(None);
        }
        let mut names = Vec::new();
        let entries = rustix::fs::Dir::read_from(&directory)
            .map_err(|errno| read_error(absolute, errno.into()))?;
        for entry in entries {
            let entry = entry.map_err(|errno| read_error(absolute, errno.into()))?;
            let file_name = entry.file_name().to_bytes();
            if file_name != b"." && file_name != b".." {
                names.push(OsString::from_vec(file_name.to_vec()));
            }
        }
        names.sort_unstable_by(|left, right| left.as_bytes().cmp(right.as_bytes()));
        Ok(Some(Frame {
            relative: relative.to_vec(),
            absolute: absolute.to_owned(),
            directory,
            id: (metadata.dev, metadata.ino),
            names: names.into_iter(),
        }))
    }

    /// Stores the regular file open as `file`, whose `fstat` is `metadata`.
    fn regular_file(
        &mut self,
        mut file: File,
        absolute: &Path,
        name: &[u8],
        metadata: &Meta,
        xattrs: &[Xattr],
    ) -> Result<(), PackError> {
        let size = metadata.size;
        self.counts.regular += 1;
        self.file_bytes = self.file_bytes.saturating_add(size);
        self.shrunk = false;
        self.stored_file(&mut file, absolute, name, metadata, xattrs)?;
        // GNU tar's check: the file as it is now against the file as it was opened.
        let now = fstat(&file, absolute)?;
        if !self.shrunk
            && (now.size, now.mtime, now.ctime) != (metadata.size, metadata.mtime, metadata.ctime)
        {
            self.changed(absolute, "file changed as we read it");
        }
        Ok(())
    }

    fn stored_file(
        &mut self,
        file: &mut File,
        absolute: &Path,
        name: &[u8],
        metadata: &Meta,
        xattrs: &[Xattr],
    ) -> Result<(), PackError> {
        let size = metadata.size;
        // Fewer allocated bytes than the size means holes; only then is the map worth reading.
        let segments = if size > 0 && metadata.blocks.saturating_mul(512) < size {
            data_segments(file, size).map_err(|error| read_error(absolute, error))?
        } else {
            None
        };
        let segments = segments.filter(|segments| segments.as_slice() != [(0, size)]);

        let Some(mut segments) = segments else {
            let header = self.base_header(name, TypeFlag::Regular, metadata, xattrs);
            let header = EntryHeader { size, ..header };
            self.write_header(absolute, &header)?;
            self.copy_data(absolute, file, size)?;
            return self.pad(size);
        };

        // A trailing hole is recorded as an empty segment at the end, so readers restore the
        // full size.
        if segments
            .last()
            .is_none_or(|&(offset, length)| offset + length < size)
        {
            segments.push((size, 0));
        }
        let map = header::sparse_map(&segments);
        let data: u64 = segments.iter().map(|&(_, length)| length).sum();
        let stored = map.len() as u64 + data;
        let header = self.base_header(name, TypeFlag::Regular, metadata, xattrs);
        let header = EntryHeader {
            size: stored,
            sparse_real_size: Some(size),
            ..header
        };
        self.write_header(absolute, &header)?;
        self.emit(&map)?;
        for &(offset, length) in &segments {
            if length == 0 {
                continue;
            }
            file.seek(io::SeekFrom::Start(offset))
                .map_err(|error| read_error(absolute, error))?;
            self.copy_data(absolute, file, length)?;
        }
        self.counts.sparse += 1;
        self.pad(stored)
    }

    /// Copies exactly `length` bytes of `file` into the archive.
    fn copy_data(&mut self, path: &Path, file: &mut File, length: u64) -> Result<(), PackError> {
        let mut remaining = length;
        while remaining > 0 {
            if self.cancel.is_cancelled() {
                return Err(PackError::Cancelled);
            }
            let want = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(self.buffer.len());
            let read = match file.read(&mut self.buffer[..want]) {
                Ok(0) => {
                    // As GNU tar does: the header promised `length` bytes, so zeros follow.
                    self.shrunk = true;
                    self.changed(
                        path,
                        format!("file shrank by {remaining} bytes; padding with zeros"),
                    );
                    let zeros = vec![0; self.buffer.len()];
                    while remaining > 0 {
                        let chunk = usize::try_from(remaining)
                            .unwrap_or(usize::MAX)
                            .min(zeros.len());
                        self.emit(&zeros[..chunk])?;
                        remaining -= chunk as u64;
                    }
                    return Ok(());
                }
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(read_error(path, error)),
            };
            self.out
                .write_all(&self.buffer[..read])
                .map_err(|error| self.write_error(error))?;
            self.bytes_in += read as u64;
            remaining -= read as u64;
            self.report(Phase::Archiving, false);
        }
        Ok(())
    }

    fn base_header<'n>(
        &self,
        name: &'n [u8],
        type_flag: TypeFlag,
        metadata: &Meta,
        xattrs: &'n [Xattr],
    ) -> EntryHeader<'n> {
        let mtime = match self.epoch {
            Some(epoch) => metadata.mtime.0.min(epoch),
            None => metadata.mtime.0,
        };
        EntryHeader {
            name,
            link_name: None,
            type_flag,
            mode: metadata.mode & 0o7777,
            uid: u64::from(metadata.uid),
            gid: u64::from(metadata.gid),
            size: 0,
            mtime,
            dev_major: 0,
            dev_minor: 0,
            xattrs,
            sparse_real_size: None,
        }
    }

    fn write_header(&mut self, path: &Path, header: &EntryHeader<'_>) -> Result<(), PackError> {
        let mut encoded = std::mem::take(&mut self.header);
        encoded.clear();
        header::encode(header, &mut encoded).map_err(|_| PackError::DeviceNumber {
            path: path.to_owned(),
            major: header.dev_major,
            minor: header.dev_minor,
        })?;
        let result = self.emit(&encoded);
        self.header = encoded;
        result
    }

    fn pad(&mut self, length: u64) -> Result<(), PackError> {
        let padding = header::padding_for(length);
        self.emit(&[0; BLOCK][..padding])
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), PackError> {
        self.out
            .write_all(bytes)
            .map_err(|error| self.write_error(error))?;
        self.bytes_in += bytes.len() as u64;
        Ok(())
    }

    /// Two zero blocks end the archive; zeros then fill the last 10 KiB record, as GNU tar does.
    fn finish_archive(&mut self) -> Result<(), PackError> {
        let end = self.bytes_in + 2 * BLOCK as u64;
        let total = end.div_ceil(RECORD) * RECORD;
        let zeros = [0u8; BLOCK];
        while self.bytes_in < total {
            self.emit(&zeros)?;
        }
        Ok(())
    }

    fn write_error(&self, source: io::Error) -> PackError {
        PackError::Write {
            path: self.output_label.to_owned(),
            source,
        }
    }

    fn report(&mut self, phase: Phase, force: bool) {
        let now = Instant::now();
        if !force
            && now.duration_since(self.last_report) < PROGRESS_INTERVAL
            && self.bytes_in - self.last_report_bytes < PROGRESS_BYTES
        {
            return;
        }
        self.last_report = now;
        self.last_report_bytes = self.bytes_in;
        (self.progress)(PackEvent::Progress(Progress {
            phase,
            files: self.counts.total(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            elapsed: now.duration_since(self.started),
        }));
    }
}

fn matches_any(patterns: &[Pattern], relative: &[u8]) -> bool {
    patterns.iter().any(|pattern| pattern.matches(relative))
}

/// Opens `name` in `directory` without following symlinks, without blocking (a FIFO swapped
/// in is not waited on) and, where permitted, without updating the atime (reading the tree
/// should not change it). `None` when it is gone or no longer openable as a file.
fn open_for_reading(
    directory: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
) -> Result<Option<File>, PackError> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let opened = match rustix::fs::openat(directory, name, flags | OFlags::NOATIME, Mode::empty()) {
        // O_NOATIME needs ownership of the file or CAP_FOWNER.
        Err(Errno::PERM) => rustix::fs::openat(directory, name, flags, Mode::empty()),
        other => other,
    };
    match opened {
        Ok(handle) => Ok(Some(File::from(handle))),
        Err(Errno::LOOP | Errno::NOENT | Errno::NXIO) => Ok(None),
        Err(errno) => Err(read_error(path, errno.into())),
    }
}

/// `/proc/self/fd/<directory>/<name>`: the entry `name` of an open directory, by a path that
/// resolves through the handle (the directory cannot be swapped) and, with the `l*xattr`
/// calls, does not follow `name` itself.
fn proc_path(directory: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut path = PathBuf::from(format!("/proc/self/fd/{}", directory.as_raw_fd()));
    path.push(name);
    path
}

/// Where extended attributes are read from: an open handle, or a path (not followed at its
/// last component).
enum XattrSource<'a> {
    Handle(BorrowedFd<'a>),
    Path(&'a Path),
}

impl XattrSource<'_> {
    fn list_size(&self) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Handle(fd) => rustix::fs::flistxattr_query(fd),
            XattrSource::Path(path) => rustix::fs::llistxattr_query(*path),
        }
    }

    fn list(&self, buffer: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Handle(fd) => rustix::fs::flistxattr(fd, buffer),
            XattrSource::Path(path) => rustix::fs::llistxattr(*path, buffer),
        }
    }

    fn value_size(&self, name: &[u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Handle(fd) => rustix::fs::fgetxattr_query(fd, name),
            XattrSource::Path(path) => rustix::fs::lgetxattr_query(*path, name),
        }
    }

    fn value(&self, name: &[u8], buffer: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Handle(fd) => rustix::fs::fgetxattr(fd, name, buffer),
            XattrSource::Path(path) => rustix::fs::lgetxattr(*path, name, buffer),
        }
    }
}

/// The data segments of a file with holes, or `None` where the filesystem cannot say.
fn data_segments(file: &File, size: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    use rustix::fs::SeekFrom;
    let mut segments = Vec::new();
    let mut position = 0;
    while position < size {
        let data = match rustix::fs::seek(file, SeekFrom::Data(position)) {
            Ok(data) => data,
            // No data after `position`: the rest is a hole.
            Err(Errno::NXIO) => break,
            // SEEK_DATA unsupported here: treat the whole file as data.
            Err(Errno::INVAL) if segments.is_empty() => return Ok(None),
            Err(errno) => return Err(errno.into()),
        };
        if data >= size {
            break;
        }
        let hole = rustix::fs::seek(file, SeekFrom::Hole(data))?.min(size);
        segments.push((data, hole - data));
        position = hole;
    }
    Ok(Some(segments))
}

/// All extended attributes of an entry, sorted by name; `path` names it in errors.
fn read_xattrs(source: &XattrSource<'_>, path: &Path) -> Result<Vec<Xattr>, PackError> {
    let error = |errno: Errno| read_error(path, errno.into());
    let mut list = Vec::new();
    for attempt in 1..=XATTR_LIST_ATTEMPTS {
        let size = match source.list_size() {
            Ok(size) => size,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(errno) => return Err(error(errno)),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        list.resize(size, 0);
        match source.list(&mut list[..]) {
            Ok(length) => {
                list.truncate(length);
                break;
            }
            // The list grew between the two calls: ask again.
            Err(Errno::RANGE) if attempt < XATTR_LIST_ATTEMPTS => continue,
            Err(errno) => return Err(error(errno)),
        }
    }

    let mut xattrs = Vec::new();
    for name in list
        .split(|&byte| byte == 0)
        .filter(|name| !name.is_empty())
    {
        let mut value = Vec::new();
        for attempt in 1..=XATTR_LIST_ATTEMPTS {
            let size = match source.value_size(name) {
                Ok(size) => size,
                // Removed since the list was read.
                Err(Errno::NODATA) => break,
                Err(errno) => return Err(error(errno)),
            };
            value.resize(size, 0);
            if size == 0 {
                xattrs.push((name.to_vec(), Vec::new()));
                break;
            }
            match source.value(name, &mut value[..]) {
                Ok(length) => {
                    value.truncate(length);
                    xattrs.push((name.to_vec(), std::mem::take(&mut value)));
                    break;
                }
                Err(Errno::NODATA) => break,
                Err(Errno::RANGE) if attempt < XATTR_LIST_ATTEMPTS => continue,
                Err(errno) => return Err(error(errno)),
            }
        }
    }
    xattrs.sort();
    Ok(xattrs)
}
