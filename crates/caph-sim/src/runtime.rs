//! Real container runtime pieces for the test mirror: containerd, runc and the CNI plugins from
//! Debian's packages, repackaged in their upstream release layouts with real checksums, and a
//! static busybox to make a small image from.
//!
//! Packages come from Debian unstable (sid) with `apt-get download`, through a private apt
//! configuration, into a cache directory shared by test runs (file-locked). Unstable, because it
//! is the only Debian suite whose runc has the November 2025 container-escape fixes (1.3.3 and
//! later; bookworm ships 1.1.5, trixie 1.1.15), and caph-image refuses older ones. Its runc needs
//! glibc 2.38, so these binaries run in a Debian 13 (trixie) tree or newer, not in bookworm.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::mirror::{gzip_tar, sha256_hex};

/// Where the packages are cached by default.
pub const DEFAULT_CACHE: &str = "/var/cache/caph-sim/debian-runtime";
/// The suite the packages come from (see the module documentation for why).
pub const SUITE: &str = "sid";
/// The Debian packages downloaded.
const PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
];

/// The real runtime, ready to serve.
#[derive(Debug, Clone)]
pub struct DebianRuntime {
    /// containerd's upstream version (`2.1.9` of Debian's `2.1.9+ds1-5`).
    pub containerd: String,
    /// runc's upstream version.
    pub runc: String,
    /// The CNI plugins' upstream version.
    pub cni: String,
    /// The Debian package versions, for reports (`containerd` → `2.1.9+ds1-5`).
    pub package_versions: BTreeMap<String, String>,
    /// The release files under `containerd/`, `runc/` and `cni/`, as [`crate::mirror`] serves them.
    pub files: BTreeMap<String, Vec<u8>>,
    /// A static busybox binary for the architecture.
    pub busybox: Vec<u8>,
}

