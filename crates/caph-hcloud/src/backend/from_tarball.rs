//! `build hcloud --from-tarball`: the installimage tarball of a spec written onto a Hetzner Cloud
//! server's disk from its rescue system and snapshotted, so that the cloud node and the
//! bare-metal node are the same root filesystem.
//!
//! Before anything is created: the tarball is looked at (a tar archive, gzip- or
//! zstd-compressed or not) and only an x86 one is taken (Hetzner Cloud's arm servers boot UEFI,
//! whose boot loader needs a vfat system partition this flow does not make); then the build's own
//! preflight (the spec's server types and locations, its base image, the image name free or
//! `replace`). The spec's plan does not run: the tarball already is the node. On the server, as
//! [`super::upload`] does with a disk image, through the rescue system ([`super::rescue`]):
//!
//! 1. `partition`: `/dev/sda` gets an MBR with installimage's usual layout for one disk, a 1 GiB
//!    ext4 `/boot` and an ext4 `/` on the rest, both formatted and mounted;
//! 2. `extract`: the tarball is streamed over SSH into `tar`, with its sha256 computed here and by
//!    `tee` on the server as it is extracted (and compared with the expected one when known);
//! 3. `configure`: the tree must be a caph-image tarball with cloud-init and GRUB; `/etc/fstab` is
//!    written by UUID, cloud-init's settings are replaced by the Hetzner Cloud ones
//!    ([`caph_core::plan::CLOUD_INIT_HCLOUD_DISK_CONFIG`]), and, as installimage does on a
//!    dedicated server, the kernel command line set (`consoleblank=0`, Debian's `quiet` gone),
//!    GRUB installed chrooted into the tree (`grub-install /dev/sda`, `update-grub`) and grub-pc's
//!    install device recorded in debconf for its upgrades.
//!
//! Then the server is powered off and snapshotted as an upload is: the pending name, the commit
//! of `build hcloud`, cleanup through the ledger. The snapshot carries the build's labels and
//! `tarball-sha256` (the first 12 hex digits; the description has the whole digest).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use caph_core::backend::{Artifact, BackendError, BuildRequest, Context, ProgressEvent};
use caph_core::plan::{CLOUD_INIT_CONFIG_PATH, CLOUD_INIT_HCLOUD_DISK_CONFIG, quote};
use caph_core::{Arch, ImageSpec};

use super::HcloudBackend;
use super::disk_image::{self, Compression};
use super::lookup;
use super::naming::snapshot_description;
use super::naming::{BuiltOn, final_snapshot_labels, pending_snapshot_labels};
use super::placement::ArchPlacement;
use super::rescue::{DISK_DEVICE, RescueServer};
use super::run::{self, ArchFailure, Job, Tracker, run_step, ssh};
use super::upload::{ImageSource, read_head};
use crate::client::Labels;

/// The label that carries the first 12 hex digits of the tarball's sha256 (a label value holds
/// at most 63 characters; the snapshot's description holds the whole digest).
pub const TARBALL_SHA256_LABEL: &str = "tarball-sha256";

/// Where the new root filesystem is mounted in the rescue system.
const TARGET_DIR: &str = "/mnt/caph-image-node";

/// The partitions, as installimage lays out one disk in Cluster API Provider Hetzner's templates
/// and in `installimage/single-disk.autosetup`: `/boot` first, `/` on the rest.
const BOOT_PARTITION: &str = "/dev/sda1";
const ROOT_PARTITION: &str = "/dev/sda2";
/// `/boot`'s size in 512-byte sectors (1 GiB), after the first MiB that holds the MBR and GRUB's
/// core image.
const BOOT_SECTORS: u64 = 2 * 1024 * 1024;
const FIRST_SECTOR: u64 = 2048;

/// What the rescue system writes: three steps, each a bash script or, for the extraction, the
/// command the tarball is streamed into.
const STEP_COUNT: usize = 3;

/// A tarball to write onto a cloud server's disk, and the build it belongs to.
#[derive(Debug, Clone)]
pub struct TarballBuild {
    /// The spec: the image name and labels, the server types and locations, the base image the
    /// temporary server is created from (it never boots it).
    pub spec: Arc<ImageSpec>,
    /// The tarball's architecture.
    pub arch: Arch,
    /// The installimage tarball.
    pub tarball: PathBuf,
    /// The sha256 the tarball must have (lowercase hex), when known: its `.sha256` file, or
    /// what the build that made it computed.
    pub sha256: Option<String>,
    /// Replace a snapshot of the same name once the new one is available.
    pub replace: bool,
    /// Keep the server when the build fails.
    pub keep_on_error: bool,
}

