//! The node checks: one list, in the spirit of kubeadm's preflight, of what a node made from a
//! spec must show (kernel modules, sysctls, swap, containerd with its CRI plugin, kubelet, time
//! sync, cloud-init, SSH host keys, machine-id). Each check is a name, a shell command and the
//! result it must print. `build robot`'s verify, the boot tests and `caph-image verify` run this
//! same list; this module only describes the checks and judges their output, it runs nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::ImageSpec;
use crate::plan::{
    CONTAINERD_SOCKET, MODULES_CONFIG_PATH, RELEASE_PATH, REQUIRED_SYSCTLS, SYSCTL_CONFIG_PATH,
    node_modules, quote,
};

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

/// What an image promises of the nodes made from it: the facts the node checks are made of. A
/// spec gives them before a build ([`NodePromise::of_spec`]); a built image carries them in the
/// files the plan wrote ([`NodePromise::from_image_files`]), so an image can be checked without
/// its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePromise {
    /// Kernel modules loaded at boot.
    pub modules: Vec<String>,
    /// sysctls and their values.
    pub sysctls: BTreeMap<String, String>,
    /// Whether swap is kept off (known from a spec only: an image records no such setting).
    pub swap_off: bool,
    /// The Kubernetes version kubelet reports, without the `v`.
    pub kubernetes_version: String,
}

impl NodePromise {
    /// What a node made from `spec` must show.
    pub fn of_spec(spec: &ImageSpec) -> NodePromise {
        let mut sysctls: BTreeMap<String, String> = REQUIRED_SYSCTLS
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        for (key, value) in &spec.system.sysctls {
            sysctls.insert(key.clone(), value.clone());
        }
        NodePromise {
            modules: node_modules(spec).into_iter().map(str::to_owned).collect(),
            sysctls,
            swap_off: spec.system.disable_swap,
            kubernetes_version: spec.kubernetes.version.to_string(),
        }
    }

    /// What an image built by caph-image promises, read from the files its plan wrote:
    /// `release` is [`RELEASE_PATH`]'s text, `modules` [`MODULES_CONFIG_PATH`]'s and `sysctls`
    /// [`SYSCTL_CONFIG_PATH`]'s. `None` for a file that is missing. The error says which file
    /// is missing or lacks what, for an image caph-image did not build.
    pub fn from_image_files(
        release: Option<&str>,
        modules: Option<&str>,
        sysctls: Option<&str>,
    ) -> Result<NodePromise, String> {
        let missing = |path: &str| {
            format!(
                "{path} is missing: the image was not built by caph-image, so it promises no node checks"
            )
        };
        let release = release.ok_or_else(|| missing(RELEASE_PATH))?;
        let modules = modules.ok_or_else(|| missing(MODULES_CONFIG_PATH))?;
        let sysctls = sysctls.ok_or_else(|| missing(SYSCTL_CONFIG_PATH))?;
        let kubernetes_version = release
            .lines()
            .find_map(|line| line.strip_prefix("KUBERNETES_VERSION="))
            // Written shell-quoted when it needs quotes; versions never do, but read either.
            .map(|value| {
                value
                    .trim()
                    .trim_matches(|c| c == '\'' || c == '"')
                    .to_string()
            })
            .filter(|value| !value.is_empty())
            .ok_or_else(|| format!("{RELEASE_PATH} has no KUBERNETES_VERSION line"))?;
        let content_lines = |text: &str| -> Vec<String> {
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'))
                .map(str::to_owned)
                .collect()
        };
        let mut promised_sysctls = BTreeMap::new();
        for line in content_lines(sysctls) {
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!(
                    "{SYSCTL_CONFIG_PATH}: \"{}\" is not `key = value`",
                    crate::text::Escaped(&line)
                ));
            };
            promised_sysctls.insert(key.trim().to_string(), value.trim().to_string());
        }
        Ok(NodePromise {
            modules: content_lines(modules),
            sysctls: promised_sysctls,
            swap_off: false,
            kubernetes_version,
        })
    }
}

