//! Parsing and validating a spec: TOML text in, [`ImageSpec`] or every problem out.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use toml::de::DeTable;

use super::compat::{self, Components};
use super::layout::{DiskLayout, LogicalVolume, Partition, Size, validate_layout};
use super::reader::{At, Reader, Section};
use super::{
    Artifact, Base, DEFAULT_LOCATIONS, Distribution, FileSpec, Hcloud, Identity, ImageSpec,
    Kubernetes, KubernetesSource, Robot, RootfsBase, ScriptSpec, System,
};
use crate::arch::Arch;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::label;
use crate::releases::{self, Date};
use crate::text;
use crate::version::Version;

/// Reads the files a spec references (scripts, file contents, base tarballs), relative to the spec's directory.
///
/// The caller decides what that means (the CLI reads the file system; tests use a map), which
/// keeps this crate free of I/O.
pub trait SpecFiles {
    /// The bytes of `relative_path`, or a short reason it cannot be read (`no such file`).
    fn read(&self, relative_path: &str) -> Result<Vec<u8>, String>;

    /// Whether `relative_path` could be read, without reading it (a base tarball is large and
    /// read later, by the build). By default, by reading it.
    fn check(&self, relative_path: &str) -> Result<(), String> {
        self.read(relative_path).map(|_| ())
    }
}

/// Labels the tool sets itself; a spec may not set them in `image.labels`.
pub const RESERVED_LABELS: &[&str] = &[
    "caph-image-name",
    "caph-image-build",
    "kubernetes-version",
    "containerd-version",
    "os",
    "os-version",
    "architecture",
    "build-id",
    "built-by",
    "spec-sha256",
    "build-server-type",
    "build-location",
];

const DEFAULT_APT_URL: &str = "https://pkgs.k8s.io/core:/stable:";
const DEFAULT_BINARIES_URL: &str = "https://dl.k8s.io/release";
const DEFAULT_CONTAINERD_URL: &str = "https://github.com/containerd/containerd/releases/download";
const DEFAULT_RUNC_URL: &str = "https://github.com/opencontainers/runc/releases/download";
const DEFAULT_CRICTL_URL: &str = "https://github.com/kubernetes-sigs/cri-tools/releases/download";
const DEFAULT_CNI_URL: &str = "https://github.com/containernetworking/plugins/releases/download";
/// The Kubernetes components the binaries source downloads.
pub const KUBERNETES_COMPONENTS: &[&str] = &["kubeadm", "kubectl", "kubelet"];
/// Codenames the tool knows, so specs need not repeat them.
const KNOWN_CODENAMES: &[(&str, &str, &str)] = &[
    ("ubuntu", "20.04", "focal"),
    ("ubuntu", "22.04", "jammy"),
    ("ubuntu", "24.04", "noble"),
    ("debian", "11", "bullseye"),
    ("debian", "12", "bookworm"),
    ("debian", "13", "trixie"),
];
/// Words installimage looks for, in this order, in the lower-cased file name to decide the distribution.
const INSTALLIMAGE_DISTRO_WORDS: &[&str] =
    &["suse", "centos", "ubuntu", "arch", "rocky", "alma", "rhel"];

/// Parses and validates the spec `file` (named as the user named it) with content `bytes`.
///
/// Every rule but the end-of-life dates applies; [`load_as_of`] adds those for a given day.
pub fn load(file: &str, bytes: &[u8], files: &dyn SpecFiles) -> Result<ImageSpec, Diagnostics> {
    load_checked(file, bytes, files, None)
}

/// [`load`], plus warnings for Kubernetes and containerd releases past their end of life on
/// `today` (the caller reads the clock; this crate does no I/O).
pub fn load_as_of(
    file: &str,
    bytes: &[u8],
    files: &dyn SpecFiles,
    today: Date,
) -> Result<ImageSpec, Diagnostics> {
    load_checked(file, bytes, files, Some(today))
}

fn load_checked(
    file: &str,
    bytes: &[u8],
    files: &dyn SpecFiles,
    today: Option<Date>,
) -> Result<ImageSpec, Diagnostics> {
    let source = match std::str::from_utf8(bytes) {
        Ok(source) => source,
        Err(error) => {
            let valid = &bytes[..error.valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            let column = valid.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            return Err(Diagnostics(vec![Diagnostic {
                file: file.to_string(),
                line,
                column,
                field: String::new(),
                message: "the file is not valid UTF-8".to_string(),
                help: Some("save it as UTF-8".to_string()),
            }]));
        }
    };
    let mut reader = Reader::new(file, source);
    let document = match DeTable::parse(source) {
        Ok(document) => document,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            let message = format!(
                "TOML syntax error: {}",
                error.message().trim_end_matches('\n')
            );
            reader.error(&span, "", message, None);
            return Err(Diagnostics(reader.diagnostics));
        }
    };
    let root = Section {
        field: String::new(),
        table: document.get_ref(),
        span: 0..0,
    };
    let mut loader = Loader {
        reader,
        files,
        digest: Sha256::new(),
        today,
    };
    loader.digest.update(bytes);
    let spec = loader.spec(file, &root);
    super::line_values::check(&mut loader.reader, &root);
    let mut diagnostics = loader.reader.diagnostics;
    if diagnostics.is_empty()
        && let Some(mut spec) = spec
    {
        let mut warnings = loader.reader.warnings;
        warnings.sort_by_key(|d| (d.line, d.column));
        spec.warnings = warnings;
        return Ok(spec);
    }
    // Report in source order, so the list reads top to bottom like the file.
    diagnostics.sort_by_key(|d| (d.line, d.column));
    Err(Diagnostics(diagnostics))
}

struct Loader<'s, 'f> {
    reader: Reader<'s>,
    files: &'f dyn SpecFiles,
    digest: Sha256,
    today: Option<Date>,
}

