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