/// The checks for a node made from `spec`, in a stable order.
pub fn node_checks(spec: &ImageSpec) -> Vec<NodeCheck> {
    promised_checks(&NodePromise::of_spec(spec))
}

/// The checks for a node that must keep `promise`, in a stable order.
pub fn promised_checks(promise: &NodePromise) -> Vec<NodeCheck> {
    let mut checks = Vec::new();
    let mut push = |name: String, command: String, expect: Expect, needs: Needs| {
        checks.push(NodeCheck {
            name,
            command,
            expect,
            needs,
        });
    };
    for module in &promise.modules {
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
    for (key, value) in &promise.sysctls {
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
    if promise.swap_off {
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
        Expect::Equals(format!("Kubernetes v{}", promise.kubernetes_version)),
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

/// The first line of [`facts_script`]'s output when systemd is the init system.
const SYSTEMD_RUNNING: &str = "systemd=running";

/// [`checks_script`] preceded by whether systemd is the init system (`sd_booted()`'s test:
/// `/run/systemd/system` exists only then), for a node that may not be booted with systemd (a
/// chroot-like simulated machine); [`judge_facts`] reads both.
pub fn facts_script(checks: &[NodeCheck]) -> String {
    format!(
        "if [ -d /run/systemd/system ]; then echo {SYSTEMD_RUNNING}; else echo systemd=not-running; fi\n{}",
        checks_script(checks)
    )
}

/// Judges [`facts_script`]'s `output`: where systemd was not the init system, the checks that
/// need a booted node are not checked (never passed). Also says whether systemd ran.
pub fn judge_facts(checks: &[NodeCheck], output: &str) -> (Vec<CheckResult>, bool) {
    let booted = output.lines().next().map(str::trim) == Some(SYSTEMD_RUNNING);
    (judge(checks, output, booted), booted)
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

/// Whether a finding holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingStatus {
    /// It holds.
    Ok,
    /// It does not: the image fails.
    Failed,
    /// It could not be checked where the node ran (the detail says why); never a pass.
    NotChecked,
}

impl FindingStatus {
    /// The word a report shows: `ok`, `FAILED` or `not checked`.
    pub fn word(self) -> &'static str {
        match self {
            FindingStatus::Ok => "ok",
            FindingStatus::Failed => "FAILED",
            FindingStatus::NotChecked => "not checked",
        }
    }
}

/// One row of a verification report: what was checked, whether it holds, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Short kebab-case name (`cloud-init-status`, `sysctl net.ipv4.ip_forward`).
    pub name: String,
    /// Whether it holds.
    pub status: FindingStatus,
    /// What was seen, in one line.
    pub detail: String,
}

impl Finding {
    /// A finding that holds when `holds`, else fails.
    pub fn judged(name: &str, holds: bool, detail: impl Into<String>) -> Finding {
        Finding {
            name: name.to_string(),
            status: if holds {
                FindingStatus::Ok
            } else {
                FindingStatus::Failed
            },
            detail: detail.into(),
        }
    }
}

impl From<&CheckResult> for Finding {
    fn from(result: &CheckResult) -> Finding {
        let (status, detail) = match &result.outcome {
            Outcome::Passed => (
                FindingStatus::Ok,
                format!("printed {}", result.check.expect.describe()),
            ),
            Outcome::Failed(output) => (
                FindingStatus::Failed,
                format!(
                    "`{}` printed \"{}\", expected {}",
                    result.check.command,
                    crate::text::Escaped(output.lines().next().unwrap_or_default()),
                    result.check.expect.describe()
                ),
            ),
            Outcome::NotChecked(why) => (FindingStatus::NotChecked, why.clone()),
        };
        Finding {
            name: result.check.name.clone(),
            status,
            detail,
        }
    }
}
