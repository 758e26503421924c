//! The command line: every subcommand, flag and help text, as clap definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The exit code when the command ran and found a problem (an invalid spec, a failed build).
/// Success is 0, and a wrong command line is 2, which clap uses for usage errors; the whole
/// table is in `exit_codes!`.
pub const EXIT_FAILURE: u8 = 1;

/// The exit code of a wrong command line (clap's), and of `verify`'s refused input.
pub const EXIT_USAGE: u8 = 2;

/// Every exit code, as `--help` and the man page show it (README.md has the same table). A
/// macro, so that `concat!` can put it into the help texts.
macro_rules! exit_codes {
    () => {
        "Exit codes:
  0    success, also when the reader of standard output stops early (such as head)
  1    failure: an invalid spec, a refused input, a failed build, a failed verify check
  2    wrong usage: an unknown flag, a missing argument, input verify refuses
  130  interrupted (Ctrl-C or SIGTERM), after cleanup"
    };
}

/// verify's exit codes, for its subcommands' help.
macro_rules! verify_exit_codes {
    () => {
        "Exit codes: 0 every check passed (some may say not checked, with why), 1 a check
failed or the run failed, 2 the input was refused (the message names the problem), 130
interrupted, after cleanup."
    };
}

const ABOUT: &str = "Build Kubernetes node images for Hetzner from one declarative spec";

const LONG_ABOUT: &str = "\
Build Kubernetes node images for Hetzner from one declarative spec.

One TOML spec describes a node: the base system, Kubernetes, containerd, runc and crictl at pinned
versions, kernel settings, packages, files and scripts. From it caph-image builds labelled Hetzner
Cloud snapshots that Cluster API Provider Hetzner finds by `imageName`, and installimage tarballs
for dedicated servers.";

