//! SSH client on russh: connect when ready, host-key pinning, streamed exec and upload.
//!
//! ```text
//! KeyPair::generate_ed25519 ──> public key to the server (API / cloud-init), private PEM for cloud-init
//! connect_when_ready(ConnectConfig { addr, user, client_key, host_key: Pinned | TrustOnFirstUse, .. })
//!     └─> Session ── exec(cmd, on_line) -> exit status
//!                 ├─ exec_with_stdin / exec_capture
//!                 ├─ upload(reader, path, mode, on_progress) -> sha256 verified on the server
//!                 └─ upload_expecting(reader, path, mode, &Sha256Hex, on_progress)
//!                        -> the server's sha256 checked against one known beforehand (no hash here)
//! ```
//!
//! Talks to real OpenSSH servers; the tests start `/usr/sbin/sshd` on loopback addresses.

#![deny(missing_docs)]

mod connect;
mod connection;
mod error;
mod keys;
mod session;

pub use connect::{
    ConnectConfig, ConnectEvent, DEFAULT_DIAL_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_MAX, DEFAULT_READY_DEADLINE, HostKeyPolicy, TofuPin, connect_when_ready,
};
// The digest type of `upload_expecting`, kept in caph-core with the other shared types.
pub use caph_core::digest::Sha256Hex;
pub use error::SshError;
pub use keys::{Fingerprint, KeyError, KeyPair, PrivateKeyPem, PublicKey};
pub use session::{CapturedOutput, OutputLine, OutputStream, Session, UploadReport};
