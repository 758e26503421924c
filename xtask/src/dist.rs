//! `cargo xtask dist [--check]`: release archives of `caph-image` and `caph-sim`, one per
//! installed target, with README, licenses, shell completions and a man page, plus `SHA256SUMS`.
//!
//! The archives are reproducible: every staged file gets a fixed mode (0755 binaries, 0644 the
//! rest) and its mtime set to `SOURCE_DATE_EPOCH` (default: the time of the last git commit),
//! and the project's own tar writer stores entries sorted with numeric owners. Two runs with the
//! same epoch and toolchain on the same machine give the same bytes. Completions and the man page
//! come from the host build (`caph-image completions SHELL`, `caph-image man`): they do not
//! depend on the target, and a cross-compiled binary cannot run here.

use std::collections::BTreeMap;
use std::fs::{self, File, FileTimes};
use std::io::{BufWriter, Read as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use caph_rootfs::pack::{Compression, PackOptions};
use sha2::{Digest as _, Sha256};

/// The binaries every archive ships, built from these packages.
const BINARIES: [(&str, &str); 2] = [("caph-image", "caph-image"), ("caph-sim", "caph-sim")];
/// Targets a release is expected to cover; those not installed are reported as skipped.
/// Any other installed target is built too.
const RELEASE_TARGETS: [&str; 2] = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"];
/// Shells, with the file name their completion script gets (the names each shell looks for).
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "completions/caph-image.bash"),
    ("zsh", "completions/_caph-image"),
    ("fish", "completions/caph-image.fish"),
];
/// The directory of the man pages inside the archive: one per subcommand, from
/// `caph-image man --dir`.
const MAN_DIR: &str = "man";
/// The main man page, which every archive must hold.
const MAN_PAGE: &str = "man/caph-image.1";
/// Documents copied from the repository root.
const DOCUMENTS: [&str; 3] = ["README.md", "LICENSE", "LICENSE-APACHE"];
/// The checksum file in `dist/`.
const SUMS: &str = "SHA256SUMS";

/// Arguments of `dist`.
#[derive(Debug, Default)]
pub struct DistArgs {
    check: bool,
}

impl DistArgs {
    pub fn parse(args: &[&str]) -> Result<DistArgs> {
        let mut parsed = DistArgs::default();
        for arg in args {
            match *arg {
                "--check" => parsed.check = true,
                other => bail!("unknown argument {other:?} to `dist`"),
            }
        }
        Ok(parsed)
    }
}

/// Runs `dist` or `dist --check` in the workspace.
pub fn run(args: &DistArgs) -> Result<()> {
    let root = workspace_root();
    let dist_dir = root.join("dist");
    let version = package_version(&root)?;
    let host = host_target()?;
    if args.check {
        let report = check(&dist_dir, &version, &host)?;
        for line in report {
            println!("{line}");
        }
        println!("dist --check: {} is consistent", dist_dir.display());
        return Ok(());
    }
    build_all(&root, &dist_dir, &version, &host)
}

pub fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root. `cargo run` sets CARGO_MANIFEST_DIR at run
    // time too; that one wins, because two checkouts sharing a target directory share the
    // `debug/xtask` binary, and the compiled-in path may be the other checkout's.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.clone(), Path::to_owned)
}

pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| root.join("target"), PathBuf::from)
}

/// The archive name of one target, without extension.
pub fn archive_stem(version: &str, target: &str) -> String {
    format!("caph-image-{version}-{target}")
}

/// The version of the `caph-image` package, as its Cargo.toml (or the workspace's) says.
fn package_version(root: &Path) -> Result<String> {
    let manifest = root.join("crates/caph-image/Cargo.toml");
    let text =
        fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    match section_value(&text, "[package]", "version") {
        Some(version) => Ok(version),
        None => {
            let workspace = fs::read_to_string(root.join("Cargo.toml"))
                .context("reading the workspace Cargo.toml")?;
            section_value(&workspace, "[workspace.package]", "version")
                .context("no version in crates/caph-image/Cargo.toml nor [workspace.package]")
        }
    }
}

