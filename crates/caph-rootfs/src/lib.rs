//! Rootfs assembly in a chroot and the reproducible, streaming tarball writer.
//!
//! - [`assemble`]: a spec's root filesystem made locally (mmdebstrap or a base tarball, the
//!   boot chain, the plan in a chroot) and packed into an installimage tarball.
//! - [`pack`]: any directory tree to a deterministic PAX tarball (gzip, zstd or none), with a
//!   `.sha256` beside it.
//! - [`manifest`]: the JSON manifest written next to a tarball.
//! - [`naming`]: installimage's file-name rule for custom images.
//! - [`input`]: reading the files a user names (regular files only, size limits, inside the
//!   spec's directory).

#![deny(missing_docs)]

pub mod assemble;
pub mod input;
pub mod manifest;
pub mod naming;
pub mod pack;
