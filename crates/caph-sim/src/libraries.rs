//! The shared libraries a host binary was linked against, from `ldd`: what a chroot or a
//! simulated machine needs beside the binary to run it.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The libraries and the loader `ldd` names for `binary`; empty for a static binary. An error
/// when `ldd` cannot be run (Debian package libc-bin).
pub fn linked_libraries(binary: &Path) -> io::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    // `ldd` fails on a static binary ("not a dynamic executable"): nothing to copy then.
    Ok(parse_ldd(&String::from_utf8_lossy(&output.stdout)))
}

/// Copies `binary` and its libraries into `tree` at their own absolute paths, so that it runs
/// in a chroot of `tree`.
pub fn copy_with_libraries(binary: &Path, tree: &Path) -> io::Result<()> {
    let mut paths = linked_libraries(binary)?;
    paths.push(binary.to_path_buf());
    for path in paths {
        let relative = path.strip_prefix("/").map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not an absolute path", path.display()),
            )
        })?;
        let target = tree.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&path, &target)?;
    }
    Ok(())
}

/// Paths in `ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and the
/// loader's `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file and is skipped.
fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_ldd;
    use std::path::PathBuf;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader_but_not_the_vdso() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd1d5f1000)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(output),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }
}
