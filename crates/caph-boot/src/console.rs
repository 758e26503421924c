//! What a booting node's serial console says: its lines without colour sequences, the milestones
//! of a boot (for progress while it runs), and what the whole boot must show (for the verdict).
//!
//! systemd's status lines are cut to the console width and coloured, so lines are matched by
//! their parts: `[  OK  ] Started ssh.service - OpenBSD Secure Shell server.`

use caph_core::checks::Finding;

/// Drops terminal colour sequences (CSI: ESC [ parameters final-byte) and carriage returns, so
/// console lines can be matched as text.
pub fn plain(line: &str) -> String {
    let mut text = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            text.push(c);
        }
    }
    text
}

/// Console output as lines without colour sequences.
pub fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes).lines().map(plain).collect()
}

/// Whether one line holds every one of `words`.
pub fn said(lines: &[String], words: &[&str]) -> bool {
    lines
        .iter()
        .any(|line| words.iter().all(|word| line.contains(word)))
}

/// The steps of a boot as the console shows them, in order: the words that mark each, and how
/// progress names it.
pub const MILESTONES: &[(&[&str], &str)] = &[
    (&["GRUB"], "GRUB loaded from the disk's MBR"),
    (&["Linux version"], "the kernel started"),
    (&["as init process"], "systemd started"),
    (
        &["running 'init-local'"],
        "cloud-init: init-local (the NoCloud seed)",
    ),
    (
        &["Reached target", "Multi-User System"],
        "multi-user reached",
    ),
    (&["running 'init'"], "cloud-init: init"),
    (&["running 'modules:config'"], "cloud-init: modules:config"),
    (
        &["running 'modules:final'"],
        "cloud-init: modules:final (runcmd)",
    ),
    (&["Cloud-init v.", "finished at"], "cloud-init finished"),
];

/// The milestones `lines` show, in [`MILESTONES`]' order.
pub fn milestones(lines: &[String]) -> Vec<&'static str> {
    MILESTONES
        .iter()
        .filter(|(words, _)| said(lines, words))
        .map(|(_, name)| *name)
        .collect()
}

/// The units systemd said it failed to start (their descriptions, as the console shows them),
/// and file systems it failed to mount.
pub fn failed_units(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|line| line.contains("FAILED"))
        .filter_map(|line| {
            ["Failed to start ", "Failed to mount "]
                .iter()
                .find_map(|prefix| line.split_once(prefix).map(|(_, rest)| rest))
        })
        .map(|description| description.trim().trim_end_matches('.').to_string())
        .collect()
}

/// What every boot's console must show: GRUB, multi-user with sshd started, no unit failed, no
/// panic or emergency mode, and the node's login prompt.
pub fn findings(lines: &[String], hostname: &str) -> Vec<Finding> {
    let mut findings = vec![
        Finding::judged(
            "boot-loader",
            said(lines, &["GRUB"]),
            if said(lines, &["GRUB"]) {
                "GRUB, from the disk's MBR, loaded the image's kernel".to_string()
            } else {
                "GRUB never spoke on the console: the disk did not boot through its own boot loader"
                    .to_string()
            },
        ),
        Finding::judged(
            "multi-user",
            said(lines, &["Reached target", "Multi-User System"]),
            if said(lines, &["Reached target", "Multi-User System"]) {
                "systemd reached multi-user.target".to_string()
            } else {
                "systemd never said it reached multi-user.target".to_string()
            },
        ),
        Finding::judged(
            "sshd",
            said(lines, &["Started", "OpenBSD Secure Shell server"]),
            if said(lines, &["Started", "OpenBSD Secure Shell server"]) {
                "ssh.service started (CAPH logs in over SSH)".to_string()
            } else {
                "ssh.service never started: CAPH could not log in (no host keys?)".to_string()
            },
        ),
    ];
    let prompt = format!("{hostname} login:");
    findings.push(Finding::judged(
        "login-prompt",
        said(lines, &[&prompt]),
        if said(lines, &[&prompt]) {
            format!("`{prompt}` on the serial console")
        } else {
            format!("no `{prompt}` on the serial console")
        },
    ));
    let failed = failed_units(lines);
    findings.push(Finding::judged(
        "failed-units",
        failed.is_empty(),
        if failed.is_empty() {
            "no unit failed to start".to_string()
        } else {
            format!("failed to start: {}", failed.join("; "))
        },
    ));
    let broken: Vec<&str> = [
        "Kernel panic",
        "emergency mode",
        "dracut-initqueue timeout",
        "Gave up waiting for root",
    ]
    .into_iter()
    .filter(|words| said(lines, &[words]))
    .collect();
    findings.push(Finding::judged(
        "kernel",
        broken.is_empty(),
        if broken.is_empty() {
            "no panic, no emergency mode".to_string()
        } else {
            format!("the console says: {}", broken.join("; "))
        },
    ));
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use caph_core::checks::FindingStatus;

    #[test]
    fn colour_sequences_are_dropped() {
        assert_eq!(
            plain(
                "[\u{1b}[0;32m  OK  \u{1b}[0m] Reached target \u{1b}[0;1;39mmulti-user.target\u{1b}[0m\r"
            ),
            "[  OK  ] Reached target multi-user.target"
        );
    }

    #[test]
    fn failed_units_are_named() {
        let console = lines(
            "[\u{1b}[0;1;31mFAILED\u{1b}[0m] Failed to start \u{1b}[0;1;39mcontainerd…0m - containerd container runtime.\n[  OK  ] Started ssh.service - OpenBSD Secure Shell server.\n"
                .as_bytes(),
        );
        assert_eq!(
            failed_units(&console),
            ["containerd…0m - containerd container runtime"]
        );
        let findings = findings(&console, "node");
        let status = |name: &str| findings.iter().find(|f| f.name == name).unwrap().status;
        assert_eq!(status("sshd"), FindingStatus::Ok);
        assert_eq!(status("failed-units"), FindingStatus::Failed);
        assert_eq!(status("boot-loader"), FindingStatus::Failed);
    }
}
