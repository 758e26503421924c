//! Checks on the installed node over SSH: containerd, kubelet's version, swap, sysctls.
//!
//! One script gathers the facts (as `key=value` lines and the sysctl files), and the judgement is
//! made here, so the rules are testable without a server. Where systemd is not running as the
//! init system (a chroot-like simulated machine, or a node booted without systemd), whether
//! containerd is *active* and what swap is *in use* cannot be seen; enablement, the unit files
//! and fstab are checked instead, and the report says so.

use std::collections::BTreeMap;

use caph_core::ImageSpec;
use caph_core::plan::REQUIRED_SYSCTLS;

/// The fact-gathering script. `sd_booted()`'s test: `/run/systemd/system` exists only when
/// systemd is the init system.
pub(crate) const FACTS_SCRIPT: &str = r#"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [ -d /run/systemd/system ]; then echo "systemd=running"; else echo "systemd=not-running"; fi
if command -v systemctl >/dev/null 2>&1; then
  echo "containerd_enabled=$(systemctl is-enabled containerd.service 2>&1 | head -n1)"
  if [ -d /run/systemd/system ]; then echo "containerd_active=$(systemctl is-active containerd.service 2>&1 | head -n1)"; fi
else
  echo "containerd_enabled=no-systemctl"
fi
if [ -e /etc/systemd/system/multi-user.target.wants/containerd.service ]; then echo "containerd_wants=yes"; else echo "containerd_wants=no"; fi
if command -v containerd >/dev/null 2>&1; then echo "containerd_binary=$(command -v containerd)"; else echo "containerd_binary="; fi
echo "kubelet_version=$(kubelet --version 2>&1 | head -n1)"
if [ -d /run/systemd/system ] && command -v swapon >/dev/null 2>&1; then echo "swap_active=$(swapon --show --noheadings 2>/dev/null | wc -l)"; fi
echo "fstab_swap=$(grep -cE '^[^#[:space:]]+[[:space:]]+[^[:space:]]+[[:space:]]+swap[[:space:]]' /etc/fstab 2>/dev/null || true)"
for file in /etc/sysctl.d/*.conf /etc/sysctl.conf; do
  [ -f "$file" ] || continue
  echo "--- $file"
  cat "$file"
done
"#;

/// The verdict: lines for the report, problems that fail the install.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub checks: Vec<String>,
    pub problems: Vec<String>,
}

/// Judges the output of [`FACTS_SCRIPT`] against the spec.
pub(crate) fn judge(spec: &ImageSpec, output: &str) -> Verdict {
    let mut facts: BTreeMap<&str, &str> = BTreeMap::new();
    let mut sysctl_files: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in output.lines() {
        if let Some(file) = line.strip_prefix("--- ") {
            sysctl_files.push((file, Vec::new()));
        } else if let Some((_, lines)) = sysctl_files.last_mut() {
            lines.push(line);
        } else if let Some((key, value)) = line.split_once('=') {
            facts.entry(key).or_insert(value);
        }
    }
    let fact = |key: &str| facts.get(key).copied().unwrap_or("").trim();
    let mut verdict = Verdict::default();
    let systemd_running = fact("systemd") == "running";

    // containerd
    let enabled = fact("containerd_enabled");
    let wants = fact("containerd_wants") == "yes";
    let is_enabled = enabled == "enabled" || (enabled == "no-systemctl" && wants);
    if fact("containerd_binary").is_empty() {
        verdict
            .problems
            .push("containerd is not installed (not on PATH)".to_string());
    }
    if is_enabled {
        verdict.checks.push(format!(
            "containerd.service is enabled ({})",
            if enabled == "enabled" {
                "systemctl is-enabled"
            } else {
                "no systemctl: the multi-user.target.wants link is there"
            }
        ));
    } else {
        verdict.problems.push(format!(
            "containerd.service is not enabled (systemctl is-enabled: {})",
            if enabled.is_empty() {
                "no answer"
            } else {
                enabled
            }
        ));
    }
    if systemd_running {
        match fact("containerd_active") {
            "active" => verdict
                .checks
                .push("containerd.service is active".to_string()),
            other => verdict
                .problems
                .push(format!("containerd.service is not active ({other})")),
        }
    } else {
        verdict.checks.push(
            "systemd is not the init system here, so containerd cannot be running: checked that it is enabled, not that it is active".to_string(),
        );
    }

    // kubelet
    let expected = format!("Kubernetes v{}", spec.kubernetes.version);
    let kubelet = fact("kubelet_version");
    if kubelet == expected {
        verdict.checks.push(format!("kubelet --version: {kubelet}"));
    } else {
        verdict.problems.push(format!(
            "kubelet --version says \"{kubelet}\", the spec wants \"{expected}\""
        ));
    }

    // swap
    if spec.system.disable_swap {
        let fstab_swap = fact("fstab_swap");
        if fstab_swap.is_empty() || fstab_swap == "0" {
            verdict.checks.push("no swap in /etc/fstab".to_string());
        } else {
            verdict.problems.push(format!(
                "/etc/fstab enables {fstab_swap} swap device(s); the spec disables swap"
            ));
        }
        match facts.get("swap_active").map(|value| value.trim()) {
            Some("0") => verdict.checks.push("swapon --show is empty".to_string()),
            Some(count) => verdict
                .problems
                .push(format!("{count} swap device(s) in use (swapon --show)")),
            None => verdict.checks.push(
                "swap in use not checked: systemd is not the init system here (the machine's swap is the host's)".to_string(),
            ),
        }
    }

    // sysctls: files in the order sysctl --system reads them (the shell glob is sorted), the
    // last setting of a key wins.
    let mut settings: BTreeMap<String, String> = BTreeMap::new();
    for (_, lines) in &sysctl_files {
        for line in lines {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some((key, value)) = line.split_once('=') {
                settings.insert(
                    key.trim().trim_start_matches('-').replace('/', "."),
                    value.trim().to_string(),
                );
            }
        }
    }
    let mut wanted: BTreeMap<String, String> = REQUIRED_SYSCTLS
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    for (key, value) in &spec.system.sysctls {
        wanted.insert(key.clone(), value.clone());
    }
    let mut missing = Vec::new();
    for (key, value) in &wanted {
        match settings.get(key) {
            Some(found) if found == value => {}
            Some(found) => missing.push(format!("{key} = {found} (the spec wants {value})")),
            None => missing.push(format!("{key} is not set (the spec wants {value})")),
        }
    }
    if missing.is_empty() {
        verdict.checks.push(format!(
            "{} sysctls set in /etc/sysctl.d as the spec says",
            wanted.len()
        ));
    } else {
        verdict
            .problems
            .push(format!("sysctls in /etc/sysctl.d: {}", missing.join(", ")));
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ImageSpec {
        struct Files;
        impl caph_core::spec::SpecFiles for Files {
            fn read(&self, path: &str) -> Result<Vec<u8>, String> {
                std::fs::read(
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../../images")
                        .join(path),
                )
                .map_err(|error| error.to_string())
            }
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../images/debian-12-k8s-1.34.toml");
        let bytes = std::fs::read(path).expect("spec");
        caph_core::spec::load("debian-12-k8s-1.34.toml", &bytes, &Files).expect("valid")
    }

    const SYSCTLS: &str = "--- /etc/sysctl.d/99-zz-caph-image.conf\nnet.bridge.bridge-nf-call-ip6tables = 1\nnet.bridge.bridge-nf-call-iptables = 1\nnet.ipv4.ip_forward = 1\n";

    #[test]
    fn a_booted_node_is_judged_on_what_runs() {
        let spec = spec();
        let mut wanted = String::new();
        for (key, value) in &spec.system.sysctls {
            wanted.push_str(&format!("{key}={value}\n"));
        }
        let output = format!(
            "systemd=running\ncontainerd_enabled=enabled\ncontainerd_active=active\ncontainerd_wants=yes\ncontainerd_binary=/usr/local/bin/containerd\nkubelet_version=Kubernetes v{}\nswap_active=0\nfstab_swap=0\n{SYSCTLS}{wanted}",
            spec.kubernetes.version
        );
        let verdict = judge(&spec, &output);
        assert_eq!(verdict.problems, Vec::<String>::new());
        assert!(
            verdict
                .checks
                .contains(&"containerd.service is active".to_string())
        );
        assert!(
            verdict
                .checks
                .contains(&"swapon --show is empty".to_string())
        );
    }

    #[test]
    fn every_mismatch_is_named() {
        let spec = spec();
        let output = "systemd=running\ncontainerd_enabled=disabled\ncontainerd_active=inactive\ncontainerd_wants=no\ncontainerd_binary=\nkubelet_version=Kubernetes v1.33.0\nswap_active=1\nfstab_swap=1\n--- /etc/sysctl.d/90-caph-image.conf\nnet.ipv4.ip_forward = 0\n";
        let problems = judge(&spec, output).problems;
        let text = problems.join("\n");
        for expected in [
            "containerd is not installed",
            "containerd.service is not enabled (systemctl is-enabled: disabled)",
            "containerd.service is not active (inactive)",
            "kubelet --version says \"Kubernetes v1.33.0\"",
            "/etc/fstab enables 1 swap device(s)",
            "1 swap device(s) in use",
            "net.ipv4.ip_forward = 0 (the spec wants 1)",
            "net.bridge.bridge-nf-call-iptables is not set",
        ] {
            assert!(text.contains(expected), "{expected} in:\n{text}");
        }
    }

    #[test]
    fn later_sysctl_files_override_earlier_ones() {
        let spec = spec();
        let output = format!(
            "systemd=not-running\ncontainerd_enabled=enabled\ncontainerd_binary=/usr/local/bin/containerd\nkubelet_version=Kubernetes v{}\nfstab_swap=0\n{SYSCTLS}--- /etc/sysctl.d/99-late.conf\nnet.ipv4.ip_forward = 0\n",
            spec.kubernetes.version
        );
        let problems = judge(&spec, &output).problems;
        assert!(
            problems
                .iter()
                .any(|problem| problem.contains("net.ipv4.ip_forward = 0")),
            "{problems:?}"
        );
    }
}
