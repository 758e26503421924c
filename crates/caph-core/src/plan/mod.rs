//! The provisioning plan: a pure, deterministic list of named steps that turns a base system into a
//! kubeadm-ready node. Both backends run the same plan (over SSH, or in a chroot).
//!
//! Steps read a few variables that the executor exports in front of each script (see
//! [`BuildStamp::exports`]), so that the plan itself depends on nothing but the spec.

mod containerd;
mod shell;

use std::fmt::Write as _;

pub use containerd::{
    CONTAINERD_CERTS_DIR, CONTAINERD_DROPIN_DIR, CONTAINERD_SOCKET,
    config_toml as containerd_config_toml,
};
pub use shell::quote;

use crate::arch::Arch;
use crate::spec::{Artifact, ImageSpec, KubernetesSource};
use crate::text::{self, UnsafeLine};
use shell::Script;

/// The line-oriented files the plan writes with values from the spec.
/// Where the node's kernel modules are listed, one a line, for systemd-modules-load.
pub const MODULES_CONFIG_PATH: &str = "/etc/modules-load.d/caph-image.conf";

/// The image's provenance, written like os-release (`KEY=value` lines a shell can source): the
/// spec, the versions, the target and the build.
pub const RELEASE_PATH: &str = "/etc/caph-image-release";
const APT_SOURCES_FILE: &str = "/etc/apt/sources.list.d/kubernetes.list";

/// Where a plan runs, which changes what can be done live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A booted Hetzner Cloud server: modules and sysctls apply now, the build key is removed, free space is trimmed.
    Hcloud,
    /// A root filesystem in a chroot, packed into a tarball afterwards.
    Tarball,
}

impl Target {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Hcloud => "hcloud",
            Target::Tarball => "tarball",
        }
    }
}

/// One named step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// A short kebab-case name, unique in the plan (`containerd`, `hygiene`).
    pub name: String,
    /// What the step does.
    pub action: Action,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A bash script that starts with `set -euo pipefail`.
    Run {
        /// The script.
        script: String,
    },
    /// A file to place, with its parent directories.
    PlaceFile {
        /// Absolute path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// `user:group`.
        owner: String,
        /// Content.
        content: Vec<u8>,
    },
}

impl Step {
    /// The step as a bash script, for executors that can only run scripts.
    pub fn to_script(&self) -> String {
        match &self.action {
            Action::Run { script } => script.clone(),
            Action::PlaceFile {
                path,
                mode,
                owner,
                content,
            } => {
                let mut script = Script::new();
                let directory = path
                    .rsplit_once('/')
                    .map_or("/", |(dir, _)| if dir.is_empty() { "/" } else { dir });
                script.command(&["install", "-d", "-m", "0755", directory]);
                match literal_heredoc_text(content) {
                    Some(text) => {
                        script.line(format!("cat > {} <<'CAPH_IMAGE_FILE'", quote(path)));
                        script.line(text.strip_suffix('\n').unwrap_or(text));
                    }
                    None => {
                        // base64 keeps any other content (binary, no final newline, a marker line) intact.
                        script.line(format!("base64 -d > {} <<'CAPH_IMAGE_FILE'", quote(path)));
                        for chunk in base64_encode(content).as_bytes().chunks(76) {
                            script.line(String::from_utf8_lossy(chunk));
                        }
                    }
                }
                script.line("CAPH_IMAGE_FILE");
                script.command(&["chown", owner, path]);
                script.command(&["chmod", &format!("{mode:04o}"), path]);
                script.finish()
            }
        }
    }
}

/// The ordered steps for one spec, target and architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The spec's `caph-image-name`.
    pub image_name: String,
    /// The spec's digest.
    pub spec_digest: String,
    /// Where it runs.
    pub target: Target,
    /// For which architecture.
    pub arch: Arch,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// Facts about one build that steps read from the environment, exported by the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildStamp {
    /// The build id, also the label on temporary resources.
    pub build_id: String,
    /// RFC 3339 build time.
    pub build_time: String,
    /// `caph-image <version>`.
    pub builder: String,
    /// The build's temporary public key (OpenSSH line), removed from root's authorized keys by hygiene.
    pub build_public_key: Option<String>,
}

impl BuildStamp {
    /// `export` lines to put in front of every step's script.
    pub fn exports(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "export CAPH_BUILD_ID={}", quote(&self.build_id));
        let _ = writeln!(text, "export CAPH_BUILD_TIME={}", quote(&self.build_time));
        let _ = writeln!(text, "export CAPH_BUILDER={}", quote(&self.builder));
        if let Some(key) = &self.build_public_key {
            let _ = writeln!(text, "export CAPH_BUILD_PUBLIC_KEY={}", quote(key));
        }
        text
    }
}

/// Where the node's sysctls go. installimage writes `/etc/sysctl.d/99-hetzner.conf` (rp_filter,
/// IPv6 router advertisements) into every install, and `sysctl --system` applies files in the
/// order of their names with the last value winning, so ours sorts after it.
pub const SYSCTL_CONFIG_PATH: &str = "/etc/sysctl.d/99-zz-caph-image.conf";

/// The unit that makes SSH host keys on a tarball node where none were made for it; see
/// [`HOST_KEYS_UNIT`].
pub const HOST_KEYS_UNIT_PATH: &str = "/etc/systemd/system/caph-image-host-keys.service";

