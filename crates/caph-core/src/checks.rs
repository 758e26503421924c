//! The node checks: one list, in the spirit of kubeadm's preflight, of what a node made from a
//! spec must show (kernel modules, sysctls, swap, containerd with its CRI plugin, kubelet, time
//! sync, cloud-init, SSH host keys, machine-id). Each check is a name, a shell command and the
//! result it must print. `build robot`'s verify, the boot tests and `caph-image verify` run this
//! same list; this module only describes the checks and judges their output, it runs nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::ImageSpec;
use crate::plan::{CONTAINERD_SOCKET, REQUIRED_SYSCTLS, node_modules, quote};

/// What a check's output must be (trimmed of surrounding white space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this text.
    Equals(String),
    /// Anything but this text (for counts that must not be zero).
    NotEquals(String),
    /// Text that contains this.
    Contains(String),
}

impl Expect {
    /// Whether `output` is what was expected.
    pub fn matches(&self, output: &str) -> bool {
        let output = output.trim();
        match self {
            Expect::Equals(wanted) => output == wanted,
            Expect::NotEquals(unwanted) => output != unwanted,
            Expect::Contains(part) => output.contains(part.as_str()),
        }
    }

    /// The expectation in words, for reports.
    pub fn describe(&self) -> String {
        match self {
            Expect::Equals(wanted) => format!("\"{wanted}\""),
            Expect::NotEquals(unwanted) => format!("anything but \"{unwanted}\""),
            Expect::Contains(part) => format!("text containing \"{part}\""),
        }
    }
}

/// Where a check can give an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// The node's files: works on a booted node, in a chroot and on a machine without systemd.
    Files,
    /// A node booted with systemd as init: live kernel state, running services, first-boot work.
    BootedNode,
}

/// One check: a name, the command that gathers the fact, and the result it must print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCheck {
    /// Short kebab-case name, unique in the list (`containerd-active`, `sysctl net.ipv4.ip_forward`).
    pub name: String,
    /// A bash command whose standard output is judged (standard error is not).
    pub command: String,
    /// What it must print.
    pub expect: Expect,
    /// Where it can be answered.
    pub needs: Needs,
}

/// The checks for a node made from `spec`, in a stable order.
pub fn node_checks(spec: &ImageSpec) -> Vec<NodeCheck> {
    let mut checks = Vec::new();
    let mut push = |name: String, command: String, expect: Expect, needs: Needs| {
        checks.push(NodeCheck {
            name,
            command,
            expect,
            needs,
        });
    };
    for module in node_modules(spec) {
        push(
            format!("module {module}"),
            // A loaded module, built in or not, has its directory in /sys/module.
            format!(
                "if [ -d /sys/module/{m} ]; then echo loaded; else echo missing; fi",
                m = quote(module)
            ),
            Expect::Equals("loaded".to_string()),
            Needs::BootedNode,
        );
    }
    let mut sysctls: BTreeMap<&str, &str> = REQUIRED_SYSCTLS.iter().copied().collect();
    for (key, value) in &spec.system.sysctls {
        sysctls.insert(key, value);
    }
    for (key, value) in &sysctls {
        push(
            format!("sysctl-config {key}"),
            // The value `sysctl --system` would set: files in /etc/sysctl.d in name order, then
            // /etc/sysctl.conf, the last setting winning.
            format!(
                "cat $(ls /etc/sysctl.d/*.conf 2>/dev/null | sort) /etc/sysctl.conf 2>/dev/null | \
                 awk -F= -v key={k} '/^[[:space:]]*[#;]/ {{ next }} {{ name = $1; gsub(/[[:space:]]|^-/, \"\", name); gsub(/\\//, \".\", name) }} name == key {{ value = substr($0, index($0, \"=\") + 1); gsub(/^[[:space:]]+|[[:space:]]+$/, \"\", value) }} END {{ print value }}'",
                k = quote(key)
            ),
            Expect::Equals(value.to_string()),
            Needs::Files,
        );
        push(
            format!("sysctl {key}"),
            format!("sysctl -n {}", quote(key)),
            Expect::Equals(value.to_string()),
            Needs::BootedNode,
        );
    }
    if spec.system.disable_swap {
        push(
            "swap-in-fstab".to_string(),
            "awk '$1 !~ /^#/ && $3 == \"swap\"' /etc/fstab 2>/dev/null | wc -l".to_string(),
            Expect::Equals("0".to_string()),
            Needs::Files,
        );
        push(
            "swap-in-use".to_string(),
            "swapon --show --noheadings | wc -l".to_string(),
            Expect::Equals("0".to_string()),
            Needs::BootedNode,
        );
    }
    push(
        "containerd-enabled".to_string(),
        "systemctl is-enabled containerd.service".to_string(),
        Expect::Equals("enabled".to_string()),
        Needs::Files,
    );
    push(
        "containerd-active".to_string(),
        "systemctl is-active containerd.service".to_string(),
        Expect::Equals("active".to_string()),
        Needs::BootedNode,
    );
    push(
        "containerd-cri".to_string(),
        format!(
            "ctr --address {} plugins ls | awk '$2 == \"cri\" {{ print $NF; exit }}'",
            quote(CONTAINERD_SOCKET.trim_start_matches("unix://"))
        ),
        Expect::Equals("ok".to_string()),
        Needs::BootedNode,
    );
    push(
        "kubelet-version".to_string(),
        "kubelet --version".to_string(),
        Expect::Equals(format!("Kubernetes v{}", spec.kubernetes.version)),
        Needs::Files,
    );
    push(
        "kubelet-enabled".to_string(),
        "systemctl is-enabled kubelet.service".to_string(),
        Expect::Equals("enabled".to_string()),
        Needs::Files,
    );
    push(
        "time-sync".to_string(),
        "timedatectl show --property=NTP --value".to_string(),
        Expect::Equals("yes".to_string()),
        Needs::BootedNode,
    );
    push(
        "cloud-init".to_string(),
        // CAPH polls `cloud-init status` until it says done; wait for first boot to finish too.
        "timeout 300 cloud-init status --wait".to_string(),
        Expect::Contains("status: done".to_string()),
        Needs::BootedNode,
    );
    push(
        "ssh-host-keys".to_string(),
        // Non-empty: an image leaves empty placeholders for installimage to fill.
        "find /etc/ssh -maxdepth 1 -name 'ssh_host_*_key' -size +0 | wc -l".to_string(),
        Expect::NotEquals("0".to_string()),
        Needs::BootedNode,
    );
    push(
        "machine-id".to_string(),
        "grep -cE '^[0-9a-f]{32}$' /etc/machine-id".to_string(),
        Expect::Equals("1".to_string()),
        Needs::BootedNode,
    );
    checks
}

