//! A node's first boot, judged from what it left behind: the probe user data that stands in for
//! Cluster API Provider Hetzner's kubeadm bootstrap, the script that gathers the evidence (on a
//! live node over SSH, or from the node's disk after it powered off), and the judgement of that
//! evidence as findings.
//!
//! What first boot must show, for a node made from one of our images: cloud-init ran every stage
//! without an error, from the data source the node was given and as a new instance; the
//! bootstrap's files and commands ran (the probe's marker names the node's own hostname); the
//! node has SSH host keys of its own (not the image's) and a machine id of its own; and the log
//! that CAPH greps for an interrupted bootstrap has no SIGTERM. This module runs nothing: the
//! caller runs [`evidence_script`] where the node is and hands its output to
//! [`judge_first_boot`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::checks::{Finding, FindingStatus};
use crate::plan::quote;

/// Where the probe's bootstrap command leaves its marker.
pub const PROBE_MARKER_PATH: &str = "/var/lib/caph-image-verify/bootstrap-marker";

/// The file the probe's `write_files` places, as kubeadm's bootstrap places its configuration.
pub const PROBE_CONFIG_PATH: &str = "/etc/kubernetes/caph-image-verify-join.yaml";

/// What the probe's marker holds, before the node's hostname.
const PROBE_MARKER_PREFIX: &str = "kubeadm join would run on ";

/// cloud-init's record of its stages (also what `cloud-init status` reads).
pub const STATUS_JSON_PATH: &str = "/var/lib/cloud/data/status.json";
/// cloud-init's result of the last boot: the data source and every error.
pub const RESULT_JSON_PATH: &str = "/var/lib/cloud/data/result.json";
/// The instance id cloud-init ran as.
pub const INSTANCE_ID_PATH: &str = "/var/lib/cloud/data/instance-id";
/// cloud-init's log, which CAPH greps for `SIGTERM` (an interrupted bootstrap).
pub const CLOUD_INIT_LOG_PATH: &str = "/var/log/cloud-init.log";

/// The stages cloud-init runs at every first boot, in order, as `status.json` names them.
const STAGES: &[&str] = &["init-local", "init", "modules-config", "modules-final"];