/// The host key types a tarball carries as empty placeholders. installimage regenerates exactly
/// the types whose private key file exists in the image (and skips the others), so without them
/// an installed node has no host key and sshd does not start.
pub const HOST_KEY_PLACEHOLDER_TYPES: &[&str] = &["rsa", "ecdsa", "ed25519"];

/// First-boot host keys for a tarball node: an empty placeholder that nothing replaced (the
/// tarball unpacked by something other than installimage) is removed and every missing type
/// generated, before sshd starts. Where installimage made keys, `ssh-keygen -A` finds them all
/// present and does nothing. After cloud-init's first stage, whose ssh module may delete and make
/// host keys too (on a Hetzner Cloud disk, [`CLOUD_INIT_HCLOUD_DISK_CONFIG`]), so that the two
/// never write one key file at once.
pub const HOST_KEYS_UNIT: &str = "\
[Unit]
Description=SSH host keys for a node installed from a caph-image tarball
After=cloud-init.service
Before=ssh.service
ConditionPathExists=/usr/bin/ssh-keygen

[Service]
Type=oneshot
ExecStart=/usr/bin/find /etc/ssh -maxdepth 1 -name ssh_host_*_key -type f -empty -delete
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service multi-user.target
";

/// Where a tarball node's cloud-init settings go.
pub const CLOUD_INIT_CONFIG_PATH: &str = "/etc/cloud/cloud.cfg.d/99-caph-image.cfg";

/// cloud-init on a tarball node, as Cluster API Provider Hetzner provisions a dedicated server:
/// its post-install script seeds the NoCloud data source (`/var/lib/cloud/seed/nocloud-net`)
/// with the bootstrap data, installimage writes the network configuration and makes the SSH host
/// keys, and CAPH then logs in as root over SSH and waits for `cloud-init status` to say done.
pub const CLOUD_INIT_TARBALL_CONFIG: &str = "\
# Written by caph-image for a dedicated server installed by installimage.
# The bootstrap data comes from the NoCloud seed that Cluster API Provider Hetzner's post-install
# script writes (/var/lib/cloud/seed/nocloud-net); there is no metadata service to ask.
datasource_list: [ NoCloud, None ]
# installimage writes the network configuration for the interface it found.
network:
  config: disabled
# installimage made this node's SSH host keys: keep them. cloud-init makes the types it lists that
# are missing, and its default list still has DSA, which OpenSSH no longer uses: list the ones
# installimage makes.
ssh_deletekeys: false
ssh_genkeytypes: [ rsa, ecdsa, ed25519 ]
# Cluster API Provider Hetzner logs in as root with the keys installimage installed.
disable_root: false
# installimage sized the partitions to the drives by the layout, and a layout may put / on RAID or
# LVM: nothing for cloud-init to grow.
growpart:
  mode: 'off'
resize_rootfs: false
# The image has no locale data to generate from (no locales package); C.UTF-8 comes with libc,
# where cloud-init's default en_US.UTF-8 would fail the first boot in locale-gen.
locale: C.UTF-8
";

/// cloud-init on a tarball node written onto a Hetzner Cloud server's disk (`build hcloud
/// --from-tarball`), in place of [`CLOUD_INIT_TARBALL_CONFIG`] at [`CLOUD_INIT_CONFIG_PATH`]:
/// there the user data (Cluster API Provider Hetzner's bootstrap), the host name, the SSH keys
/// and the network come from Hetzner's metadata service, and nothing else writes the network.
///
/// It replaces the tarball's file rather than adding one that sorts after it: cloud-init takes a
/// `network` key of its own configuration as the network configuration itself, ahead of the data
/// source's, and a later file can change `config: disabled` only into another such key, never
/// remove it. A snapshot becomes many servers, so host keys are made per instance as on
/// Hetzner's own images (the tarball's [`HOST_KEYS_UNIT`] runs after cloud-init and then finds
/// them all). The locale is `C.UTF-8`, which needs no generation: cloud-init's default,
/// `en_US.UTF-8`, is not generated in the tarball, and Debian's `locale-gen` makes only what
/// `/etc/locale.gen` lists, so setting it fails cloud-init's locale module.
pub const CLOUD_INIT_HCLOUD_DISK_CONFIG: &str = "\
# Written by caph-image build hcloud --from-tarball for a Hetzner Cloud server, in place of the
# tarball's settings for installimage: the user data, host name, SSH keys and network come from
# Hetzner's metadata service (169.254.169.254).
datasource_list: [ Hetzner, None ]
# No network key: cloud-init configures the network from the metadata service.
# Each server made from the snapshot makes its own host keys, of the types sshd loads.
ssh_deletekeys: true
ssh_genkeytypes: [ rsa, ecdsa, ed25519 ]
# Root logs in with the SSH keys given when the server was created, as on Hetzner's images.
disable_root: false
# A server of a bigger type than the build's has a bigger disk: the root partition is the last
# one, and grows to its end (growpart, from cloud-guest-utils), then its file system with it.
growpart:
  mode: auto
  devices: [ '/' ]
resize_rootfs: true
# Built into the C library: nothing to generate.
locale: C.UTF-8
";

/// Where a tarball node's GRUB settings of ours go: Debian's and Ubuntu's `grub-mkconfig` reads
/// `/etc/default/grub.d/*.cfg` after `/etc/default/grub`, which installimage rewrites.
pub const GRUB_CONFIG_PATH: &str = "/etc/default/grub.d/caph-image.cfg";