/// Downloads (or finds in `cache`) the packages for `arch` (`amd64`, `arm64`) and repackages them.
pub fn debian_runtime(cache: &Path, arch: &str) -> Result<DebianRuntime, String> {
    let dir = cache.join(format!("{SUITE}-{arch}"));
    fs::create_dir_all(&dir).map_err(|error| format!("creating {}: {error}", dir.display()))?;
    let lock_path = dir.join(".lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|error| format!("opening {}: {error}", lock_path.display()))?;
    lock.lock()
        .map_err(|error| format!("locking {}: {error}", lock_path.display()))?;
    let debs = match cached_debs(&dir) {
        Some(debs) => debs,
        None => download(&dir, arch)?,
    };
    let unpacked = tempfile_dir(&dir)?;
    let result = repackage(&debs, &unpacked.0, arch);
    drop(unpacked);
    result
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir(parent: &Path) -> Result<TempDir, String> {
    let path = parent.join(format!("unpacked-{}", std::process::id()));
    let _ = fs::remove_dir_all(&path);
    fs::create_dir_all(&path).map_err(|error| format!("creating {}: {error}", path.display()))?;
    Ok(TempDir(path))
}

/// The cached `.deb` of every package, when all are there.
fn cached_debs(dir: &Path) -> Option<BTreeMap<String, PathBuf>> {
    let debs_dir = dir.join("debs");
    let mut found = BTreeMap::new();
    for entry in fs::read_dir(&debs_dir).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((package, _)) = name.split_once('_')
            && name.ends_with(".deb")
            && PACKAGES.contains(&package)
        {
            found.insert(package.to_string(), entry.path());
        }
    }
    (found.len() == PACKAGES.len()).then_some(found)
}

fn run(command: &mut Command, what: &str) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|error| format!("{what}: cannot run {command:?}: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `apt-get update` and `apt-get download` through a private configuration under `dir`.
fn download(dir: &Path, arch: &str) -> Result<BTreeMap<String, PathBuf>, String> {
    let apt = dir.join("apt");
    for sub in ["lists/partial", "cache/archives/partial", "debs"] {
        let path = if sub == "debs" {
            dir.join(sub)
        } else {
            apt.join(sub)
        };
        fs::create_dir_all(&path)
            .map_err(|error| format!("creating {}: {error}", path.display()))?;
    }
    let sources = apt.join("sources.list");
    fs::write(
        &sources,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {SUITE} main\n"
        ),
    )
    .map_err(|error| format!("writing {}: {error}", sources.display()))?;
    let options = [
        format!("Dir::Etc::SourceList={}", sources.display()),
        "Dir::Etc::SourceParts=/nonexistent".to_string(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        format!("Dir::Cache={}", apt.join("cache").display()),
        "Dir::State::status=/dev/null".to_string(),
        format!("APT::Architecture={arch}"),
        format!("APT::Architectures={arch}"),
        // The download directory is root's; apt's sandbox user could not write there.
        "APT::Sandbox::User=root".to_string(),
    ];
    let apt_get = |args: &[&str]| {
        let mut command = Command::new("apt-get");
        for option in &options {
            command.arg("-o").arg(option);
        }
        command
            .args(["-q", "-y"])
            .args(args)
            .current_dir(dir.join("debs"));
        command
    };
    run(
        &mut apt_get(&["update"]),
        "apt-get update (Debian unstable)",
    )?;
    run(
        &mut apt_get(&[&["download"], PACKAGES].concat()),
        "apt-get download",
    )?;
    cached_debs(dir).ok_or_else(|| {
        format!(
            "apt-get download left no complete set of {} in {}",
            PACKAGES.join(", "),
            dir.join("debs").display()
        )
    })
}

/// The upstream part of a Debian version: `2.1.9` of `2.1.9+ds1-5`, `1.38.0` of `1:1.38.0-3+b1`.
fn upstream_version(debian: &str) -> String {
    let without_epoch = debian.split_once(':').map_or(debian, |(_, rest)| rest);
    let without_revision = without_epoch
        .rsplit_once('-')
        .map_or(without_epoch, |(upstream, _)| upstream);
    without_revision
        .split(['+', '~'])
        .next()
        .unwrap_or(without_revision)
        .to_string()
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|error| format!("reading {}: {error}", path.display()))
}

fn repackage(
    debs: &BTreeMap<String, PathBuf>,
    work: &Path,
    arch: &str,
) -> Result<DebianRuntime, String> {
    let mut package_versions = BTreeMap::new();
    for (package, deb) in debs {
        let version = run(
            Command::new("dpkg-deb")
                .args(["--field"])
                .arg(deb)
                .arg("Version"),
            "dpkg-deb --field",
        )?;
        package_versions.insert(package.clone(), version.trim().to_string());
        run(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(work),
            "dpkg-deb -x",
        )?;
    }
    let version_of = |package: &str| upstream_version(&package_versions[package]);
    let (containerd, runc, cni) = (
        version_of("containerd"),
        version_of("runc"),
        version_of("containernetworking-plugins"),
    );
    let mut files = BTreeMap::new();

    // containerd-<v>-linux-<arch>.tar.gz with bin/, and a `<digest>  <name>` .sha256sum.
    let name = format!("containerd-{containerd}-linux-{arch}.tar.gz");
    let mut entries = Vec::new();
    for binary in ["containerd", "containerd-shim-runc-v2", "ctr"] {
        entries.push((
            format!("bin/{binary}"),
            read(&work.join("usr/bin").join(binary))?,
        ));
    }
    let tarball = gzip_tar(
        &entries
            .iter()
            .map(|(path, content)| (path.as_str(), content.clone()))
            .collect::<Vec<_>>(),
    );
    files.insert(
        format!("containerd/v{containerd}/{name}.sha256sum"),
        format!("{}  {name}\n", sha256_hex(&tarball)).into_bytes(),
    );
    files.insert(format!("containerd/v{containerd}/{name}"), tarball);

    // runc.<arch>, and runc.sha256sum listing it.
    let runc_binary = read(&work.join("usr/sbin/runc"))?;
    files.insert(
        format!("runc/v{runc}/runc.sha256sum"),
        format!("{}  runc.{arch}\n", sha256_hex(&runc_binary)).into_bytes(),
    );
    files.insert(format!("runc/v{runc}/runc.{arch}"), runc_binary);

    // cni-plugins-linux-<arch>-v<v>.tgz of ./<plugin>, with a .sha256 beside it.
    let plugins_dir = work.join("usr/lib/cni");
    let mut plugins = Vec::new();
    let mut names: Vec<String> = fs::read_dir(&plugins_dir)
        .map_err(|error| format!("reading {}: {error}", plugins_dir.display()))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for plugin in names {
        plugins.push((format!("./{plugin}"), read(&plugins_dir.join(&plugin))?));
    }
    let name = format!("cni-plugins-linux-{arch}-v{cni}.tgz");
    let tarball = gzip_tar(
        &plugins
            .iter()
            .map(|(path, content)| (path.as_str(), content.clone()))
            .collect::<Vec<_>>(),
    );
    files.insert(
        format!("cni/v{cni}/{name}.sha256"),
        format!("{}  {name}\n", sha256_hex(&tarball)).into_bytes(),
    );
    files.insert(format!("cni/v{cni}/{name}"), tarball);

    Ok(DebianRuntime {
        containerd,
        runc,
        cni,
        busybox: read(&work.join("usr/bin/busybox"))?,
        package_versions,
        files,
    })
}

/// An OCI image layout archive (what `ctr images import` reads) of one image named `reference`:
/// a static busybox as `/bin/busybox`, with `/bin/sh` and `/bin/echo` linking to it.
pub fn busybox_image_archive(busybox: &[u8], reference: &str, arch: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let digest = |bytes: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    // The layer, uncompressed: its digest is then also its diff id.
    let mut layer = tar::Builder::new(Vec::new());
    let mut append =
        |path: &str, kind: tar::EntryType, mode: u32, link: Option<&str>, content: &[u8]| {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_mtime(0);
            header.set_size(content.len() as u64);
            if let Some(link) = link {
                // Writing into a Vec cannot fail; a too-long name cannot happen for these paths.
                let _ = header.set_link_name(link);
            }
            let _ = header.set_path(path);
            header.set_cksum();
            let _ = layer.append(&header, content);
        };
    append("bin/", tar::EntryType::Directory, 0o755, None, &[]);
    append("bin/busybox", tar::EntryType::Regular, 0o755, None, busybox);
    for name in ["sh", "echo"] {
        append(
            &format!("bin/{name}"),
            tar::EntryType::Symlink,
            0o777,
            Some("busybox"),
            &[],
        );
    }
    let layer = layer.into_inner().unwrap_or_default();
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": [digest(&layer)] },
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len() }],
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": reference },
        }],
    })
    .to_string()
    .into_bytes();
    let mut archive = tar::Builder::new(Vec::new());
    let oci_layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
    let mut entries = vec![
        ("oci-layout".to_string(), oci_layout),
        ("index.json".to_string(), index),
    ];
    for blob in [layer, config, manifest] {
        let name = format!(
            "blobs/sha256/{}",
            digest(&blob).trim_start_matches("sha256:")
        );
        entries.push((name, blob));
    }
    for (path, content) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(content.len() as u64);
        let _ = header.set_path(&path);
        header.set_cksum();
        let _ = archive.append(&header, content.as_slice());
    }
    archive.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::upstream_version;

    #[test]
    fn upstream_versions_of_debian_versions() {
        assert_eq!(upstream_version("2.1.9+ds1-5"), "2.1.9");
        assert_eq!(upstream_version("1:1.38.0-3+b1"), "1.38.0");
        assert_eq!(upstream_version("1.3.6+ds1-1"), "1.3.6");
        assert_eq!(upstream_version("1.9.1"), "1.9.1");
    }
}