/// The probe: `#cloud-config` shaped like the kubeadm bootstrap CAPH sends (a Jinja template
/// header, files to write, then commands), whose commands leave a marker with the node's own
/// hostname and print it (into `/var/log/cloud-init-output.log`, which CAPH reads). `extra` is
/// more top-level cloud-config (such as host keys), without a header.
pub fn probe_user_data(extra: &str) -> String {
    let marker_dir = PROBE_MARKER_PATH
        .rsplit_once('/')
        .map_or("/", |(dir, _)| dir);
    let mut text = String::from("## template: jinja\n#cloud-config\n");
    text.push_str(
        "# caph-image verify's probe, shaped like Cluster API's kubeadm bootstrap: files, then commands.\n",
    );
    let _ = write!(
        text,
        "write_files:\n  - path: {PROBE_CONFIG_PATH}\n    owner: root:root\n    permissions: '0640'\n    content: |\n      apiVersion: kubeadm.k8s.io/v1beta4\n      kind: JoinConfiguration\nruncmd:\n  - 'mkdir -p {marker_dir}'\n  - 'echo \"{PROBE_MARKER_PREFIX}$(hostname)\" > {PROBE_MARKER_PATH}'\n  - 'cat {PROBE_MARKER_PATH}'\n"
    );
    text.push_str(extra);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// Marks the start of one piece of evidence in [`evidence_script`]'s output.
const EVIDENCE_MARKER: &str = "::caph-evidence::";
/// Says that a piece of evidence could not be had (a missing file).
const MISSING_MARKER: &str = "::caph-evidence-missing::";

/// The names of the evidence [`evidence_script`] gathers.
pub mod evidence {
    /// cloud-init's `status.json`.
    pub const STATUS: &str = "status.json";
    /// cloud-init's `result.json`.
    pub const RESULT: &str = "result.json";
    /// cloud-init's instance id.
    pub const INSTANCE_ID: &str = "instance-id";
    /// `/etc/hostname`.
    pub const HOSTNAME: &str = "hostname";
    /// `/etc/machine-id`.
    pub const MACHINE_ID: &str = "machine-id";
    /// The modification time of `/etc/machine-id`, in seconds since the epoch.
    pub const MACHINE_ID_MTIME: &str = "machine-id-mtime";
    /// The boot time of the running kernel, in seconds since the epoch (a live node only).
    pub const BOOT_TIME: &str = "boot-time";
    /// Every `/etc/ssh/ssh_host_*_key.pub`, one key a line.
    pub const HOST_KEYS: &str = "host-keys";
    /// The probe's marker.
    pub const PROBE_MARKER: &str = "probe-marker";
    /// The file the probe placed.
    pub const PROBE_CONFIG: &str = "probe-config";
    /// How many lines of cloud-init's log say SIGTERM.
    pub const SIGTERM_LINES: &str = "sigterm-lines";
}

/// One shell script that prints every piece of first-boot evidence under a marker, reading the
/// node's files below `root` (empty on the node itself; the mount point of its root file system
/// when read from its disk). `extra_files` are more files to gather, named by their path. It
/// succeeds whatever it finds, also under `set -e`.
pub fn evidence_script(root: &str, extra_files: &[&str]) -> String {
    let mut script = String::from("r=");
    script.push_str(&quote(root));
    script.push('\n');
    let mut file = |name: &str, path: &str| {
        let _ = writeln!(
            script,
            "if [ -f \"$r\"{path} ]; then echo '{EVIDENCE_MARKER}{name}'; cat \"$r\"{path}; echo; else echo '{MISSING_MARKER}{name}'; fi",
            path = quote(path)
        );
    };
    file(evidence::STATUS, STATUS_JSON_PATH);
    file(evidence::RESULT, RESULT_JSON_PATH);
    file(evidence::INSTANCE_ID, INSTANCE_ID_PATH);
    file(evidence::HOSTNAME, "/etc/hostname");
    file(evidence::MACHINE_ID, "/etc/machine-id");
    file(evidence::PROBE_MARKER, PROBE_MARKER_PATH);
    file(evidence::PROBE_CONFIG, PROBE_CONFIG_PATH);
    for path in extra_files {
        file(path, path);
    }
    let _ = writeln!(
        script,
        "echo '{EVIDENCE_MARKER}{}'; stat -c %Y \"$r\"/etc/machine-id 2>/dev/null || true",
        evidence::MACHINE_ID_MTIME
    );
    let _ = writeln!(
        script,
        "echo '{EVIDENCE_MARKER}{}'; awk '/^btime / {{ print $2 }}' /proc/stat 2>/dev/null || true",
        evidence::BOOT_TIME
    );
    let _ = writeln!(
        script,
        "echo '{EVIDENCE_MARKER}{}'; for key in \"$r\"/etc/ssh/ssh_host_*_key.pub; do if [ -f \"$key\" ]; then cat \"$key\"; echo; fi; done",
        evidence::HOST_KEYS
    );
    let _ = writeln!(
        script,
        "echo '{EVIDENCE_MARKER}{}'; if [ -f \"$r\"{log} ]; then grep -c SIGTERM \"$r\"{log} || true; fi",
        evidence::SIGTERM_LINES,
        log = quote(CLOUD_INIT_LOG_PATH)
    );
    script
}

/// The evidence [`evidence_script`] printed, by name; a missing file has no entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    items: BTreeMap<String, String>,
}

impl Evidence {
    /// Reads [`evidence_script`]'s output.
    pub fn parse(output: &str) -> Evidence {
        let mut items: BTreeMap<String, String> = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in output.lines() {
            if let Some(name) = line.strip_prefix(EVIDENCE_MARKER) {
                items.insert(name.to_string(), String::new());
                current = Some(name.to_string());
            } else if line.starts_with(MISSING_MARKER) {
                current = None;
            } else if let Some(name) = &current
                && let Some(text) = items.get_mut(name)
            {
                text.push_str(line);
                text.push('\n');
            }
        }
        Evidence { items }
    }

