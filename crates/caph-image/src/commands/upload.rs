//! `caph-image upload hcloud`: an existing disk image made into a labelled Hetzner Cloud snapshot.

use std::process::ExitCode;

use caph_core::Arch;
use caph_core::backend::{BackendError, Context};
use caph_core::text::escape;
use caph_hcloud::backend::upload::{ImageSource, UploadRequest};
use caph_hcloud::backend::{HcloudBackend, naming};
use serde_json::json;

use super::hcloud::{backend_config, client, human_size};
use super::{EXIT_CANCELLED, run_cancellable};
use crate::cli::{EXIT_FAILURE, GlobalArgs, HcloudArgs, OutputFormat};
use crate::output;

/// Options of `upload hcloud`.
#[derive(Debug)]
pub struct UploadOptions<'a> {
    pub image: &'a str,
    pub name: String,
    pub arch: Arch,
    pub description: Option<String>,
    pub locations: Vec<String>,
    pub server_types: Vec<String>,
    pub sha256: Option<String>,
    pub replace: bool,
    pub keep_on_error: bool,
    pub api: &'a HcloudArgs,
}

/// The system image the temporary server is created from; it never boots (the rescue system
/// does), but the API wants one.
const BASE_IMAGE: &str = "debian-12";

pub fn hcloud(global: &GlobalArgs, options: UploadOptions<'_>) -> anyhow::Result<ExitCode> {
    if let Err(problem) = caph_core::label::check_value(&options.name) {
        output::error(&format!(
            "--name {}: {problem}; use at most 63 characters of [A-Za-z0-9._-], a letter or digit at both ends",
            escape(&options.name)
        ));
        return Ok(ExitCode::from(EXIT_FAILURE));
    }
    if let Some(sha256) = &options.sha256
        && caph_core::digest::Sha256Hex::parse(sha256).is_none()
    {
        output::error(&format!(
            "--sha256 {}: not a sha256 (64 hex digits)",
            escape(sha256)
        ));
        return Ok(ExitCode::from(EXIT_FAILURE));
    }
    let source = if options.image.starts_with("http://") || options.image.starts_with("https://") {
        ImageSource::Url(options.image.to_string())
    } else {
        ImageSource::Path(options.image.into())
    };
    let server_types = if options.server_types.is_empty() {
        vec![caph_hcloud::backend::placement::default_server_type(options.arch).to_string()]
    } else {
        options.server_types
    };
    let request = UploadRequest {
        source,
        name: options.name,
        arch: options.arch,
        description: options.description,
        locations: options.locations,
        server_types,
        base_image: BASE_IMAGE.to_string(),
        replace: options.replace,
        sha256: options.sha256.map(|hex| hex.to_ascii_lowercase()),
        keep_on_error: options.keep_on_error,
    };
    let build_id = naming::new_build_id();
    let backend = HcloudBackend::new(client(options.api)?, backend_config());
    output::note(&format!(
        "upload {build_id}: {} as {} ({})",
        escape(&request.source.to_string()),
        request.name,
        request.arch
    ));
    let result = run_cancellable(
        global,
        build_id.clone(),
        "run `caph-image gc` to remove what is left",
        async |context: Context, _| backend.upload(&context, &request).await,
    )?;
    match result {
        Ok(artifact) => {
            match global.output {
                OutputFormat::Json => output::json(&json!({
                    "build_id": build_id,
                    "image_name": artifact.name,
                    "snapshot": {
                        "id": artifact.id, "architecture": artifact.arch.hcloud_name(),
                        "size_bytes": artifact.size_bytes, "labels": artifact.labels,
                        "notes": artifact.notes,
                        "duration_seconds": artifact.duration.map(|d| d.as_secs_f64()),
                    },
                })),
                OutputFormat::Text => {
                    output::result(&format!(
                        "{:<12} {:<6} {:>10} {:>10}",
                        "SNAPSHOT", "ARCH", "SIZE", "DURATION"
                    ));
                    output::result(&format!(
                        "{:<12} {:<6} {:>10} {:>10}",
                        artifact.id,
                        artifact.arch,
                        human_size(artifact.size_bytes),
                        artifact
                            .duration
                            .map_or("-".to_string(), |d| format!("{:.0}s", d.as_secs_f64()))
                    ));
                    for note in &artifact.notes {
                        output::result(&format!("{}: {}", artifact.arch, escape(note)));
                    }
                    output::result(&format!(
                        "Cluster API Provider Hetzner finds it by imageName \"{}\" on {} servers",
                        artifact.name, artifact.arch
                    ));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(BackendError::Cancelled { phase, cleanup }) => {
            output::error(&format!("cancelled during {phase}; {cleanup}"));
            Ok(ExitCode::from(EXIT_CANCELLED))
        }
        Err(error) => Err(anyhow::Error::new(error)),
    }
}
