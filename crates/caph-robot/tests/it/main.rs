//! Integration tests of caph-robot through its public interface.

mod autosetup;
mod backend;
mod backend_support;
mod hostile_layouts;
mod properties;
mod rules_agreement;
