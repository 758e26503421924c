//! The part of cloud-init's `#cloud-config` a simulated machine honours: host keys and authorized keys.
//!
//! cloud-init's `cc_ssh` module writes `ssh_keys: {<type>_private, <type>_public}` as the server's
//! host keys (for `rsa`, `ecdsa` and `ed25519`) instead of generating fresh ones, and adds
//! `ssh_authorized_keys` to the authorized keys. The YAML is parsed by a real YAML parser
//! (yaml-rust2), so block scalars (`|`), quoting and comments behave as they do for cloud-init.
//! User data that is not a cloud-config (a shell script, MIME multipart) carries neither, as far as
//! this simulation is concerned, and is ignored, as cloud-init would ignore it for these keys.

use yaml_rust2::{Yaml, YamlLoader};

/// Host key types cloud-init accepts in `ssh_keys`, with the file name OpenSSH uses for each.
const HOST_KEY_TYPES: [(&str, &str); 3] = [
    ("rsa", "ssh_host_rsa_key"),
    ("ecdsa", "ssh_host_ecdsa_key"),
    ("ed25519", "ssh_host_ed25519_key"),
];

/// One host key given through `ssh_keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct HostKey {
    /// `rsa`, `ecdsa` or `ed25519`.
    pub key_type: String,
    /// The file name OpenSSH uses, e.g. `ssh_host_ed25519_key`.
    pub file_name: String,
    /// The private key (OpenSSH or PEM text).
    pub private: String,
    /// The public key line, if given.
    pub public: Option<String>,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HostKey")
            .field("key_type", &self.key_type)
            .field("public", &self.public)
            .field("private", &"<redacted>")
            .finish()
    }
}

/// What a machine takes from its user data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudConfig {
    pub host_keys: Vec<HostKey>,
    pub authorized_keys: Vec<String>,
}

/// Why user data that claims to be a cloud-config could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CloudConfigError {
    #[error("user_data is not valid YAML: {0}")]
    Yaml(String),
    #[error("user_data: `ssh_keys` must be a mapping")]
    SshKeysNotMapping,
    #[error("user_data: `ssh_keys.{0}` must be a string")]
    NotAString(String),
    #[error(
        "user_data: `ssh_keys.{key_type}_public` is given without `ssh_keys.{key_type}_private`"
    )]
    PublicWithoutPrivate { key_type: String },
    #[error("user_data: `ssh_authorized_keys` must be a list of strings")]
    AuthorizedKeysNotList,
}

/// Reads the host keys and authorized keys from `user_data`. Anything that does not start with
/// `#cloud-config` (cloud-init's marker for this format), after the `## template: jinja` line of
/// a template (what Cluster API's kubeadm bootstrap sends), yields an empty configuration. A
/// template is read as it is: Jinja does not touch keys, which hold no `{{` or `{%`.
pub fn parse(user_data: &str) -> Result<CloudConfig, CloudConfigError> {
    let mut lines = user_data.lines().map(str::trim_end);
    let mut header = lines.next().unwrap_or("");
    if header.trim() == "## template: jinja" {
        header = lines.next().unwrap_or("");
    }
    if header != "#cloud-config" {
        return Ok(CloudConfig::default());
    }
    let documents = match YamlLoader::load_from_str(user_data) {
        Ok(documents) => documents,
        Err(error) => return Err(CloudConfigError::Yaml(error.to_string())),
    };
    let Some(document) = documents.first() else {
        return Ok(CloudConfig::default());
    };
    let mut config = CloudConfig::default();

    match &document["ssh_keys"] {
        Yaml::BadValue | Yaml::Null => {}
        Yaml::Hash(_) => {
            let ssh_keys = &document["ssh_keys"];
            for (key_type, file_name) in HOST_KEY_TYPES {
                let private = string_field(ssh_keys, &format!("{key_type}_private"))?;
                let public = string_field(ssh_keys, &format!("{key_type}_public"))?;
                match (private, public) {
                    (Some(private), public) => config.host_keys.push(HostKey {
                        key_type: key_type.to_owned(),
                        file_name: file_name.to_owned(),
                        private,
                        public: public.map(|line| line.trim().to_owned()),
                    }),
                    (None, Some(_)) => {
                        return Err(CloudConfigError::PublicWithoutPrivate {
                            key_type: key_type.to_owned(),
                        });
                    }
                    (None, None) => {}
                }
            }
        }
        _ => return Err(CloudConfigError::SshKeysNotMapping),
    }

    match &document["ssh_authorized_keys"] {
        Yaml::BadValue | Yaml::Null => {}
        Yaml::Array(entries) => {
            for entry in entries {
                let Some(line) = entry.as_str() else {
                    return Err(CloudConfigError::AuthorizedKeysNotList);
                };
                config.authorized_keys.push(line.trim().to_owned());
            }
        }
        _ => return Err(CloudConfigError::AuthorizedKeysNotList),
    }
    Ok(config)
}

