//! What an installimage tarball holds, read in one streaming pass before anything is made: the
//! distribution, the boot chain installimage needs (a kernel and initramfs in /boot,
//! update-initramfs, grub-install), cloud-init and whether its configuration lets the NoCloud
//! seed in, the SSH host key files installimage replaces, the machine id, and the files in which
//! an image built by caph-image promises its node checks.
//!
//! The tarball is decompressed by the program of its compression (`gzip`, `zstd`, `xz`,
//! `bzip2`, told by its first bytes as installimage's tar would), and read entry by entry; only
//! small files that matter are kept.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use caph_core::compression::Compression;
use caph_core::plan::{HOST_KEYS_UNIT_PATH, MODULES_CONFIG_PATH, RELEASE_PATH, SYSCTL_CONFIG_PATH};
use tokio_util::sync::CancellationToken;

use crate::BootError;

/// The most kept of one small file.
const SMALL_FILE_LIMIT: u64 = 256 * 1024;

/// Files whose content is kept (paths without the leading `/`).
fn keep_content(path: &str) -> bool {
    matches!(
        path,
        "etc/os-release" | "usr/lib/os-release" | "etc/machine-id" | "etc/cloud/cloud.cfg"
    ) || path == RELEASE_PATH.trim_start_matches('/')
        || path == MODULES_CONFIG_PATH.trim_start_matches('/')
        || path == SYSCTL_CONFIG_PATH.trim_start_matches('/')
        || path == HOST_KEYS_UNIT_PATH.trim_start_matches('/')
        || (path.starts_with("etc/cloud/cloud.cfg.d/") && path.ends_with(".cfg"))
        || (path.starts_with("etc/ssh/ssh_host_") && path.ends_with("_key.pub"))
}

/// What a tarball holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarballContents {
    /// How it is compressed.
    pub compression: Compression,
    /// How many entries it has.
    pub entries: u64,
    /// The bytes of its regular files.
    pub unpacked_bytes: u64,
    /// Kept small files by path (no leading `/`), and symbolic links as `-> target`.
    files: BTreeMap<String, String>,
    /// Kernels in /boot (`vmlinuz-6.1.0-57-amd64`).
    pub kernels: Vec<String>,
    /// Initramfs images in /boot.
    pub initrds: Vec<String>,
    /// Host key private files (`ssh_host_ed25519_key`) and their sizes: installimage makes a new
    /// key of each type whose file is there.
    pub host_key_files: BTreeMap<String, u64>,
    /// Paths of programs that matter, found (`usr/bin/cloud-init`).
    programs: Vec<String>,
}

/// Programs whose presence matters, each under its merged-/usr path and its old one.
const PROGRAMS: &[&str] = &[
    "usr/bin/cloud-init",
    "usr/sbin/grub-install",
    "sbin/grub-install",
    "usr/sbin/update-initramfs",
    "sbin/update-initramfs",
    "usr/sbin/grub-mkconfig",
    "sbin/grub-mkconfig",
    "usr/sbin/netplan",
    "usr/bin/ssh-keygen",
    "usr/sbin/sshd",
    "lib64/ld-linux-x86-64.so.2",
    "usr/lib64/ld-linux-x86-64.so.2",
    "lib/ld-linux-aarch64.so.1",
    "usr/lib/ld-linux-aarch64.so.1",
];

