//! The `Backend` trait every target implements, and what it receives: a build request and a
//! context carrying progress and cancellation. Backends never print; the CLI renders progress.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::arch::Arch;
use crate::spec::ImageSpec;

/// What a build is asked to do.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The validated spec.
    pub spec: Arc<ImageSpec>,
    /// The architectures to build, in order.
    pub architectures: Vec<Arch>,
    /// Replace an existing image of the same name (the old one is removed only after the new one is ready).
    pub replace: bool,
    /// Keep the temporary machine when the build fails, for debugging.
    pub keep_on_error: bool,
}

/// The phases a build goes through, for progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Checking credentials, types, images and name collisions.
    Preflight,
    /// Creating the temporary machine.
    Create,
    /// Waiting for SSH.
    Connect,
    /// Running the plan.
    Provision,
    /// Powering off.
    Shutdown,
    /// Taking the snapshot or writing the tarball.
    Capture,
    /// Checking the result the way its consumer will look it up.
    Verify,
    /// Removing temporary resources.
    Cleanup,
    /// Finished.
    Done,
}

impl Phase {
    /// Lower-case name for progress lines.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Create => "create",
            Phase::Connect => "connect",
            Phase::Provision => "provision",
            Phase::Shutdown => "shutdown",
            Phase::Capture => "capture",
            Phase::Verify => "verify",
            Phase::Cleanup => "cleanup",
            Phase::Done => "done",
        }
    }
}

/// Something worth telling the user while a build runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    /// A unit of work (usually one architecture) entered a phase.
    Phase {
        /// Which unit: `x86`, `arm`, or the tarball name.
        scope: String,
        /// The phase entered.
        phase: Phase,
        /// What exactly, for example "step 3/14: containerd".
        detail: String,
    },
    /// A line of output from a remote command or a step.
    Output {
        /// Which unit.
        scope: String,
        /// The line, without its newline.
        line: String,
    },
    /// Byte progress of a transfer or capture.
    Bytes {
        /// Which unit.
        scope: String,
        /// Bytes done.
        done: u64,
        /// Bytes in all, when known.
        total: Option<u64>,
    },
    /// Something the user should know that is not an error.
    Warning {
        /// Which unit.
        scope: String,
        /// The message.
        message: String,
    },
}

/// Receives progress events; the CLI implements it for terminals and plain logs.
pub trait ProgressSink: Debug + Send + Sync {
    /// Called for each event, from any task; must not block for long.
    fn event(&self, event: ProgressEvent);
}

/// A sink that drops everything, for callers that want no progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&self, _event: ProgressEvent) {}
}

/// What every backend call receives: where progress goes, and the signal to stop.
#[derive(Debug, Clone)]
pub struct Context {
    /// Progress events go here.
    pub progress: Arc<dyn ProgressSink>,
    /// Cancelled on Ctrl-C or SIGTERM: the backend stops, cleans up and returns [`BackendError::Cancelled`].
    pub cancel: CancellationToken,
    /// The id of this run, set as a label on every temporary resource.
    pub build_id: String,
}

/// One artifact a build produced or a listing found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The provider's id (a snapshot id) or a path (a tarball).
    pub id: String,
    /// The architecture.
    pub arch: Arch,
    /// The `caph-image-name`.
    pub name: String,
    /// Size in bytes, when known.
    pub size_bytes: Option<u64>,
    /// How long the build of this artifact took, for artifacts built in this run.
    pub duration: Option<Duration>,
    /// Creation time as the provider reports it (RFC 3339).
    pub created: Option<String>,
    /// Labels or manifest facts.
    pub labels: BTreeMap<String, String>,
    /// What is worth knowing about how it was made, one line each: where it was built, and
    /// why a preferred place was passed over.
    pub notes: Vec<String>,
}

/// What preflight found: facts to show, and problems that stop the build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreflightReport {
    /// Things checked and found fine, one line each.
    pub checks: Vec<String>,
    /// Things that stop the build, one line each, with a fix.
    pub problems: Vec<String>,
}

/// What `gc` removed or would remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// One line per resource removed.
    pub removed: Vec<String>,
}

/// Options of `gc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Only remove leftovers at least this old.
    pub older_than: Duration,
    /// Report only, remove nothing.
    pub dry_run: bool,
}

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Preflight found problems; nothing was created.
    #[error("preflight found {} problem(s):\n{}", .0.len(), .0.join("\n"))]
    Preflight(Vec<String>),
    /// The run was cancelled; temporary resources were cleaned up.
    #[error("cancelled during {phase}; {cleanup}")]
    Cancelled {
        /// The phase it was in.
        phase: &'static str,
        /// What cleanup did.
        cleanup: String,
    },
    /// Anything else, with the backend's own error as the source.
    #[error("{context}")]
    Failed {
        /// What was being done, and what cleanup did.
        context: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A build target: Hetzner Cloud snapshots, or tarballs and bare-metal installs.
///
/// Object-safe, so the CLI picks one implementation at run time.
#[async_trait::async_trait]
pub trait Backend: Debug + Send + Sync {
    /// A short name: `hcloud`, `robot`.
    fn name(&self) -> &'static str;

    /// Checks what `build` would need, with no side effects.
    async fn preflight(
        &self,
        context: &Context,
        request: &BuildRequest,
    ) -> Result<PreflightReport, BackendError>;

    /// Builds the image for each requested architecture; temporary resources never outlive it.
    async fn build(
        &self,
        context: &Context,
        request: &BuildRequest,
    ) -> Result<Vec<Artifact>, BackendError>;

    /// Lists the artifacts this tool made, optionally only those with `name`.
    async fn list(
        &self,
        context: &Context,
        name: Option<&str>,
    ) -> Result<Vec<Artifact>, BackendError>;

    /// Removes what killed runs left behind, found by their build label.
    async fn gc(&self, context: &Context, options: GcOptions) -> Result<GcReport, BackendError>;
}