    /// The evidence called `name` (see [`evidence`]), or `None` when its file was missing.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.items.get(name).map(String::as_str)
    }
}

/// Whose SSH host keys the node must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeys {
    /// Keys made for this node: none of these (the image's own public keys, `type base64` or
    /// whole lines; none when the image carries only empty placeholders).
    NotAnyOf(Vec<String>),
    /// Exactly this one (an OpenSSH public key line), given to the node through its user data.
    Exactly(String),
}

/// How the node's machine id must be new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineId {
    /// Not the image's (its `/etc/machine-id`, usually empty).
    Not(String),
    /// Written at this boot: the file is newer than the kernel's boot time (the image's own
    /// machine id is not known here, as for a snapshot).
    WrittenThisBoot,
}

/// What first boot must have done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectations {
    /// The node's hostname (from the data source's `local-hostname`, or the server's name).
    pub hostname: String,
    /// The instance id the data source gave.
    pub instance_id: String,
    /// Whether the user data was the probe ([`probe_user_data`]), whose marker can be checked.
    pub probe: bool,
    /// The host keys.
    pub host_keys: HostKeys,
    /// The machine id.
    pub machine_id: MachineId,
}

/// Judges the evidence: one finding per thing first boot must have done, in a stable order.
pub fn judge_first_boot(evidence: &Evidence, expected: &Expectations) -> Vec<Finding> {
    let mut findings = vec![
        judge_status(evidence.get(evidence::STATUS)),
        judge_result(evidence.get(evidence::RESULT)),
    ];
    let instance = evidence
        .get(evidence::INSTANCE_ID)
        .map(str::trim)
        .unwrap_or_default();
    findings.push(Finding::judged(
        "cloud-init-instance",
        instance == expected.instance_id,
        if instance == expected.instance_id {
            format!("a new instance: {instance}, the id the data source gave")
        } else if instance.is_empty() {
            format!("no {INSTANCE_ID_PATH}: cloud-init never ran as an instance")
        } else {
            format!(
                "ran as instance {}, not {} (an instance the image brought along?)",
                crate::text::Escaped(instance),
                expected.instance_id
            )
        },
    ));
    let hostname = evidence
        .get(evidence::HOSTNAME)
        .map(str::trim)
        .unwrap_or_default();
    findings.push(Finding::judged(
        "hostname",
        hostname == expected.hostname,
        if hostname == expected.hostname {
            format!("{hostname}, as CAPH checks it")
        } else {
            format!(
                "/etc/hostname says {:?}, not {}",
                crate::text::Escaped(hostname).to_string(),
                expected.hostname
            )
        },
    ));
    if expected.probe {
        findings.push(judge_probe(evidence, &expected.hostname));
    }
    findings.push(judge_host_keys(
        evidence.get(evidence::HOST_KEYS).unwrap_or_default(),
        &expected.host_keys,
    ));
    findings.push(judge_machine_id(evidence, &expected.machine_id));
    let sigterm = evidence
        .get(evidence::SIGTERM_LINES)
        .map(str::trim)
        .unwrap_or_default();
    findings.push(match sigterm {
        "0" => Finding::judged(
            "cloud-init-sigterm",
            true,
            format!("no SIGTERM in {CLOUD_INIT_LOG_PATH}"),
        ),
        "" => Finding {
            name: "cloud-init-sigterm".to_string(),
            status: FindingStatus::NotChecked,
            detail: format!(
                "no {CLOUD_INIT_LOG_PATH} to look in (CAPH's grep finds no SIGTERM in it either)"
            ),
        },
        count => Finding::judged(
            "cloud-init-sigterm",
            false,
            format!(
                "{CLOUD_INIT_LOG_PATH} says SIGTERM {} time(s): CAPH takes the bootstrap for interrupted",
                crate::text::Escaped(count)
            ),
        ),
    });
    findings
}

/// One error of a stage, short enough for a table cell.
fn first_line(error: &serde_json::Value) -> String {
    let text = match error.as_str() {
        Some(text) => text.to_string(),
        None => error.to_string(),
    };
    let line = text.lines().next().unwrap_or_default();
    let mut short: String = line.chars().take(160).collect();
    if short.len() < line.len() {
        short.push_str("...");
    }
    crate::text::Escaped(&short).to_string()
}

