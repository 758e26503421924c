//! The errors of this crate: each names the address, and the command or path, it is about.
//!
//! Messages follow the chain convention: a variant that wraps a cause exposes it as `source()`
//! and does not repeat it in its own text (the CLI prints the chain with `{:#}`).

use std::net::SocketAddr;
use std::time::Duration;

use crate::keys::{Fingerprint, KeyError};

/// Everything that can go wrong between dialing a server and reading a command's exit status.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The server presented a host key other than the pinned one. Never retried: it is either a
    /// man in the middle or a server that is not the one we created.
    #[error("host key mismatch for {addr}: expected {expected}, the server presented {presented}")]
    HostKeyMismatch {
        /// The server's address.
        addr: SocketAddr,
        /// The fingerprint that was expected (pinned or recorded on first use).
        expected: Fingerprint,
        /// The fingerprint the server presented.
        presented: Fingerprint,
    },

    /// The server presented a certificate instead of a plain host key; pinning covers plain keys only.
    #[error("{addr} presented a host certificate; only plain pinned host keys are accepted")]
    HostCertificate {
        /// The server's address.
        addr: SocketAddr,
    },

    /// Public-key authentication was refused (after the tolerated retries, see `connect`).
    #[error("{addr} refused public key authentication for user {user} with key {key}")]
    AuthRejected {
        /// The server's address.
        addr: SocketAddr,
        /// The remote user.
        user: String,
        /// The client key's fingerprint.
        key: Fingerprint,
    },

    /// TCP connect failed (refused, reset, unreachable...).
    #[error("connecting to {addr}")]
    Connect {
        /// The server's address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// One dial (TCP connect plus SSH handshake) took longer than its own bound.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    DialTimeout {
        /// The server's address.
        addr: SocketAddr,
        /// The bound that passed.
        timeout: Duration,
    },

    /// The SSH protocol failed during the handshake or authentication.
    #[error("SSH handshake with {addr} failed")]
    Handshake {
        /// The server's address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: russh::Error,
    },

    /// Connect-when-ready gave up: the deadline passed. The last dial's error is the source.
    #[error("{addr} did not accept SSH within {waited:?} ({attempts} attempts)")]
    NotReady {
        /// The server's address.
        addr: SocketAddr,
        /// How long connect-when-ready waited.
        waited: Duration,
        /// How many dials were made.
        attempts: u32,
        /// The last dial's error.
        #[source]
        last: Box<SshError>,
    },

    /// The connection went away while a command ran (server killed, network gone, keepalives
    /// unanswered).
    #[error("connection to {addr} lost while running `{command}`")]
    ConnectionLost {
        /// The server's address.
        addr: SocketAddr,
        /// The command, shortened to its first line for messages.
        command: String,
    },

    /// The command was killed by a signal on the server.
    #[error("`{command}` on {addr} was killed by signal {signal}{}", if *core_dumped { " (core dumped)" } else { "" })]
    Signalled {
        /// The server's address.
        addr: SocketAddr,
        /// The command, shortened to its first line for messages.
        command: String,
        /// The signal's name, e.g. `TERM`.
        signal: String,
        /// Whether the server reported a core dump.
        core_dumped: bool,
    },

    /// The server closed the channel without reporting how the command ended.
    #[error("`{command}` on {addr} ended without an exit status")]
    NoExitStatus {
        /// The server's address.
        addr: SocketAddr,
        /// The command, shortened to its first line for messages.
        command: String,
    },

    /// The server refused to open a session channel or to run the command.
    #[error("{addr} refused to run `{command}`")]
    ExecRefused {
        /// The server's address.
        addr: SocketAddr,
        /// The command, shortened to its first line for messages.
        command: String,
        /// The underlying error.
        #[source]
        source: russh::Error,
    },

    /// Reading the local data fed to a command's stdin failed.
    #[error("reading the data to feed to `{command}` on {addr}")]
    StdinSource {
        /// The server's address.
        addr: SocketAddr,
        /// The command, shortened to its first line for messages.
        command: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Reading the local data of an upload failed.
    #[error("reading the data to upload to {addr}:{remote_path}")]
    UploadSource {
        /// The server's address.
        addr: SocketAddr,
        /// The target path on the server.
        remote_path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A helper command of an upload (`cat`, `sha256sum`, `mv`) failed on the server.
    #[error("upload to {addr}:{remote_path}: `{command}` exited with status {exit_code}: {stderr}")]
    UploadCommandFailed {
        /// The server's address.
        addr: SocketAddr,
        /// The target path on the server.
        remote_path: String,
        /// The command, shortened to its first line for messages.
        command: String,
        /// The helper command's exit status.
        exit_code: u32,
        /// The helper command's standard error.
        stderr: String,
    },

    /// The uploaded bytes do not hash to what was sent.
    #[error(
        "upload to {addr}:{remote_path} is corrupt: sent sha256 {sent}, the server's file has sha256 {remote}"
    )]
    ChecksumMismatch {
        /// The server's address.
        addr: SocketAddr,
        /// The target path on the server.
        remote_path: String,
        /// The sha256 of the bytes sent (lowercase hex).
        sent: String,
        /// The sha256 of the server's file (lowercase hex).
        remote: String,
    },

    /// What the server wrote does not hash to the digest the caller knew beforehand. Nothing was
    /// hashed here, so which side is wrong cannot be told apart.
    #[error(
        "upload to {addr}:{remote_path} failed its check: the expected sha256 is {expected}, the server's copy has sha256 {remote}; either the file differs from its recorded digest or the transfer corrupted it"
    )]
    ExpectedDigestMismatch {
        /// The server's address.
        addr: SocketAddr,
        /// The target path on the server.
        remote_path: String,
        /// The digest the caller expected (lowercase hex).
        expected: String,
        /// The sha256 of what the server wrote (lowercase hex).
        remote: String,
    },

    /// A key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl SshError {
    /// Whether connect-when-ready should dial again after this error: the server may still be
    /// booting (refused, reset, timed out, closed during the handshake), as opposed to a verdict
    /// that another try cannot change (host key mismatch, unsupported algorithms).
    pub fn is_transient(&self) -> bool {
        match self {
            SshError::Connect { source, .. } => is_transient_io(source),
            SshError::DialTimeout { .. } => true,
            SshError::Handshake { source, .. } => is_transient_russh(source),
            _ => false,
        }
    }
}

fn is_transient_io(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::TimedOut
            | ErrorKind::UnexpectedEof
            | ErrorKind::BrokenPipe
            | ErrorKind::NotConnected
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
            | ErrorKind::AddrNotAvailable
    )
}

fn is_transient_russh(error: &russh::Error) -> bool {
    match error {
        // sshd closing during the handshake: still starting, `MaxStartups` reached, or restarting
        // after cloud-init rewrote its configuration.
        russh::Error::Disconnect | russh::Error::HUP | russh::Error::ConnectionTimeout => true,
        russh::Error::IO(io) => is_transient_io(io),
        _ => false,
    }
}