/// The kernel consoles of an x86 tarball node: the screen (what Hetzner's KVM console shows) and
/// the first serial port (serial-over-LAN, and QEMU in the tests), the serial port last so that
/// it is `/dev/console` and systemd's status lines and a login prompt reach it. installimage
/// replaces `GRUB_CMDLINE_LINUX_DEFAULT` and leaves `GRUB_CMDLINE_LINUX` alone; on arm64 it adds
/// the consoles itself.
pub const GRUB_SERIAL_CONSOLE: &str = "\
# Written by caph-image: kernel messages and a login prompt on the screen and on the first serial port.
GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX console=tty0 console=ttyS0,115200\"
";

/// Kernel modules every node loads.
pub const REQUIRED_MODULES: &[&str] = &["overlay", "br_netfilter"];
/// sysctls every node sets; a spec may override the values.
pub const REQUIRED_SYSCTLS: &[(&str, &str)] = &[
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.ipv4.ip_forward", "1"),
    // Dual-stack and IPv6 clusters route pod traffic; image-builder sets it on every node.
    ("net.ipv6.conf.all.forwarding", "1"),
];
/// Distribution packages every node needs: download tools for the plan, and every program
/// kubeadm's preflight looks for on a node (conntrack, ip and tc, iptables, mount, nsenter from
/// util-linux, and the ones it warns about: ebtables, ethtool, socat).
pub const BASE_PACKAGES: &[&str] = &[
    "apt-transport-https",
    "ca-certificates",
    "conntrack",
    "curl",
    // The system bus: kubelet's graceful node shutdown takes its inhibitor lock from logind over
    // D-Bus, `timedatectl` and `hostnamectl` ask their daemons over it, and logind (which needs
    // it) is what turns the power button into a clean shutdown. Minimal roots lack it.
    "dbus",
    "ebtables",
    "ethtool",
    "gnupg",
    "iproute2",
    "iptables",
    "kmod",
    "mount",
    "socat",
    // A node's clock must be right for TLS with the API server; installimage configures the
    // daemon only where one is installed.
    "systemd-timesyncd",
    "util-linux",
];
/// Where the CNI plugins go: the directory kubelet and every CNI network add-on look in.
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
/// Timers and services that would fight the build for the dpkg lock.
const APT_BACKGROUND_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "apt-daily.service",
    "apt-daily-upgrade.service",
    "unattended-upgrades.service",
];

/// The kernel modules a node loads: [`REQUIRED_MODULES`], then the spec's own.
pub fn node_modules(spec: &ImageSpec) -> Vec<&str> {
    let mut modules: Vec<&str> = REQUIRED_MODULES.to_vec();
    modules.extend(
        spec.system
            .kernel_modules
            .iter()
            .map(String::as_str)
            .filter(|module| !REQUIRED_MODULES.contains(module)),
    );
    modules
}

/// Renders the plan. Pure: the same inputs give the same plan, byte for byte.
///
/// Refuses a value that would break a line of a line-oriented file it writes (a spec that
/// passed validation holds none).
pub fn render(spec: &ImageSpec, target: Target, arch: Arch) -> Result<Plan, UnsafeLine> {
    let mut steps = Vec::new();
    steps.push(run("wait-for-system", prepare_system()));
    let modules = node_modules(spec);
    steps.push(file(
        "kernel-modules-config",
        MODULES_CONFIG_PATH,
        0o644,
        checked_lines(MODULES_CONFIG_PATH, &modules)?,
    ));
    steps.push(file(
        "sysctl-config",
        SYSCTL_CONFIG_PATH,
        0o644,
        sysctl_conf(spec)?,
    ));
    if target == Target::Hcloud {
        steps.push(run(
            "apply-kernel-settings",
            apply_kernel_settings(&modules),
        ));
    }
    if spec.system.disable_swap {
        steps.push(run("swap-off", swap_off()));
    }
    steps.push(run("packages", packages(spec)));
    steps.push(run(
        "containerd",
        containerd_install(&spec.containerd, arch),
    ));
    steps.push(file(
        "containerd-unit",
        "/etc/systemd/system/containerd.service",
        0o644,
        containerd::CONTAINERD_SERVICE.to_string(),
    ));
    steps.push(run("containerd-directories", containerd_directories()));
    steps.push(file(
        "containerd-config",
        "/etc/containerd/config.toml",
        0o644,
        containerd::config_toml(spec.containerd.version, &spec.sandbox_image),
    ));
    steps.push(run("runc", runc_install(&spec.runc, arch)));
    steps.push(run("crictl", crictl_install(&spec.crictl, arch)));
    steps.push(file(
        "crictl-config",
        "/etc/crictl.yaml",
        0o644,
        containerd::crictl_yaml(),
    ));
    match &spec.kubernetes.source {
        KubernetesSource::Apt {
            repository,
            key_url,
            key_sha256,
        } => {
            steps.push(run(
                "kubernetes",
                kubernetes_apt(spec, repository, key_url, key_sha256.as_deref())?,
            ));
        }
        KubernetesSource::Binaries { base_url, sha256 } => {
            if let Some(cni) = &spec.cni {
                steps.push(run("cni-plugins", cni_install(cni, arch)));
            }
            let pins = sha256.get(&arch);
            steps.push(run(
                "kubernetes",
                kubernetes_binaries(spec, base_url, arch, pins),
            ));
            steps.push(file(
                "kubelet-unit",
                "/etc/systemd/system/kubelet.service",
                0o644,
                KUBELET_SERVICE.to_string(),
            ));
            steps.push(file(
                "kubelet-kubeadm-dropin",
                "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
                0o644,
                KUBEADM_DROPIN.to_string(),
            ));
        }
    }
    steps.push(run("enable-services", enable_services()));
    if spec.kubernetes.prepull_images {
        steps.push(run("prepull-images", prepull(spec)));
    }
    for (index, user_file) in spec.system.files.iter().enumerate() {
        steps.push(Step {
            name: format!("file-{}", index + 1),
            action: Action::PlaceFile {
                path: user_file.path.clone(),
                mode: user_file.mode,
                owner: user_file.owner.clone(),
                content: user_file.content.clone(),
            },
        });
    }
    for (index, user_script) in spec.system.scripts.iter().enumerate() {
        let mut script = Script::new();
        script.line(format!("# {}", user_script.path.replace('\n', " ")));
        script.line(&user_script.content);
        steps.push(run(&format!("script-{}", index + 1), script.finish()));
    }
    if target == Target::Tarball {
        steps.push(run("cloud-init", cloud_init_install()));
        steps.push(file(
            "cloud-init-config",
            CLOUD_INIT_CONFIG_PATH,
            0o644,
            CLOUD_INIT_TARBALL_CONFIG.to_string(),
        ));
    }
    if target == Target::Tarball && arch == Arch::X86 {
        steps.push(file(
            "serial-console",
            GRUB_CONFIG_PATH,
            0o644,
            GRUB_SERIAL_CONSOLE.to_string(),
        ));
    }
    if target == Target::Tarball {
        steps.push(file(
            "host-keys-unit",
            HOST_KEYS_UNIT_PATH,
            0o644,
            HOST_KEYS_UNIT.to_string(),
        ));
    }
    steps.push(run("provenance", provenance(spec, target, arch)));
    steps.push(run("hygiene", hygiene(spec, target)));
    Ok(Plan {
        image_name: spec.image.name.clone(),
        spec_digest: spec.digest.clone(),
        target,
        arch,
        steps,
    })
}

