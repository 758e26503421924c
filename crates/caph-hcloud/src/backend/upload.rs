//! `upload`: an existing disk image (raw or qcow2, optionally compressed; a path or an http(s)
//! URL) made into a labelled snapshot through a temporary server's rescue system.
//!
//! Before anything is created: the image is looked at (compression, format, the disk it needs),
//! a file that is not a disk image or needs more disk than the server type has is refused, a URL
//! must answer 200, and the name must be free (or `replace` given). Then, as one unit of work
//! with the build's ledger and cleanup: an SSH key and a server created powered off (moving on
//! along the preferred types and locations as a build does), the rescue system enabled through
//! the API and the server powered on into it, its host key trusted on first use; the image streamed
//! over SSH into the rescue system, which decompresses it and writes it to the server's disk while
//! `tee` hands the same bytes to a sha256 hasher, both digests compared (and the expected one, when
//! given); then a hard power off, the snapshot under the pending name, the name committed as in a
//! build, and the server and key removed.

use std::path::PathBuf;

use caph_core::Arch;
use caph_core::backend::{Artifact, BackendError, Context, Phase, ProgressEvent};
use tokio::io::AsyncWriteExt as _;

use super::HcloudBackend;
use super::disk_image::{self, Compression, Inspected};
use super::lookup;
use super::naming::BuiltOn;
use super::naming::{BUILD_LABEL, BUILT_BY, BUILT_BY_LABEL, NAME_LABEL, PENDING_NAME_LABEL};
use super::placement::{self, Candidate};
use super::rescue::{DISK_DEVICE, RescueServer};
use super::run::{self, ArchFailure, Job, Tracker, ssh};
use crate::client::Labels;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A file on this machine.
    Path(PathBuf),
    /// An http(s) URL, downloaded by this machine and streamed on.
    Url(String),
}

impl std::fmt::Display for ImageSource {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::Path(path) => write!(formatter, "{}", path.display()),
            ImageSource::Url(url) => formatter.write_str(url),
        }
    }
}

/// What to upload and how to name it.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    /// The image.
    pub source: ImageSource,
    /// The `caph-image-name` label the snapshot gets.
    pub name: String,
    /// The image's architecture: the server type's, and so the snapshot's.
    pub arch: Arch,
    /// The snapshot's description.
    pub description: Option<String>,
    /// Locations in order of preference.
    pub locations: Vec<String>,
    /// Server types in order of preference; the smallest disk that holds the image first.
    pub server_types: Vec<String>,
    /// The system image the temporary server is created from (it never boots it).
    pub base_image: String,
    /// Replace a snapshot of the same name once the new one is available.
    pub replace: bool,
    /// The sha256 the image must have (lowercase hex), when known.
    pub sha256: Option<String>,
    /// Keep the server when the upload fails.
    pub keep_on_error: bool,
}

/// The image opened for reading, and what it is.
struct Opened {
    inspected: Inspected,
    file_bytes: Option<u64>,
}

fn refused(message: String) -> BackendError {
    BackendError::Preflight(vec![message])
}

/// Reads the first bytes of the image (and its length where known); a URL must answer 200.
pub(crate) async fn read_head(
    source: &ImageSource,
) -> Result<(Vec<u8>, Option<u64>), BackendError> {
    match source {
        ImageSource::Path(path) => {
            use tokio::io::AsyncReadExt as _;
            let metadata = tokio::fs::metadata(path)
                .await
                .map_err(|error| refused(format!("{}: {error}", path.display())))?;
            if !metadata.is_file() {
                return Err(refused(format!(
                    "{} is not a regular file; name a disk image file",
                    path.display()
                )));
            }
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|error| refused(format!("{}: {error}", path.display())))?;
            let mut head = Vec::with_capacity(disk_image::HEAD_BYTES);
            file.take(disk_image::HEAD_BYTES as u64)
                .read_to_end(&mut head)
                .await
                .map_err(|error| refused(format!("reading {}: {error}", path.display())))?;
            Ok((head, Some(metadata.len())))
        }
        ImageSource::Url(url) => {
            let mut response = get(url).await?;
            let length = response.content_length();
            let mut head = Vec::with_capacity(disk_image::HEAD_BYTES);
            while head.len() < disk_image::HEAD_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                    Ok(None) => break,
                    Err(error) => return Err(refused(format!("downloading {url}: {error}"))),
                }
            }
            Ok((head, length))
        }
    }
}

/// `GET url`, refused unless it answers 200.
async fn get(url: &str) -> Result<reqwest::Response, BackendError> {
    let response = reqwest::get(url)
        .await
        .map_err(|error| refused(format!("downloading {url}: {error}")))?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        return Err(refused(format!("{url} answered HTTP {status}")));
    }
    Ok(response)
}

