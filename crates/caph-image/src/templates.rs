//! The Cluster API Provider Hetzner (CAPH) machine templates that `build hcloud`, `build
//! tarball`, `build robot` and `pack` print: an `HCloudMachineTemplate` per snapshot and a
//! `HetznerBareMetalMachineTemplate` per tarball, ready for `kubectl apply` once the marked
//! placeholders are replaced.
//!
//! What CAPH does with them, read from its source (syself/cluster-api-provider-hetzner at
//! 1c4fe745f3bf5b22b94d4dddd6c4b3b98f6770fc):
//! - `installImage.image` is `{name, url}` or `{path}`; with a url, the suffix of the *whole URL
//!   string* must be one of `.tar`, `.tar.gz`, `.tar.bz`, `.tar.bz2`, `.tar.xz`, `.tgz`, `.tbz`,
//!   `.txz` (`GetImageSuffix`, also checked by its webhook), and the download is saved as
//!   `/root/<name>.<suffix>` (`Image.GetDetails`) by `curl -sLo ""<path>"" ""<url>""` run in the
//!   rescue system (`DownloadImage`): both words reach the shell unquoted, so the name and URL
//!   hold no character the shell would act on;
//! - installimage picks the decompression from that file's extension, and for `.tar` passes none:
//!   GNU tar and bsdtar then recognise gzip, xz, bzip2 and zstd by their contents. A `.tar.zst`,
//!   which CAPH does not take, is therefore given as `<url>#.tar`: the fragment satisfies CAPH's
//!   suffix check, curl never sends it, and installimage's tar reads the zstd stream as it is;
//! - `sshSpec.secretRef` names the Secret with the SSH key the controller logs in with after
//!   installimage; CAPH's own templates use port 22 and the keys `sshkey-name`, `ssh-publickey`,
//!   `ssh-privatekey`.
//!
//! Values go into the YAML through [`yaml_scalar`], so that no image or server-type name can
//! turn into a number, a boolean or a second line; `metadata.name` is a DNS-1123 label whatever
//! the name it comes from ([`dns_label`]).

use std::borrow::Cow;

use caph_core::Arch;
use caph_core::spec::DiskLayout;
use caph_rootfs::naming::{ImageName, PROVIDER_URL_EXTENSIONS};

/// The API version both templates use, as CAPH's own cluster templates do (also CAPH's storage
/// version; its CRDs serve v1beta2 as well, with the same fields for what we print).
pub const API_VERSION: &str = "infrastructure.cluster.x-k8s.io/v1beta1";

/// What the user replaces in the bare-metal template's URL.
pub const URL_PLACEHOLDER: &str = "https://images.example.com/REPLACE-WITH-WHERE-YOU-SERVE-IT";

/// The Secret with the SSH key CAPH logs in to the installed node with; the user creates it and
/// puts its name here. Upper case on purpose: no Secret can have this name, so a template
/// applied unedited fails visibly instead of finding some other Secret.
pub const SSH_SECRET_PLACEHOLDER: &str = "REPLACE-WITH-YOUR-SSH-KEY-SECRET";

/// `sshSpec.portAfterInstallImage` in CAPH's own templates (and its CRD's default).
const SSH_PORT_AFTER_INSTALL_IMAGE: u16 = 22;

/// The keys of the SSH Secret's data, as CAPH's own templates name them.
const SSH_SECRET_KEYS: [(&str, &str); 3] = [
    ("name", "sshkey-name"),
    ("publicKey", "ssh-publickey"),
    ("privateKey", "ssh-privatekey"),
];

/// The longest DNS-1123 label, which `metadata.name` is kept to.
const DNS_LABEL_MAX: usize = 63;

/// `metadata.name` when nothing of the name it is made from is left.
const FALLBACK_NAME: &str = "caph-image";

/// The fragment that gives a URL CAPH would refuse the `.tar` suffix it needs.
const TAR_FRAGMENT: &str = "#.tar";

/// The longest `installImage.image.name`: CAPH stores the download as `/root/<name>.<suffix>`,
/// and a file name has at most 255 bytes.
const IMAGE_NAME_MAX: usize = 240;

