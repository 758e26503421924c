//! Integration tests of caph-robot through its public interface.

mod autosetup;
mod backend;
mod backend_support;
mod rules_agreement;
