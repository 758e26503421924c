//! Integration tests of caph-rootfs through its public API, one binary for all.

mod assemble;
mod fidelity;
mod hostile_trees;
mod naming;
mod properties;
mod reproducible;
mod rootfs;
mod support;
