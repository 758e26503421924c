//! Read-only questions: preflight (can this build run, and would its name collide?), Cluster API
//! Provider Hetzner's own image lookup, and the list of snapshots this tool made.

use caph_core::backend::{Artifact, BackendError, BuildRequest, Context, PreflightReport};
use caph_core::{Arch, ImageSpec};

use super::naming::{BUILD_LABEL, BUILT_BY, BUILT_BY_LABEL, NAME_LABEL};
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

fn api_failure(what: &str, error: Error) -> BackendError {
    BackendError::Failed {
        context: format!("preflight: {what}"),
        source: Box::new(error),
    }
}

/// Checks everything a build needs, creating nothing: the token, the location, the server type
/// per architecture (exists, not deprecated, available there, right architecture), the base image,
/// and that the image name is free per architecture (or `--replace` was given).
pub async fn preflight(
    client: &Client,
    _context: &Context,
    request: &BuildRequest,
) -> Result<PreflightReport, BackendError> {
    let spec: &ImageSpec = &request.spec;
    let mut report = PreflightReport::default();
    let Some(hcloud) = &spec.hcloud else {
        report.problems.push(format!("{}: the spec has no [hcloud] table; add one with architectures, location and server_type", spec.file));
        return Ok(report);
    };
    // The first call doubles as the token check: a bad token fails here with 401.
    let locations = client
        .list_locations(Some(&hcloud.location))
        .await
        .map_err(|error| api_failure("checking the API token and the location", error))?;
    if locations.is_empty() {
        let all = client
            .list_locations(None)
            .await
            .map_err(|error| api_failure("listing locations", error))?;
        let names: Vec<String> = all.into_iter().map(|location| location.name).collect();
        report.problems.push(format!(
            "location \"{}\" does not exist; use one of {}",
            hcloud.location,
            names.join(", ")
        ));
        return Ok(report);
    }
    report.checks.push(format!(
        "API token works; location {} exists",
        hcloud.location
    ));
    for arch in &request.architectures {
        let arch = *arch;
        let Some(type_name) = hcloud.server_types.get(&arch) else {
            report.problems.push(format!("{arch}: no server type; set hcloud.server_type.{arch} in the spec or pass --server-type"));
            continue;
        };
        let types = client
            .list_server_types(Some(type_name))
            .await
            .map_err(|error| api_failure("listing server types", error))?;
        match types.first() {
            None => report.problems.push(format!("{arch}: server type \"{type_name}\" does not exist; list them with `hcloud server-type list`")),
            Some(server_type) => {
                if server_type.architecture != architecture(arch) {
                    report.problems.push(format!("{arch}: server type {type_name} is {}, not {arch}", server_type.architecture));
                } else if server_type.is_deprecated() {
                    report.problems.push(format!("{arch}: server type {type_name} is deprecated; choose a current type (snapshots only fit types with at least its disk)"));
                } else if !server_type.is_available_in(&hcloud.location) {
                    report.problems.push(format!("{arch}: server type {type_name} is not available in {}; choose another location or type", hcloud.location));
                } else {
                    report.checks.push(format!("{arch}: server type {type_name} ({} GB disk) is available in {}", server_type.disk, hcloud.location));
                }
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
    Ok(report)
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
    })
}