impl TarballContents {
    /// Reads `path` in one pass; `cancel` stops it between entries.
    pub async fn read(
        path: &Path,
        cancel: &CancellationToken,
    ) -> Result<TarballContents, BootError> {
        let path = path.to_path_buf();
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || read_blocking(&path, &cancel))
            .await
            .map_err(|error| BootError::Failed {
                what: "reading the tarball".to_string(),
                detail: error.to_string(),
            })?
    }

    /// A kept file's text, following one symbolic link (`etc/os-release` links to
    /// `../usr/lib/os-release`).
    pub fn file(&self, path: &str) -> Option<&str> {
        let path = path.trim_start_matches('/');
        let text = self.files.get(path)?;
        match text.strip_prefix("-> ") {
            Some(target) => {
                let resolved = resolve_link(path, target);
                self.files
                    .get(&resolved)
                    .filter(|text| !text.starts_with("-> "))
                    .map(String::as_str)
            }
            None => Some(text),
        }
    }

    /// Kept files below `dir` (no leading `/`), in name order.
    fn files_below<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a String, &'a String)> {
        self.files
            .range(dir.to_string()..)
            .take_while(move |(path, _)| path.starts_with(dir))
    }

    /// Whether one of `paths` is in the tarball.
    fn has(&self, paths: &[&str]) -> bool {
        paths
            .iter()
            .any(|path| self.programs.iter().any(|found| found == path))
    }

    /// os-release's `KEY`, unquoted.
    pub fn os_release(&self, key: &str) -> Option<String> {
        let text = self
            .file("etc/os-release")
            .or_else(|| self.file("usr/lib/os-release"))?;
        text.lines().find_map(|line| {
            let value = line.strip_prefix(key)?.strip_prefix('=')?;
            Some(
                value
                    .trim()
                    .trim_matches('"')
                    .trim_matches('\'')
                    .to_string(),
            )
        })
    }

    /// The distribution in one line: os-release's `PRETTY_NAME`, else `ID VERSION_ID`.
    pub fn distribution(&self) -> String {
        self.os_release("PRETTY_NAME").unwrap_or_else(|| {
            format!(
                "{} {}",
                self.os_release("ID").unwrap_or_else(|| "unknown".into()),
                self.os_release("VERSION_ID").unwrap_or_default()
            )
        })
    }

    /// `x86_64` or `aarch64`, by the dynamic loader the system carries.
    pub fn machine(&self) -> Option<&'static str> {
        if self.has(&[
            "lib64/ld-linux-x86-64.so.2",
            "usr/lib64/ld-linux-x86-64.so.2",
        ]) {
            Some("x86_64")
        } else if self.has(&["lib/ld-linux-aarch64.so.1", "usr/lib/ld-linux-aarch64.so.1"]) {
            Some("aarch64")
        } else {
            None
        }
    }

    /// Whether it carries netplan (installimage then writes netplan, else ifupdown).
    pub fn has_netplan(&self) -> bool {
        self.has(&["usr/sbin/netplan"])
    }

    /// The image's machine id (empty when it carries none).
    pub fn machine_id(&self) -> String {
        self.file("etc/machine-id")
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// The public host keys the image carries, one line each.
    pub fn host_public_keys(&self) -> Vec<String> {
        self.files_below("etc/ssh/ssh_host_")
            .filter(|(path, text)| path.ends_with("_key.pub") && !text.starts_with("-> "))
            .flat_map(|(_, text)| text.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter(|line| !line.trim().is_empty())
            .collect()
    }

    /// The files an image built by caph-image promises its node checks in: the release file,
    /// the modules list and the sysctls.
    pub fn promise_files(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        (
            self.file(RELEASE_PATH),
            self.file(MODULES_CONFIG_PATH),
            self.file(SYSCTL_CONFIG_PATH),
        )
    }

    /// cloud-init's `datasource_list` as its configuration leaves it (cloud.cfg, then the files
    /// in cloud.cfg.d in name order, the last one naming it winning), when any file names it.
    pub fn cloud_init_datasources(&self) -> Option<String> {
        let mut found = None;
        let mut look = |text: &str| {
            for line in text.lines() {
                if let Some(value) = line.trim_start().strip_prefix("datasource_list:") {
                    found = Some(value.trim().to_string());
                }
            }
        };
        if let Some(text) = self.file("etc/cloud/cloud.cfg") {
            look(text);
        }
        for (path, text) in self.files_below("etc/cloud/cloud.cfg.d/") {
            if !text.starts_with("-> ") && path.ends_with(".cfg") {
                look(text);
            }
        }
        found
    }

    /// Why `caph-image verify` cannot boot this tarball as installimage would install it, every
    /// reason at once (none when it can).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.machine() {
            Some("x86_64") => {}
            Some(other) => problems.push(format!(
                "it is a {other} system; verify boots x86_64 (amd64) tarballs under QEMU with BIOS, as Hetzner's x86 dedicated servers start"
            )),
            None => problems.push(
                "it holds no dynamic loader (lib64/ld-linux-x86-64.so.2): not a root file system of an installable system".to_string(),
            ),
        }
        let id = self.os_release("ID").unwrap_or_default();
        if !matches!(id.as_str(), "debian" | "ubuntu") {
            problems.push(format!(
                "os-release says ID={}; verify installs Debian and Ubuntu tarballs the way installimage does (its network configuration for other systems is not written here)",
                if id.is_empty() { "(nothing)".to_string() } else { caph_core::text::Escaped(&id).to_string() }
            ));
        }
        if !self.has(&["usr/bin/cloud-init"]) {
            problems.push(
                "it has no cloud-init (usr/bin/cloud-init): Cluster API Provider Hetzner seeds cloud-init's NoCloud data source and waits for `cloud-init status` to say done, so a node from it never bootstraps; install cloud-init (caph-image's tarballs carry it)".to_string(),
            );
        } else if let Some(sources) = self.cloud_init_datasources()
            && !sources.contains("NoCloud")
        {
            problems.push(format!(
                "cloud-init's datasource_list is {}, without NoCloud: the seed CAPH's post-install script writes (/var/lib/cloud/seed/nocloud-net) would be ignored; add NoCloud",
                caph_core::text::Escaped(&sources)
            ));
        }
        if self.kernels.is_empty() {
            problems.push("/boot holds no kernel (vmlinuz-*): installimage fails at \"Generating ramdisk\"; install a kernel package".to_string());
        }
        if self.initrds.is_empty() && !self.kernels.is_empty() {
            problems.push("/boot holds no initramfs (initrd.img-*): installimage needs one to update; install initramfs-tools".to_string());
        }
        if !self.has(&["usr/sbin/update-initramfs", "sbin/update-initramfs"]) {
            problems.push(
                "it has no update-initramfs: installimage runs it; install initramfs-tools"
                    .to_string(),
            );
        }
        if !self.has(&["usr/sbin/grub-install", "sbin/grub-install"]) {
            problems.push("it has no grub-install: installimage installs GRUB from the image; install grub-pc".to_string());
        }
        problems
    }
}

