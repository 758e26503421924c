//! OpenSSH public keys as Robot stores them: type, size and an MD5 fingerprint of the key blob.

use base64::Engine as _;
use md5::{Digest as _, Md5};

/// What Robot reports about a public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyFacts {
    /// `ED25519`, `RSA`, `ECDSA` or `DSA`, as the API prints it.
    pub(crate) kind: String,
    pub(crate) size: u32,
    /// MD5 over the decoded blob, lowercase hex pairs joined by colons.
    pub(crate) fingerprint: String,
    /// The key line without its comment: `ssh-ed25519 AAAA...`.
    pub(crate) data: String,
}

/// Parses an OpenSSH public key line (`type base64 [comment]`); `None` when it is not one.
pub(crate) fn parse_public_key(line: &str) -> Option<KeyFacts> {
    let mut fields = line.split_whitespace();
    let declared = fields.next()?;
    let encoded = fields.next()?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let mut reader = Reader { rest: &blob };
    let inner_type = std::str::from_utf8(reader.string()?).ok()?;
    if inner_type != declared {
        return None;
    }
    let (kind, size) = match inner_type {
        "ssh-ed25519" => {
            if reader.string()?.len() != 32 {
                return None;
            }
            ("ED25519", 256)
        }
        "ssh-rsa" => {
            let _exponent = reader.string()?;
            ("RSA", mpint_bits(reader.string()?))
        }
        "ssh-dss" => ("DSA", mpint_bits(reader.string()?)),
        "ecdsa-sha2-nistp256" => ("ECDSA", 256),
        "ecdsa-sha2-nistp384" => ("ECDSA", 384),
        "ecdsa-sha2-nistp521" => ("ECDSA", 521),
        _ => return None,
    };
    let digest = Md5::digest(&blob);
    let fingerprint = digest
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    Some(KeyFacts {
        kind: kind.to_owned(),
        size,
        fingerprint,
        data: format!("{declared} {encoded}"),
    })
}

/// Bits of an SSH mpint (big-endian, a leading zero byte keeps it positive).
fn mpint_bits(bytes: &[u8]) -> u32 {
    let significant: Vec<u8> = bytes
        .iter()
        .copied()
        .skip_while(|byte| *byte == 0)
        .collect();
    match significant.first() {
        None => 0,
        Some(first) => (significant.len() as u32 - 1) * 8 + (8 - first.leading_zeros()),
    }
}

struct Reader<'b> {
    rest: &'b [u8],
}

impl<'b> Reader<'b> {
    fn string(&mut self) -> Option<&'b [u8]> {
        let length_bytes: [u8; 4] = self.rest.get(..4)?.try_into().ok()?;
        let length = u32::from_be_bytes(length_bytes) as usize;
        let value = self.rest.get(4..4 + length)?;
        self.rest = &self.rest[4 + length..];
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_fingerprint_is_md5_of_the_blob() {
        // A throwaway key made for this test with ssh-keygen; `ssh-keygen -l -E md5` printed the
        // fingerprint below.
        let line =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAr1ZspAtHOOyQlIV96XLrxBy8y45ijODbauvH3xJdjK test";
        let facts = parse_public_key(line).expect("a key");
        assert_eq!(facts.kind, "ED25519");
        assert_eq!(facts.size, 256);
        assert_eq!(
            facts.fingerprint,
            "da:b0:56:04:3f:f4:5a:65:bf:25:15:a9:7f:58:e8:83"
        );
        assert!(parse_public_key("ssh-ed25519 notbase64!").is_none());
        assert!(
            parse_public_key(
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIAr1ZspAtHOOyQlIV96XLrxBy8y45ijODbauvH3xJdjK"
            )
            .is_none()
        );
    }
}
