//! Checks on the installed node over SSH: the shared node checks of `caph_core::checks`
//! (modules, sysctls, swap, containerd with CRI, kubelet, time sync, cloud-init, host keys,
//! machine-id), run in one SSH session and judged here.
//!
//! Where systemd is not running as the init system (a chroot-like simulated machine), the checks
//! that need a booted node (live kernel state, running services, first-boot work) cannot be
//! answered: they are reported as not checked, never as passed, and the checks on the node's
//! files (sysctl files, fstab, enablement, kubelet's version) still run.

use caph_core::ImageSpec;
use caph_core::checks::{self, Outcome};

/// The script that gathers every fact: whether systemd is the init system, then each check's
/// output (`checks::facts_script`).
pub(crate) fn facts_script(spec: &ImageSpec) -> String {
    checks::facts_script(&checks::node_checks(spec))
}

/// The verdict: lines for the report, problems that fail the install.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub checks: Vec<String>,
    pub problems: Vec<String>,
}

/// Judges the output of [`facts_script`] against the spec.
pub(crate) fn judge(spec: &ImageSpec, output: &str) -> Verdict {
    let (results, booted) = checks::judge_facts(&checks::node_checks(spec), output);
    let mut verdict = Verdict::default();
    for result in results {
        match &result.outcome {
            Outcome::Passed | Outcome::NotChecked(_) => verdict.checks.push(result.describe()),
            Outcome::Failed(_) => verdict.problems.push(result.describe()),
        }
    }
    if !booted {
        verdict.checks.push(
            "systemd is not the init system here: checks of the running node were not made, only of its files".to_string(),
        );
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
            .join("../../images/debian-12-k8s-1.36.toml");
        let bytes = std::fs::read(path).expect("spec");
        caph_core::spec::load("debian-12-k8s-1.36.toml", &bytes, &Files).expect("valid")
    }

    /// The answers a node gives when every check passes, in `facts_script`'s format.
    fn passing_output(spec: &ImageSpec, booted: bool) -> String {
        let mut output = format!(
            "systemd={}\n",
            if booted { "running" } else { "not-running" }
        );
        for (index, check) in checks::node_checks(spec).iter().enumerate() {
            let answer = match &check.expect {
                checks::Expect::Equals(text) | checks::Expect::Contains(text) => text.clone(),
                checks::Expect::NotEquals(_) => "3".to_string(),
            };
            output.push_str(&format!("::caph-check::{index}\n{answer}\n"));
        }
        output
    }

    #[test]
    fn a_booted_node_is_judged_on_every_check() {
        let spec = spec();
        let verdict = judge(&spec, &passing_output(&spec, true));
        assert_eq!(verdict.problems, Vec::<String>::new());
        for name in [
            "containerd-active",
            "containerd-cri",
            "swap-in-use",
            "time-sync",
            "cloud-init",
            "ssh-host-keys",
            "machine-id",
            "module br_netfilter",
            "sysctl net.ipv6.conf.all.forwarding",
        ] {
            assert!(
                verdict
                    .checks
                    .iter()
                    .any(|line| line.starts_with(&format!("{name}: "))
                        && !line.contains("not checked")),
                "{name} in {:#?}",
                verdict.checks
            );
        }
    }

    #[test]
    fn without_systemd_live_checks_are_not_checked_never_passed() {
        let spec = spec();
        let verdict = judge(&spec, &passing_output(&spec, false));
        assert_eq!(verdict.problems, Vec::<String>::new());
        assert!(
            verdict.checks.contains(
                &"containerd-active: not checked (needs a node booted with systemd)".to_string()
            ),
            "{:#?}",
            verdict.checks
        );
        assert!(
            verdict
                .checks
                .iter()
                .any(|line| line == "kubelet-enabled: \"enabled\"")
        );
    }

    #[test]
    fn every_mismatch_is_named_with_command_and_output() {
        let spec = spec();
        let output = passing_output(&spec, true)
            .replace("\nactive\n", "\ninactive\n")
            .replace(
                &format!("Kubernetes v{}", spec.kubernetes.version),
                "Kubernetes v1.33.0",
            );
        let problems = judge(&spec, &output).problems;
        let text = problems.join("\n");
        for expected in [
            "containerd-active: `systemctl is-active containerd.service` printed \"inactive\", expected \"active\"",
            "kubelet-version: `kubelet --version` printed \"Kubernetes v1.33.0\"",
        ] {
            assert!(text.contains(expected), "{expected} in:\n{text}");
        }
    }

    #[test]
    fn the_facts_script_runs_and_later_sysctl_files_win() {
        // The sysctl-config commands, run against a scratch /etc through a changed root path.
        let spec = spec();
        let dir = std::env::temp_dir().join(format!("caph-verify-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc/sysctl.d")).unwrap();
        std::fs::write(
            dir.join("etc/sysctl.d/99-zz-caph-image.conf"),
            "net.ipv4.ip_forward = 1\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("etc/sysctl.d/99-zzz-late.conf"),
            "# late\nnet.ipv4.ip_forward=0\n",
        )
        .unwrap();
        let check = checks::node_checks(&spec)
            .into_iter()
            .find(|check| check.name == "sysctl-config net.ipv4.ip_forward")
            .unwrap();
        let command = check
            .command
            .replace("/etc/", &format!("{}/etc/", dir.display()));
        let output = std::process::Command::new("bash")
            .arg("-c")
            .arg(&command)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "0");
    }
}