/// What a tarball is, from its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedTarball {
    /// Its compression.
    pub compression: Compression,
    /// Its length in bytes.
    pub bytes: u64,
    /// `gzip-compressed tar archive of 123456789 bytes`.
    pub description: String,
}

/// Looks at a tarball: a regular file holding a tar archive, uncompressed or compressed in a way
/// the rescue system unpacks. The refusal (a preflight problem) says what the file is instead.
pub async fn inspect(path: &Path) -> Result<InspectedTarball, BackendError> {
    let refused = |message: String| BackendError::Preflight(vec![message]);
    let (head, bytes) = read_head(&ImageSource::Path(path.to_path_buf())).await?;
    let bytes = bytes.unwrap_or_default();
    let compression = Compression::detect(&head);
    if !matches!(
        compression,
        Compression::None | Compression::Gzip | Compression::Zstd
    ) {
        return Err(refused(format!(
            "{}: a {compression}-compressed file; an installimage tarball is a .tar.gz, .tar.zst or .tar",
            path.display()
        )));
    }
    let data = disk_image::decompress_head(compression, &head)
        .await
        .map_err(refused)?;
    // The ustar magic of the first header (POSIX "ustar\0" and GNU "ustar  " alike).
    if data.get(257..262) != Some(b"ustar") {
        return Err(refused(format!(
            "{}: not a tar archive; name an installimage tarball (caph-image build tarball makes one)",
            path.display()
        )));
    }
    let compressed = match compression {
        Compression::None => String::new(),
        other => format!("{other}-compressed "),
    };
    Ok(InspectedTarball {
        compression,
        bytes,
        description: format!("{compressed}tar archive of {bytes} bytes"),
    })
}

/// Step 1: the partition table, the file systems, mounted where the tree goes.
fn partition_script() -> String {
    let (disk, boot, root, target) = (
        quote(DISK_DEVICE),
        quote(BOOT_PARTITION),
        quote(ROOT_PARTITION),
        quote(TARGET_DIR),
    );
    let root_start = FIRST_SECTOR + BOOT_SECTORS;
    format!(
        r#"set -euo pipefail
test -b {disk}
if grep -q '^{DISK_DEVICE}' /proc/mounts; then
  echo "caph-image: {DISK_DEVICE} is mounted in the rescue system; nothing was written" >&2
  exit 1
fi
# The server's system image is on the disk: its partition table and file systems go.
wipefs --all --quiet {disk}
sfdisk --quiet --wipe always --wipe-partitions always {disk} <<'CAPH_IMAGE_TABLE'
label: dos
start={FIRST_SECTOR}, size={BOOT_SECTORS}, type=83, bootable
start={root_start}, type=83
CAPH_IMAGE_TABLE
# sfdisk asks the kernel to re-read the table (BLKRRPART); partx tells it partition by partition
# (BLKPG), which also works where the re-read does not add partitions (a loop device).
partx --update {disk}
wait_for() {{
  for _ in $(seq 100); do
    [ -e "$1" ] && return 0
    sleep 0.1
  done
  echo "caph-image: $1 did not appear" >&2
  return 1
}}
wait_for {boot}
wait_for {root}
mkfs.ext4 -q -F {boot}
mkfs.ext4 -q -F {root}
mkdir -p {target}
mount {root} {target}
mkdir -p {target}/boot
mount {boot} {target}/boot
df --human-readable --output=source,size,target {target} {target}/boot
"#
    )
}

/// Step 2: the command the tarball is streamed into (bash for `pipefail`, so that a broken
/// decompression fails the extraction). GNU tar keeps owners by number, permissions and extended
/// attributes (file capabilities among them).
fn extract_command(compression: Compression) -> String {
    let decompress = match compression.decompressor() {
        Some(program) => format!("{program} -dc"),
        None => "cat".to_string(),
    };
    let target = quote(TARGET_DIR);
    let script = format!(
        "set -euo pipefail\n{decompress} | tar --extract --file=- --directory={target} --numeric-owner --preserve-permissions --xattrs --xattrs-include='*'"
    );
    format!("bash -c {}", quote(&script))
}