/// The `HCloudMachineTemplate` for a snapshot CAPH finds by `imageName`, on `server_type`.
pub fn hcloud_machine_template(image_name: &str, arch: Arch, server_type: &str) -> String {
    let metadata_name = dns_label(image_name, &format!("-{}", arch.hcloud_name()));
    format!(
        "apiVersion: {API_VERSION}\n\
         kind: HCloudMachineTemplate\n\
         metadata:\n  name: {}\n\
         spec:\n  template:\n    spec:\n      imageName: {}\n      type: {}\n",
        yaml_scalar(&metadata_name),
        yaml_scalar(image_name),
        yaml_scalar(server_type)
    )
}

/// What a `HetznerBareMetalMachineTemplate` is made from.
#[derive(Debug, Clone, Copy)]
pub struct BareMetalTemplate<'a> {
    /// The tarball's file name, as it is served.
    pub file_name: &'a str,
    /// The spec's image name, for `metadata.name` (without a spec: the file name's stem).
    pub name: Option<&'a str>,
    /// The architecture, for `metadata.name`.
    pub arch: Option<Arch>,
    /// The disk layout (a spec's `[robot.disk]`, or the one a robot build used).
    pub layout: Option<&'a DiskLayout>,
    /// Keep swap partitions and volumes: only where the spec turns `disable_swap` off, so
    /// the node's kubelet is set up for swap.
    pub keep_swap: bool,
}

/// The `HetznerBareMetalMachineTemplate` that installs a tarball: always by URL (see the module
/// documentation for `.tar.zst`), with the SSH Secret and the URL's prefix as placeholders.
pub fn bare_metal_machine_template(template: &BareMetalTemplate<'_>) -> String {
    let stem = tarball_stem(template.file_name);
    let metadata_name = match (template.name, template.arch) {
        (Some(name), Some(arch)) => dns_label(name, &format!("-{}", arch.debian_name())),
        (Some(name), None) => dns_label(name, ""),
        (None, _) => dns_label(stem, ""),
    };
    let image_name = image_name(stem);
    let mut image = String::from("        image:\n");
    if ImageName::parse(&format!("{image_name}.tar")).is_err() {
        image.push_str(
            "          # installimage reads the distribution, version and architecture from this name:\n\
             \x20         # without the form <Distro>-<NNNN>-<codename>-<amd64|arm64>-<flavor>, it takes the image for Debian.\n",
        );
    }
    let url = image_url(template.file_name);
    if url.ends_with(TAR_FRAGMENT) {
        image.push_str(
            "          # CAPH wants a URL ending in .tar, .tar.gz, .tgz, ... (not .tar.zst): with #.tar it saves the\n\
             \x20         # download as <name>.tar (curl never sends the fragment), and installimage's tar finds the compression.\n",
        );
    }
    image.push_str(&format!(
        "          name: {}\n          url: {}\n",
        yaml_scalar(&image_name),
        yaml_scalar(&url)
    ));
    let ssh_keys: String = SSH_SECRET_KEYS
        .iter()
        .map(|(field, key)| format!("            {field}: {key}\n"))
        .collect();
    format!(
        "apiVersion: {API_VERSION}\n\
         kind: HetznerBareMetalMachineTemplate\n\
         metadata:\n  name: {}\n\
         spec:\n  template:\n    spec:\n      installImage:\n{image}{}\
         \x20     sshSpec:\n\
         \x20       portAfterInstallImage: {SSH_PORT_AFTER_INSTALL_IMAGE}\n\
         \x20       secretRef:\n\
         \x20         # The Secret with the SSH key CAPH logs in to the installed node with (README: \"Dedicated servers\").\n\
         \x20         name: {SSH_SECRET_PLACEHOLDER}\n\
         \x20         key:\n{ssh_keys}",
        yaml_scalar(&metadata_name),
        disk_fields(template.layout, template.keep_swap)
    )
}