fn judge_status(status: Option<&str>) -> Finding {
    const NAME: &str = "cloud-init-status";
    let Some(text) = status else {
        return Finding::judged(
            NAME,
            false,
            format!("no {STATUS_JSON_PATH}: cloud-init did not run (is it installed and enabled?)"),
        );
    };
    let json: serde_json::Value = match serde_json::from_str(text) {
        Ok(json) => json,
        Err(error) => {
            return Finding::judged(NAME, false, format!("{STATUS_JSON_PATH}: {error}"));
        }
    };
    let mut problems = Vec::new();
    for stage in STAGES {
        let record = &json["v1"][stage];
        if !record["finished"].is_number() {
            problems.push(format!("stage {stage} did not finish"));
        }
        if let Some(errors) = record["errors"].as_array()
            && !errors.is_empty()
        {
            problems.push(format!(
                "stage {stage}: {}",
                errors.iter().map(first_line).collect::<Vec<_>>().join("; ")
            ));
        }
    }
    if problems.is_empty() {
        Finding::judged(NAME, true, "done: every stage finished without errors")
    } else {
        Finding::judged(NAME, false, problems.join("; "))
    }
}

fn judge_result(result: Option<&str>) -> Finding {
    const NAME: &str = "cloud-init-result";
    let Some(text) = result else {
        return Finding::judged(
            NAME,
            false,
            format!("no {RESULT_JSON_PATH}: cloud-init never finished"),
        );
    };
    let json: serde_json::Value = match serde_json::from_str(text) {
        Ok(json) => json,
        Err(error) => return Finding::judged(NAME, false, format!("{RESULT_JSON_PATH}: {error}")),
    };
    let source = json["v1"]["datasource"]
        .as_str()
        .map(|source| crate::text::Escaped(source).to_string())
        .unwrap_or_else(|| "no data source".to_string());
    match json["v1"]["errors"].as_array() {
        Some(errors) if errors.is_empty() => {
            Finding::judged(NAME, true, format!("no errors; {source}"))
        }
        Some(errors) => Finding::judged(
            NAME,
            false,
            format!(
                "{} error(s): {}; {source}",
                errors.len(),
                errors.iter().map(first_line).collect::<Vec<_>>().join("; ")
            ),
        ),
        None => Finding::judged(
            NAME,
            false,
            format!("{RESULT_JSON_PATH} lists no errors field"),
        ),
    }
}

fn judge_probe(evidence: &Evidence, hostname: &str) -> Finding {
    const NAME: &str = "bootstrap-marker";
    let wanted = format!("{PROBE_MARKER_PREFIX}{hostname}");
    let marker = evidence.get(evidence::PROBE_MARKER).map(str::trim);
    let placed = evidence
        .get(evidence::PROBE_CONFIG)
        .is_some_and(|text| text.contains("kind: JoinConfiguration"));
    match marker {
        Some(text) if text == wanted && placed => Finding::judged(
            NAME,
            true,
            format!("runcmd wrote \"{wanted}\"; write_files placed {PROBE_CONFIG_PATH}"),
        ),
        Some(text) if text == wanted => Finding::judged(
            NAME,
            false,
            format!("runcmd ran, but write_files did not place {PROBE_CONFIG_PATH}"),
        ),
        Some(text) => Finding::judged(
            NAME,
            false,
            format!(
                "{PROBE_MARKER_PATH} says \"{}\", not \"{wanted}\"",
                crate::text::Escaped(text)
            ),
        ),
        None => Finding::judged(
            NAME,
            false,
            format!("no {PROBE_MARKER_PATH}: the user data's runcmd did not run"),
        ),
    }
}

/// A public key line's `type base64` part, which identifies the key (the comment does not).
fn key_identity(line: &str) -> Option<(String, String)> {
    let mut words = line.split_whitespace();
    let kind = words.next()?;
    let blob = words.next()?;
    Some((kind.to_string(), blob.to_string()))
}