/// Marks the start of a check's output in [`checks_script`]'s output.
const MARKER: &str = "::caph-check::";

/// One bash script that runs `checks` in order and prints each one's output under a marker line,
/// for one SSH session (or one chroot call) instead of one per check.
pub fn checks_script(checks: &[NodeCheck]) -> String {
    let mut script =
        String::from("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
    for (index, check) in checks.iter().enumerate() {
        let _ = writeln!(script, "echo '{MARKER}{index}'");
        let _ = writeln!(script, "( {} ) 2>/dev/null || true", check.command);
    }
    script
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It printed what was expected.
    Passed,
    /// It printed something else (the output, trimmed).
    Failed(String),
    /// It was not run: the node cannot answer it (why).
    NotChecked(String),
}

/// A check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The check.
    pub check: NodeCheck,
    /// What came of it.
    pub outcome: Outcome,
}

impl CheckResult {
    /// One line for a report.
    pub fn describe(&self) -> String {
        match &self.outcome {
            Outcome::Passed => format!("{}: {}", self.check.name, self.check.expect.describe()),
            Outcome::Failed(output) => format!(
                "{}: `{}` printed \"{output}\", expected {}",
                self.check.name,
                self.check.command,
                self.check.expect.describe()
            ),
            Outcome::NotChecked(why) => format!("{}: not checked ({why})", self.check.name),
        }
    }
}

/// Judges [`checks_script`]'s `output` for `checks`; with `booted = false` the checks that need
/// a booted node are reported as not checked instead of run.
pub fn judge(checks: &[NodeCheck], output: &str, booted: bool) -> Vec<CheckResult> {
    let mut outputs: BTreeMap<usize, String> = BTreeMap::new();
    let mut current = None;
    for line in output.lines() {
        if let Some(index) = line
            .strip_prefix(MARKER)
            .and_then(|i| i.parse::<usize>().ok())
        {
            current = Some(index);
            outputs.entry(index).or_default();
        } else if let Some(index) = current {
            let text = outputs.entry(index).or_default();
            text.push_str(line);
            text.push('\n');
        }
    }
    checks
        .iter()
        .enumerate()
        .map(|(index, check)| {
            let outcome = if check.needs == Needs::BootedNode && !booted {
                Outcome::NotChecked("needs a node booted with systemd".to_string())
            } else {
                match outputs.get(&index) {
                    Some(text) if check.expect.matches(text) => Outcome::Passed,
                    Some(text) => Outcome::Failed(text.trim().to_string()),
                    None => Outcome::Failed("(no output: the check did not run)".to_string()),
                }
            };
            CheckResult {
                check: check.clone(),
                outcome,
            }
        })
        .collect()
}
