//! What a build has created, recorded the moment the API returns it, and the cleanup that removes it
//! on error, on cancellation and in `gc`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use caph_core::backend::{BackendError, Context, GcOptions, GcReport, ProgressEvent};

use super::HcloudBackendConfig;
use super::naming::{BUILD_LABEL, parse_rfc3339};
use crate::client::ListImagesParams;
use crate::client::ListServersParams;
use crate::client::ListSshKeysParams;
use crate::client::{Client, LabelSelector};
use crate::client::{ImageId, ImageType, ServerId, SshKeyId};

/// The temporary resources of one architecture's build.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Ledger {
    pub(crate) ssh_key: Option<SshKeyId>,
    pub(crate) server: Option<ServerId>,
    /// A snapshot that is not finished: deleted by cleanup. Cleared once it carries its final labels.
    pub(crate) pending_image: Option<ImageId>,
}

/// A ledger shared between the build future and the cleanup that may outlive it.
pub(crate) type SharedLedger = Arc<Mutex<Ledger>>;

pub(crate) fn update(ledger: &SharedLedger, change: impl FnOnce(&mut Ledger)) {
    match ledger.lock() {
        Ok(mut guard) => change(&mut guard),
        Err(poisoned) => change(&mut poisoned.into_inner()),
    }
}

pub(crate) fn snapshot(ledger: &SharedLedger) -> Ledger {
    match ledger.lock() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Deletes what the ledger holds, image first (it locks the server while it is made), then the
/// server, then the key. Returns one line per resource, saying what happened to it.
pub(crate) async fn clean(
    client: &Client,
    config: &HcloudBackendConfig,
    ledger: &Ledger,
) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(image) = ledger.pending_image {
        lines.push(match delete_image_when_unlocked(client, image).await {
            Ok(()) => format!("deleted unfinished snapshot {image}"),
            Err(error) => format!("could not delete unfinished snapshot {image}: {error}"),
        });
    }
    if let Some(server) = ledger.server {
        lines.push(match delete_server(client, config, server).await {
            Ok(()) => format!("deleted server {server}"),
            Err(error) => format!("could not delete server {server}: {error}"),
        });
    }
    if let Some(key) = ledger.ssh_key {
        lines.push(match client.delete_ssh_key(key).await {
            Ok(()) => format!("deleted SSH key {key}"),
            Err(error) if error.is_not_found() => format!("SSH key {key} was already gone"),
            Err(error) => format!("could not delete SSH key {key}: {error}"),
        });
    }
    lines
}

async fn delete_server(
    client: &Client,
    config: &HcloudBackendConfig,
    server: ServerId,
) -> Result<(), crate::client::Error> {
    match client.delete_server(server).await {
        Ok(action) => {
            client
                .wait_for_action(&action, &config.wait, &mut |_| {})
                .await?;
            Ok(())
        }
        Err(error) if error.is_not_found() => Ok(()),
        Err(error) => Err(error),
    }
}

/// A snapshot being made cannot always be deleted at once; the client already retries `locked`,
/// and this retries a few more times for images still `creating`.
async fn delete_image_when_unlocked(
    client: &Client,
    image: ImageId,
) -> Result<(), crate::client::Error> {
    /// A few attempts two seconds apart cover an action that is about to finish; the overall
    /// cleanup timeout bounds the rest.
    const ATTEMPTS: u32 = 5;
    const PAUSE: Duration = Duration::from_secs(2);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.delete_image(image).await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_not_found() => return Ok(()),
            Err(error) if attempt < ATTEMPTS => {
                let _ = error;
                tokio::time::sleep(PAUSE).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Everything that carries `caph-image-build=<build_id>` (or any build label, with `None`), older
/// than `older_than` seconds, except the servers in `keep`.
pub(crate) async fn sweep(
    client: &Client,
    config: &HcloudBackendConfig,
    build_id: Option<&str>,
    older_than: Duration,
    keep: &[ServerId],
    dry_run: bool,
) -> Result<Vec<String>, crate::client::Error> {
    let selector = match build_id {
        Some(id) => LabelSelector::new().eq(BUILD_LABEL, id)?,
        None => LabelSelector::new().exists(BUILD_LABEL)?,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let old_enough = |created: Option<&String>| {
        older_than.is_zero()
            || created
                .and_then(|text| parse_rfc3339(text))
                .is_some_and(|created| now.saturating_sub(created) >= older_than.as_secs())
    };
    let mut lines = Vec::new();
    let verb = if dry_run { "would delete" } else { "deleted" };
    let images = client
        .list_images(&ListImagesParams {
            kind: vec![ImageType::Snapshot],
            label_selector: Some(selector.clone()),
            ..Default::default()
        })
        .await?;
    for image in images
        .iter()
        .filter(|image| old_enough(image.created.as_ref()))
    {
        if !dry_run {
            delete_image_when_unlocked(client, image.id).await?;
        }
        lines.push(format!(
            "{verb} unfinished snapshot {} ({})",
            image.id,
            label_of(&image.labels)
        ));
    }
    let servers = client
        .list_servers(&ListServersParams {
            label_selector: Some(selector.clone()),
            ..Default::default()
        })
        .await?;
    for server in servers
        .iter()
        .filter(|server| !keep.contains(&server.id) && old_enough(server.created.as_ref()))
    {
        if !dry_run {
            delete_server(client, config, server.id).await?;
        }
        lines.push(format!(
            "{verb} server {} ({}, {})",
            server.id,
            server.name,
            label_of(&server.labels)
        ));
    }
    let kept_key_names: Vec<String> = servers
        .iter()
        .filter(|server| keep.contains(&server.id))
        .map(|server| server.name.clone())
        .collect();
    let keys = client
        .list_ssh_keys(&ListSshKeysParams {
            label_selector: Some(selector),
            ..Default::default()
        })
        .await?;
    for key in keys
        .iter()
        .filter(|key| !kept_key_names.contains(&key.name) && old_enough(key.created.as_ref()))
    {
        if !dry_run {
            match client.delete_ssh_key(key.id).await {
                Ok(()) => {}
                Err(error) if error.is_not_found() => {}
                Err(error) => return Err(error),
            }
        }
        lines.push(format!(
            "{verb} SSH key {} ({}, {})",
            key.id,
            key.name,
            label_of(&key.labels)
        ));
    }
    Ok(lines)
}

fn label_of(labels: &crate::client::Labels) -> String {
    labels.get(BUILD_LABEL).map_or_else(
        || "no build label".to_string(),
        |id| format!("{BUILD_LABEL}={id}"),
    )
}

/// `caph-image gc`: what killed runs left, found by their build label.
pub(crate) async fn gc(
    client: &Client,
    config: &HcloudBackendConfig,
    context: &Context,
    options: GcOptions,
) -> Result<GcReport, BackendError> {
    let removed = sweep(
        client,
        config,
        None,
        options.older_than,
        &[],
        options.dry_run,
    )
    .await
    .map_err(|error| BackendError::Failed {
        context: "gc: cleaning up leftovers of earlier builds".to_string(),
        source: Box::new(error),
    })?;
    for line in &removed {
        context.progress.event(ProgressEvent::Output {
            scope: "gc".to_string(),
            line: line.clone(),
        });
    }
    Ok(GcReport { removed })
}