/// The file name without its tar extension (any installimage knows).
fn tarball_stem(file_name: &str) -> &str {
    caph_rootfs::naming::INSTALLIMAGE_EXTENSIONS
        .iter()
        .filter_map(|extension| {
            file_name
                .strip_suffix(extension)
                .and_then(|rest| rest.strip_suffix('.'))
        })
        .find(|stem| !stem.is_empty())
        .unwrap_or(file_name)
}

/// `installImage.image.name`: the stem with every character outside `[A-Za-z0-9._-]` made a
/// `-` (CAPH pastes it unquoted into a shell command), starting and ending with a letter or digit.
fn image_name(stem: &str) -> String {
    let replaced: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut name = replaced
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if name.len() > IMAGE_NAME_MAX {
        name.truncate(IMAGE_NAME_MAX);
        name = name
            .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_string();
    }
    if name.is_empty() {
        FALLBACK_NAME.to_string()
    } else {
        name
    }
}

/// The URL under the placeholder: the file name percent-encoded outside the unreserved
/// characters, plus `#.tar` where CAPH would refuse the name's own suffix.
fn image_url(file_name: &str) -> String {
    let mut url = format!("{URL_PLACEHOLDER}/");
    for byte in file_name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            url.push(char::from(byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    if !provider_suffix_accepted(&url) {
        url.push_str(TAR_FRAGMENT);
    }
    url
}

/// CAPH's `GetImageSuffix` on a whole URL: it must end in `.` plus an accepted suffix.
fn provider_suffix_accepted(url: &str) -> bool {
    PROVIDER_URL_EXTENSIONS
        .iter()
        .any(|suffix| url.ends_with(&format!(".{suffix}")))
}

/// The installImage fields that describe the disks, in CAPH's names (`swraid`, `swraidLevel`,
/// `partitions`, `logicalVolumeDefinitions`). Swap is left out unless `keep_swap`: installimage
/// would put it in the node's fstab, and kubelet does not start with swap on.
fn disk_fields(layout: Option<&DiskLayout>, keep_swap: bool) -> String {
    const INDENT: &str = "        ";
    let Some(layout) = layout else {
        return format!(
            "{INDENT}# No disk layout is known here (a spec's [robot.disk] gives one): installimage's usual one.\n\
             {INDENT}partitions:\n\
             {INDENT}  - mount: /boot\n{INDENT}    fileSystem: ext4\n{INDENT}    size: 1024M\n\
             {INDENT}  - mount: /\n{INDENT}    fileSystem: ext4\n{INDENT}    size: all\n"
        );
    };
    let is_swap = |filesystem: &str| !keep_swap && filesystem == "swap";
    let mut fields = String::new();
    if layout.partitions.iter().any(|partition| partition.crypt) {
        fields.push_str(&format!(
            "{INDENT}# The layout encrypts partitions (crypt, CRYPTPASSWORD): installImage has no field for that, so this template installs them unencrypted.\n"
        ));
    }
    if let Some(level) = layout.raid_level {
        fields.push_str(&format!(
            "{INDENT}swraid: 1\n{INDENT}swraidLevel: {level}\n"
        ));
    }
    let swap_sizes: Vec<String> = layout
        .partitions
        .iter()
        .filter(|partition| is_swap(&partition.filesystem))
        .map(|partition| partition.size.to_string())
        .chain(
            layout
                .volumes
                .iter()
                .filter(|volume| is_swap(&volume.filesystem))
                .map(|volume| volume.size.to_string()),
        )
        .collect();
    if !swap_sizes.is_empty() {
        fields.push_str(&format!(
            "{INDENT}# The layout's swap ({}) is left out: kubelet does not start with swap on, and the image turns it off.\n",
            swap_sizes.join(", ")
        ));
    }
    fields.push_str(&format!("{INDENT}partitions:\n"));
    for partition in layout
        .partitions
        .iter()
        .filter(|partition| !is_swap(&partition.filesystem))
    {
        fields.push_str(&format!(
            "{INDENT}  - mount: {}\n{INDENT}    fileSystem: {}\n{INDENT}    size: {}\n",
            yaml_scalar(&partition.mount),
            yaml_scalar(&partition.filesystem),
            yaml_scalar(&partition.size.to_string())
        ));
    }
    let volumes: Vec<_> = layout
        .volumes
        .iter()
        .filter(|volume| !is_swap(&volume.filesystem))
        .collect();
    if !volumes.is_empty() {
        fields.push_str(&format!("{INDENT}logicalVolumeDefinitions:\n"));
        for volume in volumes {
            fields.push_str(&format!(
                "{INDENT}  - vg: {}\n{INDENT}    name: {}\n{INDENT}    mount: {}\n{INDENT}    filesystem: {}\n{INDENT}    size: {}\n",
                yaml_scalar(&volume.vg),
                yaml_scalar(&volume.name),
                yaml_scalar(&volume.mount),
                yaml_scalar(&volume.filesystem),
                yaml_scalar(&volume.size.to_string())
            ));
        }
    }
    fields
}

/// A DNS-1123 label (at most 63 of `[a-z0-9-]`, a letter or digit at both ends) made of `base`
/// and `suffix` (itself made of `[a-z0-9-]`): upper case lowered, every run of other characters
/// one `-`, `base` shortened so that `suffix` always fits.
pub fn dns_label(base: &str, suffix: &str) -> String {
    let mut label = String::new();
    for c in base.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            label.push(c);
        } else if !label.is_empty() && !label.ends_with('-') {
            label.push('-');
        }
    }
    let suffix = suffix.trim_start_matches('-');
    let room = DNS_LABEL_MAX.saturating_sub(suffix.len() + usize::from(!suffix.is_empty()));
    label.truncate(room);
    let mut label = label.trim_end_matches('-').to_string();
    if label.is_empty() {
        label = FALLBACK_NAME.to_string();
        label.truncate(room);
    }
    if !suffix.is_empty() {
        label.push('-');
        label.push_str(suffix);
    }
    label
}