/// Step 3: the tree checked, then fstab, cloud-init and GRUB, and everything unmounted.
fn configure_script() -> String {
    let (disk, boot, root, target) = (
        quote(DISK_DEVICE),
        quote(BOOT_PARTITION),
        quote(ROOT_PARTITION),
        quote(TARGET_DIR),
    );
    let cloud_config = quote(CLOUD_INIT_HCLOUD_DISK_CONFIG);
    let cloud_config_path = quote(CLOUD_INIT_CONFIG_PATH);
    let host_keys_unit = quote(caph_core::plan::HOST_KEYS_UNIT_PATH);
    format!(
        r#"set -euo pipefail
target={target}
refuse() {{
  echo "caph-image: the tarball $1; nothing was made of it" >&2
  exit 1
}}
[ -f "$target/etc/caph-image-release" ] || refuse "is not a caph-image tarball (no /etc/caph-image-release): build it with caph-image build tarball"
[ -x "$target/usr/bin/cloud-init" ] || refuse "has no cloud-init, which gives a Hetzner Cloud server its user data"
[ -f "$target"{host_keys_unit} ] || refuse "has no caph-image-host-keys.service, which makes each server's SSH host keys on its first boot: build it with this caph-image"
ls "$target"/boot/vmlinuz-* > /dev/null 2>&1 || refuse "has no kernel in /boot"
[ -x "$target/usr/sbin/grub-install" ] || refuse "has no grub-install (Debian and Ubuntu package grub-pc)"
grep -v '^#' "$target/etc/caph-image-release" || true
root_uuid=$(blkid --match-tag UUID --output value {root})
boot_uuid=$(blkid --match-tag UUID --output value {boot})
cat > "$target/etc/fstab" <<CAPH_IMAGE_FSTAB
# Written by caph-image build hcloud --from-tarball.
UUID=$root_uuid / ext4 defaults 0 1
UUID=$boot_uuid /boot ext4 defaults 0 2
CAPH_IMAGE_FSTAB
printf '%s' {cloud_config} > "$target"{cloud_config_path}
# As installimage does for a virtual machine: the kernel's own command line (not Debian's
# `quiet`), no console blanking.
sed -i -e 's/^GRUB_CMDLINE_LINUX_DEFAULT=.*/GRUB_CMDLINE_LINUX_DEFAULT="consoleblank=0"/' "$target/etc/default/grub"
# update-grub writes root=UUID=... only where /dev/disk/by-uuid has the link (udev makes it).
for link in "/dev/disk/by-uuid/$root_uuid" "/dev/disk/by-uuid/$boot_uuid"; do
  for _ in $(seq 100); do
    [ -e "$link" ] && break
    sleep 0.1
  done
  [ -e "$link" ] || {{ echo "caph-image: $link did not appear" >&2; exit 1; }}
done
mount --rbind /dev "$target/dev"
mount --make-rslave "$target/dev"
mount -t proc proc "$target/proc"
mount --rbind /sys "$target/sys"
mount --make-rslave "$target/sys"
chroot "$target" grub-install --target=i386-pc {disk}
chroot "$target" update-grub
# Where grub-pc's upgrades install the boot loader again (installimage sets it too): unset, an
# upgrade leaves the old core image in the MBR with new modules in /boot, which does not boot.
echo "grub-pc grub-pc/install_devices multiselect {DISK_DEVICE}" | chroot "$target" debconf-set-selections
umount --recursive "$target"
sync
echo "caph-image: {DISK_DEVICE} holds the tarball's system, root UUID=$root_uuid"
"#
    )
}

/// The three steps as one script, for `--dry-run`.
pub fn script_for_display(inspected: &InspectedTarball) -> String {
    format!(
        "# step 1/{STEP_COUNT}: partition\n{}\n# step 2/{STEP_COUNT}: extract ({} on standard input)\n{}\n\n# step 3/{STEP_COUNT}: configure\n{}",
        partition_script(),
        inspected.description,
        extract_command(inspected.compression),
        configure_script()
    )
}

/// The file name of the tarball, escaped, for descriptions and notes.
fn file_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    caph_core::text::Escaped(&name).to_string()
}

