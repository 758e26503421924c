//! The simulator's resources as plain structs: what [`super::HcloudSim::state`] hands to tests.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// A server's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerStatus {
    /// Being created (`create_server` runs).
    Initializing,
    /// Booting.
    Starting,
    /// Powered on.
    Running,
    /// Shutting down.
    Stopping,
    /// Powered off.
    Off,
    /// Being deleted.
    Deleting,
}

impl ServerStatus {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerStatus::Initializing => "initializing",
            ServerStatus::Starting => "starting",
            ServerStatus::Running => "running",
            ServerStatus::Stopping => "stopping",
            ServerStatus::Off => "off",
            ServerStatus::Deleting => "deleting",
        }
    }
}

/// An action's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionStatus {
    /// Still in progress.
    Running,
    /// Finished successfully.
    Success,
    /// Finished with an error.
    Error,
}

impl ActionStatus {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Running => "running",
            ActionStatus::Success => "success",
            ActionStatus::Error => "error",
        }
    }
}

/// An image's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageStatus {
    /// Ready to use.
    Available,
    /// A snapshot being made.
    Creating,
}

impl ImageStatus {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Available => "available",
            ImageStatus::Creating => "creating",
        }
    }
}

/// An image's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// A system image such as `debian-12`.
    System,
    /// A snapshot of a server.
    Snapshot,
}

impl ImageKind {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::System => "system",
            ImageKind::Snapshot => "snapshot",
        }
    }
}

/// A server as the simulator holds it.
#[derive(Clone, PartialEq)]
pub struct Server {
    /// Server ID.
    pub id: u64,
    /// Server name (an RFC 1123 hostname).
    pub name: String,
    /// Current status.
    pub status: ServerStatus,
    /// Server type name, e.g. `cx23`.
    pub server_type: String,
    /// `x86` or `arm`, from the server type.
    pub architecture: String,
    /// Location name, e.g. `fsn1`.
    pub location: String,
    /// The image the server was created from.
    pub image_id: Option<u64>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The machine's address, reported as `public_net.ipv4.ip` unless IPv4 was disabled.
    pub ipv4: Option<Ipv4Addr>,
    /// Whether `public_net.enable_ipv4` was true at creation.
    pub ipv4_enabled: bool,
    /// Whether `public_net.enable_ipv6` was true at creation.
    pub ipv6_enabled: bool,
    /// Whether the next boot goes into the rescue system.
    pub rescue_enabled: bool,
    /// SSH key ids given at creation.
    pub ssh_key_ids: Vec<u64>,
    /// `user_data` given at creation (shown as its size in `Debug`: it may hold host keys).
    pub user_data: Option<String>,
    /// GB, from the server type.
    pub primary_disk_size: u64,
    /// RFC 3339.
    pub created: String,
    /// Whether deletion is refused (`protected`).
    pub delete_protected: bool,
    /// Whether rebuilding is refused.
    pub rebuild_protected: bool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `user_data` may carry a private host key (cloud-config `ssh_keys`): show its size only.
        formatter
            .debug_struct("Server")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("status", &self.status)
            .field("server_type", &self.server_type)
            .field("architecture", &self.architecture)
            .field("location", &self.location)
            .field("image_id", &self.image_id)
            .field("labels", &self.labels)
            .field("ipv4", &self.ipv4)
            .field("ipv4_enabled", &self.ipv4_enabled)
            .field("ipv6_enabled", &self.ipv6_enabled)
            .field("rescue_enabled", &self.rescue_enabled)
            .field("ssh_key_ids", &self.ssh_key_ids)
            .field(
                "user_data",
                &self
                    .user_data
                    .as_ref()
                    .map(|data| format!("<{} bytes>", data.len())),
            )
            .field("primary_disk_size", &self.primary_disk_size)
            .field("created", &self.created)
            .field("delete_protected", &self.delete_protected)
            .field("rebuild_protected", &self.rebuild_protected)
            .finish()
    }
}

/// An image (system image or snapshot).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Image ID.
    pub id: u64,
    /// System image or snapshot.
    pub kind: ImageKind,
    /// Current status.
    pub status: ImageStatus,
    /// Set for system images only.
    pub name: Option<String>,
    /// Description.
    pub description: String,
    /// GB; `None` while a snapshot is being created.
    pub image_size: Option<f64>,
    /// GB.
    pub disk_size: f64,
    /// RFC 3339.
    pub created: String,
    /// Source server (id, name at the time) of a snapshot.
    pub created_from: Option<(u64, String)>,
    /// Operating system flavor (`ubuntu`, `debian`, or `unknown`).
    pub os_flavor: String,
    /// Operating system version.
    pub os_version: Option<String>,
    /// `x86` or `arm`.
    pub architecture: String,
    /// Whether deletion is refused (`protected`).
    pub delete_protected: bool,
    /// RFC 3339 deprecation time, if deprecated.
    pub deprecated: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// An SSH key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKey {
    /// SSH key ID.
    pub id: u64,
    /// Name, unique in the project.
    pub name: String,
    /// MD5, colon-separated hex.
    pub fingerprint: String,
    /// The OpenSSH public key line.
    pub public_key: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// RFC 3339.
    pub created: String,
}

/// A resource an action relates to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionResource {
    /// Resource ID.
    pub id: u64,
    /// `server` or `image`.
    pub kind: String,
}

/// An action and its current progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// Action ID.
    pub id: u64,
    /// Command, e.g. `create_server`.
    pub command: String,
    /// Current status.
    pub status: ActionStatus,
    /// Progress in percent, 100 once successful.
    pub progress: u8,
    /// RFC 3339.
    pub started: String,
    /// When it finished (RFC 3339).
    pub finished: Option<String>,
    /// Resources the action relates to.
    pub resources: Vec<ActionResource>,
    /// `(code, message)` when the action ended in `error`.
    pub error: Option<(String, String)>,
}

/// A read-only snapshot of everything the simulator holds, for assertions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SimState {
    /// Servers, by id.
    pub servers: Vec<Server>,
    /// System images and snapshots, by id.
    pub images: Vec<Image>,
    /// SSH keys, by id.
    pub ssh_keys: Vec<SshKey>,
    /// Actions, by id.
    pub actions: Vec<Action>,
}

impl SimState {
    /// The snapshots (images of type `snapshot`), in id order.
    pub fn snapshots(&self) -> Vec<&Image> {
        self.images
            .iter()
            .filter(|image| image.kind == ImageKind::Snapshot)
            .collect()
    }
}
