//! Ephemeral ed25519 key pairs, OpenSSH encodings and `SHA256:` fingerprints.
//!
//! Every build makes its own client key (authorized on the temporary server) and host key (handed
//! to cloud-init and pinned), in memory: nothing is written to disk by this module. The private half
//! only leaves through [`KeyPair::private_key_openssh`], whose result redacts itself in `Debug`.

use std::fmt;
use std::sync::Arc;

use rand::RngCore;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::{HashAlg, PrivateKey};

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// An OpenSSH public key line did not parse.
    #[error("invalid OpenSSH public key line ({reason})")]
    InvalidPublicKey {
        /// Why, as the key parser put it.
        reason: String,
    },
    /// An OpenSSH private key did not parse (the key text is never part of the message).
    #[error("invalid OpenSSH private key ({reason})")]
    InvalidPrivateKey {
        /// Why, as the key parser put it (never the key text).
        reason: String,
    },
    /// The private key is passphrase-protected; ephemeral keys never are.
    #[error("the OpenSSH private key is encrypted with a passphrase, which is not supported")]
    EncryptedPrivateKey,
    /// Encoding a key failed (should not happen for ed25519).
    #[error("encoding the key in OpenSSH format failed ({reason})")]
    Encode {
        /// Why, as the encoder put it.
        reason: String,
    },
}

/// A SHA256 fingerprint in OpenSSH's form, `SHA256:<unpadded base64>`, as `ssh-keygen -l` prints it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint text, `SHA256:...`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A public key (any algorithm OpenSSH offers, as a server's host key may be of any).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(russh::keys::PublicKey);

impl PublicKey {
    /// Parses one OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
    pub fn from_openssh(line: &str) -> Result<PublicKey, KeyError> {
        match russh::keys::PublicKey::from_openssh(line.trim()) {
            Ok(key) => Ok(PublicKey(key)),
            Err(error) => Err(KeyError::InvalidPublicKey {
                reason: error.to_string(),
            }),
        }
    }

    /// The OpenSSH one-line form, for `authorized_keys`, cloud-init's `ssh_keys` or the hcloud API.
    pub fn to_openssh(&self) -> String {
        // Encoding an in-memory public key only fails for algorithms ssh-key cannot encode, which
        // it could not have parsed or generated in the first place; fall back to the fingerprint
        // so the caller still gets something recognisable instead of a panic.
        match self.0.to_openssh() {
            Ok(line) => line,
            Err(_) => self.fingerprint().to_string(),
        }
    }

    /// The SHA256 fingerprint, `SHA256:...`.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(self.0.fingerprint(HashAlg::Sha256).to_string())
    }

    /// The algorithm name as OpenSSH spells it (`ssh-ed25519`).
    pub fn algorithm(&self) -> String {
        self.0.algorithm().as_str().to_owned()
    }

    /// Compares key material only (comments differ between a line and what a server presents).
    pub fn same_key(&self, other: &PublicKey) -> bool {
        self.0.key_data() == other.0.key_data()
    }

    pub(crate) fn from_russh(key: russh::keys::PublicKey) -> PublicKey {
        PublicKey(key)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "PublicKey({} {})",
            self.algorithm(),
            self.fingerprint()
        )
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_openssh())
    }
}

/// A private key in OpenSSH PEM form (`-----BEGIN OPENSSH PRIVATE KEY-----`). Its `Debug` is redacted;
/// read it deliberately with [`PrivateKeyPem::expose`].
#[derive(Clone)]
pub struct PrivateKeyPem(String);