/// The labels of the finished snapshot: a build's, and the tarball's digest.
fn final_labels(
    request: &TarballBuild,
    build_id: &str,
    sha256: &str,
    built_on: &BuiltOn,
) -> Labels {
    let mut labels = final_snapshot_labels(&request.spec, request.arch, build_id, built_on);
    labels.insert(TARBALL_SHA256_LABEL.to_string(), sha256[..12].to_string());
    labels
}

/// Whether this flow can make a snapshot of `arch` boot; the reason when not.
pub fn supports(arch: Arch) -> Result<(), String> {
    match arch {
        Arch::X86 => Ok(()),
        Arch::Arm => Err("Hetzner Cloud's arm servers boot UEFI, and --from-tarball writes a BIOS boot loader (GRUB in the MBR); build arm snapshots without --from-tarball".to_string()),
    }
}

/// What a build from a tarball made.
#[derive(Debug, Clone)]
pub struct TarballSnapshot {
    /// The snapshot.
    pub artifact: Artifact,
    /// The tarball's sha256, computed here and on the server as it was extracted.
    pub sha256: String,
}

impl HcloudBackend {
    /// Writes an installimage tarball onto a temporary server's disk from its rescue system and
    /// snapshots it; see the module documentation.
    pub async fn build_from_tarball(
        &self,
        context: &Context,
        request: &TarballBuild,
    ) -> Result<TarballSnapshot, BackendError> {
        let inspected = self.check_tarball(request).await?;
        let build = BuildRequest {
            spec: request.spec.clone(),
            architectures: vec![request.arch],
            replace: request.replace,
            keep_on_error: request.keep_on_error,
        };
        let (report, mut placements) = lookup::check(self.client(), &build).await?;
        if !report.problems.is_empty() {
            return Err(BackendError::Preflight(report.problems));
        }
        let placement = placements.remove(&request.arch).unwrap_or_default();
        context.progress.event(ProgressEvent::Output {
            scope: request.arch.to_string(),
            line: format!("{}: {}", request.tarball.display(), inspected.description),
        });
        let tracker = Tracker::new(request.arch);
        let digest = std::sync::Mutex::new(None);
        let job = Job {
            client: self.client(),
            config: &self.config,
            context,
            tracker: &tracker,
        };
        let work = tarball_work(&job, request, &inspected, &placement, &digest);
        let artifact = run::run_one(
            &job,
            request.keep_on_error,
            &format!("the build of {} from its tarball", request.spec.image.name),
            work,
        )
        .await?;
        // Set before the snapshot was made, so there once the build succeeded.
        let sha256 = digest
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .unwrap_or_default();
        Ok(TarballSnapshot { artifact, sha256 })
    }

    /// The checks of the tarball that need no API: what it is, and an architecture this flow
    /// can boot.
    pub async fn check_tarball(
        &self,
        request: &TarballBuild,
    ) -> Result<InspectedTarball, BackendError> {
        if let Err(reason) = supports(request.arch) {
            return Err(BackendError::Preflight(vec![format!(
                "{}: a tarball for {}: {reason}",
                request.tarball.display(),
                request.arch
            )]));
        }
        inspect(&request.tarball).await
    }
}

