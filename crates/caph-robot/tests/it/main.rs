//! Integration tests of caph-robot through its public interface.

mod autosetup;