impl TarballContents {
    /// Why `build hcloud --from-tarball` cannot make a Hetzner Cloud server's disk of this
    /// tarball, every reason at once (none when it can): it must be a caph-image tarball of an
    /// x86_64 system (arm servers boot UEFI) with a kernel, GRUB to install, cloud-init to read
    /// Hetzner's metadata service, and the unit that makes each server's host keys.
    pub fn cloud_disk_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.file(RELEASE_PATH).is_none() {
            problems.push(format!(
                "it is not a caph-image tarball (no {RELEASE_PATH}): make one with `caph-image build tarball`, or leave out TARBALL to build it first"
            ));
        }
        match self.machine() {
            Some("x86_64") => {}
            Some(other) => problems.push(format!(
                "it is a {other} system; Hetzner Cloud's arm servers boot UEFI, and --from-tarball installs GRUB for BIOS: build arm snapshots without --from-tarball"
            )),
            None => problems.push(
                "it holds no dynamic loader (lib64/ld-linux-x86-64.so.2): not the root file system of an installable system".to_string(),
            ),
        }
        if self.kernels.is_empty() {
            problems
                .push("/boot holds no kernel (vmlinuz-*): install a kernel package".to_string());
        }
        if !self.has(&["usr/sbin/grub-install", "sbin/grub-install"]) {
            problems.push(
                "it has no grub-install, which the server's disk boots through: install grub-pc"
                    .to_string(),
            );
        }
        if !self.has(&["usr/bin/cloud-init"]) {
            problems.push("it has no cloud-init (usr/bin/cloud-init), which gives a Hetzner Cloud server its user data, host name, SSH keys and network: install cloud-init".to_string());
        }
        if self.file(HOST_KEYS_UNIT_PATH).is_none() {
            problems.push(format!(
                "it has no {HOST_KEYS_UNIT_PATH}, which makes each server's SSH host keys on its first boot: build it with this caph-image"
            ));
        }
        problems
    }
}