impl Plan {
    /// The whole plan as one readable script, as `caph-image plan` prints it.
    pub fn render_script(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "#!/bin/bash");
        let _ = writeln!(
            text,
            "# caph-image plan: image {}, target {}, architecture {}",
            self.image_name,
            self.target.name(),
            self.arch
        );
        let _ = writeln!(text, "# spec sha256 {}", self.spec_digest);
        let _ = writeln!(
            text,
            "# Each step runs as its own `bash -s`, in this order, after the CAPH_* exports of the build."
        );
        let count = self.steps.len();
        for (index, step) in self.steps.iter().enumerate() {
            let _ = writeln!(
                text,
                "\n# ---- step {}/{count}: {} ----",
                index + 1,
                step.name
            );
            text.push_str(&step.to_script());
        }
        text
    }
}

fn run(name: &str, script: String) -> Step {
    Step {
        name: name.to_string(),
        action: Action::Run { script },
    }
}

fn file(name: &str, path: &str, mode: u32, content: String) -> Step {
    Step {
        name: name.to_string(),
        action: Action::PlaceFile {
            path: path.to_string(),
            mode,
            owner: "root:root".to_string(),
            content: content.into_bytes(),
        },
    }
}

/// One item a line, each one field (a module name).
fn checked_lines(file: &str, items: &[&str]) -> Result<String, UnsafeLine> {
    let mut text = String::new();
    for item in items {
        text::field_in(file, item)?;
        text.push_str(item);
        text.push('\n');
    }
    Ok(text)
}

fn sysctl_conf(spec: &ImageSpec) -> Result<String, UnsafeLine> {
    let mut settings: std::collections::BTreeMap<&str, &str> =
        REQUIRED_SYSCTLS.iter().copied().collect();
    for (key, value) in &spec.system.sysctls {
        settings.insert(key, value);
    }
    let mut text = String::new();
    for (key, value) in settings {
        text::field_in(SYSCTL_CONFIG_PATH, key)?;
        text::line_in(SYSCTL_CONFIG_PATH, value)?;
        let _ = writeln!(text, "{key} = {value}");
    }
    Ok(text)
}

/// Shell functions shared by steps that download: fetch with retries, and verify a sha256.
const FETCH_FUNCTIONS: &str = r#"caph_download() {
  # caph_download URL DEST: download, or stop and say which download failed and curl's reason.
  local url=$1 dest=$2 reason
  if ! reason=$(curl --fail --silent --show-error --location --retry 5 --retry-delay 2 --connect-timeout 20 --output "$dest" "$url" 2>&1); then
    rm -f "$dest"
    echo "caph-image: downloading $url failed: ${reason:-curl gave no reason}" >&2
    exit 1
  fi
}
caph_fetch() {
  # caph_fetch URL DEST EXPECTED_SHA256 ORIGIN: download, then refuse the file unless its sha256
  # matches; ORIGIN says where the expected digest comes from (the spec's pin, or a checksum file).
  local url=$1 dest=$2 expected=$3 origin=${4:-} actual
  caph_download "$url" "$dest"
  actual=$(sha256sum "$dest" | cut -d' ' -f1)
  if [ "$actual" != "$expected" ]; then
    rm -f "$dest"
    echo "caph-image: checksum mismatch for $url: expected sha256 $expected (${origin:-the expected digest}), got $actual" >&2
    exit 1
  fi
  echo "verified $url (sha256 $actual)"
}
caph_published_sha256() {
  # caph_published_sha256 CHECKSUM_URL FILE_NAME: the digest for FILE_NAME in an upstream checksum file.
  # Runs in $(...), where `set -e` does not reach: every failure exits explicitly.
  local sums digest sums_file
  sums_file=$(mktemp)
  ( caph_download "$1" "$sums_file" ) || { rm -f "$sums_file"; exit 1; }
  sums=$(cat "$sums_file")
  rm -f "$sums_file"
  digest=$(printf '%s\n' "$sums" | awk -v name="$2" 'NF == 1 && NR == 1 { only = $1 } NF >= 2 { f = $2; sub(/^\*/, "", f); if (f == name) { print $1; found = 1; exit } } END { if (!found && only != "") print only }')
  if [ -z "$digest" ]; then
    echo "caph-image: no sha256 for $2 in $1" >&2
    exit 1
  fi
  printf '%s\n' "$digest"
}"#;

