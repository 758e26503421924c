//! User data for a node's first boot, checked as cloud-init will read it before a disk is made for
//! it: `#cloud-config` followed by a YAML mapping (optionally behind the `## template: jinja` line
//! the kubeadm bootstrap provider puts first), or a script starting with `#!`.

use std::path::Path;

/// The most a user data file may hold: Hetzner Cloud takes 32 KiB; a NoCloud seed takes more,
/// but a bootstrap bigger than this is a mistake.
pub const USER_DATA_LIMIT: u64 = 1 << 20;

/// What kind of user data it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserDataKind {
    /// `#cloud-config`: a YAML mapping of cloud-init modules.
    CloudConfig,
    /// A script cloud-init runs once, late in first boot.
    Script,
}

/// User data that cloud-init can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserData {
    /// The text, as given.
    pub text: String,
    /// What it is.
    pub kind: UserDataKind,
}

/// The `## template: jinja` line cloud-init renders a template after.
const JINJA_HEADER: &str = "## template: jinja";

impl UserData {
    /// Reads and checks the user data file at `path`; the error names the file and what is wrong.
    pub fn read(path: &Path) -> Result<UserData, String> {
        let bytes = caph_rootfs::input::read_regular(path, USER_DATA_LIMIT)
            .map_err(|error| format!("--user-data {}: {error}", path.display()))?;
        UserData::check(&bytes)
            .map_err(|problem| format!("--user-data {}: {problem}", path.display()))
    }

    /// Checks user data.
    pub fn check(bytes: &[u8]) -> Result<UserData, String> {
        let text = std::str::from_utf8(bytes).map_err(|error| {
            format!("not UTF-8 text (byte {} is not): cloud-init reads user data as text; gzip-compressed user data is not taken here", error.valid_up_to())
        })?;
        // The header line (the second one, after a template's), and where the YAML starts.
        let mut lines = text.split_inclusive('\n');
        let header_line = lines.next().unwrap_or_default();
        let mut body_start = header_line.len();
        let mut first = header_line.trim_end();
        let templated = first.trim() == JINJA_HEADER;
        if templated {
            let second = lines.next().unwrap_or_default();
            body_start += second.len();
            first = second.trim_end();
        }
        if first.starts_with("#!") {
            return Ok(UserData {
                text: text.to_string(),
                kind: UserDataKind::Script,
            });
        }
        if first != "#cloud-config" {
            let what = if first.is_empty() {
                "it is empty or starts with an empty line".to_string()
            } else if first.starts_with("Content-Type:") || first.starts_with("MIME-Version:") {
                "it is MIME multi-part user data".to_string()
            } else if first.starts_with("#include")
                || first.starts_with("#cloud-boothook")
                || first.starts_with("#part-handler")
            {
                format!(
                    "it is a {} part",
                    first.split_whitespace().next().unwrap_or(first)
                )
            } else {
                format!(
                    "its first line is \"{}\"",
                    caph_core::text::Escaped(&first.chars().take(60).collect::<String>())
                )
            };
            return Err(format!(
                "not cloud-config: {what}; user data must start with #cloud-config (then a YAML mapping) or be a script starting with #!{}",
                if templated {
                    " (after ## template: jinja)"
                } else {
                    ""
                }
            ));
        }
        let body = &text[body_start..];
        match yaml_rust2::YamlLoader::load_from_str(body) {
            Ok(documents) => match documents.first() {
                None | Some(yaml_rust2::Yaml::Hash(_)) | Some(yaml_rust2::Yaml::Null) => {
                    Ok(UserData {
                        text: text.to_string(),
                        kind: UserDataKind::CloudConfig,
                    })
                }
                Some(other) => Err(format!(
                    "#cloud-config, but its YAML is {} instead of a mapping of cloud-init modules (such as `runcmd:` and `write_files:`)",
                    yaml_kind(other)
                )),
            },
            // A template's YAML holds Jinja blocks cloud-init renders first: only what cloud-init
            // renders can be checked, and first boot will.
            Err(_) if templated && (body.contains("{%") || body.contains("{{")) => Ok(UserData {
                text: text.to_string(),
                kind: UserDataKind::CloudConfig,
            }),
            Err(error) => {
                let marker = error.marker();
                Err(format!(
                    "#cloud-config, but not YAML: {} at line {}, column {}",
                    error.info(),
                    // The header line(s) come before the body.
                    marker.line() + if templated { 2 } else { 1 },
                    marker.col() + 1
                ))
            }
        }
    }
}

fn yaml_kind(yaml: &yaml_rust2::Yaml) -> &'static str {
    match yaml {
        yaml_rust2::Yaml::Array(_) => "a list",
        yaml_rust2::Yaml::String(_) => "a string",
        yaml_rust2::Yaml::Integer(_) | yaml_rust2::Yaml::Real(_) => "a number",
        yaml_rust2::Yaml::Boolean(_) => "a boolean",
        _ => "not a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<UserDataKind, String> {
        UserData::check(text.as_bytes()).map(|data| data.kind)
    }

    #[test]
    fn cloud_config_scripts_and_templates_are_taken() {
        assert_eq!(
            check("#cloud-config\nruncmd:\n  - echo hi\n"),
            Ok(UserDataKind::CloudConfig)
        );
        assert_eq!(check("#cloud-config\n"), Ok(UserDataKind::CloudConfig));
        assert_eq!(check("#!/bin/sh\necho hi\n"), Ok(UserDataKind::Script));
        assert_eq!(
            check(
                "## template: jinja\n#cloud-config\nwrite_files:\n  - path: /x\n    content: '{{ ds.meta_data.local_hostname }}'\n"
            ),
            Ok(UserDataKind::CloudConfig)
        );
        assert_eq!(
            check(&caph_core::firstboot::probe_user_data("")),
            Ok(UserDataKind::CloudConfig)
        );
    }

    #[test]
    fn what_is_not_cloud_config_is_named() {
        let refused = |text: &str| check(text).expect_err(text);
        assert!(refused("runcmd:\n  - echo hi\n").contains("its first line is \"runcmd:\""));
        assert!(refused("").contains("empty"));
        assert!(refused("Content-Type: multipart/mixed\n").contains("MIME multi-part"));
        assert!(refused("#include\nhttp://x\n").contains("#include part"));
        assert!(refused("#cloud-config\n- a\n- b\n").contains("a list instead of a mapping"));
        let broken = refused("#cloud-config\nruncmd:\n  - [unclosed\n");
        assert!(
            broken.contains("not YAML") && broken.contains("line 4"),
            "{broken}"
        );
        assert!(
            UserData::check(&[0xff, 0xfe])
                .unwrap_err()
                .contains("not UTF-8")
        );
    }
}
