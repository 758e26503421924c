//! The `.sha256` file `build tarball` and `pack` write beside a tarball (`sha256sum` format): read
//! and checked against the tarball before anything is touched (a bad input changes nothing), so
//! that the upload is checked against it without hashing the tarball a second time while sending.

use std::path::{Path, PathBuf};

use caph_ssh::Sha256Hex;

use super::InstallCause;

/// The largest checksum file read: one line of 64 hex digits, two separator characters and a
/// file name (at most 255 bytes on Linux) is far below it; anything larger is not one.
const MAX_CHECKSUM_FILE_BYTES: u64 = 4096;

/// The digest recorded beside a tarball.
#[derive(Debug, Clone)]
pub(crate) struct RecordedDigest {
    /// The checksum file's name (`NAME.sha256`), for progress and errors.
    pub(crate) file_name: String,
    /// The digest it records.
    pub(crate) digest: Sha256Hex,
}

/// `<tarball>.sha256`.
pub(crate) fn path_beside(tarball: &Path) -> PathBuf {
    let mut name = tarball.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Reads the checksum file beside `tarball`: `None` when there is none, the digest when it is
/// well-formed and names the tarball, a [`InstallCause::ChecksumFile`] (with its fix) otherwise.
pub(crate) async fn read(tarball: &Path) -> Result<Option<RecordedDigest>, InstallCause> {
    let path = path_beside(tarball);
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tarball_name = tarball
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unreadable = |source: std::io::Error| InstallCause::Tarball {
        path: path.clone(),
        source,
    };
    let metadata = match tokio::fs::metadata(&path).await {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(unreadable(error)),
    };
    let malformed = |problem: String| InstallCause::ChecksumFile {
        path: path.clone(),
        problem,
        tarball: tarball_name.clone(),
    };
    if !metadata.is_file() {
        return Err(malformed("is not a regular file".to_string()));
    }
    if metadata.len() > MAX_CHECKSUM_FILE_BYTES {
        return Err(malformed(format!(
            "has {} bytes; a checksum file for one tarball is one short line",
            metadata.len()
        )));
    }
    let bytes = tokio::fs::read(&path).await.map_err(unreadable)?;
    let text = String::from_utf8(bytes).map_err(|_| malformed("is not UTF-8 text".to_string()))?;
    let digest = parse(&text, &tarball_name).map_err(malformed)?;
    Ok(Some(RecordedDigest { file_name, digest }))
}

/// Reads one `sha256sum` line for `tarball_name`: `DIGEST  NAME` (text mode) or `DIGEST *NAME`
/// (binary mode), with or without its final newline. The problem, when it is not one.
fn parse(text: &str, tarball_name: &str) -> Result<Sha256Hex, String> {
    let line = text.strip_suffix('\n').unwrap_or(text);
    if line.trim().is_empty() {
        return Err("is empty".to_string());
    }
    if line.contains('\n') {
        return Err(format!(
            "holds {} lines; a checksum file for one tarball holds one",
            line.lines().count()
        ));
    }
    let (digest, rest) = line.split_at_checked(64).unwrap_or((line, ""));
    let Some(digest) = Sha256Hex::parse(digest) else {
        return Err(format!(
            "does not start with a sha256 (64 hex digits): it starts {:?}",
            shown(line)
        ));
    };
    let Some(name) = rest.strip_prefix("  ").or_else(|| rest.strip_prefix(" *")) else {
        return Err(format!(
            "has no file name after the digest (two spaces, then the name): {:?}",
            shown(rest)
        ));
    };
    if name != tarball_name {
        return Err(format!(
            "records the sha256 of {:?}, not of the tarball {tarball_name:?}",
            shown(name)
        ));
    }
    Ok(digest)
}

/// At most 80 characters of what the file holds, for an error message.
fn shown(text: &str) -> String {
    /// Enough to recognise the content without flooding the message.
    const SHOWN_CHARS: usize = 80;
    let mut shown: String = text.chars().take(SHOWN_CHARS).collect();
    if shown.len() < text.len() {
        shown.push_str("...");
    }
    shown
}

/// Hashes `tarball` here (in a blocking task, 1 MiB reads) and compares it with the recorded
/// digest: a tarball changed after its checksum file was written is refused before the server is
/// touched. A fraction of a second per GB on CPUs with SHA instructions, against the minutes of
/// an install.
pub(crate) async fn check(tarball: &Path, recorded: &RecordedDigest) -> Result<(), InstallCause> {
    use sha2::{Digest as _, Sha256};
    use std::io::Read as _;
    /// Reads of 1 MiB keep the syscall count low and memory flat.
    const CHUNK: usize = 1 << 20;
    let owned = tarball.to_path_buf();
    let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut file = std::fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; CHUNK];
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(|error| InstallCause::Tarball {
        path: tarball.to_path_buf(),
        source: std::io::Error::other(error.to_string()),
    })?
    .map_err(|source| InstallCause::Tarball {
        path: tarball.to_path_buf(),
        source,
    })?;
    if !recorded.digest.as_str().eq_ignore_ascii_case(&hashed) {
        return Err(InstallCause::TarballChecksum {
            path: tarball.to_path_buf(),
            checksum_file: recorded.file_name.clone(),
            expected: recorded.digest.as_str().to_string(),
            actual: hashed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "Debian-1200-bookworm-amd64-k8s.tar.gz";

    fn digest() -> String {
        "0123456789abcdef".repeat(4)
    }

    #[test]
    fn sha256sum_lines_in_text_and_binary_mode_are_read() {
        for line in [
            format!("{}  {NAME}\n", digest()),
            format!("{} *{NAME}\n", digest()),
            format!("{}  {NAME}", digest()),
            format!("{}  {NAME}\n", digest().to_uppercase()),
        ] {
            assert_eq!(
                parse(&line, NAME).map(|digest| digest.to_string()),
                Ok(digest()),
                "{line:?}"
            );
        }
    }

    #[test]
    fn anything_else_is_refused_with_what_is_wrong() {
        let cases = [
            (String::new(), "is empty"),
            ("\n".to_string(), "is empty"),
            (
                format!("{}  {NAME}\n{}  other\n", digest(), digest()),
                "holds 2 lines",
            ),
            (
                format!("{}  {NAME}\n", &digest()[..63]),
                "does not start with a sha256",
            ),
            (
                format!("{}  {NAME}\n", "z".repeat(64)),
                "does not start with a sha256",
            ),
            (digest(), "has no file name after the digest"),
            (
                format!("{} {NAME}\n", digest()),
                "has no file name after the digest",
            ),
            (
                format!("{}  other.tar.gz\n", digest()),
                "records the sha256 of \"other.tar.gz\", not of the tarball",
            ),
            (format!("{}  {NAME}\r\n", digest()), "records the sha256 of"),
        ];
        for (text, problem) in cases {
            let error = parse(&text, NAME).expect_err(&text);
            assert!(error.contains(problem), "{text:?}: {error}");
        }
    }
}