impl PrivateKeyPem {
    /// The PEM text. Callers put it into cloud-init user data, or print it for `--keep-on-error`.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// A key pair, ed25519 when generated here. Cheap to clone (the private key is shared).
#[derive(Clone)]
pub struct KeyPair {
    private: Arc<PrivateKey>,
}

impl KeyPair {
    /// A fresh ed25519 key pair from the operating system's random source, never written to disk.
    /// `comment` ends up in the public key line (e.g. `caph-image build 0f3a`).
    pub fn generate_ed25519(comment: &str) -> Result<KeyPair, KeyError> {
        // ssh-key's own `random` wants rand_core 0.10 while the workspace uses rand 0.9; a 32-byte
        // seed from the thread-local CSPRNG (seeded by the OS) is exactly what it would draw.
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let keypair = Ed25519Keypair::from_seed(&seed);
        seed.fill(0);
        // `PrivateKey::new` only fails for encrypted key data, which this never is.
        match PrivateKey::new(KeypairData::Ed25519(keypair), comment) {
            Ok(private) => Ok(KeyPair {
                private: Arc::new(private),
            }),
            Err(error) => Err(KeyError::Encode {
                reason: error.to_string(),
            }),
        }
    }

    /// Reads an unencrypted OpenSSH private key (e.g. a host key from cloud-init user data).
    pub fn from_openssh(pem: &str) -> Result<KeyPair, KeyError> {
        let private = match PrivateKey::from_openssh(pem.trim()) {
            Ok(private) => private,
            Err(error) => {
                return Err(KeyError::InvalidPrivateKey {
                    reason: error.to_string(),
                });
            }
        };
        if private.is_encrypted() {
            return Err(KeyError::EncryptedPrivateKey);
        }
        Ok(KeyPair {
            private: Arc::new(private),
        })
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.private.public_key().clone())
    }

    /// The SHA256 fingerprint of the public half.
    pub fn fingerprint(&self) -> Fingerprint {
        self.public_key().fingerprint()
    }

    /// The private key as OpenSSH PEM with `\n` line endings, as `ssh-keygen` writes it.
    pub fn private_key_openssh(&self) -> Result<PrivateKeyPem, KeyError> {
        match self.private.to_openssh(LineEnding::LF) {
            Ok(text) => Ok(PrivateKeyPem(text.to_string())),
            Err(error) => Err(KeyError::Encode {
                reason: error.to_string(),
            }),
        }
    }

    pub(crate) fn russh_private(&self) -> Arc<PrivateKey> {
        Arc::clone(&self.private)
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("KeyPair")
            .field("public", &self.public_key())
            .field("private", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_through_openssh_encodings() {
        let pair = KeyPair::generate_ed25519("caph-image test").unwrap();
        let line = pair.public_key().to_openssh();
        assert!(line.starts_with("ssh-ed25519 AAAA"), "{line}");
        assert!(line.ends_with(" caph-image test"), "{line}");
        let parsed = PublicKey::from_openssh(&line).unwrap();
        assert!(parsed.same_key(&pair.public_key()));

        let pem = pair.private_key_openssh().unwrap();
        assert!(
            pem.expose()
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        );
        let again = KeyPair::from_openssh(pem.expose()).unwrap();
        assert_eq!(again.fingerprint(), pair.fingerprint());
    }

    #[test]
    fn fingerprint_has_openssh_form() {
        let pair = KeyPair::generate_ed25519("").unwrap();
        let fingerprint = pair.fingerprint().to_string();
        // SHA256 is 32 bytes: 43 characters of unpadded base64.
        assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
        assert_eq!(fingerprint.len(), "SHA256:".len() + 43, "{fingerprint}");
        assert!(!fingerprint.ends_with('='));
    }

    #[test]
    fn debug_never_shows_private_material() {
        let pair = KeyPair::generate_ed25519("c").unwrap();
        let pem = pair.private_key_openssh().unwrap();
        let body_line = pem.expose().lines().nth(1).unwrap().to_owned();
        let debug_pair = format!("{pair:?}");
        let debug_pem = format!("{pem:?}");
        assert!(
            debug_pair.contains("<redacted>") && debug_pair.contains("SHA256:"),
            "{debug_pair}"
        );
        assert!(!debug_pair.contains(&body_line));
        assert_eq!(debug_pem, "PrivateKeyPem(<redacted>)");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(
            PublicKey::from_openssh("ssh-ed25519 !!!"),
            Err(KeyError::InvalidPublicKey { .. })
        ));
        assert!(matches!(
            KeyPair::from_openssh("not a key"),
            Err(KeyError::InvalidPrivateKey { .. })
        ));
    }
}