/// Looks at the image and checks it against the server types; nothing is created.
async fn open(
    request: &UploadRequest,
    candidates: &[Candidate],
) -> Result<(Opened, Vec<Candidate>), BackendError> {
    let (head, file_bytes) = read_head(&request.source).await?;
    let compression = Compression::detect(&head);
    let data = disk_image::decompress_head(compression, &head)
        .await
        .map_err(refused)?;
    let inspected = disk_image::inspect(compression, &data, file_bytes)
        .map_err(|why| refused(format!("{}: {why}", request.source)))?;
    let fitting: Vec<Candidate> = candidates
        .iter()
        .filter(|candidate| {
            inspected
                .needed_bytes
                .is_none_or(|needed| needed as f64 <= candidate.disk_gb * 1e9)
        })
        .cloned()
        .collect();
    if fitting.is_empty() {
        let needed = inspected.needed_bytes.unwrap_or_default();
        let disks: Vec<String> = candidates
            .iter()
            .map(|candidate| format!("{} ({} GB)", candidate.server_type, candidate.disk_gb))
            .collect();
        return Err(refused(format!(
            "{}: the {} needs a {:.2} GB disk, larger than the disk of {}; choose a bigger server type with --server-type",
            request.source,
            inspected.description,
            needed as f64 / 1e9,
            disks.join(", ")
        )));
    }
    Ok((
        Opened {
            inspected,
            file_bytes,
        },
        fitting,
    ))
}

/// The labels of the uploaded snapshot when finished.
fn final_labels(
    request: &UploadRequest,
    build_id: &str,
    sha256: &str,
    built_on: &BuiltOn,
) -> Labels {
    Labels::from([
        (NAME_LABEL.to_string(), request.name.clone()),
        (
            "architecture".to_string(),
            request.arch.hcloud_name().to_string(),
        ),
        ("build-id".to_string(), build_id.to_string()),
        (BUILT_BY_LABEL.to_string(), BUILT_BY.to_string()),
        // A label value holds at most 63 characters; the description has the whole digest.
        ("source-sha256".to_string(), sha256[..12].to_string()),
        (
            "build-server-type".to_string(),
            built_on.server_type.clone(),
        ),
        ("build-location".to_string(), built_on.location.clone()),
    ])
}

impl HcloudBackend {
    /// Uploads a disk image as a labelled snapshot; see the module documentation.
    pub async fn upload(
        &self,
        context: &Context,
        request: &UploadRequest,
    ) -> Result<Artifact, BackendError> {
        let client = self.client();
        let (placement, mut problems) = placement::read_and_plan(
            client,
            request.arch,
            &request.server_types,
            &request.locations,
        )
        .await?;
        let taken = lookup::caph_lookup(client, &request.name, request.arch)
            .await
            .map_err(|error| BackendError::Failed {
                context: "looking up the image name".to_string(),
                source: Box::new(error),
            })?;
        if !taken.is_empty() && !request.replace {
            let ids: Vec<String> = taken.iter().map(|image| image.id.to_string()).collect();
            problems.push(format!("{}: the image name \"{}\" is already taken by {}; rerun with --replace to swap it once the new one is available, or choose another --name", request.arch, request.name, ids.join(", ")));
        }
        let (Some(placement), true) = (placement, problems.is_empty()) else {
            return Err(BackendError::Preflight(problems));
        };
        let (opened, candidates) = open(request, &placement.candidates).await?;
        context.progress.event(ProgressEvent::Output {
            scope: request.arch.to_string(),
            line: format!(
                "{}: {}{}",
                request.source,
                opened.inspected.description,
                opened
                    .file_bytes
                    .map(|bytes| format!(", {bytes} bytes"))
                    .unwrap_or_default()
            ),
        });

        let tracker = Tracker::new(request.arch);
        let job = Job {
            client,
            config: &self.config,
            context,
            tracker: &tracker,
        };
        let work = upload_work(&job, request, &opened, &candidates);
        run::run_one(
            &job,
            request.keep_on_error,
            &format!("the upload of {}", request.name),
            work,
        )
        .await
    }
}