/// OpenSSH's fingerprint of a public key line: `SHA256:` and the unpadded base64 of the sha256
/// of the key blob.
pub fn fingerprint(line: &str) -> Option<String> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let (_, blob) = key_identity(line)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob.as_bytes())
        .ok()?;
    let digest = sha2::Sha256::digest(&bytes);
    Some(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    ))
}

fn judge_host_keys(found: &str, expected: &HostKeys) -> Finding {
    const NAME: &str = "host-keys-new";
    let keys: Vec<(String, String)> = found.lines().filter_map(key_identity).collect();
    if keys.is_empty() {
        return Finding::judged(
            NAME,
            false,
            "no /etc/ssh/ssh_host_*_key.pub: sshd has no host key and does not start",
        );
    }
    let described = |keys: &[(String, String)]| {
        keys.iter()
            .map(|(kind, blob)| {
                let line = format!("{kind} {blob}");
                format!(
                    "{} {}",
                    crate::text::Escaped(kind),
                    fingerprint(&line).unwrap_or_else(|| "(not base64)".to_string())
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match expected {
        HostKeys::NotAnyOf(image_keys) => {
            let image: Vec<(String, String)> = image_keys
                .iter()
                .filter_map(|line| key_identity(line))
                .collect();
            let shared: Vec<(String, String)> = keys
                .iter()
                .filter(|key| image.contains(key))
                .cloned()
                .collect();
            if shared.is_empty() {
                Finding::judged(
                    NAME,
                    true,
                    format!("made for this node: {}", described(&keys)),
                )
            } else {
                Finding::judged(
                    NAME,
                    false,
                    format!(
                        "the image's own: {}; every node made from it would share them",
                        described(&shared)
                    ),
                )
            }
        }
        HostKeys::Exactly(pinned) => {
            let Some(pinned) = key_identity(pinned) else {
                return Finding::judged(NAME, false, "the pinned key is not a public key line");
            };
            if keys == [pinned.clone()] {
                Finding::judged(
                    NAME,
                    true,
                    format!("only the key its user data gave: {}", described(&keys)),
                )
            } else {
                Finding::judged(
                    NAME,
                    false,
                    format!(
                        "{}, not only the one its user data gave ({})",
                        described(&keys),
                        described(&[pinned])
                    ),
                )
            }
        }
    }
}

fn judge_machine_id(evidence: &Evidence, expected: &MachineId) -> Finding {
    const NAME: &str = "machine-id-new";
    let id = evidence
        .get(evidence::MACHINE_ID)
        .map(str::trim)
        .unwrap_or_default();
    let well_formed = id.len() == 32 && id.bytes().all(|byte| byte.is_ascii_hexdigit());
    if !well_formed {
        return Finding::judged(
            NAME,
            false,
            format!(
                "/etc/machine-id is {:?}, not 32 hex digits",
                crate::text::Escaped(id).to_string()
            ),
        );
    }
    match expected {
        MachineId::Not(image) if image.trim() == id => Finding::judged(
            NAME,
            false,
            format!("{id} is the image's own: every node made from it would share it"),
        ),
        MachineId::Not(image) if image.trim().is_empty() => Finding::judged(
            NAME,
            true,
            format!("{id}, the node's own (the image carries none)"),
        ),
        MachineId::Not(_) => Finding::judged(NAME, true, format!("{id}, not the image's")),
        MachineId::WrittenThisBoot => {
            let number = |name: &str| {
                evidence
                    .get(name)
                    .and_then(|text| text.trim().parse::<u64>().ok())
            };
            match (
                number(evidence::MACHINE_ID_MTIME),
                number(evidence::BOOT_TIME),
            ) {
                (Some(written), Some(booted)) if written >= booted => {
                    Finding::judged(NAME, true, format!("{id}, written at this boot"))
                }
                (Some(written), Some(booted)) => Finding::judged(
                    NAME,
                    false,
                    format!(
                        "{id} was written {}s before this boot: it came with the image",
                        booted - written
                    ),
                ),
                _ => Finding::judged(
                    NAME,
                    false,
                    format!("{id}: when it was written cannot be told"),
                ),
            }
        }
    }
}
