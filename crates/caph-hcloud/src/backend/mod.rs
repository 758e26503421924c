//! The hcloud backend: for each architecture, a temporary server provisioned over SSH with a pinned
//! host key, powered off and snapshotted, the snapshot labelled so Cluster API Provider Hetzner
//! finds exactly one image of its name, and every temporary resource removed.
//!
//! Leak-proofing works in three layers:
//! 1. a per-architecture [`ledger::Ledger`] records each resource the moment the API returns it,
//!    outside the build future, so cleanup still knows about it when the future is dropped at
//!    cancellation;
//! 2. after the ledger is cleaned, a sweep deletes whatever still carries this build's label
//!    (covers a create whose answer was lost);
//! 3. `gc` removes what a SIGKILLed run left, by the same label.

mod cloud_init;
pub mod commit;
pub mod disk_image;
pub mod from_tarball;
mod ledger;
mod lookup;
pub mod naming;
pub mod placement;
mod rescue;
mod run;
pub mod upload;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use caph_core::backend::{
    Artifact, Backend, BackendError, BuildRequest, Context, GcOptions, GcReport, PreflightReport,
};

use crate::client::{Client, WaitOptions};

pub use lookup::{caph_lookup, preflight};
pub use run::ArchFailure;

/// Timeouts and other knobs of the backend; the defaults fit the real service.
#[derive(Debug, Clone)]
pub struct HcloudBackendConfig {
    /// How to wait for API actions (create, shutdown, snapshot, delete).
    pub wait: WaitOptions,
    /// How long to wait for a created server to be `running`.
    pub server_ready_timeout: Duration,
    /// How long SSH may take to accept the build key after the server runs.
    pub connect_deadline: Duration,
    /// How long to wait for `off` after an ACPI shutdown before falling back to a hard poweroff.
    pub shutdown_timeout: Duration,
    /// How long a snapshot may take to become available.
    pub image_timeout: Duration,
    /// The bound on cleanup after an error or a cancellation.
    pub cleanup_timeout: Duration,
    /// The SSH port of the servers.
    pub ssh_port: u16,
    /// `caph-image <version>`, for the provenance file.
    pub builder: String,
    /// Where `--keep-on-error` writes the private key to reach a kept server.
    pub keep_dir: PathBuf,
}

/// Real servers reach `running` in well under a minute; three covers slow locations.
const DEFAULT_SERVER_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// cloud-init installs keys within a minute or two of boot on the real service.
const DEFAULT_CONNECT_DEADLINE: Duration = Duration::from_secs(300);
/// An ACPI shutdown takes seconds; two minutes means the guest ignores it, so power off.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);
/// Snapshots take 1-5 minutes, growing with used disk; 30 minutes covers large images.
const DEFAULT_IMAGE_TIMEOUT: Duration = Duration::from_secs(1800);
/// Cleanup is a handful of calls plus waiting for a delete action.
const DEFAULT_CLEANUP_TIMEOUT: Duration = Duration::from_secs(300);

impl HcloudBackendConfig {
    /// The defaults for the real service.
    pub fn new(builder: impl Into<String>) -> HcloudBackendConfig {
        HcloudBackendConfig {
            wait: WaitOptions::default(),
            server_ready_timeout: DEFAULT_SERVER_READY_TIMEOUT,
            connect_deadline: DEFAULT_CONNECT_DEADLINE,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            image_timeout: DEFAULT_IMAGE_TIMEOUT,
            cleanup_timeout: DEFAULT_CLEANUP_TIMEOUT,
            ssh_port: 22,
            builder: builder.into(),
            keep_dir: PathBuf::from("."),
        }
    }
}

/// Builds Hetzner Cloud snapshots.
#[derive(Debug, Clone)]
pub struct HcloudBackend {
    client: Client,
    config: Arc<HcloudBackendConfig>,
}

impl HcloudBackend {
    /// A backend that talks through `client`.
    pub fn new(client: Client, config: HcloudBackendConfig) -> HcloudBackend {
        HcloudBackend {
            client,
            config: Arc::new(config),
        }
    }

    /// The client, for callers that list or prune images.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[async_trait::async_trait]
impl Backend for HcloudBackend {
    fn name(&self) -> &'static str {
        "hcloud"
    }

    async fn preflight(
        &self,
        context: &Context,
        request: &BuildRequest,
    ) -> Result<PreflightReport, BackendError> {
        lookup::preflight(&self.client, context, request).await
    }

    async fn build(
        &self,
        context: &Context,
        request: &BuildRequest,
    ) -> Result<Vec<Artifact>, BackendError> {
        let (report, placements) = lookup::check(&self.client, request).await?;
        if !report.problems.is_empty() {
            return Err(BackendError::Preflight(report.problems));
        }
        run::build_all(&self.client, &self.config, context, request, &placements).await
    }

    async fn list(
        &self,
        _context: &Context,
        name: Option<&str>,
    ) -> Result<Vec<Artifact>, BackendError> {
        lookup::list_snapshots(&self.client, name).await
    }

    async fn gc(&self, context: &Context, options: GcOptions) -> Result<GcReport, BackendError> {
        ledger::gc(&self.client, &self.config, context, options).await
    }
}
