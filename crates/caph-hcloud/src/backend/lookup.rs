//! Read-only questions: preflight (can this build run, and would its name collide?), Cluster API
//! Provider Hetzner's own image lookup, and the list of snapshots this tool made.

use caph_core::backend::{Artifact, BackendError, BuildRequest, Context, PreflightReport};
use caph_core::{Arch, ImageSpec};

use super::naming::{BUILD_LABEL, BUILT_BY, BUILT_BY_LABEL, NAME_LABEL};
use super::placement::{self, ArchPlacement, Offer};
use crate::client::ListImagesParams;
use crate::client::{Architecture, Image, ImageType};
use crate::client::{Client, Error, LabelSelector};

pub(crate) fn architecture(arch: Arch) -> Architecture {
    match arch {
        Arch::X86 => Architecture::X86,
        Arch::Arm => Architecture::Arm,
    }
}

/// The images CAPH finds for `imageName: name` on a server of `arch`: those labelled
/// `caph-image-name==name` plus those named `name`, of that architecture, in any status.
pub async fn caph_lookup(client: &Client, name: &str, arch: Arch) -> Result<Vec<Image>, Error> {
    let by_label = client
        .list_images(&ListImagesParams {
            architecture: Some(architecture(arch)),
            label_selector: Some(LabelSelector::new().eq(NAME_LABEL, name)?),
            ..Default::default()
        })
        .await?;
    let by_name = client
        .list_images(&ListImagesParams {
            architecture: Some(architecture(arch)),
            name: Some(name.to_string()),
            ..Default::default()
        })
        .await?;
    let mut images = by_label;
    for image in by_name {
        if !images.iter().any(|known| known.id == image.id) {
            images.push(image);
        }
    }
    Ok(images)
}

/// The pairs each architecture's build tries, in order.
pub(crate) type Placements = std::collections::BTreeMap<Arch, ArchPlacement>;

fn api_failure(what: &str, error: Error) -> BackendError {
    BackendError::Failed {
        context: format!("preflight: {what}"),
        source: Box::new(error),
    }
}

/// Checks everything a build needs, creating nothing: the token, the preferred locations and
/// server types per architecture (they exist, are of the right architecture, not deprecated, and
/// some pair can be ordered now), the base image, and that the image name is free per
/// architecture (or `--replace` was given).
pub async fn preflight(
    client: &Client,
    _context: &Context,
    request: &BuildRequest,
) -> Result<PreflightReport, BackendError> {
    check(client, request).await.map(|(report, _)| report)
}

