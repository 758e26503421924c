//! Integration tests of caph-rootfs through its public API, one binary for all.

mod fidelity;
mod naming;
mod reproducible;
mod rootfs;
mod support;
