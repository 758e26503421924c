//! `cargo xtask pins SPEC... --checksums FILE [--newest-patch]`: writes every artifact's sha256
//! pins (both architectures) into image specs, from a checksum table in kubespray's format
//! (`roles/kubespray_defaults/vars/main/checksums.yml`: `<name>_checksums:`, then an
//! architecture, then `<version>: sha256:<hex>` lines).
//!
//! With `--newest-patch`, each component first moves to the newest patch release of its minor
//! line that the table holds, and the `[image]` name and description follow the new versions, so
//! the next patch release is one command. The spec is edited line by line: comments and layout
//! outside the pins stay as they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The architectures every shipped spec pins.
const ARCHES: &[&str] = &["amd64", "arm64"];
/// The Kubernetes binaries, as the spec names them in `[kubernetes]` pins.
const KUBERNETES_COMPONENTS: &[&str] = &["kubeadm", "kubectl", "kubelet"];

/// Parsed command-line arguments.
#[derive(Debug)]
pub struct PinsArgs {
    specs: Vec<PathBuf>,
    checksums: PathBuf,
    newest_patch: bool,
}

impl PinsArgs {
    pub fn parse(args: &[&str]) -> Result<PinsArgs> {
        let mut specs = Vec::new();
        let mut checksums = None;
        let mut newest_patch = false;
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            match *arg {
                "--checksums" => {
                    let path = rest.next().context("--checksums needs a file")?;
                    checksums = Some(PathBuf::from(path));
                }
                "--newest-patch" => newest_patch = true,
                flag if flag.starts_with("--") => bail!("unknown option {flag}"),
                spec => specs.push(PathBuf::from(spec)),
            }
        }
        if specs.is_empty() {
            bail!("name at least one spec");
        }
        Ok(PinsArgs {
            specs,
            checksums: checksums
                .context("--checksums FILE is required (kubespray's checksums.yml)")?,
            newest_patch,
        })
    }
}

pub fn run(args: &PinsArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.checksums)
        .with_context(|| format!("reading {}", args.checksums.display()))?;
    let table = ChecksumTable::parse(&text)?;
    for spec in &args.specs {
        let changed = update_file(spec, &table, args.newest_patch)?;
        println!(
            "{}: {}",
            spec.display(),
            if changed {
                "pins written"
            } else {
                "already up to date"
            }
        );
    }
    Ok(())
}

fn update_file(path: &Path, table: &ChecksumTable, newest_patch: bool) -> Result<bool> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let updated = update_spec(&text, table, newest_patch)
        .with_context(|| format!("updating {}", path.display()))?;
    if updated == text {
        return Ok(false);
    }
    std::fs::write(path, &updated).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// `name -> arch -> version -> sha256 hex`, from kubespray's checksum file.
#[derive(Debug, Default)]
pub struct ChecksumTable(BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>);

impl ChecksumTable {
    /// Reads the three-level mapping; entries whose digest is `0` (not published) are skipped.
    pub fn parse(text: &str) -> Result<ChecksumTable> {
        let mut table = ChecksumTable::default();
        let (mut name, mut arch): (Option<String>, Option<String>) = (None, None);
        for (number, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or("").trim_end();
            if content.trim().is_empty() || content.trim() == "---" {
                continue;
            }
            let indent = content.len() - content.trim_start().len();
            let Some((key, value)) = content.trim().split_once(':') else {
                bail!("line {}: expected `key: value`: {line}", number + 1);
            };
            let (key, value) = (
                key.trim().trim_matches('"').trim_matches('\''),
                value.trim(),
            );
            match indent {
                0 => {
                    name = Some(key.to_string());
                    arch = None;
                }
                2 => arch = Some(key.to_string()),
                _ => {
                    let (Some(name), Some(arch)) = (&name, &arch) else {
                        bail!("line {}: a version outside a table: {line}", number + 1);
                    };
                    let digest = value.trim_matches('"').trim_matches('\'');
                    // Some tables hold other algorithms (`sha512:`): not pins this tool writes.
                    if digest == "0" || (digest.contains(':') && !digest.starts_with("sha256:")) {
                        continue;
                    }
                    let digest = digest.strip_prefix("sha256:").unwrap_or(digest);
                    if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
                        bail!("line {}: not a sha256 digest: {line}", number + 1);
                    }
                    table
                        .0
                        .entry(name.clone())
                        .or_default()
                        .entry(arch.clone())
                        .or_default()
                        .insert(
                            key.trim_start_matches('v').to_string(),
                            digest.to_ascii_lowercase(),
                        );
                }
            }
        }
        Ok(table)
    }

    fn digest(&self, name: &str, arch: &str, version: &str) -> Option<&str> {
        self.0
            .get(name)?
            .get(arch)?
            .get(version)
            .map(String::as_str)
    }

    /// The newest version in `name`'s amd64 column with the same `MAJOR.MINOR` as `version`.
    fn newest_patch(&self, name: &str, version: &str) -> Option<String> {
        let minor = minor_of(version)?;
        self.0
            .get(name)?
            .get("amd64")?
            .keys()
            .filter(|candidate| minor_of(candidate) == Some(minor))
            .filter_map(|candidate| Some((numeric(candidate)?, candidate)))
            .max()
            .map(|(_, candidate)| candidate.clone())
    }
}

