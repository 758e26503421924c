//! The heart of caph-image: the image spec and its validation, the provisioning plan, and the
//! `Backend` trait with its progress and cancellation types.
//!
//! This crate does no I/O beyond what its caller hands it: files beside a spec are read through a
//! [`spec::SpecFiles`] the caller provides, and the plan for a spec is deterministic.

#![deny(missing_docs)]

pub mod arch;
pub mod backend;
pub mod checks;
pub mod compression;
pub mod diagnostic;
pub mod digest;
pub mod firstboot;
pub mod label;
pub mod plan;
pub mod releases;
pub mod spec;
pub mod text;
pub mod time;
pub mod version;

pub use arch::Arch;
pub use diagnostic::{Diagnostic, Diagnostics};
pub use spec::ImageSpec;