/// `target` of a link at `path`, as a path from the root without the leading `/`.
fn resolve_link(path: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        path.split('/').collect::<Vec<_>>()[..path.matches('/').count()].to_vec()
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

/// A decompressing reader: the decompressor's output, or the file itself.
struct Decompressed {
    child: Option<std::process::Child>,
    reader: Box<dyn Read + Send>,
}

impl Drop for Decompressed {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn open(path: &Path) -> Result<(Compression, Decompressed), BootError> {
    let input = |detail: String| BootError::Input(vec![detail]);
    let mut file = caph_rootfs::input::open_regular(path)
        .map_err(|error| input(format!("{}: {error}", path.display())))?;
    let mut head = [0u8; 512];
    let read = file
        .read(&mut head)
        .map_err(|error| input(format!("reading {}: {error}", path.display())))?;
    let compression = Compression::detect(&head[..read]);
    let Some(program) = compression.decompressor() else {
        let file = caph_rootfs::input::open_regular(path)
            .map_err(|error| input(format!("{}: {error}", path.display())))?;
        return Ok((
            compression,
            Decompressed {
                child: None,
                reader: Box::new(file),
            },
        ));
    };
    let file = caph_rootfs::input::open_regular(path)
        .map_err(|error| input(format!("{}: {error}", path.display())))?;
    let mut child = std::process::Command::new(program)
        .arg("-dc")
        .stdin(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| {
            BootError::Machine(format!(
                "running {program} to read the {compression} tarball: {error} (install the Debian package {program})"
            ))
        })?;
    let stdout = child.stdout.take().ok_or_else(|| BootError::Failed {
        what: format!("running {program}"),
        detail: "no output pipe".to_string(),
    })?;
    Ok((
        compression,
        Decompressed {
            child: Some(child),
            reader: Box::new(stdout),
        },
    ))
}

fn read_blocking(path: &Path, cancel: &CancellationToken) -> Result<TarballContents, BootError> {
    let (compression, mut decompressed) = open(path)?;
    let not_tar = |detail: String| {
        BootError::Input(vec![format!(
            "{} is not a tar archive{}: {detail}",
            path.display(),
            match compression {
                Compression::None => String::new(),
                other => format!(" inside its {other} compression"),
            }
        )])
    };
    let mut contents = TarballContents {
        compression,
        entries: 0,
        unpacked_bytes: 0,
        files: BTreeMap::new(),
        kernels: Vec::new(),
        initrds: Vec::new(),
        host_key_files: BTreeMap::new(),
        programs: Vec::new(),
    };
    let mut archive = tar::Archive::new(&mut decompressed.reader);
    let entries = archive
        .entries()
        .map_err(|error| not_tar(error.to_string()))?;
    for entry in entries {
        if cancel.is_cancelled() {
            return Err(BootError::Cancelled {
                phase: "looking inside the tarball",
                cleanup: "nothing was made yet".to_string(),
            });
        }
        let mut entry = entry.map_err(|error| not_tar(error.to_string()))?;
        contents.entries += 1;
        let raw: PathBuf = entry
            .path()
            .map_err(|error| not_tar(error.to_string()))?
            .into_owned();
        let name = raw.to_string_lossy();
        let name = name
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/');
        let name = name.to_string();
        let kind = entry.header().entry_type();
        let size = entry.header().size().unwrap_or(0);
        if kind.is_file() {
            contents.unpacked_bytes += size;
        }
        if let Some(file) = name.strip_prefix("boot/") {
            if file.starts_with("vmlinuz-") {
                contents.kernels.push(file.to_string());
            } else if file.starts_with("initrd.img-") {
                contents.initrds.push(file.to_string());
            }
        }
        if let Some(file) = name.strip_prefix("etc/ssh/")
            && file.starts_with("ssh_host_")
            && file.ends_with("_key")
            && kind.is_file()
        {
            contents.host_key_files.insert(file.to_string(), size);
        }
        if PROGRAMS.contains(&name.as_str()) {
            contents.programs.push(name.clone());
        }
        if keep_content(&name) {
            if kind.is_symlink() {
                if let Ok(Some(target)) = entry.link_name() {
                    contents
                        .files
                        .insert(name, format!("-> {}", target.to_string_lossy()));
                }
            } else if kind.is_file() && size <= SMALL_FILE_LIMIT {
                let mut text = String::new();
                if entry.read_to_string(&mut text).is_ok() {
                    contents.files.insert(name, text);
                }
            }
        }
    }
    if contents.entries == 0 {
        return Err(not_tar("it holds no entries".to_string()));
    }
    // The end of the archive is not the end of the stream: read the rest, so that a cut-off or
    // corrupt compressed stream shows in the decompressor's exit status.
    let _ = std::io::copy(&mut decompressed.reader, &mut std::io::sink());
    if let Some(mut child) = decompressed.child.take() {
        let status = child.wait().map_err(|error| BootError::Failed {
            what: "waiting for the decompressor".to_string(),
            detail: error.to_string(),
        })?;
        if !status.success() {
            return Err(BootError::Input(vec![format!(
                "{}: its {compression} data is corrupt or cut short ({} -dc exited with {status})",
                path.display(),
                compression.decompressor().unwrap_or_default()
            )]));
        }
    }
    contents.kernels.sort();
    contents.initrds.sort();
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::resolve_link;

    #[test]
    fn links_resolve_from_their_directory() {
        assert_eq!(
            resolve_link("etc/os-release", "../usr/lib/os-release"),
            "usr/lib/os-release"
        );
        assert_eq!(
            resolve_link("etc/os-release", "/usr/lib/os-release"),
            "usr/lib/os-release"
        );
        assert_eq!(resolve_link("a/b/c", "d"), "a/b/d");
    }
}
