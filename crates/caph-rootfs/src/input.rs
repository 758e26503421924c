//! Reading the files a user names: regular files only, with a size limit where the whole file
//! is read, and files named by a spec resolved inside the spec's directory.
//!
//! The rules, each named in its refusal:
//! - **Regular files only.** A FIFO, a device or a socket is refused before a byte is read
//!   (it is opened with `O_NONBLOCK`, so even a FIFO without a writer does not hang the open).
//! - **A size limit** for what is read whole (a spec, a layout, a file beside a spec): the file
//!   is read up to one byte past the limit, so a file that grows while read is refused too.
//! - **Inside the spec's directory.** A relative path from a spec is resolved with every
//!   symlink followed, and the result must lie inside the spec's (resolved) directory. The file
//!   is then opened along that resolved path with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//!   from a handle on the directory, so a symlink swapped in after the check is refused, not
//!   followed.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// The most a spec file may hold.
pub const SPEC_LIMIT: u64 = 1 << 20;
/// The most a disk layout file may hold.
pub const LAYOUT_LIMIT: u64 = 1 << 20;
/// The most a file beside a spec (a script, a file's content) may hold: it is read into memory
/// and goes into the plan.
pub const BESIDE_SPEC_LIMIT: u64 = 16 << 20;

/// Which rule a path broke.
#[derive(Debug)]
pub enum InputError {
    /// It does not exist.
    Missing {
        /// The path as named.
        path: PathBuf,
    },
    /// It is not a regular file.
    NotRegular {
        /// The path as named.
        path: PathBuf,
        /// What it is instead (`a FIFO`, `a directory`).
        kind: &'static str,
    },
    /// It holds more than the limit.
    TooLarge {
        /// The path as named.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// It resolves to a place outside the directory it must stay in.
    Outside {
        /// The path as named.
        path: PathBuf,
        /// Where it resolves to.
        resolved: PathBuf,
        /// The directory it must stay in.
        directory: PathBuf,
    },
    /// A symlink appeared on its resolved path between the check and the open.
    Changed {
        /// The path as named.
        path: PathBuf,
    },
    /// Any other failure to open or read it.
    Io {
        /// The path as named.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputError::Missing { path } => write!(f, "{}: no such file", path.display()),
            InputError::NotRegular { path, kind } => write!(
                f,
                "{} is {kind}, not a regular file: only regular files are read",
                path.display()
            ),
            InputError::TooLarge { path, limit } => write!(
                f,
                "{} holds more than {limit} bytes, the most this file may hold",
                path.display()
            ),
            InputError::Outside {
                path,
                resolved,
                directory,
            } => write!(
                f,
                "{} resolves to {}, outside {}: files a spec names must be inside the spec's directory, symlinks followed",
                path.display(),
                resolved.display(),
                directory.display()
            ),
            InputError::Changed { path } => write!(
                f,
                "{}: a symlink appeared on its path while it was opened; files a spec names must be inside the spec's directory",
                path.display()
            ),
            InputError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for InputError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InputError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl InputError {
    /// The message without the path, for a caller that names the path itself (a diagnostic).
    pub fn rule(&self) -> String {
        let full = self.to_string();
        let path = match self {
            InputError::Missing { path }
            | InputError::NotRegular { path, .. }
            | InputError::TooLarge { path, .. }
            | InputError::Outside { path, .. }
            | InputError::Changed { path }
            | InputError::Io { path, .. } => path.display().to_string(),
        };
        full.strip_prefix(&path)
            .map(|rest| rest.trim_start_matches(':').trim_start().to_string())
            .unwrap_or(full)
    }
}

fn io_error(path: &Path, errno: Errno) -> InputError {
    if errno == Errno::NOENT {
        return InputError::Missing {
            path: path.to_owned(),
        };
    }
    InputError::Io {
        path: path.to_owned(),
        source: errno.into(),
    }
}

/// Refuses anything but a regular file, by the type of the open handle.
fn regular(fd: OwnedFd, path: &Path) -> Result<File, InputError> {
    let stat = rustix::fs::fstat(&fd).map_err(|errno| io_error(path, errno))?;
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => return Ok(File::from(fd)),
        FileType::Directory => "a directory",
        FileType::Fifo => "a FIFO",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Socket => "a socket",
        FileType::Symlink => "a symlink",
        FileType::Unknown => "not a file of a known type",
    };
    Err(InputError::NotRegular {
        path: path.to_owned(),
        kind,
    })
}

/// Non-blocking, so that opening a FIFO without a writer returns at once (and is then refused).
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);

/// Opens `path` (symlinks followed: the user named it) for reading, if it is a regular file.
pub fn open_regular(path: &Path) -> Result<File, InputError> {
    let fd =
        rustix::fs::open(path, READ_FLAGS, Mode::empty()).map_err(|errno| io_error(path, errno))?;
    regular(fd, path)
}

/// Reads a regular file whole, refusing one of more than `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, InputError> {
    read_limited(open_regular(path)?, path, limit)
}

fn read_limited(file: File, path: &Path, limit: u64) -> Result<Vec<u8>, InputError> {
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| InputError::Io {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(InputError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

/// A spec's directory, resolved and held open: the files the spec names are read through it.
#[derive(Debug)]
pub struct SpecDirectory {
    resolved: PathBuf,
    handle: OwnedFd,
}

impl SpecDirectory {
    /// Opens `directory` (the spec's parent, as the user named it).
    pub fn open(directory: &Path) -> Result<SpecDirectory, InputError> {
        let resolved = std::fs::canonicalize(directory).map_err(|source| InputError::Io {
            path: directory.to_owned(),
            source,
        })?;
        let handle = rustix::fs::open(
            &resolved,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| io_error(directory, errno))?;
        Ok(SpecDirectory { resolved, handle })
    }

    /// The directory, resolved.
    pub fn path(&self) -> &Path {
        &self.resolved
    }

    /// Opens `relative` (as the spec names it) if it resolves inside the directory and is a
    /// regular file.
    pub fn open_file(&self, relative: &str) -> Result<File, InputError> {
        let named = PathBuf::from(relative);
        let resolved = match std::fs::canonicalize(self.resolved.join(relative)) {
            Ok(resolved) => resolved,
            Err(source) if source.kind() == io::ErrorKind::NotFound => {
                return Err(InputError::Missing { path: named });
            }
            Err(source) => {
                return Err(InputError::Io {
                    path: named,
                    source,
                });
            }
        };
        let Ok(inside) = resolved.strip_prefix(&self.resolved) else {
            return Err(InputError::Outside {
                path: named,
                resolved,
                directory: self.resolved.clone(),
            });
        };
        let inside = if inside.as_os_str().is_empty() {
            Path::new(".")
        } else {
            inside
        };
        // The resolved path has no symlinks left: one that appears now is refused by the kernel.
        let fd = rustix::fs::openat2(
            &self.handle,
            inside,
            READ_FLAGS | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )
        .map_err(|errno| match errno {
            Errno::LOOP | Errno::XDEV => InputError::Changed {
                path: named.clone(),
            },
            other => io_error(&named, other),
        })?;
        regular(fd, &named)
    }

    /// Reads `relative` whole, with [`SpecDirectory::open_file`]'s rules and a size limit.
    pub fn read(&self, relative: &str, limit: u64) -> Result<Vec<u8>, InputError> {
        read_limited(self.open_file(relative)?, Path::new(relative), limit)
    }
}