async fn upload_work(
    job: &Job<'_>,
    request: &UploadRequest,
    opened: &Opened,
    candidates: &[Candidate],
) -> Result<Artifact, ArchFailure> {
    let (context, tracker) = (job.context, job.tracker);
    let arch = request.arch;
    let RescueServer {
        id: server_id,
        session,
        built_on,
        passed_over,
    } = job
        .boot_rescue(&request.base_image, candidates, Vec::new())
        .await?;

    tracker.enter(
        context,
        Phase::Provision,
        format!("writing {} to {DISK_DEVICE}", opened.inspected.description),
    );
    let script = disk_image::write_script(&opened.inspected, DISK_DEVICE);
    let scope = arch.to_string();
    let total = opened.file_bytes;
    let mut progress = |done: u64| {
        context.progress.event(ProgressEvent::Bytes {
            scope: scope.clone(),
            done,
            total,
        });
    };
    let (report, download) = match &request.source {
        ImageSource::Path(path) => {
            let file = tokio::fs::File::open(path).await.map_err(|error| {
                ArchFailure::Verify(format!("reading {}: {error}", path.display()))
            })?;
            let report = session
                .stream_into(file, &script, DISK_DEVICE, &mut progress)
                .await;
            (report, Ok(()))
        }
        ImageSource::Url(url) => {
            let mut response = get(url)
                .await
                .map_err(|error| ArchFailure::Verify(error.to_string()))?;
            let (mut writer, reader) = tokio::io::duplex(1 << 20);
            let url_text = url.clone();
            // The download feeds a pipe whose other end is streamed; its own failure is checked
            // afterwards, so a cut-off download never passes as a short image.
            let downloading = tokio::spawn(async move {
                loop {
                    match response.chunk().await {
                        Ok(Some(chunk)) => {
                            if writer.write_all(&chunk).await.is_err() {
                                return Err(format!("{url_text}: the upload stopped reading"));
                            }
                        }
                        Ok(None) => return Ok(()),
                        Err(error) => return Err(format!("downloading {url_text}: {error}")),
                    }
                }
            });
            let report = session
                .stream_into(reader, &script, DISK_DEVICE, &mut progress)
                .await;
            let download = match downloading.await {
                Ok(result) => result,
                Err(error) => Err(format!("downloading {url}: {error}")),
            };
            (report, download)
        }
    };
    download.map_err(ArchFailure::Verify)?;
    let report = report.map_err(ssh(format!("writing the image to {DISK_DEVICE}")))?;
    if let Some(expected) = &request.sha256
        && !expected.eq_ignore_ascii_case(&report.sha256)
    {
        return Err(ArchFailure::Verify(format!(
            "{} has sha256 {} (computed here and on the server as it was written to {DISK_DEVICE}), not the expected {expected}; the image is corrupt or not the one meant",
            request.source, report.sha256
        )));
    }
    tracker.say(
        context,
        format!(
            "wrote {} bytes, sha256 {} (checked on the server)",
            report.bytes, report.sha256
        ),
    );
    session.close().await;

    job.power_off(server_id).await?;

    let mut pending = final_labels(request, &context.build_id, &report.sha256, &built_on);
    pending.remove(NAME_LABEL);
    pending.insert(PENDING_NAME_LABEL.to_string(), request.name.clone());
    pending.insert(BUILD_LABEL.to_string(), context.build_id.clone());
    let description = match &request.description {
        Some(description) => format!("{description} (sha256 {})", report.sha256),
        None => format!(
            "{} ({arch}), uploaded by caph-image from {}, sha256 {}",
            request.name,
            source_name(&request.source),
            report.sha256
        ),
    };
    let image = job.capture(server_id, description, pending).await?;
    job.commit_name(
        image.id,
        &request.name,
        final_labels(request, &context.build_id, &report.sha256, &built_on),
        request.replace,
    )
    .await?;
    job.clean_up(server_id).await?;
    tracker.enter(context, Phase::Done, format!("snapshot {}", image.id));
    let mut artifact = lookup::artifact_of(image).ok_or_else(|| {
        ArchFailure::Verify("the snapshot has an unknown architecture".to_string())
    })?;
    artifact.name = request.name.clone();
    artifact.labels = final_labels(request, &context.build_id, &report.sha256, &built_on);
    artifact.duration = Some(tracker.started.elapsed());
    artifact.notes.push(format!(
        "built on {} in {}",
        built_on.server_type, built_on.location
    ));
    artifact.notes.push(format!("sha256 {}", report.sha256));
    for reason in passed_over {
        artifact.notes.push(format!("passed over {reason}"));
    }
    Ok(artifact)
}

/// The image's file name, or its URL, for the snapshot's description (short and one line).
fn source_name(source: &ImageSource) -> String {
    let text = match source {
        ImageSource::Path(path) => path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        ImageSource::Url(url) => url.clone(),
    };
    caph_core::text::Escaped(&text).to_string()
}