/// `value` as a YAML scalar that every YAML reader takes for this very string: plain where it
/// is a word that YAML 1.1 (kubectl's go-yaml) and YAML 1.2 both read as a string, else
/// double-quoted with every character outside YAML's printable set escaped.
///
/// Plain are: words of `[A-Za-z0-9._/-]` that start with a letter or `/` and are not one of
/// YAML 1.1's booleans or null (`yes`, `off`, ...), and sizes such as `1024M` (a digit other
/// than 0, digits, then letters: no YAML number has that form, and CAPH's templates write
/// sizes so). Everything else, numbers and timestamps above all, is quoted.
pub fn yaml_scalar(value: &str) -> Cow<'_, str> {
    /// Plain words that YAML 1.1 reads as booleans or null, compared in lower case.
    const NOT_STRINGS: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
    let word = value
        .chars()
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '/')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        && !NOT_STRINGS.contains(&value.to_ascii_lowercase().as_str());
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let size = value.starts_with(|c: char| ('1'..='9').contains(&c))
        && digits_end < value.len()
        && value[digits_end..].chars().all(|c| c.is_ascii_alphabetic());
    if word || size {
        return Cow::Borrowed(value);
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\t' => quoted.push_str("\\t"),
            '\n' => quoted.push_str("\\n"),
            ' '..='~' => quoted.push(c),
            // YAML's printable set beyond ASCII: NEL, then U+00A0 on, without the surrogates
            // (Rust strings have none) and U+FFFE, U+FFFF.
            '\u{a0}'..='\u{fffd}' | '\u{10000}'.. => quoted.push(c),
            c if u32::from(c) <= 0xff => quoted.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => quoted.push_str(&format!("\\u{:04x}", u32::from(c))),
        }
    }
    quoted.push('"');
    Cow::Owned(quoted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_from_hostile_names() {
        let cases = [
            (
                "debian-12-k8s-v1.34.2",
                "-amd64",
                "debian-12-k8s-v1-34-2-amd64",
            ),
            ("Ubuntu_24.04--K8S", "-x86", "ubuntu-24-04-k8s-x86"),
            ("", "-arm", "caph-image-arm"),
            ("...", "", "caph-image"),
            ("---a---", "", "a"),
            ("ÄÖÜ name ñ", "", "name"),
            ("日本語", "-x86", "caph-image-x86"),
            ("1234", "", "1234"),
        ];
        for (base, suffix, expected) in cases {
            assert_eq!(dns_label(base, suffix), expected, "{base:?} {suffix:?}");
        }
        let long = "A".repeat(300);
        let label = dns_label(&long, "-arm64");
        assert_eq!(label.len(), 63);
        assert!(label.ends_with("-arm64"), "{label}");
        // Cut where a separator was: no `-` before the suffix's own.
        let label = dns_label(&format!("{}.{}", "a".repeat(56), "b".repeat(10)), "-arm64");
        assert_eq!(label, format!("{}-arm64", "a".repeat(56)));
    }

    #[test]
    fn every_label_is_a_dns_1123_label() {
        let mut bases: Vec<String> = [
            "",
            "-",
            "a",
            "Z",
            "0",
            ".a.",
            "a_b",
            "ünïcödé",
            "\u{202e}rtl",
            "tab\there",
            "new\nline",
            "a--b",
            "9-",
        ]
        .map(String::from)
        .to_vec();
        bases.push("x".repeat(80));
        bases.push(format!("{}-{}", "y".repeat(62), "z"));
        for base in &bases {
            for suffix in ["", "-x86", "-arm64"] {
                let label = dns_label(base, suffix);
                assert!(
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-'),
                    "{base:?} {suffix:?} gave {label:?}"
                );
            }
        }
    }

    #[test]
    fn scalars_stay_strings() {
        let cases = [
            ("debian-12", "debian-12"),
            ("/boot", "/boot"),
            ("1024M", "1024M"),
            ("512MiB", "512MiB"),
            ("0x1A", "\"0x1A\""),
            ("1e5", "\"1e5\""),
            ("12:30", "\"12:30\""),
            ("2024-01-01", "\"2024-01-01\""),
            ("1234", "\"1234\""),
            ("yes", "\"yes\""),
            ("Off", "\"Off\""),
            ("null", "\"null\""),
            ("", "\"\""),
            ("a b", "\"a b\""),
            ("x: y", "\"x: y\""),
            ("#x", "\"#x\""),
            ("say \"hi\"\\", "\"say \\\"hi\\\"\\\\\""),
            ("line\nbreak", "\"line\\nbreak\""),
            ("bell\u{7}", "\"bell\\x07\""),
            ("del\u{7f}", "\"del\\x7f\""),
            ("ñ", "\"ñ\""),
            ("https://x/y", "\"https://x/y\""),
            ("a:b", "\"a:b\""),
            ("\u{2028}", "\"\u{2028}\""),
            ("\u{fffe}", "\"\\ufffe\""),
        ];
        for (value, expected) in cases {
            assert_eq!(yaml_scalar(value), expected, "{value:?}");
        }
    }

    #[test]
    fn urls_carry_a_suffix_caph_accepts() {
        let cases = [
            (
                "Debian-1200-bookworm-amd64-k8s-v1.34.2.tar.gz",
                "Debian-1200-bookworm-amd64-k8s-v1.34.2.tar.gz",
            ),
            ("node.tar", "node.tar"),
            ("node.tgz", "node.tgz"),
            ("node.tar.zst", "node.tar.zst#.tar"),
            ("node", "node#.tar"),
            ("a b&c.tar.gz", "a%20b%26c.tar.gz"),
            ("ü.tar.zst", "%C3%BC.tar.zst#.tar"),
        ];
        for (file_name, tail) in cases {
            assert_eq!(
                image_url(file_name),
                format!("{URL_PLACEHOLDER}/{tail}"),
                "{file_name}"
            );
        }
    }

    #[test]
    fn image_names_are_words_the_rescue_shell_keeps() {
        let cases = [
            (
                "Debian-1200-bookworm-amd64-k8s-v1.34.2",
                "Debian-1200-bookworm-amd64-k8s-v1.34.2",
            ),
            ("my image $(reboot)", "my-image---reboot"),
            ("-x-", "x"),
            ("日本", "caph-image"),
        ];
        for (stem, expected) in cases {
            assert_eq!(image_name(stem), expected, "{stem:?}");
        }
        assert_eq!(image_name(&"n".repeat(400)).len(), IMAGE_NAME_MAX);
        assert_eq!(tarball_stem("x.tar.zst"), "x");
        assert_eq!(tarball_stem("x.tar.bz2"), "x");
        assert_eq!(tarball_stem(".tar.gz"), ".tar.gz");
    }

    #[test]
    fn the_bare_metal_template_carries_the_layout_installimage_gets() {
        let layout = caph_robot::backend::layout_from_autosetup(include_str!(
            "../../../installimage/raid1-lvm.autosetup"
        ))
        .unwrap();
        let template = bare_metal_machine_template(&BareMetalTemplate {
            file_name: "Debian-1200-bookworm-amd64-k8s-v1.34.2.tar.gz",
            name: Some("debian-12-k8s-v1.34.2"),
            arch: Some(Arch::X86),
            layout: Some(&layout),
            keep_swap: false,
        });
        expect_test::expect![[r#"
            apiVersion: infrastructure.cluster.x-k8s.io/v1beta1
            kind: HetznerBareMetalMachineTemplate
            metadata:
              name: debian-12-k8s-v1-34-2-amd64
            spec:
              template:
                spec:
                  installImage:
                    image:
                      name: Debian-1200-bookworm-amd64-k8s-v1.34.2
                      url: "https://images.example.com/REPLACE-WITH-WHERE-YOU-SERVE-IT/Debian-1200-bookworm-amd64-k8s-v1.34.2.tar.gz"
                    swraid: 1
                    swraidLevel: 1
                    partitions:
                      - mount: /boot
                        fileSystem: ext4
                        size: 1G
                      - mount: lvm
                        fileSystem: vg0
                        size: all
                    logicalVolumeDefinitions:
                      - vg: vg0
                        name: root
                        mount: /
                        filesystem: ext4
                        size: 50G
                      - vg: vg0
                        name: var
                        mount: /var
                        filesystem: ext4
                        size: all
                  sshSpec:
                    portAfterInstallImage: 22
                    secretRef:
                      # The Secret with the SSH key CAPH logs in to the installed node with (README: "Dedicated servers").
                      name: REPLACE-WITH-YOUR-SSH-KEY-SECRET
                      key:
                        name: sshkey-name
                        publicKey: ssh-publickey
                        privateKey: ssh-privatekey
        "#]]
        .assert_eq(&template);
    }

    #[test]
    fn a_zstd_tarball_without_layout_gets_a_url_and_installimage_defaults() {
        let template = bare_metal_machine_template(&BareMetalTemplate {
            file_name: "node.tar.zst",
            name: None,
            arch: None,
            layout: None,
            keep_swap: false,
        });
        expect_test::expect![[r#"
            apiVersion: infrastructure.cluster.x-k8s.io/v1beta1
            kind: HetznerBareMetalMachineTemplate
            metadata:
              name: node
            spec:
              template:
                spec:
                  installImage:
                    image:
                      # installimage reads the distribution, version and architecture from this name:
                      # without the form <Distro>-<NNNN>-<codename>-<amd64|arm64>-<flavor>, it takes the image for Debian.
                      # CAPH wants a URL ending in .tar, .tar.gz, .tgz, ... (not .tar.zst): with #.tar it saves the
                      # download as <name>.tar (curl never sends the fragment), and installimage's tar finds the compression.
                      name: node
                      url: "https://images.example.com/REPLACE-WITH-WHERE-YOU-SERVE-IT/node.tar.zst#.tar"
                    # No disk layout is known here (a spec's [robot.disk] gives one): installimage's usual one.
                    partitions:
                      - mount: /boot
                        fileSystem: ext4
                        size: 1024M
                      - mount: /
                        fileSystem: ext4
                        size: all
                  sshSpec:
                    portAfterInstallImage: 22
                    secretRef:
                      # The Secret with the SSH key CAPH logs in to the installed node with (README: "Dedicated servers").
                      name: REPLACE-WITH-YOUR-SSH-KEY-SECRET
                      key:
                        name: sshkey-name
                        publicKey: ssh-publickey
                        privateKey: ssh-privatekey
        "#]]
        .assert_eq(&template);
    }

    #[test]
    fn swap_is_left_out_unless_the_spec_keeps_it() {
        let layout = caph_robot::backend::layout_from_autosetup(
            "DRIVE1 /dev/sda\nDRIVE2 /dev/sdb\nSWRAID 1\nSWRAIDLEVEL 1\n\
             PART /boot ext4 1G\nPART swap swap 8G\nPART lvm vg0 all\n\
             LV vg0 root / ext4 50G\nLV vg0 swap swap swap 4G\n",
        )
        .unwrap();
        let mut template = BareMetalTemplate {
            file_name: "Debian-1200-bookworm-amd64-k8s-v1.34.2.tar.gz",
            name: Some("debian-12-k8s-v1.34.2"),
            arch: Some(Arch::X86),
            layout: Some(&layout),
            keep_swap: false,
        };
        let without = bare_metal_machine_template(&template);
        assert!(!without.contains("swap\n"), "{without}");
        assert!(
            without.contains("# The layout's swap (8G, 4G) is left out"),
            "{without}"
        );
        template.keep_swap = true;
        let with = bare_metal_machine_template(&template);
        assert!(with.contains("fileSystem: swap\n"), "{with}");
        assert!(with.contains("filesystem: swap\n"), "{with}");
        assert!(!with.contains("left out"), "{with}");
    }

    /// README's examples are what the commands print for the shipped spec they name.
    #[test]
    fn the_readme_shows_the_templates_of_the_shipped_spec() {
        let readme = include_str!("../../../README.md");
        let spec = crate::spec_files::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../images/debian-12-k8s-1.36.toml"
        )))
        .unwrap();
        let server_type = &spec.hcloud.as_ref().unwrap().server_types[&Arch::X86];
        let hcloud = hcloud_machine_template(&spec.image.name, Arch::X86, &server_type[0]);
        let file_name = format!(
            "Debian-1200-bookworm-amd64-k8s-v{}.tar.gz",
            spec.kubernetes.version
        );
        let bare_metal = bare_metal_machine_template(&BareMetalTemplate {
            file_name: &file_name,
            name: Some(&spec.image.name),
            arch: Some(Arch::X86),
            layout: spec.robot.as_ref().map(|robot| &robot.disk),
            keep_swap: !spec.system.disable_swap,
        });
        for template in [hcloud, bare_metal] {
            assert!(
                readme.contains(&format!("```yaml\n{template}```\n")),
                "README.md lacks this template:\n{template}"
            );
        }
    }

    #[test]
    fn an_encrypted_layout_is_said_to_install_unencrypted() {
        let layout = caph_robot::backend::layout_from_autosetup(
            "DRIVE1 /dev/sda\nCRYPTPASSWORD secret-words\nPART /boot ext4 1G\nPART / ext4 all crypt\n",
        )
        .unwrap();
        let template = bare_metal_machine_template(&BareMetalTemplate {
            file_name: "Debian-1200-bookworm-amd64-k8s-v1.34.2.tar.gz",
            name: None,
            arch: None,
            layout: Some(&layout),
            keep_swap: false,
        });
        assert!(template.contains("installs them unencrypted"), "{template}");
        assert!(!template.contains("secret-words"), "{template}");
    }

    #[test]
    fn the_hcloud_template_quotes_what_yaml_would_not_read_as_a_string() {
        expect_test::expect![[r#"
            apiVersion: infrastructure.cluster.x-k8s.io/v1beta1
            kind: HCloudMachineTemplate
            metadata:
              name: "1-34-arm"
            spec:
              template:
                spec:
                  imageName: "1.34"
                  type: cax11
        "#]]
        .assert_eq(&hcloud_machine_template("1.34", Arch::Arm, "cax11"));
    }
}