/// Preflight, and the pairs each architecture's build tries, in order.
pub(crate) async fn check(
    client: &Client,
    request: &BuildRequest,
) -> Result<(PreflightReport, Placements), BackendError> {
    let spec: &ImageSpec = &request.spec;
    let mut report = PreflightReport::default();
    let mut placements = Placements::new();
    let Some(hcloud) = &spec.hcloud else {
        report.problems.push(format!("{}: the spec has no [hcloud] table; add one with architectures, locations and server_types", spec.file));
        return Ok((report, placements));
    };
    let offer = Offer::read(client).await.map_err(|error| {
        api_failure("checking the API token, locations and server types", error)
    })?;
    let location_problems = placement::location_problems(&offer, &hcloud.locations);
    if !location_problems.is_empty() {
        report.problems.extend(location_problems);
        return Ok((report, placements));
    }
    report.checks.push(format!(
        "API token works; locations {} exist",
        hcloud.locations.join(", ")
    ));
    for arch in &request.architectures {
        let arch = *arch;
        let Some(type_names) = hcloud.server_types.get(&arch) else {
            report.problems.push(format!("{arch}: no server type; set hcloud.server_types.{arch} in the spec or pass --server-type"));
            continue;
        };
        match placement::plan(&offer, arch, type_names, &hcloud.locations) {
            Err(problems) => report.problems.extend(problems),
            Ok(placement) => {
                let first = &placement.candidates[0];
                let mut line = format!(
                    "{arch}: builds on {first} ({} GB disk{})",
                    first.disk_gb,
                    if first.recommended {
                        ", recommended"
                    } else {
                        ""
                    }
                );
                if !placement.skipped.is_empty() {
                    line.push_str(&format!("; skipped {}", placement.skipped.join(", ")));
                }
                if placement.candidates.len() > 1 {
                    let rest: Vec<String> = placement.candidates[1..]
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    line.push_str(&format!("; then {} if that fails", rest.join(", ")));
                }
                report.checks.push(line);
                let smallest = placement.candidates[0].disk_gb;
                for candidate in &placement.candidates {
                    if candidate.disk_gb > smallest {
                        report.checks.push(format!("{arch}: note: a snapshot built on {}'s {} GB disk will not fit {} ({smallest} GB)", candidate.server_type, candidate.disk_gb, placement.candidates[0].server_type));
                        break;
                    }
                }
                placements.insert(arch, placement);
            }
        }
        let Some(base_name) = spec.base.hcloud_images.get(&arch) else {
            report.problems.push(format!(
                "{arch}: no base image; set base.hcloud.{arch} in the spec"
            ));
            continue;
        };
        let bases = client
            .list_images(&ListImagesParams {
                kind: vec![ImageType::System],
                name: Some(base_name.clone()),
                architecture: Some(architecture(arch)),
                ..Default::default()
            })
            .await
            .map_err(|error| api_failure("looking up the base image", error))?;
        if bases.is_empty() {
            report.problems.push(format!(
                "{arch}: base image \"{base_name}\" does not exist for {arch}"
            ));
        } else {
            report
                .checks
                .push(format!("{arch}: base image {base_name} exists"));
        }
        let taken = caph_lookup(client, &spec.image.name, arch)
            .await
            .map_err(|error| api_failure("looking up the image name", error))?;
        let system: Vec<&Image> = taken
            .iter()
            .filter(|image| image.kind != ImageType::Snapshot && image.kind != ImageType::Backup)
            .collect();
        if let Some(image) = system.first() {
            report.problems.push(format!("{arch}: \"{}\" is the name of {} image {}; CAPH would find both; choose another image.name", spec.image.name, image.kind, image.id));
        } else if !taken.is_empty() {
            let ids: Vec<String> = taken.iter().map(|image| image.id.to_string()).collect();
            if request.replace {
                report.checks.push(format!("{arch}: \"{}\" is taken by snapshot {}; --replace deletes it once the new one is available", spec.image.name, ids.join(", ")));
            } else {
                report.problems.push(format!(
                    "{arch}: the image name \"{}\" is already taken by snapshot {}: a second one would make CAPH fail with ImageAmbiguous; rerun with --replace to swap it once the new one is available, or change image.name",
                    spec.image.name,
                    ids.join(", ")
                ));
            }
        } else {
            report.checks.push(format!(
                "{arch}: the image name \"{}\" is free",
                spec.image.name
            ));
        }
    }
    Ok((report, placements))
}

/// The snapshots this tool made and finished, optionally only those of `name`.
pub(crate) async fn list_snapshots(
    client: &Client,
    name: Option<&str>,
) -> Result<Vec<Artifact>, BackendError> {
    let wrap = |error: Error| BackendError::Failed {
        context: "listing snapshots".to_string(),
        source: Box::new(error),
    };
    let mut selector = LabelSelector::new()
        .eq(BUILT_BY_LABEL, BUILT_BY)
        .map_err(|e| wrap(e.into()))?
        .not_exists(BUILD_LABEL)
        .map_err(|e| wrap(e.into()))?;
    selector = match name {
        Some(name) => selector.eq(NAME_LABEL, name).map_err(|e| wrap(e.into()))?,
        None => selector.exists(NAME_LABEL).map_err(|e| wrap(e.into()))?,
    };
    let images = client
        .list_images(&ListImagesParams {
            kind: vec![ImageType::Snapshot],
            label_selector: Some(selector),
            sort: vec!["created:desc".to_string()],
            ..Default::default()
        })
        .await
        .map_err(wrap)?;
    Ok(images.into_iter().filter_map(artifact_of).collect())
}

/// An image as an artifact; images of an architecture this tool does not know are left out.
pub(crate) fn artifact_of(image: Image) -> Option<Artifact> {
    let arch = match image.architecture {
        Architecture::X86 => Arch::X86,
        Architecture::Arm => Arch::Arm,
        Architecture::Unknown(_) => return None,
    };
    Some(Artifact {
        id: image.id.to_string(),
        arch,
        name: image.labels.get(NAME_LABEL).cloned().unwrap_or_default(),
        size_bytes: image.image_size.map(|gb| (gb * 1e9) as u64),
        duration: None,
        created: image.created,
        labels: image.labels,
        notes: Vec::new(),
    })
}
