//! The local part of an install: the autosetup and the post-install script, checked before any
//! server is touched.

use caph_core::ImageSpec;
use caph_core::plan::quote;
use caph_core::spec::{DiskLayout, DriveRef};

use super::{InstallCause, InstallTarget};
use crate::autosetup::{self, Machine, POST_INSTALL_MARKER};
use crate::drives::{self, RescueDrive};

/// Everything an install writes to the rescue system, rendered and checked.
#[derive(Clone, PartialEq, Eq)]
pub struct PreparedInstall {
    /// The installed system's hostname.
    pub hostname: String,
    /// The tarball's file name, as installimage reads it.
    pub image_name: String,
    /// Where the tarball goes in the rescue system (`/root/<name>`).
    pub remote_image: String,
    /// The layout, drive hints and all.
    pub layout: DiskLayout,
    /// The autosetup file, as installimage gets it where the layout names devices only (with a
    /// `CRYPTPASSWORD` where the layout has one: show [`autosetup::redacted`] of it, never
    /// this); where it has drive hints, the file checked locally, with a placeholder device per
    /// hint, and [`PreparedInstall::for_drives`] gives the one installimage gets.
    pub autosetup: String,
    /// The post-install script; its last line prints the marker.
    pub post_install: String,
    /// The machine the rules were checked for.
    pub machine: Machine,
}

impl std::fmt::Debug for PreparedInstall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedInstall")
            .field("hostname", &self.hostname)
            .field("image_name", &self.image_name)
            .field("remote_image", &self.remote_image)
            .field("layout", &self.layout)
            .field("autosetup", &autosetup::redacted(&self.autosetup))
            .field("post_install", &self.post_install)
            .field("machine", &self.machine)
            .finish()
    }
}

/// Renders and checks the autosetup for `target`: the layout (the caller's or the spec's), the
/// hostname (the caller's or the spec's pattern with the server number), the tarball's name.
/// Reads nothing but the arguments, so it can run before anything else.
pub fn prepare(spec: &ImageSpec, target: &InstallTarget) -> Result<PreparedInstall, InstallCause> {
    let robot = spec.robot.as_ref();
    let layout = match (&target.layout, robot) {
        (Some(layout), _) => layout.clone(),
        (None, Some(robot)) => robot.disk.clone(),
        (None, None) => {
            return Err(InstallCause::Invalid(format!(
                "{} has no [robot] table and no layout was given: add [robot.disk] or pass a layout",
                spec.file
            )));
        }
    };
    let hostname = match (&target.hostname, robot) {
        (Some(hostname), _) => hostname.clone(),
        (None, Some(robot)) => robot
            .hostname
            .replace("{server_number}", &target.server_number.to_string()),
        (None, None) => format!("node-{}", target.server_number),
    };
    if !valid_hostname(&hostname) {
        return Err(InstallCause::Invalid(format!(
            "hostname \"{hostname}\" is not a valid host name: use letters, digits and '-' in labels of at most 63 characters"
        )));
    }
    let image_name = target
        .tarball
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| {
            InstallCause::Invalid(format!(
                "{} has no usable file name",
                target.tarball.display()
            ))
        })?
        .to_string();
    let remote_image = format!("/root/{image_name}");
    let machine = target.machine.unwrap_or(Machine {
        uefi: layout.uefi,
        arm: false,
    });
    // Hints name drives only the rescue system can tell: locally, each stands for a device of
    // its own, so that everything else about the layout is checked before a server is touched.
    let mut local = layout.clone();
    for (index, drive) in local.drives.iter_mut().enumerate() {
        if !matches!(DriveRef::parse(drive), Some(DriveRef::Device(_))) {
            *drive = format!("/dev/hinted-drive-{}", index + 1);
        }
    }
    let text = autosetup::render(&local, &hostname, &remote_image)
        .map_err(|refused| InstallCause::Invalid(refused.to_string()))?;
    let problems = autosetup::validate(&text, machine);
    if !problems.is_empty() {
        return Err(InstallCause::Autosetup {
            problems: problems.iter().map(ToString::to_string).collect(),
            text: autosetup::redacted(&text),
        });
    }
    Ok(PreparedInstall {
        post_install: post_install_script(spec, &hostname),
        hostname,
        image_name,
        remote_image,
        layout,
        autosetup: text,
        machine,
    })
}

impl PreparedInstall {
    /// The autosetup for the server's drives as its rescue system reports them: drive hints
    /// resolved, then installimage's rules that need the drives (each drive used exists, the
    /// partitions fit). A refusal lists the drives the server has.
    pub fn for_drives(&self, found: &[RescueDrive]) -> Result<String, InstallCause> {
        let listing = || found.iter().map(ToString::to_string).collect::<Vec<_>>();
        let resolved =
            drives::resolve(&self.layout, found).map_err(|problem| InstallCause::Drives {
                problems: vec![problem],
                found: listing(),
            })?;
        let text = autosetup::render(&resolved, &self.hostname, &self.remote_image)
            .map_err(|refused| InstallCause::Invalid(refused.to_string()))?;
        let sizes: Vec<autosetup::Drive> = found.iter().map(RescueDrive::as_drive).collect();
        let problems = autosetup::validate_with_drives(&text, self.machine, &sizes);
        if !problems.is_empty() {
            return Err(InstallCause::Drives {
                problems: problems.iter().map(ToString::to_string).collect(),
                found: listing(),
            });
        }
        Ok(text)
    }
}

/// RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The script installimage runs in a chroot of the new system. installimage ignores its exit
/// code, so it stops at the first failure (`set -euo pipefail`) and prints the marker only as
/// its very last line.
fn post_install_script(spec: &ImageSpec, hostname: &str) -> String {
    let mut script = String::from(
        "#!/bin/bash\n# Written by caph-image; run by installimage in a chroot of the installed system.\nset -euo pipefail\n",
    );
    if spec.system.disable_swap {
        // installimage writes /etc/fstab itself, after the image's own: a swap partition or LV of
        // the layout would be enabled at boot, and kubelet refuses to run with swap.
        script.push_str(
            "if [ -f /etc/fstab ]; then\n  sed -i -E 's@^([^#[:space:]][^[:space:]]*[[:space:]]+[^[:space:]]+[[:space:]]+swap[[:space:]].*)$@# swap disabled by caph-image: \\1@' /etc/fstab\nfi\n",
        );
    }
    script.push_str(&format!(
        "echo {} > /etc/caph-image-install\n",
        quote(&format!(
            "image={} digest={} hostname={hostname}",
            spec.image.name,
            spec.short_digest()
        ))
    ));
    script.push_str(&format!("echo {POST_INSTALL_MARKER}\n"));
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(valid_hostname("node-321"));
        assert!(valid_hostname("node-1.example.com"));
        assert!(!valid_hostname("-node"));
        assert!(!valid_hostname("node_1"));
        assert!(!valid_hostname(""));
    }
}