fn numeric(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(str::parse::<u32>);
    let triple = (
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    );
    parts.next().is_none().then_some(triple)
}

fn minor_of(version: &str) -> Option<(u32, u32)> {
    numeric(version).map(|(major, minor, _)| (major, minor))
}

/// A spec section whose artifact the table pins: its TOML table and the table's names.
struct Component {
    section: &'static str,
    /// kubespray's table per file (one for an artifact, three for Kubernetes' binaries).
    tables: &'static [(&'static str, &'static str)],
}

const COMPONENTS: &[Component] = &[
    Component {
        section: "kubernetes",
        tables: &[
            ("kubeadm", "kubeadm_checksums"),
            ("kubectl", "kubectl_checksums"),
            ("kubelet", "kubelet_checksums"),
        ],
    },
    Component {
        section: "containerd",
        tables: &[("", "containerd_archive_checksums")],
    },
    Component {
        section: "runc",
        tables: &[("", "runc_checksums")],
    },
    Component {
        section: "crictl",
        tables: &[("", "crictl_checksums")],
    },
    Component {
        section: "cni",
        tables: &[("", "cni_binary_checksums")],
    },
];

/// One line of a spec and the table header it sits under.
struct Line {
    text: String,
    table: String,
}

/// The spec `text` with every pin written from `table` (and versions moved to the newest patch
/// when `newest_patch`); an error names every artifact the table lacks, and nothing is written.
pub fn update_spec(text: &str, table: &ChecksumTable, newest_patch: bool) -> Result<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for text in text.lines() {
        let trimmed = text.trim();
        if let Some(header) = trimmed
            .strip_prefix('[')
            .and_then(|rest| rest.split(']').next())
            && !trimmed.starts_with("[[")
        {
            current = header.trim().to_string();
        } else if trimmed.starts_with("[[") {
            current = trimmed.trim_matches(['[', ']']).trim().to_string();
        }
        lines.push(Line {
            text: text.to_string(),
            table: current.clone(),
        });
    }
    let binaries = lines.iter().any(|line| {
        line.table == "kubernetes"
            && key_of(&line.text) == Some("source")
            && line.text.contains("\"binaries\"")
    });
    let mut missing = Vec::new();
    let mut renamed: Vec<(String, String)> = Vec::new();
    for component in COMPONENTS {
        if component.section == "kubernetes" && !binaries {
            continue;
        }
        let Some(version_index) = lines.iter().position(|line| {
            line.table == component.section && key_of(&line.text) == Some("version")
        }) else {
            continue;
        };
        let old = quoted_value(&lines[version_index].text).unwrap_or_default();
        let mut version = old.clone();
        if newest_patch {
            let (_, first_table) = component.tables[0];
            if let Some(newest) = table.newest_patch(first_table, &old) {
                version = newest;
            }
        }
        let mut pins = Vec::new();
        for (file, name) in component.tables {
            for arch in ARCHES {
                match table.digest(name, arch, &version) {
                    Some(digest) => pins.push((*file, *arch, digest.to_string())),
                    None => missing.push(format!("{name} {arch} {version}")),
                }
            }
        }
        if version != old {
            renamed.push((old.clone(), version.clone()));
        }
        let pin_lines = if component.section == "kubernetes" {
            ARCHES
                .iter()
                .map(|arch| {
                    let entries = KUBERNETES_COMPONENTS
                        .iter()
                        .filter_map(|file| {
                            pins.iter()
                                .find(|(f, a, _)| f == file && a == arch)
                                .map(|(_, _, digest)| format!("{file} = \"{digest}\""))
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!("sha256.{arch} = {{ {entries} }}")
                })
                .collect::<Vec<_>>()
        } else {
            let entries = pins
                .iter()
                .map(|(_, arch, digest)| format!("{arch} = \"{digest}\""))
                .collect::<Vec<_>>()
                .join(", ");
            vec![format!("sha256 = {{ {entries} }}")]
        };
        // Drop the old pins: `sha256...` keys in the section and `[section.sha256...]` tables.
        let pins_table = format!("{}.sha256", component.section);
        let version_text = lines[version_index].text.replace(&old, &version);
        let mut kept = Vec::new();
        for (index, line) in lines.into_iter().enumerate() {
            let old_pin = (line.table == component.section
                && key_of(&line.text)
                    .is_some_and(|key| key == "sha256" || key.starts_with("sha256.")))
                || line.table == pins_table
                || line.table.starts_with(&format!("{pins_table}."));
            if old_pin {
                continue;
            }
            if index == version_index {
                kept.push(Line {
                    text: version_text.clone(),
                    table: line.table.clone(),
                });
                for pin in &pin_lines {
                    kept.push(Line {
                        text: pin.clone(),
                        table: component.section.to_string(),
                    });
                }
                continue;
            }
            kept.push(line);
        }
        // Blank lines left twice where a pin table was removed.
        lines = kept;
        let mut index = 1;
        while index < lines.len() {
            if lines[index].text.trim().is_empty() && lines[index - 1].text.trim().is_empty() {
                lines.remove(index);
            } else {
                index += 1;
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "the checksum table has no digest for: {}",
            missing.join(", ")
        );
    }
    for line in &mut lines {
        if line.table == "image" || line.text.starts_with('#') {
            for (old, new) in &renamed {
                line.text = line.text.replace(old.as_str(), new);
            }
        }
    }
    let mut out = lines
        .into_iter()
        .map(|line| line.text)
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    Ok(out)
}

/// The key of a `key = value` line, if it is one.
fn key_of(line: &str) -> Option<&str> {
    let trimmed = line.trim();
    if trimmed.starts_with('#') || trimmed.starts_with('[') {
        return None;
    }
    trimmed.split_once('=').map(|(key, _)| key.trim())
}

/// The string value of a `key = "value"` line.
fn quoted_value(line: &str) -> Option<String> {
    let (_, value) = line.split_once('=')?;
    let value = value.trim();
    let value = value.strip_prefix('"')?;
    Some(value.split('"').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(seed: char) -> String {
        std::iter::repeat_n(seed, 64).collect()
    }

    fn table() -> ChecksumTable {
        let mut text = String::from("---\n");
        for (name, versions) in [
            ("kubelet_checksums", &["1.36.4", "1.36.3"][..]),
            ("kubeadm_checksums", &["1.36.4", "1.36.3"][..]),
            ("kubectl_checksums", &["1.36.4", "1.36.3"][..]),
            ("containerd_archive_checksums", &["2.3.4", "2.3.1"][..]),
            ("runc_checksums", &["1.4.3"][..]),
            ("crictl_checksums", &["1.36.0"][..]),
            ("cni_binary_checksums", &["1.9.1"][..]),
        ] {
            text.push_str(&format!("{name}:\n"));
            for (arch, seed) in [("arm64", 'b'), ("amd64", 'a'), ("ppc64le", 'c')] {
                text.push_str(&format!("  {arch}:\n"));
                for version in versions {
                    text.push_str(&format!("    {version}: sha256:{}\n", digest(seed)));
                }
            }
        }
        text.push_str("runc_checksums_unused:\n  arm:\n    1.0.0: 0\n    '1.0.1': sha512:abc\n");
        ChecksumTable::parse(&text).unwrap()
    }

    const SPEC: &str = "# Kubernetes v1.36.3\n[image]\nname = \"x-k8s-v1.36.3\"\ndescription = \"containerd 2.3.1\"\n\n[kubernetes]\nversion = \"1.36.3\"\nsource = \"binaries\"\n\n[kubernetes.sha256.amd64]\nkubelet = \"old\"\n\n[containerd]\nversion = \"2.3.1\"\nsha256 = { amd64 = \"old\" }\n\n[runc]\nversion = \"1.4.3\"\n\n[crictl]\nversion = \"1.36.0\"\n\n[cni]\nversion = \"1.9.1\"\n";

    #[test]
    fn newest_patch_moves_versions_names_and_pins() {
        let updated = update_spec(SPEC, &table(), true).unwrap();
        let (a, b) = (digest('a'), digest('b'));
        assert_eq!(
            updated,
            format!(
                "# Kubernetes v1.36.4\n[image]\nname = \"x-k8s-v1.36.4\"\ndescription = \"containerd 2.3.4\"\n\n[kubernetes]\nversion = \"1.36.4\"\nsha256.amd64 = {{ kubeadm = \"{a}\", kubectl = \"{a}\", kubelet = \"{a}\" }}\nsha256.arm64 = {{ kubeadm = \"{b}\", kubectl = \"{b}\", kubelet = \"{b}\" }}\nsource = \"binaries\"\n\n[containerd]\nversion = \"2.3.4\"\nsha256 = {{ amd64 = \"{a}\", arm64 = \"{b}\" }}\n\n[runc]\nversion = \"1.4.3\"\nsha256 = {{ amd64 = \"{a}\", arm64 = \"{b}\" }}\n\n[crictl]\nversion = \"1.36.0\"\nsha256 = {{ amd64 = \"{a}\", arm64 = \"{b}\" }}\n\n[cni]\nversion = \"1.9.1\"\nsha256 = {{ amd64 = \"{a}\", arm64 = \"{b}\" }}\n"
            )
        );
        // A second run changes nothing.
        assert_eq!(update_spec(&updated, &table(), true).unwrap(), updated);
    }

    #[test]
    fn a_version_missing_from_the_table_is_named_and_nothing_changes() {
        let spec = SPEC.replace("version = \"1.4.3\"", "version = \"1.3.0\"");
        let error = update_spec(&spec, &table(), false).unwrap_err().to_string();
        assert!(error.contains("runc_checksums amd64 1.3.0"), "{error}");
        assert!(error.contains("runc_checksums arm64 1.3.0"), "{error}");
    }
}