fn string_field(mapping: &Yaml, name: &str) -> Result<Option<String>, CloudConfigError> {
    match &mapping[name] {
        Yaml::BadValue | Yaml::Null => Ok(None),
        Yaml::String(text) => Ok(Some(text.clone())),
        _ => Err(CloudConfigError::NotAString(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nQUJD\n-----END OPENSSH PRIVATE KEY-----\n";

    #[test]
    fn a_jinja_template_is_cloud_config_too() {
        let user_data = format!(
            "## template: jinja\n#cloud-config\nssh_keys:\n  ed25519_private: |\n{}  ed25519_public: ssh-ed25519 AAAA test\n",
            PRIVATE
                .lines()
                .map(|line| format!("    {line}\n"))
                .collect::<String>()
        );
        let config = parse(&user_data).unwrap();
        assert_eq!(config.host_keys.len(), 1);
        assert_eq!(config.host_keys[0].private, PRIVATE);
    }

    #[test]
    fn block_scalar_host_key_is_read_verbatim() {
        let user_data = format!(
            "#cloud-config\n\
             # a comment\n\
             ssh_keys:\n  \
               ed25519_private: |\n    {}\n  \
               ed25519_public: \"ssh-ed25519 AAAAC3Nz host\"\n\
             ssh_authorized_keys:\n  - ssh-ed25519 AAAAkey extra\n",
            PRIVATE.trim_end().replace('\n', "\n    ")
        );
        let config = parse(&user_data).unwrap();
        assert_eq!(config.host_keys.len(), 1);
        let key = &config.host_keys[0];
        assert_eq!(
            key.private, PRIVATE,
            "a `|` block keeps its lines and one final newline"
        );
        assert_eq!(key.public.as_deref(), Some("ssh-ed25519 AAAAC3Nz host"));
        assert_eq!(key.file_name, "ssh_host_ed25519_key");
        assert_eq!(config.authorized_keys, ["ssh-ed25519 AAAAkey extra"]);
        assert!(!format!("{key:?}").contains("b3BlbnNz"));
    }

    #[test]
    fn other_user_data_is_ignored() {
        assert_eq!(
            parse("#!/bin/bash\necho hi\n").unwrap(),
            CloudConfig::default()
        );
        assert_eq!(parse("").unwrap(), CloudConfig::default());
        assert_eq!(
            parse("#cloud-config\npackages: [curl]\n").unwrap(),
            CloudConfig::default()
        );
    }

    #[test]
    fn malformed_cloud_config_is_an_error() {
        assert!(matches!(
            parse("#cloud-config\nssh_keys: [a\n"),
            Err(CloudConfigError::Yaml(_))
        ));
        assert_eq!(
            parse("#cloud-config\nssh_keys: 3\n"),
            Err(CloudConfigError::SshKeysNotMapping)
        );
        assert_eq!(
            parse("#cloud-config\nssh_keys:\n  ed25519_public: ssh-ed25519 AAAA\n"),
            Err(CloudConfigError::PublicWithoutPrivate {
                key_type: "ed25519".to_owned()
            })
        );
    }
}