/// The environment every apt call needs: no prompts, and wait for the dpkg lock instead of failing on it.
const APT: &str = "apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold";

fn prepare_system() -> String {
    let mut script = Script::new();
    script.line(
        "# cloud-init may still be installing packages on a fresh server; wait where it exists.",
    );
    script.line("if command -v cloud-init >/dev/null 2>&1; then");
    script.line("  cloud-init status --wait >/dev/null || echo \"cloud-init finished with status $?; continuing\" >&2");
    script.line("fi");
    script.line(
        "# Keep apt's timers from taking the dpkg lock during the build; they stay masked on the node unless the spec sets system.automatic_upgrades.",
    );
    script.line(format!(
        "systemctl mask {} >/dev/null 2>&1 || true",
        APT_BACKGROUND_UNITS.join(" ")
    ));
    script.line("if [ -d /run/systemd/system ]; then");
    script.line(format!(
        "  systemctl stop {} >/dev/null 2>&1 || true",
        APT_BACKGROUND_UNITS.join(" ")
    ));
    script.line("fi");
    script.line(
        "# Wait for any dpkg run in progress (where dpkg's lock exists) before the first apt call.",
    );
    script.line("if [ -e /var/lib/dpkg/lock-frontend ] && command -v flock >/dev/null 2>&1; then");
    script.line("  flock --timeout 600 /var/lib/dpkg/lock-frontend true");
    script.line("fi");
    script.finish()
}

fn apply_kernel_settings(modules: &[&str]) -> String {
    let mut script = Script::new();
    script.line("# Load now what /etc/modules-load.d loads at boot; the persisted files are what the image keeps.");
    for module in modules {
        script.line(format!(
            "modprobe {m} || echo \"warning: cannot load {m} now; it loads at boot\" >&2",
            m = quote(module)
        ));
    }
    script.line("sysctl --system >/dev/null || echo 'warning: some sysctls cannot be applied now; they apply at boot' >&2");
    script.finish()
}

fn swap_off() -> String {
    let mut script = Script::new();
    script.line("swapoff -a || true");
    script.line("if [ -f /etc/fstab ]; then");
    script.line("  sed -i -E 's@^([^#[:space:]][^[:space:]]*[[:space:]]+[^[:space:]]+[[:space:]]+swap[[:space:]].*)$@# swap disabled by caph-image: \\1@' /etc/fstab");
    script.line("fi");
    script.line("if [ -f /swap.img ]; then rm -f /swap.img; fi");
    script.finish()
}

/// cloud-init for a tarball node (a Hetzner Cloud system image has its own, with Hetzner's data
/// source), and growpart (cloud-guest-utils), with which a node written onto a Hetzner Cloud
/// disk (`build hcloud --from-tarball`) grows its root partition on a bigger server type.
fn cloud_init_install() -> String {
    let mut script = Script::new();
    script.line("export DEBIAN_FRONTEND=noninteractive");
    script.line(format!(
        "{APT} install -y --no-install-recommends cloud-init cloud-guest-utils"
    ));
    script.line("cloud-init --version");
    script.finish()
}

fn packages(spec: &ImageSpec) -> String {
    let mut script = Script::new();
    script.line("export DEBIAN_FRONTEND=noninteractive");
    script.line(format!("{APT} update"));
    let mut words: Vec<&str> = BASE_PACKAGES.to_vec();
    words.extend(spec.system.packages.iter().map(String::as_str));
    let quoted: Vec<String> = words.iter().map(|word| quote(word)).collect();
    script.line(format!(
        "{APT} install -y --no-install-recommends {}",
        quoted.join(" ")
    ));
    script.finish()
}

/// Assigns `expected` from the pin, or from the upstream checksum file when there is none.
/// A sha256 pin from the spec, with the field it was written in (for the mismatch message).
struct Pin<'a> {
    field: String,
    digest: &'a str,
}

/// Downloads `url` to `dest`, verified against the spec's pin or else the upstream checksum file;
/// a mismatch names both digests and where the expected one came from.
fn fetch_verified(
    script: &mut Script,
    url: &str,
    pin: Option<Pin<'_>>,
    checksum_url: &str,
    file_name: &str,
    dest: &str,
) {
    let origin = match pin {
        Some(pin) => {
            script.assign("expected", pin.digest);
            format!("pinned by {} in the spec", pin.field)
        }
        None => {
            script.line(format!(
                "expected=$(caph_published_sha256 {} {})",
                quote(checksum_url),
                quote(file_name)
            ));
            format!("published in {checksum_url}")
        }
    };
    script.line(format!(
        "caph_fetch {} {} \"$expected\" {}",
        quote(url),
        quote(dest),
        quote(&origin)
    ));
}