const AFTER_HELP: &str = concat!(
    "Examples:
  caph-image validate images/*.toml
  caph-image plan images/ubuntu-24.04-k8s-1.36.toml --target hcloud --arch arm
  caph-image completions bash > /etc/bash_completion.d/caph-image

",
    exit_codes!(),
    "

Environment: HCLOUD_TOKEN, HCLOUD_ENDPOINT, HETZNER_ROBOT_USER, HETZNER_ROBOT_PASSWORD."
);

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(name = "caph-image", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// How results are printed: text for people, json for scripts
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Print more detail, such as every line of remote command output
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// Print plain progress lines instead of redrawing the terminal
    #[arg(long, global = true)]
    pub no_progress: bool,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text
    Text,
    /// One JSON document on standard output
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check specs and report every problem with file, line and column
    #[command(after_help = "\
Examples:
  caph-image validate images/ubuntu-24.04-k8s-1.36.toml
  caph-image validate --strict images/*.toml
  caph-image validate --output json images/*.toml

Besides the format, validation applies upstream's compatibility rules, each naming its source:
the containerd releases a Kubernetes release supports, crictl's minor release = Kubernetes',
runc with the November 2025 container-escape fixes, and the pause image kubeadm expects. Releases
past their end of life are warnings: they fail only with --strict.

Exit codes as in caph-image --help: 1 means at least one spec is invalid, or has warnings under
--strict.")]
    Validate {
        /// Spec files to check
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<PathBuf>,
        /// Fail on warnings too (releases past their end of life)
        #[arg(long)]
        strict: bool,
    },
    /// Print the provisioning plan of a spec as one readable script
    #[command(after_help = "\
The plan is what a build runs on the temporary server (target hcloud) or in the chroot of the
root filesystem (target tarball). It is deterministic: the same spec gives the same plan, byte for
byte, so it can be reviewed and diffed.

Examples:
  caph-image plan images/debian-12-k8s-1.36.toml
  caph-image plan images/debian-12-k8s-1.36.toml --target tarball --arch arm64
  caph-image plan images/debian-12-k8s-1.36.toml --output json | jq '.steps[].name'")]
    Plan {
        /// The spec file
        #[arg(value_name = "SPEC")]
        spec: PathBuf,
        /// Where the plan runs
        #[arg(long, value_enum, default_value_t = PlanTarget::Hcloud)]
        target: PlanTarget,
        /// The architecture: x86 or arm (amd64 and arm64 are accepted too)
        #[arg(long, default_value = "x86", value_parser = parse_arch)]
        arch: caph_core::Arch,
    },
    /// Build images: Hetzner Cloud snapshots, or installimage tarballs for dedicated servers
    #[command(subcommand)]
    Build(BuildCommand),
    /// Pack a root filesystem directory into a reproducible installimage tarball
    #[command(after_help = "\
The tarball writer alone, for a root filesystem assembled some other way. It streams the tree into
one POSIX tar archive with entries sorted, numeric owners, mtimes clamped to SOURCE_DATE_EPOCH
when set, hard links, device nodes, xattrs (security.capability) and sparse files kept. proc, sys,
dev and run are stored empty and package caches left out (--plain packs everything as it is).
A .sha256 file is written beside the tarball.

Name the file by installimage's rule, <Distro>-<NNNN>-<codename>-<amd64|arm64>-<flavor>.tar.gz:
installimage reads the distribution and architecture from the file name. gzip is the default
because Cluster API Provider Hetzner's installImage.image.url takes no URL ending in .tar.zst;
the printed HetznerBareMetalMachineTemplate gives a .tar.zst a URL ending in #.tar, which CAPH
takes and installimage's tar reads (README, section Dedicated servers).

Examples:
  caph-image pack ./rootfs -o Debian-1200-bookworm-amd64-k8s-v1.36.4.tar.gz
  SOURCE_DATE_EPOCH=1700000000 caph-image pack ./rootfs -o Ubuntu-2404-noble-arm64-k8s.tar.zst
  caph-image pack ./rootfs -o image.tar.gz --compression gzip:9 --output json")]
    Pack {
        /// The root filesystem directory
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// The tarball to write
        #[arg(short = 'o', long = "output-file", value_name = "FILE")]
        file: PathBuf,
        /// gzip, zstd or none, optionally with a level (gzip:9, zstd:19); default: from FILE's extension, else gzip
        #[arg(long, value_parser = parse_compression)]
        compression: Option<caph_rootfs::pack::Compression>,
        /// Pack everything as it is: no empty proc/sys/dev/run, no cache exclusions
        #[arg(long)]
        plain: bool,
    },
    /// Upload an existing disk image as a labelled snapshot
    #[command(subcommand)]
    Upload(UploadCommand),
    /// Boot an image for real and check what Cluster API Provider Hetzner needs of its first boot
    #[command(
        subcommand,
        after_help = "\
verify tarball does on this machine what a dedicated server does with an installimage tarball
under Cluster API Provider Hetzner (installimage, the NoCloud seed, the reboot, cloud-init): it
needs root and QEMU, and no account. verify hcloud boots a server from a snapshot in your Hetzner
Cloud project (HCLOUD_TOKEN) for a few minutes, and deletes it.

Both print a table of checks (name, ok or FAILED, what was seen), or one JSON document with
--output json, and exit with 1 when a check failed, 2 when the input was refused.

Examples:
  sudo caph-image verify tarball Debian-1200-bookworm-amd64-k8s-v1.36.4.tar.gz
  caph-image verify hcloud debian-12-k8s-v1.36.4 --arch arm"
    )]
    Verify(VerifyCommand),
    /// Dedicated servers in Robot
    #[command(subcommand)]
    Robot(RobotCommand),
    /// List or prune the snapshots caph-image made
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Remove what killed builds left behind (servers, SSH keys, unfinished snapshots)
    #[command(after_help = "\
Every temporary resource of a build carries the label caph-image-build=<build id>. A build cleans up
after itself on success, on errors, on Ctrl-C and on SIGTERM; gc is for runs that were killed
outright (SIGKILL, a lost machine). Nothing without that label is touched.

Examples:
  caph-image gc --dry-run
  caph-image gc --older-than 2h")]
    Gc {
        /// Only remove leftovers at least this old: 30m, 2h, 1d (0 removes everything found)
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        older_than: std::time::Duration,
        /// Show what would be removed, remove nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        api: HcloudArgs,
    },
    /// Print a shell completion script
    #[command(after_help = "\
Examples:
  caph-image completions bash > ~/.local/share/bash-completion/completions/caph-image
  caph-image completions zsh > ~/.zfunc/_caph-image")]
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) made from these definitions; `cargo xtask dist` ships it
    ///
    /// Hidden from --help: it is for packagers, and generating the page keeps it in step with
    /// the flags instead of a hand-written copy that drifts.
    #[command(hide = true)]
    Man {
        /// Write one page per subcommand into this directory instead (caph-image.1,
        /// caph-image-build-hcloud.1, ...), so the main page's references resolve
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `upload` targets.
#[derive(Debug, Subcommand)]
pub enum UploadCommand {
    /// Write a disk image onto a temporary server's disk from its rescue system and snapshot it
    #[command(after_help = "\
IMAGE is a raw disk image (MBR or GPT) or a qcow2 image, optionally compressed with xz, zstd,
bzip2 or gzip (recognised by content, not by name), given as a path or an http(s) URL.

Before anything is created the image is looked at: a file that is not a disk image, or needs a
bigger disk than the server type has (where its size is known: a qcow2's virtual size, a raw
file's length, else what its partition table spans), is refused, and so is a URL that does not
answer 200. Then a temporary server is created powered off, its rescue system enabled through the
API and booted; the image is streamed over SSH, decompressed and written to /dev/sda there, with
its sha256 computed here and on the server as it is written (and compared with --sha256 when
given). The server is powered off and snapshotted under a pending name; the snapshot takes
caph-image-name=NAME only once it is available, as with build hcloud, and the server and key are
removed, also on errors and Ctrl-C (caph-image gc finds what a killed run left).

Examples:
  export HCLOUD_TOKEN=...
  caph-image upload hcloud talos-amd64.raw.xz --name talos-1.11 --arch x86
  caph-image upload hcloud https://example.com/node-arm64.qcow2 --name node --arch arm --location hel1,fsn1")]
    Hcloud {
        /// The disk image: a path or an http(s) URL
        #[arg(value_name = "IMAGE")]
        image: String,
        /// The caph-image-name label of the snapshot (CAPH's imageName)
        #[arg(long, value_parser = parse_field)]
        name: String,
        /// The image's architecture: x86 or arm
        #[arg(long, value_parser = parse_arch)]
        arch: caph_core::Arch,
        /// The snapshot's description
        #[arg(long)]
        description: Option<String>,
        /// Locations in order of preference, comma-separated
        #[arg(long = "location", value_name = "LOCATION", value_delimiter = ',', value_parser = parse_field, default_value = "fsn1,nbg1,hel1")]
        locations: Vec<String>,
        /// Server types in order of preference, comma-separated (default: cx23 for x86, cax11
        /// for arm); the snapshot's disk is the first one's that takes the image
        #[arg(long = "server-type", value_name = "TYPE", value_delimiter = ',', value_parser = parse_field)]
        server_types: Vec<String>,
        /// The sha256 the image must have
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// Replace an existing snapshot of the same name once the new one is available
        #[arg(long)]
        replace: bool,
        /// On failure keep the server
        #[arg(long)]
        keep_on_error: bool,
        #[command(flatten)]
        api: HcloudArgs,
    },
}

/// `verify` targets.
#[derive(Debug, Subcommand)]
pub enum VerifyCommand {
    /// Install a tarball on a local disk as installimage does, boot it under QEMU, check its first boot
    #[command(after_help = concat!("\
What a dedicated server does with the tarball under Cluster API Provider Hetzner, done on this
machine: a sparse disk file on a loop device gets an MS-DOS table with /boot (ext4, 1024M) and /
(ext4, the rest); the tarball is extracted with GNU tar and installimage's options; fstab by UUID,
hostname, hosts, the network for the VM's card, resolvers and sysctls are written as installimage
writes them, a new SSH host key made for each type the tarball has a file for, then
update-initramfs, grub-mkconfig and grub-install run chrooted in the new system. CAPH's
post-install script's NoCloud seed goes into /var/lib/cloud/seed/nocloud-net: meta-data with the
hostname and an instance id, and the user data (--user-data, or a built-in probe shaped like
kubeadm's bootstrap: write_files, then a runcmd that writes a marker with the node's hostname).

QEMU (x86, BIOS, emulated, no network beyond its own restricted user network) boots the disk
through its GRUB, with progress while first boot runs (the VM reaches nothing outside it: user
data that needs the network, a real kubeadm join, fails there, and the table shows cloud-init's
error). Once cloud-init's final stage is over, a
unit of verify's own (on this disk only) runs the node checks; the node is then shut down with
Ctrl-Alt-Del and the disk read back. Checks: the boot (GRUB, multi-user, sshd, login prompt, no
failed unit), cloud-init's status and result without errors as a new instance, the hostname,
the probe's marker, SSH host keys and a machine id of the node's own, no SIGTERM in cloud-init's
log (CAPH's test for an interrupted bootstrap), and the node checks the image promises in its
/etc/caph-image-release, modules and sysctls files (containerd, kubelet, time sync, ...).

The tarball is looked at first: one without cloud-init (or whose cloud-init ignores NoCloud), a
kernel, an initramfs or grub-install, or not an x86_64 Debian or Ubuntu system, is refused before
anything is made. Needs root, util-linux, fdisk, e2fsprogs, tar and qemu-system-x86. Nothing is
left behind: no loop device, no mount (all mounts are in a namespace of this run), no file, also
on Ctrl-C. A boot takes 2-5 minutes under emulation.

Examples:
  sudo caph-image verify tarball Debian-1200-bookworm-amd64-k8s-v1.36.4.tar.gz
  sudo caph-image verify tarball node.tar.gz --user-data bootstrap.yaml --hostname bm-node-1
  sudo caph-image verify tarball node.tar.gz --output json --console-log console.log

", verify_exit_codes!()))]
    Tarball {
        /// The installimage tarball
        #[arg(value_name = "FILE")]
        tarball: PathBuf,
        /// User data for first boot: #cloud-config (a YAML mapping) or a #! script; default: the
        /// built-in probe
        #[arg(long, value_name = "FILE")]
        user_data: Option<PathBuf>,
        /// The node's hostname (the seed's local-hostname, installimage's HOSTNAME)
        #[arg(long, default_value = "caph-image-verify", value_parser = parse_hostname)]
        hostname: String,
        /// How long first boot may take, from power on to the end of cloud-init's final stage
        #[arg(long, default_value = "15m", value_parser = parse_duration)]
        boot_timeout: std::time::Duration,
        /// Where the work directory with the sparse disk file is made (and removed again)
        #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
        work_dir: PathBuf,
        /// Keep the serial console's log in this file
        #[arg(long, value_name = "FILE")]
        console_log: Option<PathBuf>,
    },
    /// Create a throwaway server from a snapshot with probe user data, check it over SSH, delete it
    #[command(after_help = concat!("\
SNAPSHOT is an image id, or a name looked up as Cluster API Provider Hetzner looks up imageName:
the label caph-image-name=NAME, or a system image of that name, of the architecture (--arch, x86
by default). A name CAPH finds twice is refused, as CAPH refuses it (ImageAmbiguous): give the id.

A temporary SSH key and a server are created from the image, labelled caph-image-build=<run id>
like a build's, so the run cleans them up on errors and Ctrl-C and `caph-image gc` finds what a
killed run left. The server's user data is the probe (write_files, then a runcmd writing a marker
with the server's hostname, as kubeadm's bootstrap does) plus an SSH host key made here, so the
connection is pinned to it. Over SSH: cloud-init is polled as CAPH polls it until it is done, then
checked: status and result without errors, a new instance (the server's id), the marker, only the
pinned host key, a machine id written at this boot, no SIGTERM in cloud-init's log, no build key
left in root's authorized_keys, and the node checks the image promises (for an image caph-image
built). The server and key are deleted afterwards.

Examples:
  export HCLOUD_TOKEN=...
  caph-image verify hcloud debian-12-k8s-v1.36.4
  caph-image verify hcloud debian-12-k8s-v1.36.4 --arch arm --location hel1
  caph-image verify hcloud 312345678 --output json

Without a Hetzner account, --sim verifies a system image of a simulated cloud whose servers are
real OpenSSH servers in chroots on this machine, running the image's own cloud-init:
  sudo caph-image verify hcloud debian-12 --sim

", verify_exit_codes!()))]
    Hcloud {
        /// The image: an id, or a caph-image-name as CAPH's imageName
        #[arg(value_name = "SNAPSHOT")]
        snapshot: String,
        /// The architecture to look a name up for, and of the server (default: x86, or the
        /// image's when given by id)
        #[arg(long, value_parser = parse_arch)]
        arch: Option<caph_core::Arch>,
        /// Locations in order of preference, comma-separated
        #[arg(long = "location", value_name = "LOCATION", value_delimiter = ',', value_parser = parse_field, default_value = "fsn1,nbg1,hel1")]
        locations: Vec<String>,
        /// Server types in order of preference, comma-separated (default: cx23 for x86, cax11
        /// for arm)
        #[arg(long = "server-type", value_name = "TYPE", value_delimiter = ',', value_parser = parse_field)]
        server_types: Vec<String>,
        /// How long cloud-init may take on the server after SSH answers
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        boot_timeout: std::time::Duration,
        /// Verify one of the system images (debian-12, ubuntu-24.04) of a Hetzner Cloud
        /// simulator in this process instead of your project: no token, nothing billed (needs
        /// root, sshd and mmdebstrap)
        #[arg(long)]
        sim: bool,
        /// With --sim: how many times faster than real time the simulated cloud runs
        #[arg(long, value_name = "F", default_value = "1", requires = "sim", value_parser = parse_speed)]
        sim_speed: f64,
        #[command(flatten)]
        api: HcloudArgs,
    },
}

/// Where the Hetzner Cloud API is.
#[derive(Debug, Clone, Args)]
pub struct HcloudArgs {
    /// The Cloud API endpoint (the token is read from HCLOUD_TOKEN, never from a flag)
    #[arg(long, env = "HCLOUD_ENDPOINT", default_value = caph_hcloud::DEFAULT_ENDPOINT)]
    pub endpoint: String,
}

/// `build` targets.
#[derive(Debug, Subcommand)]
pub enum BuildCommand {
    /// Build labelled Hetzner Cloud snapshots, one per architecture, concurrently
    #[command(after_help = "\
For each architecture a temporary server is created with an SSH key and a host key made for this
run; the host key goes in through cloud-init and is pinned. The plan runs over SSH, the server is
shut down and snapshotted, and the snapshot is labelled caph-image-name=<image.name> only once it
is available, so Cluster API Provider Hetzner never finds one still being made. With --replace the
old snapshot of the name is deleted by the very next request (for that one request CAPH finds
both, never none). The server and key are always removed, also on errors and Ctrl-C. The output
ends with an HCloudMachineTemplate per architecture (README, section Using the images with
Cluster API Provider Hetzner).

Examples:
  export HCLOUD_TOKEN=...
  caph-image build hcloud images/ubuntu-24.04-k8s-1.36.toml --dry-run
  caph-image build hcloud images/ubuntu-24.04-k8s-1.36.toml --arch arm --location hel1,fsn1
  caph-image build hcloud images/ubuntu-24.04-k8s-1.36.toml --replace --output json

Without a Hetzner account, --sim runs the same build against a simulated cloud whose servers are
real OpenSSH servers in chroots on this machine:
  sudo caph-image build hcloud images/debian-12-k8s-1.36.toml --sim --arch x86
  sudo caph-image build hcloud images/debian-12-k8s-1.36.toml --sim --sim-speed 100

One root filesystem for both targets: with --from-tarball the snapshot is the spec's installimage
tarball, the very bytes a dedicated server installs, instead of a system image provisioned over
SSH. The spec's plan does not run on the server (the tarball already is the node, made by the
same plan in a chroot); the spec gives the image name, labels, server types, locations and the
base image the temporary server is created from, which it never boots. Without TARBALL the
tarball is built first, as build tarball does (needs root), into --output-dir. The server is
created powered off and booted into its rescue system, where /dev/sda is partitioned as
installimage does for one disk (1 GiB ext4 /boot, ext4 / on the rest), the tarball streamed over
SSH into tar with its sha256 computed here and on the server (and checked against the .sha256
beside TARBALL, when there is one), /etc/fstab written by UUID, cloud-init set to Hetzner's
metadata service (user data, host name, SSH keys and network, and growing / to the end of a bigger
server type's disk; the tarball's NoCloud settings are for installimage) and GRUB installed from
the tarball; then power off, snapshot and naming as
above. The output prints the tarball's sha256, and the snapshot carries its first 12 digits as the
label tarball-sha256 (the description has all of it). x86 only: Hetzner Cloud's arm servers boot
UEFI.
  sudo caph-image build hcloud images/debian-12-k8s-1.36.toml --arch x86 --from-tarball -o dist/
  caph-image build hcloud images/debian-12-k8s-1.36.toml --from-tarball dist/Debian-1200-bookworm-amd64-k8s-v1.36.4.tar.gz")]
    Hcloud {
        /// The spec file
        #[arg(value_name = "SPEC")]
        spec: PathBuf,
        /// Architectures to build, comma-separated (default: the spec's hcloud.architectures)
        #[arg(long, value_delimiter = ',', value_parser = parse_arch)]
        arch: Vec<caph_core::Arch>,
        /// Locations of the build servers in order of preference, comma-separated (default: the
        /// spec's hcloud.locations)
        #[arg(long = "location", value_name = "LOCATION", value_delimiter = ',', value_parser = parse_field)]
        locations: Vec<String>,
        /// Server types to build on in order of preference, comma-separated, when building one
        /// architecture (default: the spec's hcloud.server_types)
        #[arg(long = "server-type", value_name = "TYPE", value_delimiter = ',', value_parser = parse_field)]
        server_types: Vec<String>,
        /// Replace an existing snapshot of the same name: the new one takes the name once it is available, and the old one is deleted right after
        #[arg(long)]
        replace: bool,
        /// On failure keep the build server and print how to reach it
        #[arg(long)]
        keep_on_error: bool,
        /// Print the preflight and the plan, and create nothing
        #[arg(long)]
        dry_run: bool,
        /// Snapshot the spec's installimage tarball written onto the server's disk from its
        /// rescue system, instead of running the plan over SSH; without TARBALL it is built
        /// first (needs root)
        // No --sim: the simulated cloud of --sim has no rescue systems.
        #[arg(long, value_name = "TARBALL", num_args = 0..=1, conflicts_with = "sim")]
        from_tarball: Option<Option<PathBuf>>,
        /// With --from-tarball and no TARBALL: where the tarball, its .sha256 and manifest go
        #[arg(
            short = 'o',
            long = "output-dir",
            value_name = "DIR",
            requires = "from_tarball"
        )]
        output_dir: Option<PathBuf>,
        /// How long to wait for the server to be off after an ACPI shutdown before powering it off hard
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        shutdown_timeout: std::time::Duration,
        /// Build against a Hetzner Cloud simulator in this process instead of your project: no
        /// token, nothing billed, the snapshot exists only in the simulator (needs root, sshd and
        /// mmdebstrap)
        // No --keep-on-error: a kept server would stop with the simulator when the command ends.
        // --endpoint is refused in `build`, which can name HCLOUD_ENDPOINT when that set it.
        #[arg(long, conflicts_with = "keep_on_error")]
        sim: bool,
        /// With --sim: how many times faster than real time the simulated cloud runs (1 = the
        /// timings of the real API, 100 = a hundred times faster)
        #[arg(long, value_name = "F", default_value = "1", requires = "sim", value_parser = parse_speed)]
        sim_speed: f64,
        #[command(flatten)]
        api: HcloudArgs,
    },
    /// Build an installimage root filesystem tarball locally (needs root)
    #[command(after_help = "\
The root filesystem is made from the spec's [base.rootfs]: mmdebstrap with its suite, mirror,
variant and components, or a base tarball checked against its sha256. The boot chain installimage
needs goes in (kernel, initramfs-tools, grub, mdadm, lvm2, openssh-server, udev, and netplan.io
for Ubuntu or ifupdown for Debian). Then the same plan as `build hcloud` runs in a chroot, step by
step, with /proc, /sys, /dev and resolv.conf mounted and services kept from starting; they are
unmounted afterwards, also on errors and Ctrl-C. The tree is packed reproducibly, named by
installimage's rule (<Distro>-<NNNN>-<codename>-<arch>-<flavor>.tar.gz), with a .sha256 and a
JSON manifest beside it.

Needs root (mmdebstrap, chroot and mounts), the Debian packages mmdebstrap, util-linux, tar and
dpkg, and for a foreign architecture qemu-user-static with binfmt-support.

gzip is the default because Cluster API Provider Hetzner's installImage.image.url takes no URL
ending in .tar.zst; the printed HetznerBareMetalMachineTemplate gives a .tar.zst a URL ending in
#.tar, which CAPH takes and installimage's tar reads (README, section Dedicated servers).

Examples:
  sudo caph-image build tarball images/debian-12-k8s-1.36.toml -o out/
  sudo caph-image build tarball images/ubuntu-24.04-k8s-1.36.toml --arch arm64 --compression zstd
  sudo SOURCE_DATE_EPOCH=1700000000 caph-image build tarball images/debian-12-k8s-1.36.toml --output json")]
    Tarball {
        /// The spec file
        #[arg(value_name = "SPEC")]
        spec: PathBuf,
        /// The directory the tarball, its .sha256 and manifest go to
        #[arg(
            short = 'o',
            long = "output-dir",
            value_name = "DIR",
            default_value = "."
        )]
        output_dir: PathBuf,
        /// gzip, zstd or none, optionally with a level (gzip:9, zstd:19)
        #[arg(long, default_value = "gzip", value_parser = parse_compression)]
        compression: caph_rootfs::pack::Compression,
        /// The architecture: amd64 or arm64 (x86 and arm are accepted too); default: this machine's
        #[arg(long, value_parser = parse_arch)]
        arch: Option<caph_core::Arch>,
        /// Where the work directory is made (default: inside the output directory)
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// Keep the work directory with the assembled tree, for inspection
        #[arg(long)]
        keep_work_dir: bool,
    },
    /// Install a node on a dedicated server through the rescue system and installimage
    #[command(after_help = "\
The tarball is built first (as `build tarball` does, which needs root) unless --tarball names one.
Then: the SSH key is ensured in Robot, the rescue system activated and the server reset (sw, then
hw); the rescue system's host key is trusted on first use and pinned for the run; the tarball is
streamed up and its sha256 checked there; installimage runs with the spec's disk layout (or
--layout) and must print INSTALLATION COMPLETE and the post-install marker; the server reboots
into the installed system (a new host key), which is checked: containerd, kubelet at the spec's
version, swap off, the sysctls. On errors and Ctrl-C the rescue activation this run made is removed,
and the message says what state the server is in.

Shipped layouts (--layout NAME): single-disk, raid1, raid1-lvm, uefi.

Examples:
  export HETZNER_ROBOT_USER=... HETZNER_ROBOT_PASSWORD=...
  caph-image build robot images/debian-12-k8s-1.36.toml --server 321
  caph-image build robot images/debian-12-k8s-1.36.toml --server 321 --tarball dist/Debian-1200-bookworm-amd64-k8s-v1.36.4.tar.gz --layout raid1-lvm --hostname node-7

Without a Robot account, --sim runs the same installation against a simulated Robot account with
server N (an EX44 with two 512 GB drives) whose rescue system and installed node are real OpenSSH
servers in chroots on this machine, and whose drives are block devices there. Its installimage is
a simulation that applies installimage's rules; with --sim-installimage FILE (an archive of
Hetzner's installimage, github.com/hetzneronline/installimage) the rescue system runs the real
one wherever this machine's kernel can install the layout (one drive, BIOS, no RAID, LVM or
encryption), and the output says which one ran:
  sudo caph-image build robot images/debian-12-k8s-1.36.toml --server 321 --sim
  sudo caph-image build robot images/debian-12-k8s-1.36.toml --server 321 --sim --sim-speed 10 --tarball Debian-1200-bookworm-amd64-k8s-v1.36.4.tar.gz --layout single-disk --sim-installimage installimage.tar.gz")]
    Robot {
        /// The spec file
        #[arg(value_name = "SPEC")]
        spec: PathBuf,
        /// The Robot server number
        #[arg(long, value_name = "N")]
        server: u64,
        /// Install this tarball instead of building one
        #[arg(long, value_name = "FILE")]
        tarball: Option<PathBuf>,
        /// A shipped layout name or an autosetup file, instead of the spec's [robot.disk]
        #[arg(long, value_name = "NAME|FILE")]
        layout: Option<String>,
        /// The hostname, instead of the spec's robot.hostname pattern
        #[arg(long)]
        hostname: Option<String>,
        /// Where a built tarball goes
        #[arg(
            short = 'o',
            long = "output-dir",
            value_name = "DIR",
            default_value = "."
        )]
        output_dir: PathBuf,
        /// The server's architecture: amd64 or arm64
        #[arg(long, default_value = "amd64", value_parser = parse_arch)]
        arch: caph_core::Arch,
        /// A Robot key (MD5 fingerprint) to authorize too; installimage copies it into the installed node (repeatable)
        #[arg(long = "authorize-key", value_name = "FINGERPRINT")]
        authorize_keys: Vec<String>,
        /// How often to check whether the server is up or down [default: 10s, as the provider
        /// polls; with --sim divided by --sim-speed]
        #[arg(long, value_parser = parse_duration)]
        poll_interval: Option<std::time::Duration>,
        /// How long to wait for the rescue system after each reset (sw, then hw)
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        reset_timeout: std::time::Duration,
        /// Install on a simulated dedicated server numbered N, in a Robot simulator in this
        /// process, instead of your account: no credentials, nothing touched at Hetzner (needs
        /// root, sshd and mmdebstrap; the server has this machine's architecture)
        #[arg(long)]
        sim: bool,
        /// With --sim: how many times faster than real time the simulated resets run (1 = the
        /// timings of real servers, 10 = ten times faster)
        #[arg(long, value_name = "F", default_value = "1", requires = "sim", value_parser = parse_speed)]
        sim_speed: f64,
        /// With --sim: an archive of Hetzner's installimage (a .tar.gz of
        /// github.com/hetzneronline/installimage, or the fork Cluster API Provider Hetzner
        /// uses) for the simulated rescue system to run for real where the layout allows
        #[arg(long, value_name = "FILE", requires = "sim")]
        sim_installimage: Option<PathBuf>,
        #[command(flatten)]
        api: RobotArgs,
    },
}

/// Where the Robot web service is, for dedicated servers.
#[derive(Debug, Clone, Args)]
pub struct RobotArgs {
    /// The Robot web service (the user and password are read from HETZNER_ROBOT_USER and
    /// HETZNER_ROBOT_PASSWORD, never from a flag)
    #[arg(long = "robot-endpoint", env = "HETZNER_ROBOT_ENDPOINT", default_value = caph_robot::client::DEFAULT_ENDPOINT)]
    pub endpoint: String,
}

/// `robot` actions.
#[derive(Debug, Subcommand)]
pub enum RobotCommand {
    /// List the account's dedicated servers
    #[command(
        after_help = "Examples:\n  caph-image robot servers\n  caph-image robot servers --output json"
    )]
    Servers {
        #[command(flatten)]
        api: RobotArgs,
    },
}

/// `images` actions.
#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List the snapshots caph-image made
    #[command(
        after_help = "Examples:\n  caph-image images list\n  caph-image images list --name ubuntu-24.04-k8s-v1.36.0 --output json"
    )]
    List {
        /// Only snapshots with this caph-image-name
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        api: HcloudArgs,
    },
    /// Delete all but the newest K snapshots per architecture
    #[command(
        after_help = "Examples:\n  caph-image images prune --keep 3 --dry-run\n  caph-image images prune --keep 1 --name ubuntu-24.04-k8s-v1.36.0"
    )]
    Prune {
        /// How many of the newest snapshots to keep per architecture
        #[arg(long)]
        keep: usize,
        /// Only snapshots with this caph-image-name
        #[arg(long)]
        name: Option<String>,
        /// Show what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        api: HcloudArgs,
    },
}

/// Plan targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanTarget {
    /// A Hetzner Cloud server, provisioned over SSH and snapshotted
    Hcloud,
    /// A root filesystem in a chroot, packed into an installimage tarball
    Tarball,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("\"{text}\" is not a duration; write 30m, 2h or 1d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("\"{text}\" is not a duration; write 30m, 2h or 1d")),
    };
    Ok(std::time::Duration::from_secs(number * seconds))
}

fn parse_speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(speed) if speed.is_finite() && speed > 0.0 => Ok(speed),
        _ => Err(format!(
            "\"{text}\" is not a speed; write a positive factor such as 1, 10 or 100"
        )),
    }
}

fn parse_compression(text: &str) -> Result<caph_rootfs::pack::Compression, String> {
    text.parse()
        .map_err(|error: caph_rootfs::pack::PackError| error.to_string())
}

/// A value that goes into one field of a printed template line: a usage error otherwise.
fn parse_field(text: &str) -> Result<String, String> {
    caph_core::text::check_field(text)
        .map(|()| text.to_string())
        .map_err(|problem| {
            format!(
                "\"{}\" {}: write one word",
                caph_core::text::Escaped(text),
                problem.describe()
            )
        })
}

/// A hostname: one DNS label (installimage's HOSTNAME, cloud-init's local-hostname).
fn parse_hostname(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "\"{}\" is not a hostname: use 1-63 of a-z, 0-9 and -, not starting or ending with -",
            caph_core::text::Escaped(text)
        ))
    }
}

fn parse_arch(text: &str) -> Result<caph_core::Arch, String> {
    caph_core::Arch::parse(text).ok_or_else(|| {
        format!("\"{text}\" is not an architecture; use x86 or arm (or amd64, arm64)")
    })
}