impl Loader<'_, '_> {
    fn spec(&mut self, file: &str, root: &Section<'_, '_>) -> Option<ImageSpec> {
        self.reader.check_keys(
            root,
            &[
                "image",
                "base",
                "kubernetes",
                "containerd",
                "runc",
                "crictl",
                "cni",
                "system",
                "hcloud",
                "robot",
            ],
        );
        let image = self.image(root);
        // The default flavor needs the Kubernetes version; peek at it quietly, so problems are
        // still reported in the order of the sections below.
        let peeked_version = root
            .table
            .get("kubernetes")
            .and_then(|k| {
                k.get_ref()
                    .as_table()?
                    .get("version")?
                    .get_ref()
                    .as_str()
                    .map(str::to_string)
            })
            .and_then(|text| Version::parse(&text).ok());
        let base = self.base(root, peeked_version);
        let kubernetes = self.kubernetes(root);
        let containerd = self.artifact(
            root,
            "containerd",
            DEFAULT_CONTAINERD_URL,
            "\"2.3.4\"",
            &["sandbox_image"],
        );
        if let Some(containerd) = &containerd
            && !matches!(
                (containerd.version.major, containerd.version.minor),
                (1, 6) | (1, 7) | (2, _)
            )
        {
            let section = root.table.get("containerd").map_or(0..0, |v| v.span());
            self.reader.error(
                &section,
                "containerd.version",
                format!("{} is not supported", containerd.version),
                Some("use containerd 1.6, 1.7 or 2.x".to_string()),
            );
        }
        let runc = self.artifact(root, "runc", DEFAULT_RUNC_URL, "\"1.4.3\"", &[]);
        let crictl = self.artifact(root, "crictl", DEFAULT_CRICTL_URL, "\"1.36.0\"", &[]);
        let cni = self.cni(root, kubernetes.as_ref());
        let sandbox_image = self.sandbox_image(root, kubernetes.as_ref());
        compat::check(
            &mut self.reader,
            root,
            Components {
                kubernetes: kubernetes.as_ref().map(|k| k.version),
                containerd: containerd.as_ref().map(|c| c.version),
                runc: runc.as_ref().map(|r| r.version),
                crictl: crictl.as_ref().map(|c| c.version),
            },
            self.today,
        );
        let system = self.system(root);
        let hcloud = self.hcloud(root, base.as_ref());
        let robot = self.robot(root);
        let digest = hex::encode(std::mem::take(&mut self.digest).finalize());
        Some(ImageSpec {
            file: file.to_string(),
            digest,
            image: image?,
            base: base?,
            kubernetes: kubernetes?,
            containerd: containerd?,
            runc: runc?,
            crictl: crictl?,
            cni: cni?,
            sandbox_image: sandbox_image?,
            system: system?,
            hcloud: hcloud?,
            robot: robot?,
            warnings: Vec::new(),
        })
    }

    /// `[cni]`: the CNI plugins' release, needed where Kubernetes comes from release binaries
    /// (the apt packages bring them as kubernetes-cni).
    fn cni(
        &mut self,
        root: &Section<'_, '_>,
        kubernetes: Option<&Kubernetes>,
    ) -> Option<Option<Artifact>> {
        let from_binaries = match kubernetes.map(|k| &k.source) {
            Some(KubernetesSource::Binaries { .. }) => true,
            Some(KubernetesSource::Apt { .. }) => false,
            // The Kubernetes section has problems of its own; read [cni] for its own.
            None => root.table.contains_key("cni"),
        };
        if !from_binaries {
            if let Some(section) = root.table.get("cni") {
                self.reader.error(
                    &section.span(),
                    "cni",
                    "only applies to kubernetes.source = \"binaries\": the apt packages bring the CNI plugins (kubernetes-cni)",
                    Some("remove [cni], or set source = \"binaries\" in [kubernetes]".to_string()),
                );
                return None;
            }
            return Some(None);
        }
        if !root.table.contains_key("cni") {
            self.reader.error(
                &root.table.get("kubernetes").map_or(0..0, |k| k.span()),
                "cni",
                "is missing: Kubernetes from release binaries needs the CNI plugins in /opt/cni/bin",
                Some("add `[cni]` with `version = \"1.9.1\"` (and its sha256 pins)".to_string()),
            );
            return None;
        }
        self.artifact(root, "cni", DEFAULT_CNI_URL, "\"1.9.1\"", &[])
            .map(Some)
    }