/// A script that starts by downloading `file_name` from `artifact`'s release directory to
/// `dest`, verified against the spec's pin for `arch` or else `checksum_file` beside it.
fn fetch_release_file(
    artifact: &Artifact,
    section: &str,
    arch: Arch,
    file_name: &str,
    checksum_file: &str,
    dest: &str,
) -> Script {
    let directory = format!("{}/v{}", artifact.base_url, artifact.version);
    let mut script = Script::new();
    script.line(FETCH_FUNCTIONS);
    fetch_verified(
        &mut script,
        &format!("{directory}/{file_name}"),
        artifact.sha256.get(&arch).map(|digest| Pin {
            field: format!("{section}.sha256.{}", arch.debian_name()),
            digest,
        }),
        &format!("{directory}/{checksum_file}"),
        file_name,
        dest,
    );
    script
}

fn containerd_install(artifact: &Artifact, arch: Arch) -> String {
    let file_name = format!(
        "containerd-{}-linux-{}.tar.gz",
        artifact.version,
        arch.debian_name()
    );
    let archive = "/tmp/caph-containerd.tar.gz";
    let mut script = fetch_release_file(
        artifact,
        "containerd",
        arch,
        &file_name,
        &format!("{file_name}.sha256sum"),
        archive,
    );
    script.command(&["tar", "-C", "/usr/local", "-xzf", archive]);
    script.command(&["rm", "-f", archive]);
    script.line("/usr/local/bin/containerd --version");
    script.finish()
}

fn containerd_directories() -> String {
    let mut script = Script::new();
    script.line(
        "# Registry host configurations (mirrors) and config drop-ins, which config.toml names.",
    );
    script.command(&[
        "install",
        "-d",
        "-m",
        "0755",
        CONTAINERD_CERTS_DIR,
        CONTAINERD_DROPIN_DIR,
    ]);
    script.finish()
}

fn cni_install(artifact: &Artifact, arch: Arch) -> String {
    let file_name = format!(
        "cni-plugins-linux-{}-v{}.tgz",
        arch.debian_name(),
        artifact.version
    );
    let archive = "/tmp/caph-cni-plugins.tgz";
    let mut script = fetch_release_file(
        artifact,
        "cni",
        arch,
        &file_name,
        &format!("{file_name}.sha256"),
        archive,
    );
    script.command(&["install", "-d", "-m", "0755", CNI_BIN_DIR]);
    script.command(&["tar", "-C", CNI_BIN_DIR, "-xzf", archive]);
    script.command(&["rm", "-f", archive]);
    script.line("# Every CNI plugin answers the VERSION command of the CNI specification.");
    script.line(format!(
        "CNI_COMMAND=VERSION {CNI_BIN_DIR}/loopback </dev/null"
    ));
    script.finish()
}

fn runc_install(artifact: &Artifact, arch: Arch) -> String {
    let file_name = format!("runc.{}", arch.debian_name());
    let binary = "/tmp/caph-runc";
    let mut script =
        fetch_release_file(artifact, "runc", arch, &file_name, "runc.sha256sum", binary);
    script.command(&["install", "-m", "0755", binary, "/usr/local/sbin/runc"]);
    script.command(&["rm", "-f", binary]);
    script.line("/usr/local/sbin/runc --version");
    script.finish()
}

fn crictl_install(artifact: &Artifact, arch: Arch) -> String {
    let file_name = format!(
        "crictl-v{}-linux-{}.tar.gz",
        artifact.version,
        arch.debian_name()
    );
    let archive = "/tmp/caph-crictl.tar.gz";
    let mut script = fetch_release_file(
        artifact,
        "crictl",
        arch,
        &file_name,
        &format!("{file_name}.sha256"),
        archive,
    );
    script.command(&["tar", "-C", "/usr/local/bin", "-xzf", archive, "crictl"]);
    script.command(&["rm", "-f", archive]);
    script.line("/usr/local/bin/crictl --version");
    script.finish()
}

