//! Giving a finished snapshot the name Cluster API Provider Hetzner (CAPH) finds it by, and with
//! `--replace` taking the name from the snapshot that had it.
//!
//! CAPH requires exactly one image per name and architecture; zero is `ImageNotFound`, two is
//! `ImageAmbiguous`, and either fails the server's creation until CAPH's next attempt (five
//! minutes later). The API changes the labels of one image per request, so a replacement has a
//! window of one request in which CAPH finds zero images or two, whatever the order. The order
//! here is **name the new snapshot, then delete the old one** (two images for the one `DELETE`),
//! not the reverse (zero images for the one `PUT`): the windows are equally long, one request with
//! nothing between, but only this order fails safe. If the `DELETE` fails, or the run is
//! cancelled inside the window, the build's cleanup deletes the new snapshot (still in its ledger
//! until the old one is gone), and CAPH finds the old one alone again; in the reverse order the
//! same failure would leave no image at all. Old snapshots that cannot be deleted (delete
//! protection) are refused before anything changes.

use caph_core::Arch;

use super::lookup;
use crate::client::UpdateImageRequest;
use crate::client::{Client, Error as ClientError, ImageId, ImageType, Labels};

/// What [`commit_name`] is asked to do.
#[derive(Debug, Clone)]
pub struct NameCommit<'a> {
    /// The image name CAPH looks up (`caph-image-name`).
    pub name: &'a str,
    /// The architecture CAPH looks it up for.
    pub arch: Arch,
    /// The new, available snapshot, still without the name label.
    pub image: ImageId,
    /// Its final labels, the name label among them.
    pub labels: Labels,
    /// Whether snapshots that have the name now may be deleted (`--replace`).
    pub replace: bool,
}

/// What happened, in order, for the caller's ledger and progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitEvent {
    /// The new snapshot has the name; CAPH finds it, with any old one until that is deleted.
    Named(ImageId),
    /// An old snapshot of the name was deleted.
    Replaced(ImageId),
    /// The new snapshot is the only one of its name: it no longer belongs to the build's
    /// cleanup. Sent before the final check, which cannot undo anything.
    Committed(ImageId),
}

/// Why the name was not committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// An API request failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: ClientError,
    },
    /// The name is taken and `--replace` was not given.
    #[error(
        "the name \"{name}\" was taken by snapshot {} while this build ran; rerun with --replace",
        join(.taken)
    )]
    Taken {
        /// The name.
        name: String,
        /// The images that have it.
        taken: Vec<ImageId>,
    },
    /// An image of the name is not a snapshot (a system or app image called so).
    #[error(
        "\"{name}\" is the name of {kind} image {image}, which this tool does not replace; choose another image.name"
    )]
    NotASnapshot {
        /// The name.
        name: String,
        /// The image.
        image: ImageId,
        /// Its type.
        kind: ImageType,
    },
    /// An old snapshot of the name is protected against deletion.
    #[error(
        "snapshot {image}, which has the name \"{name}\" now, is protected against deletion; remove its protection to replace it"
    )]
    Protected {
        /// The name.
        name: String,
        /// The protected snapshot.
        image: ImageId,
    },
    /// CAPH's lookup does not find exactly the new snapshot afterwards.
    #[error("CAPH's lookup for \"{name}\" on {arch} finds [{}], not exactly snapshot {image}", join(.found))]
    Verify {
        /// The name.
        name: String,
        /// The architecture.
        arch: Arch,
        /// The new snapshot.
        image: ImageId,
        /// What the lookup found.
        found: Vec<ImageId>,
    },
}

fn join(ids: &[ImageId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn api(what: impl Into<String>) -> impl FnOnce(ClientError) -> CommitError {
    let what = what.into();
    move |source| CommitError::Api { what, source }
}

/// Names `commit.image` and, with `commit.replace`, deletes the images that had the name, in
/// the order the module documentation gives; then checks with CAPH's own lookup that it finds
/// exactly the new snapshot. Between the label `PUT` and the last old image's `DELETE` no other
/// request is sent.
pub async fn commit_name(
    client: &Client,
    commit: &NameCommit<'_>,
    on_event: &mut (dyn FnMut(CommitEvent) + Send),
) -> Result<(), CommitError> {
    let name = commit.name;
    let old: Vec<_> = lookup::caph_lookup(client, name, commit.arch)
        .await
        .map_err(api("looking up the image name"))?
        .into_iter()
        .filter(|image| image.id != commit.image)
        .collect();
    if !old.is_empty() && !commit.replace {
        return Err(CommitError::Taken {
            name: name.to_string(),
            taken: old.iter().map(|image| image.id).collect(),
        });
    }
    // Everything that could stop the replacement is checked before the window opens.
    if let Some(image) = old.iter().find(|image| image.kind != ImageType::Snapshot) {
        return Err(CommitError::NotASnapshot {
            name: name.to_string(),
            image: image.id,
            kind: image.kind.clone(),
        });
    }
    if let Some(image) = old.iter().find(|image| image.protection.delete) {
        return Err(CommitError::Protected {
            name: name.to_string(),
            image: image.id,
        });
    }

    client
        .update_image(
            commit.image,
            &UpdateImageRequest {
                description: None,
                labels: Some(commit.labels.clone()),
            },
        )
        .await
        .map_err(api("naming the snapshot"))?;
    on_event(CommitEvent::Named(commit.image));
    for image in &old {
        match client.delete_image(image.id).await {
            Ok(()) => {}
            // Deleted by someone else meanwhile: gone all the same.
            Err(error) if error.is_not_found() => {}
            Err(error) => {
                return Err(api(format!("deleting the replaced snapshot {}", image.id))(
                    error,
                ));
            }
        }
        on_event(CommitEvent::Replaced(image.id));
    }
    on_event(CommitEvent::Committed(commit.image));

    let found: Vec<ImageId> = lookup::caph_lookup(client, name, commit.arch)
        .await
        .map_err(api("checking the image name"))?
        .into_iter()
        .map(|image| image.id)
        .collect();
    if found != [commit.image] {
        return Err(CommitError::Verify {
            name: name.to_string(),
            arch: commit.arch,
            image: commit.image,
            found,
        });
    }
    Ok(())
}