/// The work on the server, from its creation to the named snapshot; the tarball's digest goes
/// to `digest` once the server confirmed it.
async fn tarball_work(
    job: &Job<'_>,
    request: &TarballBuild,
    inspected: &InspectedTarball,
    placement: &ArchPlacement,
    digest: &std::sync::Mutex<Option<String>>,
) -> Result<Artifact, ArchFailure> {
    let (context, tracker) = (job.context, job.tracker);
    let arch = request.arch;
    // Preflight checked that the spec names one for this architecture.
    let base_image = request
        .spec
        .base
        .hcloud_images
        .get(&arch)
        .map_or("", String::as_str);
    let RescueServer {
        id: server_id,
        session,
        built_on,
        passed_over,
    } = job
        .boot_rescue(base_image, &placement.candidates, placement.skipped.clone())
        .await?;

    run_step(
        &session,
        (1, STEP_COUNT),
        "partition",
        &partition_script(),
        context,
        tracker,
    )
    .await?;
    tracker.enter(
        context,
        caph_core::backend::Phase::Provision,
        format!(
            "step 2/{STEP_COUNT}: extract ({} into {ROOT_PARTITION}, {BOOT_PARTITION} as /boot)",
            inspected.description
        ),
    );
    let file = tokio::fs::File::open(&request.tarball)
        .await
        .map_err(|error| {
            ArchFailure::Verify(format!("reading {}: {error}", request.tarball.display()))
        })?;
    let scope = arch.to_string();
    let mut progress = |done: u64| {
        context.progress.event(ProgressEvent::Bytes {
            scope: scope.clone(),
            done,
            total: Some(inspected.bytes),
        });
    };
    let report = session
        .stream_into(
            file,
            &extract_command(inspected.compression),
            DISK_DEVICE,
            &mut progress,
        )
        .await
        .map_err(ssh(format!(
            "extracting {} onto {DISK_DEVICE}",
            request.tarball.display()
        )))?;
    if let Some(expected) = &request.sha256
        && !expected.eq_ignore_ascii_case(&report.sha256)
    {
        return Err(ArchFailure::Verify(format!(
            "{} has sha256 {} (computed here and on the server as it was extracted), not the expected {expected}; the tarball is corrupt or not the one meant",
            request.tarball.display(),
            report.sha256
        )));
    }
    match digest.lock() {
        Ok(mut held) => *held = Some(report.sha256.clone()),
        Err(poisoned) => *poisoned.into_inner() = Some(report.sha256.clone()),
    }
    // A phase line, shown in every progress mode: the flow prints the digest it checked.
    tracker.enter(
        context,
        caph_core::backend::Phase::Provision,
        format!(
            "step 2/{STEP_COUNT}: extracted {} bytes, tarball sha256 {} (computed here and on the server)",
            report.bytes, report.sha256
        ),
    );
    run_step(
        &session,
        (3, STEP_COUNT),
        "configure",
        &configure_script(),
        context,
        tracker,
    )
    .await?;
    session.close().await;
    job.power_off(server_id).await?;

    let spec = &request.spec;
    let mut pending = pending_snapshot_labels(spec, arch, &context.build_id, &built_on);
    pending.insert(
        TARBALL_SHA256_LABEL.to_string(),
        report.sha256[..12].to_string(),
    );
    let description = format!(
        "{}, written from the tarball {} (sha256 {})",
        snapshot_description(spec, arch),
        file_name(&request.tarball),
        report.sha256
    );
    let image = job.capture(server_id, description, pending).await?;
    let labels = final_labels(request, &context.build_id, &report.sha256, &built_on);
    job.commit_name(image.id, &spec.image.name, labels.clone(), request.replace)
        .await?;
    job.clean_up(server_id).await?;
    tracker.enter(
        context,
        caph_core::backend::Phase::Done,
        format!("snapshot {}", image.id),
    );
    let mut artifact = lookup::artifact_of(image).ok_or_else(|| {
        ArchFailure::Verify("the snapshot has an unknown architecture".to_string())
    })?;
    artifact.name = spec.image.name.clone();
    artifact.labels = labels;
    artifact.duration = Some(tracker.started.elapsed());
    artifact.notes.push(format!(
        "built on {} in {}",
        built_on.server_type, built_on.location
    ));
    artifact.notes.push(format!(
        "written from the tarball {}, sha256 {}",
        file_name(&request.tarball),
        report.sha256
    ));
    for reason in passed_over {
        artifact.notes.push(format!("passed over {reason}"));
    }
    Ok(artifact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_are_strict_bash_and_name_the_disk_once_quoted() {
        for script in [partition_script(), configure_script()] {
            assert!(script.starts_with("set -euo pipefail\n"), "{script}");
        }
        let extract = extract_command(Compression::Zstd);
        assert!(
            extract.starts_with("bash -c 'set -euo pipefail"),
            "{extract}"
        );
        assert!(extract.contains("zstd -dc | tar --extract"), "{extract}");
        assert!(extract_command(Compression::None).contains("cat | tar"));
        let partition = partition_script();
        assert!(partition.contains("start=2048, size=2097152, type=83, bootable"));
        assert!(partition.contains("start=2099200, type=83"));
        let configure = configure_script();
        assert!(configure.contains("chroot \"$target\" grub-install --target=i386-pc /dev/sda"));
        assert!(configure.contains("datasource_list: [ Hetzner, None ]"));
        assert!(configure.contains("> \"$target\"/etc/cloud/cloud.cfg.d/99-caph-image.cfg"));
    }
}