fn kubernetes_apt(
    spec: &ImageSpec,
    repository: &str,
    key_url: &str,
    key_sha256: Option<&str>,
) -> Result<String, UnsafeLine> {
    text::field_in(APT_SOURCES_FILE, repository)?;
    let version = spec.kubernetes.version.to_string();
    let keyring = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg";
    let mut script = Script::new();
    script.line("export DEBIAN_FRONTEND=noninteractive");
    script.command(&["install", "-d", "-m", "0755", "/etc/apt/keyrings"]);
    match key_sha256 {
        Some(pin) => {
            script.line(FETCH_FUNCTIONS);
            script.line(format!(
                "caph_fetch {} /tmp/caph-kubernetes-release.key {} {}",
                quote(key_url),
                quote(pin),
                quote("pinned by kubernetes.apt_key_sha256 in the spec")
            ));
        }
        None => {
            script.line("# No key pin in the spec: the key is trusted as served over HTTPS; apt then verifies every package against it.");
            script.line(format!("curl --fail --silent --show-error --location --retry 5 --output /tmp/caph-kubernetes-release.key {}", quote(key_url)));
        }
    }
    script.command(&[
        "gpg",
        "--dearmor",
        "--batch",
        "--yes",
        "--output",
        keyring,
        "/tmp/caph-kubernetes-release.key",
    ]);
    script.command(&["rm", "-f", "/tmp/caph-kubernetes-release.key"]);
    script.line(format!(
        "echo {} > {APT_SOURCES_FILE}",
        quote(&format!("deb [signed-by={keyring}] {repository} /"))
    ));
    script.line(format!("{APT} update"));
    script.assign("wanted", &version);
    script.line("# Resolve the exact package revision for the version (for example 1.36.0-1.1).");
    script.line("package_version=$(apt-cache madison kubelet | awk -v v=\"$wanted\" '{ split($3, parts, \"-\"); if (parts[1] == v) { print $3; exit } }')");
    script.line("if [ -z \"$package_version\" ]; then");
    script.line("  echo \"caph-image: kubelet $wanted is not in the repository\" >&2");
    script.line("  exit 1");
    script.line("fi");
    script.line(format!("{APT} install -y --no-install-recommends \"kubelet=$package_version\" \"kubeadm=$package_version\" \"kubectl=$package_version\""));
    script.line("apt-mark hold kubelet kubeadm kubectl");
    script.line("kubelet --version");
    Ok(script.finish())
}

fn kubernetes_binaries(
    spec: &ImageSpec,
    base_url: &str,
    arch: Arch,
    pins: Option<&std::collections::BTreeMap<String, String>>,
) -> String {
    let version = spec.kubernetes.version.to_string();
    let mut script = Script::new();
    script.line(FETCH_FUNCTIONS);
    for component in crate::spec::KUBERNETES_COMPONENTS {
        let url = format!(
            "{base_url}/v{version}/bin/linux/{}/{component}",
            arch.debian_name()
        );
        fetch_verified(
            &mut script,
            &url,
            pins.and_then(|pins| pins.get(*component))
                .map(|digest| Pin {
                    field: format!("kubernetes.sha256.{}.{component}", arch.debian_name()),
                    digest,
                }),
            &format!("{url}.sha256"),
            component,
            &format!("/tmp/caph-{component}"),
        );
        script.command(&[
            "install",
            "-m",
            "0755",
            &format!("/tmp/caph-{component}"),
            &format!("/usr/local/bin/{component}"),
        ]);
        script.command(&["rm", "-f", &format!("/tmp/caph-{component}")]);
    }
    script.line("/usr/local/bin/kubelet --version");
    script.finish()
}

const KUBELET_SERVICE: &str = "\
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/local/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
";

const KUBEADM_DROPIN: &str = "\
# kubeadm writes kubeadm-flags.env and config.yaml at join time; this wires them into kubelet.
[Service]
Environment=\"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\"
Environment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
";

fn enable_services() -> String {
    let mut script = Script::new();
    script.line(
        "# systemctl enable works offline too, so this holds in a chroot as on a booted server.",
    );
    script.line("systemctl daemon-reload >/dev/null 2>&1 || true");
    script.command(&[
        "systemctl",
        "enable",
        "containerd.service",
        "kubelet.service",
    ]);
    script.finish()
}

fn prepull(spec: &ImageSpec) -> String {
    let mut script = Script::new();
    script.line("if [ -d /run/systemd/system ]; then");
    script.line("  systemctl start containerd.service");
    script.line("else");
    script.line(
        "  # In a chroot nothing runs containerd: start it for the pull and stop it afterwards.",
    );
    script.line("  /usr/local/bin/containerd >/tmp/caph-containerd.log 2>&1 &");
    script.line("  containerd_pid=$!");
    script.line("  trap 'kill \"$containerd_pid\" 2>/dev/null || true; wait \"$containerd_pid\" 2>/dev/null || true' EXIT");
    script.line("fi");
    script.line(
        "for _ in $(seq 60); do [ -S /run/containerd/containerd.sock ] && break; sleep 1; done",
    );
    script.line(format!(
        "kubeadm config images pull --kubernetes-version {} --cri-socket {}",
        quote(&format!("v{}", spec.kubernetes.version)),
        quote(CONTAINERD_SOCKET)
    ));
    script.line("# The sandbox image containerd is configured with (kubeadm's list has it too, unless the spec overrides it).");
    script.line(format!(
        "crictl --runtime-endpoint {} pull {}",
        quote(CONTAINERD_SOCKET),
        quote(&spec.sandbox_image)
    ));
    script.finish()
}

fn provenance(spec: &ImageSpec, target: Target, arch: Arch) -> String {
    let fields: Vec<(&str, String)> = vec![
        ("CAPH_IMAGE_NAME", spec.image.name.clone()),
        ("SPEC_FILE", spec.file.clone()),
        ("SPEC_SHA256", spec.digest.clone()),
        ("OS", spec.base.distribution.name().to_string()),
        ("OS_VERSION", spec.base.version.clone()),
        ("ARCHITECTURE", arch.hcloud_name().to_string()),
        ("TARGET", target.name().to_string()),
        ("KUBERNETES_VERSION", spec.kubernetes.version.to_string()),
        ("CONTAINERD_VERSION", spec.containerd.version.to_string()),
        ("RUNC_VERSION", spec.runc.version.to_string()),
        ("CRICTL_VERSION", spec.crictl.version.to_string()),
    ];
    let mut script = Script::new();
    script.line("# Written like os-release: KEY=value lines a shell can source.");
    script.line("{");
    for (key, value) in fields {
        script.line(format!(
            "  printf '%s=%s\\n' {key} {}",
            quote(&quote(&value))
        ));
    }
    script.line("  printf 'BUILD_ID=%s\\n' \"${CAPH_BUILD_ID:-unknown}\"");
    script.line("  printf 'BUILD_TIME=%s\\n' \"${CAPH_BUILD_TIME:-unknown}\"");
    script.line("  printf 'BUILDER=\"%s\"\\n' \"${CAPH_BUILDER:-caph-image}\"");
    script.line(format!("}} > {RELEASE_PATH}"));
    script.line(format!("chmod 0644 {RELEASE_PATH}"));
    script.finish()
}

