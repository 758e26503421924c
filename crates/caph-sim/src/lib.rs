//! Simulators of the Hetzner Cloud API, the Robot API, SSH-reachable servers, the rescue system and installimage.
//!
//! The API simulators speak the wire format of the reference on their own: this crate shares no
//! types with `caph-hcloud` or `caph-robot`, so a wrong field name cannot pass both by construction.

pub mod hcloud;
pub mod host;
pub mod http;
pub mod installimage;
pub mod libraries;
pub mod machine;
pub mod mirror;
pub mod openapi;
pub mod real_installimage;
pub mod robot;
pub mod runtime;