    /// The pause image for containerd's CRI: `containerd.sandbox_image`, or the one kubeadm uses
    /// for the spec's Kubernetes release.
    fn sandbox_image(
        &mut self,
        root: &Section<'_, '_>,
        kubernetes: Option<&Kubernetes>,
    ) -> Option<String> {
        let containerd = root.table.get("containerd").and_then(|value| {
            value
                .get_ref()
                .as_table()
                .map(|table| (table, value.span()))
        });
        if let Some((table, span)) = containerd {
            let section = Section {
                field: "containerd".to_string(),
                table,
                span,
            };
            if let Some(image) = self.reader.string(&section, "sandbox_image") {
                let valid = !image.value.is_empty()
                    && image.value.contains(':')
                    && image.value.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':' | '@')
                    });
                if !valid {
                    self.reader.error(
                        &image.span,
                        "containerd.sandbox_image",
                        format!("\"{}\" is not an image reference with a tag", image.value),
                        Some("write it as \"registry.k8s.io/pause:3.10.1\"".to_string()),
                    );
                    return None;
                }
                return Some(image.value);
            }
        }
        let version = kubernetes?.version;
        match releases::pause_image(version) {
            Some(image) => Some(image),
            None => {
                let span = root
                    .table
                    .get("kubernetes")
                    .and_then(|k| k.get_ref().as_table()?.get("version").map(|v| v.span()))
                    .unwrap_or(0..0);
                self.reader.error(
                    &span,
                    "kubernetes.version",
                    format!(
                        "{version}: no pause image is known for Kubernetes {} (source: {})",
                        version.minor_series(),
                        releases::PAUSE_SOURCE
                    ),
                    Some("add `sandbox_image = \"registry.k8s.io/pause:<tag>\"` to [containerd], with the tag `kubeadm config images list` shows".to_string()),
                );
                None
            }
        }
    }

    fn image(&mut self, root: &Section<'_, '_>) -> Option<Identity> {
        let section = self.reader.section(root, "image", true)?;
        self.reader
            .check_keys(&section, &["name", "description", "labels"]);
        let name = self
            .reader
            .required_string(&section, "name", "\"ubuntu-24.04-k8s-v1.36.0\"");
        let name_ok = name.as_ref().is_some_and(|name| {
            let result = if name.value.is_empty() {
                Err("it is empty".to_string())
            } else {
                label::check_value(&name.value)
            };
            self.label_value_result(name, &section.field_of("name"), result)
        });
        let description = self.reader.string(&section, "description").map(|d| d.value);
        let mut labels = BTreeMap::new();
        let mut labels_ok = true;
        for (key, value) in self.reader.string_map(&section, "labels") {
            let field = format!("{}.labels.{}", section.field, key.value);
            if let Err(why) = label::check_key(&key.value) {
                self.reader.error(
                    &key.span,
                    &field,
                    format!("\"{}\" is not a valid label key: {why}", key.value),
                    Some("use [A-Za-z0-9._-] with an optional example.com/ prefix".to_string()),
                );
                labels_ok = false;
            } else if RESERVED_LABELS.contains(&key.value.as_str()) {
                self.reader.error(
                    &key.span,
                    &field,
                    "is set by caph-image itself",
                    Some("choose another key".to_string()),
                );
                labels_ok = false;
            }
            labels_ok &= self.label_value_result(&value, &field, label::check_value(&value.value));
            labels.insert(key.value, value.value);
        }
        let name = name?;
        (name_ok && labels_ok).then_some(Identity {
            name: name.value,
            description,
            labels,
        })
    }

    fn label_value_result(
        &mut self,
        value: &At<String>,
        field: &str,
        result: Result<(), String>,
    ) -> bool {
        match result {
            Ok(()) => true,
            Err(why) => {
                let help = Some("use [A-Za-z0-9._-], at most 63 characters, starting and ending with a letter or digit".to_string());
                self.reader.error(
                    &value.span,
                    field,
                    format!("\"{}\" is not a valid label value: {why}", value.value),
                    help,
                );
                false
            }
        }
    }

    fn base(
        &mut self,
        root: &Section<'_, '_>,
        kubernetes_version: Option<Version>,
    ) -> Option<Base> {
        let section = self.reader.section(root, "base", true)?;
        self.reader.check_keys(
            &section,
            &[
                "distribution",
                "version",
                "codename",
                "flavor",
                "hcloud",
                "rootfs",
            ],
        );
        let distribution = self
            .reader
            .required_string(&section, "distribution", "\"ubuntu\"")
            .and_then(|d| match d.value.as_str() {
                "ubuntu" => Some(Distribution::Ubuntu),
                "debian" => Some(Distribution::Debian),
                other => {
                    self.reader.error(
                        &d.span,
                        "base.distribution",
                        format!("\"{other}\" is not supported"),
                        Some("use \"ubuntu\" or \"debian\"".to_string()),
                    );
                    None
                }
            });
        let version = self
            .reader
            .required_string(&section, "version", "\"24.04\"")
            .and_then(|v| {
                let well_formed = !v.value.is_empty()
                    && v.value.split('.').count() <= 2
                    && v.value.split('.').all(|part| {
                        !part.is_empty()
                            && part.len() <= 2
                            && part.chars().all(|c| c.is_ascii_digit())
                    });
                if well_formed {
                    Some(v.value)
                } else {
                    self.reader.error(
                        &v.span,
                        "base.version",
                        format!("\"{}\" is not a distribution version", v.value),
                        Some("use the release number, such as \"24.04\" or \"12\"".to_string()),
                    );
                    None
                }
            });
        let codename = match self.reader.string(&section, "codename") {
            Some(codename) if is_lower_word(&codename.value) => Some(codename.value),
            Some(codename) => {
                self.reader.error(
                    &codename.span,
                    "base.codename",
                    format!("\"{}\" is not a codename", codename.value),
                    Some("use lower-case letters, such as \"noble\"".to_string()),
                );
                None
            }
            None => {
                match (distribution, &version) {
                    (Some(distribution), Some(version)) => {
                        let known = KNOWN_CODENAMES
                            .iter()
                            .find(|(d, v, _)| *d == distribution.name() && v == version);
                        if known.is_none() {
                            self.reader.error(&section.span, "base.codename", format!("is missing, and {} {version} is not a release caph-image knows", distribution.name()), Some("add `codename = \"...\"` to [base]".to_string()));
                        }
                        known.map(|(_, _, codename)| codename.to_string())
                    }
                    _ => None,
                }
            }
        };
        let flavor = match self.reader.string(&section, "flavor") {
            Some(flavor) => Some(flavor),
            None => kubernetes_version.map(|v| At {
                value: format!("k8s-v{v}"),
                span: section.span.clone(),
            }),
        };
        let mut hcloud_images = BTreeMap::new();
        if let Some(images) = self.reader.section(&section, "hcloud", false) {
            self.reader.check_keys(&images, &["x86", "arm"]);
            for arch in Arch::ALL {
                if let Some(image) = self.reader.string(&images, arch.hcloud_name()) {
                    if image.value.is_empty() || image.value.contains(char::is_whitespace) {
                        self.reader.error(
                            &image.span,
                            &images.field_of(arch.hcloud_name()),
                            format!("\"{}\" is not an image name", image.value),
                            Some(
                                "use a Hetzner Cloud image name such as \"ubuntu-24.04\""
                                    .to_string(),
                            ),
                        );
                    } else {
                        hcloud_images.insert(arch, image.value);
                    }
                }
            }
        }
        let rootfs = self.rootfs(&section, distribution);
        let codename = codename?;
        // Without [base.rootfs], a tarball starts from mmdebstrap of the release's own suite, so
        // what validates also builds.
        let rootfs = rootfs?.or_else(|| {
            Some(RootfsBase::Mmdebstrap {
                suite: codename.clone(),
                mirror: None,
                variant: "minbase".to_string(),
                components: default_components(distribution?),
            })
        });
        let base = Base {
            distribution: distribution?,
            version: version?,
            codename,
            flavor: String::new(),
            hcloud_images,
            rootfs,
        };
        let flavor = flavor?;
        let flavor_ok = self.check_flavor(&flavor, &base);
        flavor_ok.then_some(Base {
            flavor: flavor.value,
            ..base
        })
    }

    /// The flavor ends up in the installimage file name, which installimage reads to find the distribution.
    fn check_flavor(&mut self, flavor: &At<String>, base: &Base) -> bool {
        if flavor.value.is_empty()
            || !flavor
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            self.reader.error(
                &flavor.span,
                "base.flavor",
                format!(
                    "\"{}\" cannot be part of an installimage file name",
                    flavor.value
                ),
                Some("use [A-Za-z0-9._-]".to_string()),
            );
            return false;
        }
        let stem = base.installimage_stem(Arch::X86).to_ascii_lowercase();
        let detected = INSTALLIMAGE_DISTRO_WORDS
            .iter()
            .find(|word| stem.contains(*word))
            .copied()
            .unwrap_or("debian");
        if detected != base.distribution.name() {
            self.reader.error(
                &flavor.span,
                "base.flavor",
                format!(
                    "\"{}\" makes installimage read the file name as {detected}, not {}",
                    flavor.value,
                    base.distribution.name()
                ),
                Some(format!("remove \"{detected}\" from the flavor")),
            );
            return false;
        }
        true
    }

    fn rootfs(
        &mut self,
        base: &Section<'_, '_>,
        distribution: Option<Distribution>,
    ) -> Option<Option<RootfsBase>> {
        let Some(section) = self.reader.section(base, "rootfs", false) else {
            return Some(None);
        };
        self.reader.check_keys(
            &section,
            &[
                "suite",
                "mirror",
                "variant",
                "components",
                "tarball",
                "sha256",
            ],
        );
        let tarball = self.reader.string(&section, "tarball");
        let sha256 = self.reader.string(&section, "sha256");
        let suite = self.reader.string(&section, "suite");
        let mirror = self.reader.string(&section, "mirror");
        let variant = self.reader.string(&section, "variant");
        let components = self.reader.string_list(&section, "components");
        if let Some(tarball) = tarball {
            self.reader.disallow(
                &section,
                &["suite", "mirror", "variant"],
                "cannot be combined with tarball",
                "use either an mmdebstrap base (suite, mirror, variant) or a tarball",
            );
            let Some(sha256) = sha256 else {
                self.reader.error(
                    &tarball.span,
                    "base.rootfs.sha256",
                    "is missing: a base tarball must be pinned",
                    Some("add `sha256 = \"<64 hex digits>\"` to [base.rootfs]".to_string()),
                );
                return None;
            };
            let sha_ok = self.check_sha256(&sha256, "base.rootfs.sha256");
            let location_ok =
                if tarball.value.starts_with("http://") || tarball.value.starts_with("https://") {
                    true
                } else {
                    self.reference_exists(&tarball, "base.rootfs.tarball")
                };
            return (sha_ok && location_ok).then_some(Some(RootfsBase::Tarball {
                location: tarball.value,
                sha256: sha256.value,
            }));
        }
        if let Some(sha256) = &sha256 {
            self.reader.error(
                &sha256.span,
                "base.rootfs.sha256",
                "only applies to a tarball",
                Some("remove it, or add `tarball = ...`".to_string()),
            );
        }
        let suite = match suite {
            Some(suite) if is_lower_word(&suite.value) => Some(suite.value),
            Some(suite) => {
                self.reader.error(
                    &suite.span,
                    "base.rootfs.suite",
                    format!("\"{}\" is not a suite name", suite.value),
                    Some("use a codename such as \"bookworm\"".to_string()),
                );
                None
            }
            None => {
                self.reader.error(
                    &section.span,
                    "base.rootfs.suite",
                    "is missing",
                    Some(
                        "add `suite = \"bookworm\"` (or `tarball` and `sha256`) to [base.rootfs]"
                            .to_string(),
                    ),
                );
                None
            }
        };
        if let Some(mirror) = &mirror {
            self.check_url(mirror, "base.rootfs.mirror");
        }
        const VARIANTS: &[&str] = &[
            "extract",
            "custom",
            "essential",
            "apt",
            "required",
            "minbase",
            "buildd",
            "important",
            "debootstrap",
            "standard",
        ];
        let variant = match variant {
            Some(variant) if VARIANTS.contains(&variant.value.as_str()) => variant.value,
            Some(variant) => {
                self.reader.error(
                    &variant.span,
                    "base.rootfs.variant",
                    format!("\"{}\" is not an mmdebstrap variant", variant.value),
                    Some(format!("use one of {}", VARIANTS.join(", "))),
                );
                return None;
            }
            None => "minbase".to_string(),
        };
        let components = components.map_or(default_components(distribution?), |list| {
            list.into_iter().map(|c| c.value).collect()
        });
        Some(Some(RootfsBase::Mmdebstrap {
            suite: suite?,
            mirror: mirror.map(|m| m.value.trim_end_matches('/').to_string()),
            variant,
            components,
        }))
    }

    fn kubernetes(&mut self, root: &Section<'_, '_>) -> Option<Kubernetes> {
        let section = self.reader.section(root, "kubernetes", true)?;
        self.reader.check_keys(
            &section,
            &[
                "version",
                "source",
                "apt_url",
                "apt_key_sha256",
                "binaries_url",
                "sha256",
                "prepull_images",
            ],
        );
        let version = self.version(&section, "\"1.36.0\"");
        let source = self.reader.string(&section, "source").unwrap_or(At {
            value: "apt".to_string(),
            span: section.span.clone(),
        });
        let apt_url = self.optional_url(&section, "apt_url");
        let binaries_url = self.optional_url(&section, "binaries_url");
        let key_sha256 = self.reader.string(&section, "apt_key_sha256");
        let key_ok = key_sha256
            .as_ref()
            .is_none_or(|sha| self.check_sha256(sha, "kubernetes.apt_key_sha256"));
        let prepull_images = self
            .reader
            .bool(&section, "prepull_images")
            .is_some_and(|flag| flag.value);
        let pins = self.component_pins(&section);
        let source = match source.value.as_str() {
            "apt" => {
                self.reader.disallow(
                    &section,
                    &["binaries_url", "sha256"],
                    "only applies to source = \"binaries\"",
                    "remove it, or set source = \"binaries\"",
                );
                let version = version?;
                let base = apt_url.map_or(DEFAULT_APT_URL.to_string(), |url| url.value);
                let repository = format!("{base}/v{}/deb/", version.minor_series());
                key_ok.then(|| KubernetesSource::Apt {
                    key_url: format!("{repository}Release.key"),
                    repository,
                    key_sha256: key_sha256.map(|k| k.value),
                })
            }
            "binaries" => {
                self.reader.disallow(
                    &section,
                    &["apt_url", "apt_key_sha256"],
                    "only applies to source = \"apt\"",
                    "remove it, or set source = \"apt\"",
                );
                Some(KubernetesSource::Binaries {
                    base_url: binaries_url
                        .map_or(DEFAULT_BINARIES_URL.to_string(), |url| url.value),
                    sha256: pins?,
                })
            }
            other => {
                self.reader.error(
                    &source.span,
                    "kubernetes.source",
                    format!("\"{other}\" is not a source"),
                    Some(
                        "use \"apt\" (pkgs.k8s.io) or \"binaries\" (release downloads)".to_string(),
                    ),
                );
                None
            }
        };
        Some(Kubernetes {
            version: version?,
            source: source?,
            prepull_images,
        })
    }

    /// `[kubernetes.sha256.amd64] kubelet = "..."`: pins per architecture and component.
    fn component_pins(
        &mut self,
        section: &Section<'_, '_>,
    ) -> Option<BTreeMap<Arch, BTreeMap<String, String>>> {
        let mut pins = BTreeMap::new();
        let Some(table) = self.reader.section(section, "sha256", false) else {
            return Some(pins);
        };
        self.reader.check_keys(&table, &["amd64", "arm64"]);
        let mut ok = true;
        for arch in Arch::ALL {
            let Some(per_arch) = self.reader.section(&table, arch.debian_name(), false) else {
                continue;
            };
            self.reader.check_keys(&per_arch, KUBERNETES_COMPONENTS);
            let mut components = BTreeMap::new();
            for component in KUBERNETES_COMPONENTS {
                if let Some(sha) = self.reader.string(&per_arch, component) {
                    ok &= self.check_sha256(&sha, &per_arch.field_of(component));
                    components.insert(component.to_string(), sha.value);
                }
            }
            pins.insert(arch, components);
        }
        ok.then_some(pins)
    }

    fn artifact(
        &mut self,
        root: &Section<'_, '_>,
        name: &str,
        default_url: &str,
        example: &str,
        extra_keys: &[&str],
    ) -> Option<Artifact> {
        let section = self.reader.section(root, name, true)?;
        let mut keys = vec!["version", "url", "sha256"];
        keys.extend_from_slice(extra_keys);
        self.reader.check_keys(&section, &keys);
        let version = self.version(&section, example);
        let base_url = self
            .optional_url(&section, "url")
            .map_or(default_url.to_string(), |url| url.value);
        let mut sha256 = BTreeMap::new();
        let mut ok = true;
        if let Some(pins) = self.reader.section(&section, "sha256", false) {
            self.reader.check_keys(&pins, &["amd64", "arm64"]);
            for arch in Arch::ALL {
                if let Some(sha) = self.reader.string(&pins, arch.debian_name()) {
                    ok &= self.check_sha256(&sha, &pins.field_of(arch.debian_name()));
                    sha256.insert(arch, sha.value);
                }
            }
        }
        (ok).then_some(Artifact {
            version: version?,
            base_url,
            sha256,
        })
    }

    fn version(&mut self, section: &Section<'_, '_>, example: &str) -> Option<Version> {
        let text = self.reader.required_string(section, "version", example)?;
        match Version::parse(&text.value) {
            Ok(version) => Some(version),
            Err(why) => {
                let help = if text.value.starts_with('v') {
                    format!("write \"{}\"", &text.value[1..])
                } else {
                    format!("write an exact release such as {example}")
                };
                self.reader.error(
                    &text.span,
                    &section.field_of("version"),
                    format!("\"{}\" {why}", text.value),
                    Some(help),
                );
                None
            }
        }
    }

    fn system(&mut self, root: &Section<'_, '_>) -> Option<System> {
        let Some(section) = self.reader.section(root, "system", false) else {
            return Some(System {
                packages: Vec::new(),
                kernel_modules: Vec::new(),
                sysctls: BTreeMap::new(),
                disable_swap: true,
                automatic_upgrades: false,
                files: Vec::new(),
                scripts: Vec::new(),
            });
        };
        self.reader.check_keys(
            &section,
            &[
                "packages",
                "kernel_modules",
                "sysctls",
                "disable_swap",
                "automatic_upgrades",
                "files",
                "scripts",
            ],
        );
        let mut ok = true;
        let mut packages = Vec::new();
        for (index, package) in self
            .reader
            .string_list(&section, "packages")
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            if is_package_name(&package.value) {
                packages.push(package.value);
            } else {
                ok = false;
                self.reader.error(
                    &package.span,
                    &format!("system.packages[{index}]"),
                    format!("\"{}\" is not a package name", package.value),
                    Some("use a Debian package name, optionally with =VERSION".to_string()),
                );
            }
        }
        let mut kernel_modules = Vec::new();
        for (index, module) in self
            .reader
            .string_list(&section, "kernel_modules")
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            if !module.value.is_empty()
                && module
                    .value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                kernel_modules.push(module.value);
            } else {
                ok = false;
                self.reader.error(
                    &module.span,
                    &format!("system.kernel_modules[{index}]"),
                    format!("\"{}\" is not a kernel module name", module.value),
                    Some("use letters, digits, _ and -".to_string()),
                );
            }
        }
        let mut sysctls = BTreeMap::new();
        for (key, value) in self.reader.string_map(&section, "sysctls") {
            let field = format!("system.sysctls.{}", key.value);
            if key.value.is_empty()
                || !key
                    .value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
            {
                ok = false;
                self.reader.error(
                    &key.span,
                    &field,
                    format!("\"{}\" is not a sysctl name", key.value),
                    Some("use a dotted name such as \"vm.max_map_count\"".to_string()),
                );
            } else if value.value.contains(['\n', '\r']) || value.value.trim().is_empty() {
                ok = false;
                self.reader
                    .error(&value.span, &field, "must be a non-empty single line", None);
            } else {
                sysctls.insert(key.value, value.value);
            }
        }
        let disable_swap = self
            .reader
            .bool(&section, "disable_swap")
            .is_none_or(|flag| flag.value);
        let automatic_upgrades = self
            .reader
            .bool(&section, "automatic_upgrades")
            .is_some_and(|flag| flag.value);
        let files = self.files(&section);
        let scripts = self.scripts(&section);
        (ok).then_some(System {
            packages,
            kernel_modules,
            sysctls,
            disable_swap,
            automatic_upgrades,
            files: files?,
            scripts: scripts?,
        })
    }

    fn files(&mut self, system: &Section<'_, '_>) -> Option<Vec<FileSpec>> {
        let mut files: Vec<FileSpec> = Vec::new();
        // The paths placed so far, for a linear duplicate check.
        let mut placed = std::collections::HashSet::new();
        let mut ok = true;
        for entry in self.reader.table_array(system, "files") {
            self.reader
                .check_keys(&entry, &["path", "mode", "owner", "content", "source"]);
            let path = self
                .reader
                .required_string(&entry, "path", "\"/etc/example.conf\"");
            let path = path.filter(|path| {
                let valid = path.value.starts_with('/')
                    && path.value.len() > 1
                    && !path.value.ends_with('/')
                    && !path.value.split('/').any(|part| part == "..")
                    && text::check_line(&path.value).is_ok();
                if !valid {
                    self.reader.error(
                        &path.span,
                        &entry.field_of("path"),
                        format!("\"{}\" is not an absolute file path", path.value),
                        Some("use a path such as \"/etc/example.conf\"".to_string()),
                    );
                } else if text::normal_path(&path.value) != path.value {
                    // Two spellings of one path would place one file over the other unnoticed.
                    self.reader.error(
                        &path.span,
                        &entry.field_of("path"),
                        format!("\"{}\" is not in normal form", path.value),
                        Some(format!("write \"{}\"", text::normal_path(&path.value))),
                    );
                    return false;
                } else if !placed.insert(path.value.clone()) {
                    self.reader.error(
                        &path.span,
                        &entry.field_of("path"),
                        format!("\"{}\" is already placed by an earlier entry", path.value),
                        Some("merge the two entries".to_string()),
                    );
                    return false;
                }
                valid
            });
            let mode = match self.reader.string(&entry, "mode") {
                None => Some(0o644),
                Some(mode) => match u32::from_str_radix(&mode.value, 8) {
                    Ok(bits) if bits <= 0o7777 && !mode.value.is_empty() => Some(bits),
                    _ => {
                        self.reader.error(
                            &mode.span,
                            &entry.field_of("mode"),
                            format!("\"{}\" is not an octal mode", mode.value),
                            Some("write it as a string such as \"0644\"".to_string()),
                        );
                        None
                    }
                },
            };
            let owner = match self.reader.string(&entry, "owner") {
                None => Some("root:root".to_string()),
                Some(owner) => {
                    let valid = owner
                        .value
                        .split_once(':')
                        .is_some_and(|(user, group)| is_owner_part(user) && is_owner_part(group));
                    if !valid {
                        self.reader.error(
                            &owner.span,
                            &entry.field_of("owner"),
                            format!("\"{}\" is not user:group", owner.value),
                            Some("write it as \"root:root\" or \"1000:1000\"".to_string()),
                        );
                    }
                    valid.then_some(owner.value)
                }
            };
            let inline = self.reader.string(&entry, "content");
            let source = self.reader.string(&entry, "source");
            let content = match (inline, source) {
                (Some(_), Some(source)) => {
                    self.reader.error(
                        &source.span,
                        &entry.field_of("source"),
                        "cannot be combined with content",
                        Some("keep one of content and source".to_string()),
                    );
                    None
                }
                (Some(inline), None) => Some(inline.value.into_bytes()),
                (None, Some(source)) => {
                    self.reference_file(&source, &entry.field_of("source"), true)
                }
                (None, None) => {
                    self.reader.error(
                        &entry.span,
                        &entry.field_of("content"),
                        "is missing",
                        Some(
                            "add `content = \"...\"`, or `source = \"file beside the spec\"`"
                                .to_string(),
                        ),
                    );
                    None
                }
            };
            match (path, mode, owner, content) {
                (Some(path), Some(mode), Some(owner), Some(content)) => files.push(FileSpec {
                    path: path.value,
                    mode,
                    owner,
                    content,
                }),
                _ => ok = false,
            }
        }
        ok.then_some(files)
    }

    fn scripts(&mut self, system: &Section<'_, '_>) -> Option<Vec<ScriptSpec>> {
        let mut scripts = Vec::new();
        let mut ok = true;
        for entry in self.reader.table_array(system, "scripts") {
            self.reader.check_keys(&entry, &["path"]);
            let Some(path) =
                self.reader
                    .required_string(&entry, "path", "\"scripts/10-example.sh\"")
            else {
                ok = false;
                continue;
            };
            match self.reference_file(&path, &entry.field_of("path"), true) {
                Some(bytes) => match String::from_utf8(bytes) {
                    Ok(content) => scripts.push(ScriptSpec {
                        path: path.value,
                        content,
                    }),
                    Err(_) => {
                        ok = false;
                        self.reader.error(
                            &path.span,
                            &entry.field_of("path"),
                            format!("\"{}\" is not a UTF-8 text file", path.value),
                            Some("save the script as UTF-8".to_string()),
                        );
                    }
                },
                None => ok = false,
            }
        }
        ok.then_some(scripts)
    }

    /// Whether `path` is relative and stays below the spec's directory as written (where it
    /// resolves to is the [`SpecFiles`]' rule).
    fn relative_path_ok(&mut self, path: &At<String>, field: &str) -> bool {
        if path.value.is_empty()
            || path.value.starts_with('/')
            || path.value.split('/').any(|part| part == "..")
        {
            self.reader.error(
                &path.span,
                field,
                format!(
                    "\"{}\" must be a relative path inside the spec's directory",
                    path.value
                ),
                Some("put the file beside the spec and name it relative to it".to_string()),
            );
            return false;
        }
        true
    }

    /// Checks that a file beside the spec can be read, without reading it.
    fn reference_exists(&mut self, path: &At<String>, field: &str) -> bool {
        if !self.relative_path_ok(path, field) {
            return false;
        }
        match self.files.check(&path.value) {
            Ok(()) => true,
            Err(why) => {
                self.reader.error(
                    &path.span,
                    field,
                    format!("\"{}\" cannot be read: {why}", path.value),
                    Some("create it beside the spec, or fix the path".to_string()),
                );
                false
            }
        }
    }

    /// Reads a file beside the spec; with `into_digest` its content becomes part of the spec digest.
    fn reference_file(
        &mut self,
        path: &At<String>,
        field: &str,
        into_digest: bool,
    ) -> Option<Vec<u8>> {
        if !self.relative_path_ok(path, field) {
            return None;
        }
        match self.files.read(&path.value) {
            Ok(bytes) => {
                if into_digest {
                    self.digest.update(path.value.as_bytes());
                    self.digest.update((bytes.len() as u64).to_le_bytes());
                    self.digest.update(&bytes);
                }
                Some(bytes)
            }
            Err(why) => {
                self.reader.error(
                    &path.span,
                    field,
                    format!("\"{}\" cannot be read: {why}", path.value),
                    Some("create it beside the spec, or fix the path".to_string()),
                );
                None
            }
        }
    }

    fn hcloud(&mut self, root: &Section<'_, '_>, base: Option<&Base>) -> Option<Option<Hcloud>> {
        let Some(section) = self.reader.section(root, "hcloud", false) else {
            return Some(None);
        };
        self.reader.check_keys(
            &section,
            &[
                "architectures",
                "locations",
                "location",
                "server_types",
                "server_type",
            ],
        );
        let mut ok = true;
        let mut architectures = Vec::new();
        let list = self
            .reader
            .string_list(&section, "architectures")
            .unwrap_or_else(|| {
                vec![
                    At {
                        value: "x86".to_string(),
                        span: section.span.clone(),
                    },
                    At {
                        value: "arm".to_string(),
                        span: section.span.clone(),
                    },
                ]
            });
        if list.is_empty() {
            ok = false;
            let span = section
                .table
                .get("architectures")
                .map_or(section.span.clone(), |v| v.span());
            self.reader.error(
                &span,
                "hcloud.architectures",
                "is empty",
                Some("list \"x86\", \"arm\" or both".to_string()),
            );
        }
        for (index, name) in list.iter().enumerate() {
            let field = format!("hcloud.architectures[{index}]");
            match name.value.as_str() {
                "x86" | "arm" => {
                    let arch = Arch::parse(&name.value).unwrap_or(Arch::X86);
                    if architectures.contains(&arch) {
                        ok = false;
                        self.reader.error(
                            &name.span,
                            &field,
                            format!("\"{}\" is listed twice", name.value),
                            None,
                        );
                    } else {
                        architectures.push(arch);
                    }
                }
                other => {
                    ok = false;
                    let help = match other {
                        "amd64" | "x86_64" => "Hetzner Cloud calls it \"x86\"",
                        "arm64" | "aarch64" => "Hetzner Cloud calls it \"arm\"",
                        _ => "use \"x86\" or \"arm\"",
                    };
                    self.reader.error(
                        &name.span,
                        &field,
                        format!("\"{other}\" is not a Hetzner Cloud architecture"),
                        Some(help.to_string()),
                    );
                }
            }
        }
        let locations = self.hcloud_locations(&section);
        let server_types = self.hcloud_server_types(&section);
        for (index, arch) in architectures.iter().enumerate() {
            let span = list
                .get(index)
                .map_or(section.span.clone(), |name| name.span.clone());
            if let Some(base) = base
                && !base.hcloud_images.contains_key(arch)
            {
                ok = false;
                self.reader.error(&span, &format!("hcloud.architectures[{index}]"), format!("\"{arch}\" is requested, but base.hcloud.{arch} names no image for it"), Some(format!("add `{arch} = \"ubuntu-24.04\"` (or the right image) to [base.hcloud], or remove \"{arch}\"")));
            }
            if server_types
                .as_ref()
                .is_some_and(|types| !types.contains_key(arch))
            {
                ok = false;
                let example = if *arch == Arch::X86 { "cx23" } else { "cax11" };
                self.reader.error(&span, &format!("hcloud.server_types.{arch}"), format!("is missing for the requested architecture \"{arch}\""), Some(format!("add `{arch} = [\"{example}\"]` to [hcloud.server_types]: the smallest type the image will run on first, then any fallbacks")));
            }
        }
        let (Some(locations), Some(server_types)) = (locations, server_types) else {
            return None;
        };
        ok.then_some(Some(Hcloud {
            architectures,
            locations,
            server_types,
        }))
    }

    /// `locations` (an ordered list), or the older `location` (one name), or the default; `None`
    /// after a diagnostic.
    fn hcloud_locations(&mut self, section: &Section<'_, '_>) -> Option<Vec<String>> {
        let single = self.reader.string(section, "location");
        let list = self.reader.string_list(section, "locations");
        let names = match (single, list) {
            (Some(single), Some(_)) => {
                self.reader.error(
                    &single.span,
                    "hcloud.location",
                    "is given beside hcloud.locations",
                    Some("keep one: `locations = [\"fsn1\", \"nbg1\"]` lists locations in order of preference".to_string()),
                );
                return None;
            }
            (Some(single), None) => vec![single],
            (None, Some(list)) => {
                if list.is_empty() {
                    let span = section
                        .table
                        .get("locations")
                        .map_or(section.span.clone(), |value| value.span());
                    self.reader.error(
                        &span,
                        "hcloud.locations",
                        "is empty",
                        Some(
                            "list at least one location, such as [\"fsn1\", \"nbg1\"]".to_string(),
                        ),
                    );
                    return None;
                }
                list
            }
            (None, None) => {
                return Some(
                    DEFAULT_LOCATIONS
                        .iter()
                        .map(|name| name.to_string())
                        .collect(),
                );
            }
        };
        let field = |index: usize| {
            if section.table.contains_key("locations") {
                format!("hcloud.locations[{index}]")
            } else {
                "hcloud.location".to_string()
            }
        };
        self.preference_list(
            &names,
            field,
            |name| is_lower_word(&name.replace(|c: char| c.is_ascii_digit(), "")),
            "is not a location name",
            "use a name such as \"fsn1\", \"nbg1\", \"hel1\", \"ash\", \"hil\" or \"sin\"",
        )
    }

    /// `[hcloud.server_types]` (an ordered list per architecture) and the older
    /// `[hcloud.server_type]` (one type per architecture), merged; `None` after a diagnostic.
    fn hcloud_server_types(
        &mut self,
        section: &Section<'_, '_>,
    ) -> Option<BTreeMap<Arch, Vec<String>>> {
        let mut ok = true;
        let mut server_types = BTreeMap::new();
        let single = self.reader.section(section, "server_type", false);
        let lists = self.reader.section(section, "server_types", false);
        for table in single.iter().chain(lists.iter()) {
            self.reader.check_keys(table, &["x86", "arm"]);
        }
        for arch in Arch::ALL {
            let key = arch.hcloud_name();
            let one = single
                .as_ref()
                .and_then(|table| self.reader.string(table, key));
            let many = lists
                .as_ref()
                .and_then(|table| self.reader.string_list(table, key));
            let names = match (one, many) {
                (Some(one), Some(_)) => {
                    ok = false;
                    self.reader.error(
                        &one.span,
                        &format!("hcloud.server_type.{arch}"),
                        format!("is given beside hcloud.server_types.{arch}"),
                        Some(format!("keep one: `{arch} = [\"...\"]` in [hcloud.server_types] lists types in order of preference")),
                    );
                    continue;
                }
                (Some(one), None) => vec![one],
                (None, Some(list)) if list.is_empty() => {
                    ok = false;
                    let span = lists
                        .as_ref()
                        .and_then(|table| table.table.get(key))
                        .map_or(section.span.clone(), |value| value.span());
                    self.reader.error(
                        &span,
                        &format!("hcloud.server_types.{arch}"),
                        "is empty",
                        Some("list the smallest type the image will run on first, then any fallbacks".to_string()),
                    );
                    continue;
                }
                (None, Some(list)) => list,
                (None, None) => {
                    // Present but of the wrong type: already reported, and not "missing".
                    let present = single
                        .iter()
                        .chain(lists.iter())
                        .any(|table| table.table.contains_key(key));
                    ok &= !present;
                    continue;
                }
            };
            let from_list = lists
                .as_ref()
                .is_some_and(|table| table.table.contains_key(key));
            let field = |index: usize| {
                if from_list {
                    format!("hcloud.server_types.{arch}[{index}]")
                } else {
                    format!("hcloud.server_type.{arch}")
                }
            };
            match self.preference_list(
                &names,
                field,
                |name| {
                    name.starts_with(|c: char| c.is_ascii_lowercase())
                        && name
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                },
                "is not a server type name",
                "use a name such as \"cx23\" or \"cax11\", as `hcloud server-type list` shows them",
            ) {
                Some(names) => {
                    server_types.insert(arch, names);
                }
                None => ok = false,
            }
        }
        ok.then_some(server_types)
    }

    /// Checks an ordered list of names: each must pass `valid`, none may appear twice.
    fn preference_list(
        &mut self,
        names: &[At<String>],
        field: impl Fn(usize) -> String,
        valid: impl Fn(&str) -> bool,
        invalid: &str,
        help: &str,
    ) -> Option<Vec<String>> {
        let mut ok = true;
        let mut seen: Vec<&str> = Vec::new();
        for (index, name) in names.iter().enumerate() {
            if text::check_field(&name.value).is_err() {
                // `line_values` reports it, with the rule it breaks.
                ok = false;
            } else if !valid(&name.value) {
                ok = false;
                self.reader.error(
                    &name.span,
                    &field(index),
                    format!("\"{}\" {invalid}", text::Escaped(&name.value)),
                    Some(help.to_string()),
                );
            } else if seen.contains(&name.value.as_str()) {
                ok = false;
                self.reader.error(
                    &name.span,
                    &field(index),
                    format!("\"{}\" is listed twice", name.value),
                    Some("list each once, in order of preference".to_string()),
                );
            } else {
                seen.push(&name.value);
            }
        }
        ok.then(|| names.iter().map(|name| name.value.clone()).collect())
    }

    fn robot(&mut self, root: &Section<'_, '_>) -> Option<Option<Robot>> {
        let Some(section) = self.reader.section(root, "robot", false) else {
            return Some(None);
        };
        self.reader.check_keys(&section, &["hostname", "disk"]);
        let hostname = self.reader.required_string(&section, "hostname", "\"k8s-{server_number}\"").filter(|hostname| {
            let example = hostname.value.replace("{server_number}", "1234567");
            let valid = example.len() <= 63 && !example.is_empty() && example.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') && !example.starts_with('-') && !example.ends_with('-');
            if !valid {
                self.reader.error(&hostname.span, "robot.hostname", format!("\"{}\" does not give a valid hostname", hostname.value), Some("use letters, digits and -, with {server_number} where the server's number goes".to_string()));
            }
            valid
        });
        let disk = self.disk(&section);
        Some(Some(Robot {
            hostname: hostname?.value,
            disk: disk?,
        }))
    }

    fn disk(&mut self, robot: &Section<'_, '_>) -> Option<DiskLayout> {
        let section = self.reader.section(robot, "disk", true)?;
        self.reader.check_keys(
            &section,
            &["drives", "raid_level", "uefi", "partitions", "volumes"],
        );
        let mut spans: BTreeMap<String, std::ops::Range<usize>> = BTreeMap::new();
        let mut ok = true;
        let drives = self
            .reader
            .string_list(&section, "drives")
            .unwrap_or_else(|| {
                ok = false;
                self.reader.error(
                    &section.span,
                    "robot.disk.drives",
                    "is missing",
                    Some("add `drives = [\"/dev/sda\"]` to [robot.disk]".to_string()),
                );
                Vec::new()
            });
        for (index, drive) in drives.iter().enumerate() {
            spans.insert(format!("drives[{index}]"), drive.span.clone());
        }
        spans.insert(
            "drives".into(),
            section
                .table
                .get("drives")
                .map_or(section.span.clone(), |v| v.span()),
        );
        let raid_level = self.reader.integer(&section, "raid_level").map(|level| {
            spans.insert("raid_level".into(), level.span);
            u8::try_from(level.value).unwrap_or(u8::MAX)
        });
        let uefi = self
            .reader
            .bool(&section, "uefi")
            .is_some_and(|flag| flag.value);
        spans.insert(
            "partitions".into(),
            section
                .table
                .get("partitions")
                .map_or(section.span.clone(), |v| v.span()),
        );
        let mut partitions = Vec::new();
        for (index, entry) in self
            .reader
            .table_array(&section, "partitions")
            .into_iter()
            .enumerate()
        {
            self.reader
                .check_keys(&entry, &["mount", "filesystem", "volume_group", "size"]);
            let mount = self.reader.required_string(&entry, "mount", "\"/\"");
            let size = self.size(&entry, &mut spans, &format!("partitions[{index}]"));
            let is_lvm = mount.as_ref().is_some_and(|m| m.value == "lvm");
            let filesystem = if is_lvm {
                if let Some(fs) = self.reader.string(&entry, "filesystem") {
                    self.reader.error(
                        &fs.span,
                        &entry.field_of("filesystem"),
                        "does not apply to an lvm partition",
                        Some("name the group with volume_group instead".to_string()),
                    );
                }
                self.reader
                    .required_string(&entry, "volume_group", "\"vg0\"")
            } else {
                if let Some(group) = self.reader.string(&entry, "volume_group") {
                    self.reader.error(
                        &group.span,
                        &entry.field_of("volume_group"),
                        "only applies to mount = \"lvm\"",
                        Some("remove it, or set mount = \"lvm\"".to_string()),
                    );
                }
                self.reader
                    .required_string(&entry, "filesystem", "\"ext4\"")
            };
            for (key, at) in [
                ("mount", &mount),
                (
                    if is_lvm { "volume_group" } else { "filesystem" },
                    &filesystem,
                ),
            ] {
                if let Some(at) = at {
                    spans.insert(format!("partitions[{index}].{key}"), at.span.clone());
                }
            }
            match (mount, filesystem, size) {
                (Some(mount), Some(filesystem), Some(size)) => partitions.push(Partition {
                    mount: mount.value,
                    filesystem: filesystem.value,
                    size,
                    crypt: false,
                }),
                _ => ok = false,
            }
        }
        let mut volumes = Vec::new();
        for (index, entry) in self
            .reader
            .table_array(&section, "volumes")
            .into_iter()
            .enumerate()
        {
            self.reader
                .check_keys(&entry, &["vg", "name", "mount", "filesystem", "size"]);
            let vg = self.reader.required_string(&entry, "vg", "\"vg0\"");
            let name = self.reader.required_string(&entry, "name", "\"root\"");
            let mount = self.reader.required_string(&entry, "mount", "\"/\"");
            let filesystem = self
                .reader
                .required_string(&entry, "filesystem", "\"ext4\"");
            let size = self.size(&entry, &mut spans, &format!("volumes[{index}]"));
            for (key, at) in [
                ("vg", &vg),
                ("name", &name),
                ("mount", &mount),
                ("filesystem", &filesystem),
            ] {
                if let Some(at) = at {
                    spans.insert(format!("volumes[{index}].{key}"), at.span.clone());
                }
            }
            match (vg, name, mount, filesystem, size) {
                (Some(vg), Some(name), Some(mount), Some(filesystem), Some(size)) => {
                    volumes.push(LogicalVolume {
                        vg: vg.value,
                        name: name.value,
                        mount: mount.value,
                        filesystem: filesystem.value,
                        size,
                    })
                }
                _ => ok = false,
            }
        }
        let layout = DiskLayout {
            drives: drives.into_iter().map(|d| d.value).collect(),
            raid_level,
            uefi,
            partitions,
            volumes,
            crypt_password: None,
        };
        if !ok {
            return None;
        }
        let problems = validate_layout(&layout);
        for problem in &problems {
            let span = spans
                .get(&problem.field)
                .cloned()
                .unwrap_or(section.span.clone());
            self.reader.error(
                &span,
                &format!("robot.disk.{}", problem.field),
                problem.message.clone(),
                problem.help.clone(),
            );
        }
        problems.is_empty().then_some(layout)
    }

    fn size(
        &mut self,
        entry: &Section<'_, '_>,
        spans: &mut BTreeMap<String, std::ops::Range<usize>>,
        prefix: &str,
    ) -> Option<Size> {
        let text = self.reader.required_string(entry, "size", "\"10G\"")?;
        spans.insert(format!("{prefix}.size"), text.span.clone());
        match Size::parse(&text.value) {
            Ok(size) => Some(size),
            Err(why) => {
                self.reader.error(
                    &text.span,
                    &entry.field_of("size"),
                    format!("\"{}\" {why}", text.value),
                    None,
                );
                None
            }
        }
    }

    fn optional_url(&mut self, section: &Section<'_, '_>, key: &str) -> Option<At<String>> {
        let url = self.reader.string(section, key)?;
        self.check_url(&url, &section.field_of(key)).then(|| At {
            value: url.value.trim_end_matches('/').to_string(),
            span: url.span,
        })
    }

    fn check_url(&mut self, url: &At<String>, field: &str) -> bool {
        let rest = url
            .value
            .strip_prefix("https://")
            .or_else(|| url.value.strip_prefix("http://"));
        let valid = rest.is_some_and(|rest| {
            !rest.is_empty()
                && !rest.starts_with('/')
                && !rest.contains(|c: char| {
                    c.is_whitespace() || c.is_control() || c == '"' || c == '\''
                })
        });
        if !valid {
            self.reader.error(
                &url.span,
                field,
                format!("\"{}\" is not an http(s) URL", url.value),
                Some("write a URL such as \"https://mirror.example.com/path\"".to_string()),
            );
        }
        valid
    }

    fn check_sha256(&mut self, sha: &At<String>, field: &str) -> bool {
        let valid = sha.value.len() == 64
            && sha
                .value
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if !valid {
            self.reader.error(
                &sha.span,
                field,
                format!("\"{}\" is not a sha256 digest", sha.value),
                Some("write 64 lower-case hex digits, as sha256sum prints them".to_string()),
            );
        }
        valid
    }
}

/// Archive components mmdebstrap uses when the spec names none.
fn default_components(distribution: Distribution) -> Vec<String> {
    match distribution {
        Distribution::Ubuntu => vec!["main".to_string(), "universe".to_string()],
        Distribution::Debian => vec!["main".to_string()],
    }
}

fn is_lower_word(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_lowercase())
}

fn is_owner_part(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Debian package names (`[a-z0-9][a-z0-9+.-]+`), optionally with `=VERSION`.
fn is_package_name(text: &str) -> bool {
    let (name, version) = match text.split_once('=') {
        Some((name, version)) => (name, Some(version)),
        None => (text, None),
    };
    let name_ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '-'));
    let version_ok = version.is_none_or(|v| {
        !v.is_empty()
            && v.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '~' | ':' | '*')
            })
    });
    name_ok && version_ok
}