/// `key = "value"` inside `section` of a simple TOML file; `None` for anything else (such as
/// `version.workspace = true`).
fn section_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == section;
            continue;
        }
        if !inside {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if name.trim() == key {
            let value = value.trim();
            return value
                .strip_prefix('"')
                .and_then(|value| value.strip_suffix('"'))
                .map(str::to_owned);
        }
    }
    None
}

fn host_target() -> Result<String> {
    let output = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    ensure!(output.status.success(), "rustc -vV failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV printed no host line")
}

/// The epoch every mtime in the archives is set to.
fn source_date_epoch(root: &Path) -> Result<i64> {
    if let Some(epoch) =
        caph_rootfs::pack::source_date_epoch(std::env::var_os("SOURCE_DATE_EPOCH").as_deref())?
    {
        return Ok(epoch);
    }
    let output = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root)
        .output()
        .context("running git log for the default SOURCE_DATE_EPOCH")?;
    ensure!(
        output.status.success(),
        "git log -1 failed ({}); set SOURCE_DATE_EPOCH",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("git log printed {text:?}, not a commit time"))
}

/// Targets to build (host first) and those skipped, with the reason.
fn plan_targets(host: &str) -> (Vec<String>, Vec<(String, String)>) {
    let installed: Option<Vec<String>> = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(|line| line.trim().to_owned())
                .filter(|line| !line.is_empty())
                .collect()
        });
    let mut build = vec![host.to_owned()];
    let mut skipped = Vec::new();
    if let Some(installed) = &installed {
        for target in installed {
            if !build.contains(target) {
                build.push(target.clone());
            }
        }
    }
    for target in RELEASE_TARGETS {
        if build.iter().any(|built| built == target) {
            continue;
        }
        let reason = if installed.is_some() {
            format!("not installed (rustup target add {target})")
        } else {
            "no rustup to list installed targets; only the host is built".to_owned()
        };
        skipped.push((target.to_owned(), reason));
    }
    (build, skipped)
}

fn cargo_build(root: &Path, target: Option<&str>) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args(["build", "--release", "--locked"]);
    for (package, binary) in BINARIES {
        command.args(["--package", package, "--bin", binary]);
    }
    if let Some(target) = target {
        command.args(["--target", target]);
    }
    let status = command.status().context("running cargo build")?;
    ensure!(status.success(), "cargo build --release failed ({status})");
    Ok(())
}

fn run_capture(binary: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let output = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    ensure!(
        output.status.success(),
        "{} {} failed ({}): {}",
        binary.display(),
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output.stdout)
}

/// What goes into one archive besides the documents.
#[derive(Debug)]
pub struct StageInputs<'a> {
    /// `(file name in the archive, built binary)`.
    pub binaries: Vec<(&'a str, PathBuf)>,
    /// The repository root, where [`DOCUMENTS`] are.
    pub documents_dir: &'a Path,
    /// `(path in the archive, contents)`: completions and the man pages.
    pub generated: Vec<(String, Vec<u8>)>,
}

/// Fills `staging/<stem>/` with the archive's contents, modes fixed and mtimes set to `epoch`.
/// `staging` must be empty or absent.
pub fn stage(staging: &Path, stem: &str, inputs: &StageInputs<'_>, epoch: i64) -> Result<()> {
    let top = staging.join(stem);
    fs::create_dir_all(&top).with_context(|| format!("creating {}", top.display()))?;
    for (name, source) in &inputs.binaries {
        copy_with_mode(source, &top.join(name), 0o755)?;
    }
    for document in DOCUMENTS {
        copy_with_mode(
            &inputs.documents_dir.join(document),
            &top.join(document),
            0o644,
        )?;
    }
    for (path, contents) in &inputs.generated {
        let destination = top.join(path);
        if let Some(parent) = destination.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&destination, contents)
            .with_context(|| format!("writing {}", destination.display()))?;
        fs::set_permissions(&destination, fs::Permissions::from_mode(0o644))?;
    }
    fix_times_and_dir_modes(staging, epoch)
}

