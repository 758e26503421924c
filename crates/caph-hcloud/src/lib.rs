//! Hetzner Cloud API client and the hcloud backend.
#![deny(missing_docs)]

pub mod backend;
pub mod client;

pub use client::{Client, ClientConfig, DEFAULT_ENDPOINT, Error as ClientError, Token};