fn hygiene(spec: &ImageSpec, target: Target) -> String {
    let mut script = Script::new();
    script.line("export DEBIAN_FRONTEND=noninteractive");
    if spec.system.automatic_upgrades {
        script.line("# The spec opts in to automatic upgrades: give apt's timers back.");
        script.line(format!(
            "systemctl unmask {} >/dev/null 2>&1 || true",
            APT_BACKGROUND_UNITS.join(" ")
        ));
    } else {
        script.line("# No automatic upgrades on a node (system.automatic_upgrades = false): apt's timers stay masked, and apt's periodic jobs are off.");
        script.line("install -d -m 0755 /etc/apt/apt.conf.d");
        script.line("printf '%s\\n' 'APT::Periodic::Update-Package-Lists \"0\";' 'APT::Periodic::Unattended-Upgrade \"0\";' > /etc/apt/apt.conf.d/20auto-upgrades");
    }
    script.line("apt-get clean");
    script.line("rm -rf /var/lib/apt/lists/*");
    script.line("find /var/log -type f -exec truncate -s 0 {} +");
    script.line("rm -f /etc/ssh/ssh_host_*");
    if target == Target::Tarball {
        script.line(
            "# installimage regenerates only the host key types whose files exist: leave each type",
        );
        script.line(
            "# as an empty file (no key material), and a unit that makes keys where nothing did.",
        );
        for key_type in HOST_KEY_PLACEHOLDER_TYPES {
            script.command(&[
                "install",
                "-m",
                "0600",
                "/dev/null",
                &format!("/etc/ssh/ssh_host_{key_type}_key"),
            ]);
        }
        script.line("systemctl enable caph-image-host-keys.service");
    }
    if target == Target::Hcloud {
        script.line("# Remove the build's temporary key; keys the spec placed itself stay.");
        script.line(
            "if [ -n \"${CAPH_BUILD_PUBLIC_KEY:-}\" ] && [ -f /root/.ssh/authorized_keys ]; then",
        );
        script
            .line("  build_key=$(printf '%s\\n' \"$CAPH_BUILD_PUBLIC_KEY\" | awk '{ print $2 }')");
        script.line("  grep -vF \"$build_key\" /root/.ssh/authorized_keys > /root/.ssh/authorized_keys.caph || true");
        script.line("  if [ -s /root/.ssh/authorized_keys.caph ]; then");
        script.line("    mv /root/.ssh/authorized_keys.caph /root/.ssh/authorized_keys");
        script.line("  else");
        script.line("    rm -f /root/.ssh/authorized_keys.caph /root/.ssh/authorized_keys");
        script.line("  fi");
        script.line("fi");
    }
    script.line("if command -v cloud-init >/dev/null 2>&1; then");
    script.line("  cloud-init clean --logs --machine-id --seed || cloud-init clean --logs");
    script.line("fi");
    script.line("# An empty machine-id makes systemd generate a fresh one on first boot.");
    script.line("truncate -s 0 /etc/machine-id");
    script.line("if [ -d /var/lib/dbus ]; then rm -f /var/lib/dbus/machine-id && ln -s /etc/machine-id /var/lib/dbus/machine-id; fi");
    script.line("rm -rf /tmp/* /var/tmp/* /root/.bash_history");
    if target == Target::Hcloud {
        script.line(
            "# Trimmed free space keeps the snapshot small, and servers made from it start faster.",
        );
        script.line("fstrim -av || echo 'warning: fstrim is not supported here' >&2");
    }
    script.line("sync");
    script.finish()
}

/// Content that a quoted heredoc reproduces exactly: UTF-8 text ending in a newline, without the marker line.
fn literal_heredoc_text(content: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(content).ok()?;
    let exact = text.ends_with('\n')
        && !text.contains('\r')
        && !text.lines().any(|line| line == "CAPH_IMAGE_FILE");
    exact.then_some(text)
}

/// Standard base64 with padding; the plan needs it only for file steps, so no dependency for it.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{CLOUD_INIT_TARBALL_CONFIG, HOST_KEY_PLACEHOLDER_TYPES, base64_encode};

    #[test]
    fn cloud_init_makes_only_the_host_key_types_installimage_makes() {
        let line = CLOUD_INIT_TARBALL_CONFIG
            .lines()
            .find_map(|line| line.strip_prefix("ssh_genkeytypes:"))
            .expect("ssh_genkeytypes is set");
        let types: Vec<&str> = line
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(str::trim)
            .collect();
        assert_eq!(types, HOST_KEY_PLACEHOLDER_TYPES);
    }

    #[test]
    fn base64() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }
}