fn copy_with_mode(source: &Path, destination: &Path, mode: u32) -> Result<()> {
    fs::copy(source, destination)
        .with_context(|| format!("copying {} to {}", source.display(), destination.display()))?;
    fs::set_permissions(destination, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", destination.display()))
}

/// Directories 0755 and every mtime the epoch, so the archive does not depend on when or with
/// which umask the staging ran (the writer only clamps times later than the epoch).
fn fix_times_and_dir_modes(dir: &Path, epoch: i64) -> Result<()> {
    let time = epoch_time(epoch)?;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            fix_times_and_dir_modes(&path, epoch)?;
        } else {
            set_mtime(&path, time)?;
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    set_mtime(dir, time)
}

fn epoch_time(epoch: i64) -> Result<SystemTime> {
    let seconds = u64::try_from(epoch).context("SOURCE_DATE_EPOCH before 1970")?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

fn set_mtime(path: &Path, time: SystemTime) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    file.set_times(FileTimes::new().set_modified(time).set_accessed(time))
        .with_context(|| format!("setting the mtime of {}", path.display()))
}

/// Writes the staging directory as a gzip tarball to `output` (through a temporary file) and
/// returns its sha256 in hex.
pub fn write_archive(staging: &Path, output: &Path, epoch: i64) -> Result<String> {
    let mut options = PackOptions::plain(Compression::gzip());
    options.source_date_epoch = Some(epoch);
    let partial = output.with_extension("gz.partial");
    let file = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut writer = BufWriter::new(file);
    let summary = caph_rootfs::pack::pack_to_writer(staging, &mut writer, &options, &mut |_| {})
        .with_context(|| format!("packing {}", staging.display()))?;
    let file = writer.into_inner().map_err(|error| error.into_error())?;
    file.set_permissions(fs::Permissions::from_mode(0o644))?;
    file.sync_all()?;
    drop(file);
    fs::rename(&partial, output).with_context(|| format!("renaming to {}", output.display()))?;
    Ok(summary.sha256)
}

/// Writes `SHA256SUMS` (sha256sum format, sorted by file name) into `dist_dir`.
pub fn write_sums(dist_dir: &Path, sums: &BTreeMap<String, String>) -> Result<()> {
    let mut text = String::new();
    for (name, sha) in sums {
        text.push_str(&format!("{sha}  {name}\n"));
    }
    let path = dist_dir.join(SUMS);
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

fn build_all(root: &Path, dist_dir: &Path, version: &str, host: &str) -> Result<()> {
    let epoch = source_date_epoch(root)?;
    let (targets, skipped) = plan_targets(host);
    let release_dir = target_dir(root);
    let staging_root = release_dir.join("dist-staging");

    // The host build also gives the completions and the man page every archive ships.
    cargo_build(root, None)?;
    let host_binary = release_dir.join("release/caph-image");
    let mut generated = Vec::new();
    for (shell, path) in COMPLETIONS {
        generated.push((
            path.to_owned(),
            run_capture(&host_binary, &["completions", shell])?,
        ));
    }
    generated.extend(man_pages(&host_binary)?);

    fs::create_dir_all(dist_dir).with_context(|| format!("creating {}", dist_dir.display()))?;
    remove_old_outputs(dist_dir)?;
    let mut sums = BTreeMap::new();
    let mut failed = Vec::new();
    for target in &targets {
        let bin_dir = if target == host {
            release_dir.join("release")
        } else {
            if let Err(error) = cargo_build(root, Some(target)) {
                failed.push((
                    target.clone(),
                    format!(
                        "{error:#}; a cross linker may be missing (CARGO_TARGET_<TRIPLE>_LINKER)"
                    ),
                ));
                continue;
            }
            release_dir.join(target).join("release")
        };
        let stem = archive_stem(version, target);
        let staging = staging_root.join(target);
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        let inputs = StageInputs {
            binaries: BINARIES
                .iter()
                .map(|(_, binary)| (*binary, bin_dir.join(binary)))
                .collect(),
            documents_dir: root,
            generated: generated.clone(),
        };
        stage(&staging, &stem, &inputs, epoch)?;
        let name = format!("{stem}.tar.gz");
        let sha = write_archive(&staging, &dist_dir.join(&name), epoch)?;
        println!("dist: {name}  sha256 {sha}");
        sums.insert(name, sha);
    }
    ensure!(!sums.is_empty(), "no archive was built");
    write_sums(dist_dir, &sums)?;
    println!(
        "dist: {} archive(s) and {SUMS} in {} (SOURCE_DATE_EPOCH={epoch})",
        sums.len(),
        dist_dir.display()
    );
    for (target, reason) in skipped.iter().chain(&failed) {
        println!("dist: skipped {target}: {reason}");
    }
    Ok(())
}

/// `(path in the archive, contents)` of every man page `caph-image man --dir` writes.
fn man_pages(binary: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let dir = temp
        .path()
        .to_str()
        .context("temporary directory is not UTF-8")?;
    run_capture(binary, &["man", "--dir", dir])?;
    let mut pages = Vec::new();
    for entry in fs::read_dir(temp.path())? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        pages.push((format!("{MAN_DIR}/{name}"), fs::read(entry.path())?));
    }
    pages.sort();
    ensure!(
        pages.iter().any(|(path, _)| path == MAN_PAGE),
        "caph-image man --dir wrote no {MAN_PAGE}"
    );
    Ok(pages)
}

/// Removes archives and sums of earlier runs, so `SHA256SUMS` covers exactly what is there.
fn remove_old_outputs(dist_dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dist_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == SUMS || (name.starts_with("caph-image-") && name.ends_with(".tar.gz")) {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The files and directories an archive holds, with their modes, relative to its top directory;
/// besides these, further `man/caph-image-*.1` pages (one per subcommand) are allowed.
pub fn expected_layout() -> BTreeMap<String, u32> {
    let mut layout = BTreeMap::new();
    for (_, binary) in BINARIES {
        layout.insert(binary.to_owned(), 0o755);
    }
    for document in DOCUMENTS {
        layout.insert(document.to_owned(), 0o644);
    }
    for (_, path) in COMPLETIONS {
        layout.insert(path.to_owned(), 0o644);
    }
    layout.insert(MAN_PAGE.to_owned(), 0o644);
    layout.insert("completions/".to_owned(), 0o755);
    layout.insert("man/".to_owned(), 0o755);
    layout
}

/// Verifies `dist_dir`: `SHA256SUMS` lists every archive and matches it; each archive unpacks
/// with GNU tar into exactly the expected layout and modes; and for the host target, the
/// binaries run `--version` (printing the version) and `--help`. Returns one line per archive.
pub fn check(dist_dir: &Path, version: &str, host: &str) -> Result<Vec<String>> {
    let sums_path = dist_dir.join(SUMS);
    let sums_text = fs::read_to_string(&sums_path).with_context(|| {
        format!(
            "reading {}; run `cargo xtask dist` first",
            sums_path.display()
        )
    })?;
    let mut listed = BTreeMap::new();
    for line in sums_text.lines() {
        let (sha, name) = line
            .split_once("  ")
            .with_context(|| format!("{SUMS}: malformed line {line:?}"))?;
        listed.insert(name.to_owned(), sha.to_owned());
    }
    ensure!(!listed.is_empty(), "{SUMS} lists no archive");
    for entry in fs::read_dir(dist_dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("caph-image-") && name.ends_with(".tar.gz") {
            ensure!(listed.contains_key(&name), "{name} is not listed in {SUMS}");
        }
    }
    let mut report = Vec::new();
    for (name, sha) in &listed {
        let path = dist_dir.join(name);
        let actual = sha256_file(&path)?;
        ensure!(
            &actual == sha,
            "{name}: sha256 {actual} does not match {SUMS} ({sha})"
        );
        let stem = name
            .strip_suffix(".tar.gz")
            .with_context(|| format!("{SUMS} lists {name}, not a .tar.gz"))?;
        let target = stem
            .strip_prefix(&format!("caph-image-{version}-"))
            .with_context(|| format!("{name} is not named caph-image-{version}-<target>.tar.gz"))?;
        let ran = check_archive(&path, stem, version, target == host)?;
        report.push(format!(
            "ok {name}: sha256 matches, layout as expected, {}",
            if ran {
                "binaries run --version and --help"
            } else {
                "binaries not run (not the host target)"
            }
        ));
    }
    Ok(report)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 16];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// Unpacks one archive with GNU tar into a temporary directory and checks it; returns whether
/// the binaries were run.
fn check_archive(archive: &Path, stem: &str, version: &str, runnable: bool) -> Result<bool> {
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(temp.path())
        .status()
        .context("running GNU tar (Debian package tar)")?;
    ensure!(
        status.success(),
        "tar could not unpack {}",
        archive.display()
    );

    let mut top_level: Vec<String> = fs::read_dir(temp.path())?
        .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    top_level.sort();
    ensure!(
        top_level == [stem],
        "{}: expected one top directory {stem}/, found {top_level:?}",
        archive.display()
    );
    let top = temp.path().join(stem);
    let mut found = BTreeMap::new();
    collect_layout(&top, "", &mut found)?;
    // Subcommand pages: their list follows the CLI, so any caph-image-*.1 page is accepted.
    found.retain(|path, mode| {
        !(path.starts_with(&format!("{MAN_DIR}/caph-image-"))
            && path.ends_with(".1")
            && *mode == 0o644)
    });
    let expected = expected_layout();
    if found != expected {
        let missing: Vec<_> = expected
            .iter()
            .filter(|(path, mode)| found.get(*path) != Some(mode))
            .map(|(path, mode)| format!("{path} ({mode:o})"))
            .collect();
        let extra: Vec<_> = found
            .iter()
            .filter(|(path, mode)| expected.get(*path) != Some(mode))
            .map(|(path, mode)| format!("{path} ({mode:o})"))
            .collect();
        bail!(
            "{}: layout differs; expected but missing or wrong mode: {missing:?}; unexpected: {extra:?}",
            archive.display()
        );
    }
    for entry in fs::read_dir(top.join(MAN_DIR))? {
        let path = entry?.path();
        let page = fs::read_to_string(&path)?;
        ensure!(
            page.contains("\n.TH "),
            "{} is not a roff man page",
            path.display()
        );
    }
    for (_, path) in COMPLETIONS {
        ensure!(fs::metadata(top.join(path))?.len() > 0, "{path} is empty");
    }
    if !runnable {
        return Ok(false);
    }
    for (_, binary) in BINARIES {
        let path = top.join(binary);
        let printed = String::from_utf8_lossy(&run_capture(&path, &["--version"])?).into_owned();
        // The archive is named after caph-image's version; caph-sim has its own crate version.
        let shown = printed.trim().strip_prefix(&format!("{binary} "));
        let expected = if binary == "caph-image" {
            version
        } else {
            "a version"
        };
        ensure!(
            shown.is_some_and(|shown| if binary == "caph-image" {
                shown == version
            } else {
                !shown.is_empty()
            }),
            "{binary} --version printed {printed:?}, expected \"{binary} {expected}\""
        );
        let help = String::from_utf8_lossy(&run_capture(&path, &["--help"])?).into_owned();
        ensure!(
            help.contains("Usage:"),
            "{binary} --help printed no usage: {help:?}"
        );
    }
    Ok(true)
}

fn collect_layout(dir: &Path, prefix: &str, found: &mut BTreeMap<String, u32>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let metadata = fs::symlink_metadata(entry.path())?;
        let mode = metadata.permissions().mode() & 0o7777;
        if metadata.is_dir() {
            found.insert(format!("{prefix}{name}/"), mode);
            collect_layout(&entry.path(), &format!("{prefix}{name}/"), found)?;
        } else {
            found.insert(format!("{prefix}{name}"), mode);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION: &str = "9.8.7";
    const TARGET: &str = "x86_64-unknown-linux-gnu";

    /// A stand-in binary: a shell script answering --version and --help like clap does.
    fn fake_binary(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(
            &path,
            format!(
                "#!/bin/sh\ncase \"$1\" in\n--version) echo \"{name} {VERSION}\";;\n--help) echo \"Usage: {name}\";;\n*) exit 2;;\nesac\n"
            ),
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        path
    }

    /// Sources for one archive: fake binaries, documents and generated files in `dir`.
    fn inputs(dir: &Path) -> StageInputs<'_> {
        for document in DOCUMENTS {
            fs::write(dir.join(document), format!("{document} text\n")).unwrap();
            // A different mode than the archive's, which staging must fix.
            fs::set_permissions(dir.join(document), fs::Permissions::from_mode(0o600)).unwrap();
        }
        let mut generated: Vec<(String, Vec<u8>)> = COMPLETIONS
            .iter()
            .map(|(shell, path)| {
                (
                    (*path).to_owned(),
                    format!("# {shell} completion\n").into_bytes(),
                )
            })
            .collect();
        for page in ["caph-image", "caph-image-build"] {
            generated.push((
                format!("{MAN_DIR}/{page}.1"),
                format!(".ie \\n(.g .ds Aq \\(aq\n.TH {page} 1\n").into_bytes(),
            ));
        }
        StageInputs {
            binaries: BINARIES
                .iter()
                .map(|(_, binary)| (*binary, fake_binary(dir, binary)))
                .collect(),
            documents_dir: dir,
            generated,
        }
    }

    /// Stages and packs one archive into `dist`, writing SHA256SUMS; returns the archive path.
    fn make_dist(work: &Path, dist: &Path, epoch: i64) -> PathBuf {
        let sources = work.join("sources");
        fs::create_dir_all(&sources).unwrap();
        let stem = archive_stem(VERSION, TARGET);
        let staging = work.join("staging");
        stage(&staging, &stem, &inputs(&sources), epoch).unwrap();
        fs::create_dir_all(dist).unwrap();
        let name = format!("{stem}.tar.gz");
        let archive = dist.join(&name);
        let sha = write_archive(&staging, &archive, epoch).unwrap();
        write_sums(dist, &BTreeMap::from([(name, sha)])).unwrap();
        archive
    }

    #[test]
    fn archives_are_bit_identical_across_runs_and_hold_the_layout() {
        let temp = tempfile::tempdir().unwrap();
        let first = make_dist(
            &temp.path().join("a"),
            &temp.path().join("dist-a"),
            1_700_000_000,
        );
        // A second run later, from other directories: only the epoch may matter.
        std::thread::sleep(Duration::from_millis(1100));
        let second = make_dist(
            &temp.path().join("b"),
            &temp.path().join("dist-b"),
            1_700_000_000,
        );
        assert_eq!(fs::read(&first).unwrap(), fs::read(&second).unwrap());
        assert_eq!(
            fs::read(first.with_file_name(SUMS)).unwrap(),
            fs::read(second.with_file_name(SUMS)).unwrap()
        );

        // GNU tar's view: sorted names, fixed modes, numeric owners, the epoch as mtime.
        let listing = Command::new("tar")
            .args(["--numeric-owner", "--full-time", "-tvzf"])
            .arg(&first)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert!(listing.status.success());
        let listing = String::from_utf8(listing.stdout).unwrap();
        let stem = archive_stem(VERSION, TARGET);
        let mut names = Vec::new();
        for line in listing.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields[3..5], ["2023-11-14", "22:13:20"], "{line}");
            let name = fields[5];
            let expected_mode = if name.ends_with("/caph-image") || name.ends_with("/caph-sim") {
                "-rwxr-xr-x"
            } else if name.ends_with('/') {
                "drwxr-xr-x"
            } else {
                "-rw-r--r--"
            };
            assert_eq!(fields[0], expected_mode, "{line}");
            names.push(name.to_owned());
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for path in expected_layout().keys() {
            assert!(
                names.contains(&format!("./{stem}/{path}")),
                "{path} missing from {names:?}"
            );
        }

        // A different epoch gives a different archive (the epoch is really used).
        let third = make_dist(
            &temp.path().join("c"),
            &temp.path().join("dist-c"),
            1_600_000_000,
        );
        assert_ne!(fs::read(&first).unwrap(), fs::read(&third).unwrap());
    }

    #[test]
    fn check_accepts_a_good_dist_and_runs_the_binaries() {
        let temp = tempfile::tempdir().unwrap();
        let dist = temp.path().join("dist");
        make_dist(&temp.path().join("work"), &dist, 1_700_000_000);
        let report = check(&dist, VERSION, TARGET).unwrap();
        assert_eq!(report.len(), 1);
        assert!(
            report[0].contains("binaries run --version and --help"),
            "{report:?}"
        );
        // Not the host: everything but running the binaries is checked.
        let report = check(&dist, VERSION, "riscv64gc-unknown-linux-gnu").unwrap();
        assert!(report[0].contains("not run"), "{report:?}");
        // The wrong version is caught by the name.
        let error = check(&dist, "0.0.1", TARGET).unwrap_err();
        assert!(format!("{error:#}").contains("is not named"), "{error:#}");
    }

    #[test]
    fn check_catches_a_tampered_archive() {
        let temp = tempfile::tempdir().unwrap();
        let dist = temp.path().join("dist");
        let archive = make_dist(&temp.path().join("work"), &dist, 1_700_000_000);
        let mut bytes = fs::read(&archive).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        fs::write(&archive, &bytes).unwrap();
        let error = check(&dist, VERSION, TARGET).unwrap_err();
        assert!(
            format!("{error:#}").contains("does not match SHA256SUMS"),
            "{error:#}"
        );
    }

    #[test]
    fn check_catches_a_missing_file_even_with_matching_sums() {
        let temp = tempfile::tempdir().unwrap();
        let dist = temp.path().join("dist");
        let archive = make_dist(&temp.path().join("work"), &dist, 1_700_000_000);
        // Repack without the man page and record its true checksum.
        let staging = temp.path().join("work/staging");
        fs::remove_file(staging.join(archive_stem(VERSION, TARGET)).join(MAN_PAGE)).unwrap();
        let sha = write_archive(&staging, &archive, 1_700_000_000).unwrap();
        let name = archive.file_name().unwrap().to_string_lossy().into_owned();
        write_sums(&dist, &BTreeMap::from([(name, sha)])).unwrap();
        let error = check(&dist, VERSION, TARGET).unwrap_err();
        assert!(
            format!("{error:#}").contains("man/caph-image.1"),
            "{error:#}"
        );
    }

    #[test]
    fn check_catches_an_unlisted_archive() {
        let temp = tempfile::tempdir().unwrap();
        let dist = temp.path().join("dist");
        let archive = make_dist(&temp.path().join("work"), &dist, 1_700_000_000);
        fs::copy(&archive, dist.join("caph-image-9.8.7-other.tar.gz")).unwrap();
        let error = check(&dist, VERSION, TARGET).unwrap_err();
        assert!(format!("{error:#}").contains("not listed"), "{error:#}");
    }

    #[test]
    fn version_comes_from_the_package_or_the_workspace() {
        let text =
            "[package]\nname = \"x\"\nversion = \"1.2.3\"\n[dependencies]\nversion = \"9\"\n";
        assert_eq!(
            section_value(text, "[package]", "version").as_deref(),
            Some("1.2.3")
        );
        let inherited = "[package]\nversion.workspace = true\n";
        assert_eq!(section_value(inherited, "[package]", "version"), None);
    }
}
