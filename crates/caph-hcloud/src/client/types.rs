//! The wire types of the Hetzner Cloud API that the project uses, decoded leniently.
//!
//! Leniency rules, because the live API evolves under us:
//! - unknown fields are ignored (serde's default; no `deny_unknown_fields` anywhere);
//! - enums keep values they do not know in an `Unknown(String)` variant instead of failing;
//! - fields the API may send as `null` are `Option`, and fields the project does not need are
//!   not modelled at all, so a change to them cannot break decoding (`datacenter` is one: the
//!   API removed it in 2026-07, and it is neither sent nor required here);
//! - collections default to empty when absent.
//!
//! Field names and types follow `hcloud-openapi.json` (components/schemas).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Labels of a resource: replaced as a whole on create and update.
pub type Labels = BTreeMap<String, String>;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

id_type!(
    /// The id of a server.
    ServerId
);
id_type!(
    /// The id of an action.
    ActionId
);
id_type!(
    /// The id of an image (system image, snapshot or backup).
    ImageId
);
id_type!(
    /// The id of an SSH key.
    SshKeyId
);
id_type!(
    /// The id of a server type.
    ServerTypeId
);
id_type!(
    /// The id of a location.
    LocationId
);

/// Declares a string enum that keeps values it does not know in `Unknown(String)`.
macro_rules! open_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $wire:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
            /// A value this client does not know (yet); kept verbatim.
            Unknown(String),
        }

        impl $name {
            /// The value as the API spells it.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $wire,)+
                    $name::Unknown(other) => other,
                }
            }

            /// Parses an API value; never fails, unknown values become `Unknown`.
            pub fn from_wire(value: &str) -> Self {
                match value {
                    $($wire => $name::$variant,)+
                    other => $name::Unknown(other.to_string()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                Ok($name::from_wire(&value))
            }
        }
    };
}

open_enum!(
    /// The status of a server. The API's own `unknown` status decodes as `Unknown("unknown")`.
    ServerStatus {
        /// Being created.
        Initializing => "initializing",
        /// Powering on.
        Starting => "starting",
        /// Powered on.
        Running => "running",
        /// Shutting down or powering off.
        Stopping => "stopping",
        /// Powered off.
        Off => "off",
        /// Being deleted.
        Deleting => "deleting",
        /// Moving between hosts.
        Migrating => "migrating",
        /// Being rebuilt from an image.
        Rebuilding => "rebuilding",
    }
);

open_enum!(
    /// The status of an action.
    ActionStatus {
        /// Still running.
        Running => "running",
        /// Finished successfully.
        Success => "success",
        /// Finished with an error (see `Action::error`).
        Error => "error",
    }
);

open_enum!(
    /// The kind of an image.
    ImageType {
        /// A system image provided by Hetzner.
        System => "system",
        /// An app image provided by Hetzner.
        App => "app",
        /// A snapshot made by the user.
        Snapshot => "snapshot",
        /// A backup of a server.
        Backup => "backup",
    }
);

open_enum!(
    /// The status of an image.
    ImageStatus {
        /// Usable.
        Available => "available",
        /// Still being made (`image_size` is null).
        Creating => "creating",
        /// Not usable.
        Unavailable => "unavailable",
    }
);

open_enum!(
    /// A CPU architecture.
    Architecture {
        /// x86-64.
        X86 => "x86",
        /// arm64.
        Arm => "arm",
    }
);

open_enum!(
    /// The CPU kind of a server type.
    CpuType {
        /// Shared vCPUs.
        Shared => "shared",
        /// Dedicated vCPUs.
        Dedicated => "dedicated",
    }
);

open_enum!(
    /// Where a server type's disk lives.
    StorageType {
        /// Local NVMe.
        Local => "local",
        /// Network (Ceph) storage.
        Network => "network",
    }
);

open_enum!(
    /// The `error.code` of an API error answer; error handling keys on this, never on the status.
    ErrorCode {
        /// Bad field values; see the details.
        InvalidInput => "invalid_input",
        /// The body was not valid JSON.
        JsonError => "json_error",
        /// Bad or missing token.
        Unauthorized => "unauthorized",
        /// Not allowed.
        Forbidden => "forbidden",
        /// A read-only token tried to write.
        TokenReadonly => "token_readonly",
        /// A project limit was reached.
        ResourceLimitExceeded => "resource_limit_exceeded",
        /// No such resource.
        NotFound => "not_found",
        /// A unique field (a name, a key) is taken.
        UniquenessError => "uniqueness_error",
        /// A concurrent change; worth retrying.
        Conflict => "conflict",
        /// The resource is locked by a running action.
        Locked => "locked",
        /// The resource is locked by a running action (alternative spelling).
        ResourceLocked => "resource_locked",
        /// Delete-protected.
        Protected => "protected",
        /// Over the rate limit.
        RateLimitExceeded => "rate_limit_exceeded",
        /// An internal error.
        ServerError => "server_error",
        /// An upstream failure; worth retrying.
        BadGateway => "bad_gateway",
        /// The service is unavailable.
        Unavailable => "unavailable",
        /// The service is in maintenance.
        Maintenance => "maintenance",
        /// An upstream timeout; worth retrying.
        Timeout => "timeout",
        /// The server type is not available in the location.
        ResourceUnavailable => "resource_unavailable",
        /// No host could place the server.
        PlacementError => "placement_error",
    }
);

/// An integer id or a name, for the API fields that accept either (`server_type`, `image`,
/// `location`, `ssh_keys`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IdOrName {
    /// By id.
    Id(i64),
    /// By name.
    Name(String),
}

impl From<&str> for IdOrName {
    fn from(name: &str) -> Self {
        IdOrName::Name(name.to_string())
    }
}

impl From<String> for IdOrName {
    fn from(name: String) -> Self {
        IdOrName::Name(name)
    }
}

impl From<i64> for IdOrName {
    fn from(id: i64) -> Self {
        IdOrName::Id(id)
    }
}

impl From<ImageId> for IdOrName {
    fn from(id: ImageId) -> Self {
        IdOrName::Id(id.0)
    }
}

impl From<SshKeyId> for IdOrName {
    fn from(id: SshKeyId) -> Self {
        IdOrName::Id(id.0)
    }
}

impl From<ServerTypeId> for IdOrName {
    fn from(id: ServerTypeId) -> Self {
        IdOrName::Id(id.0)
    }
}

impl From<LocationId> for IdOrName {
    fn from(id: LocationId) -> Self {
        IdOrName::Id(id.0)
    }
}

/// An action: an asynchronous operation the API runs for a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Its id.
    pub id: ActionId,
    /// What it does, e.g. `create_server`, `shutdown_server`, `create_image`.
    pub command: String,
    /// Running, success or error.
    pub status: ActionStatus,
    /// Percent done, 0 to 100.
    #[serde(default)]
    pub progress: u8,
    /// When it started (RFC 3339).
    #[serde(default)]
    pub started: Option<String>,
    /// When it finished (RFC 3339); null while running.
    #[serde(default)]
    pub finished: Option<String>,
    /// The resources it acts on.
    #[serde(default)]
    pub resources: Vec<ActionResource>,
    /// Why it failed; null unless `status` is `error`.
    #[serde(default)]
    pub error: Option<ActionError>,
}

/// A resource an action acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionResource {
    /// The resource's id.
    pub id: i64,
    /// The resource's kind, e.g. `server`, `image`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// Why an action failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionError {
    /// A machine-readable code.
    pub code: String,
    /// A human-readable message.
    pub message: String,
}

/// A server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    /// Its id.
    pub id: ServerId,
    /// Its name (unique per project).
    pub name: String,
    /// Its power and life-cycle state.
    pub status: ServerStatus,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
    /// Its public addresses.
    #[serde(default)]
    pub public_net: PublicNet,
    /// Its type (cores, disk, architecture).
    pub server_type: ServerType,
    /// Where it runs.
    #[serde(default)]
    pub location: Option<Location>,
    /// The image it was created from; null when that image is gone.
    #[serde(default)]
    pub image: Option<Image>,
    /// Its disk size in GB.
    #[serde(default)]
    pub primary_disk_size: Option<f64>,
    /// Its labels.
    #[serde(default)]
    pub labels: Labels,
    /// Whether the rescue system is enabled for the next boot.
    #[serde(default)]
    pub rescue_enabled: bool,
    /// Whether an action holds a lock on it.
    #[serde(default)]
    pub locked: bool,
    /// Its protection flags.
    #[serde(default)]
    pub protection: ServerProtection,
}

/// A server's public network configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicNet {
    /// The IPv4 address; null when disabled.
    #[serde(default)]
    pub ipv4: Option<Ipv4Info>,
    /// The IPv6 network; null when disabled.
    #[serde(default)]
    pub ipv6: Option<Ipv6Info>,
}

/// A server's public IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Info {
    /// The address.
    pub ip: Ipv4Addr,
    /// Whether it is blocked.
    #[serde(default)]
    pub blocked: bool,
}

/// A server's public IPv6 network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Info {
    /// The network in CIDR notation, e.g. `2001:db8::/64`.
    pub ip: String,
    /// Whether it is blocked.
    #[serde(default)]
    pub blocked: bool,
}

impl Ipv6Info {
    /// The server's own address: the network address plus one, as Hetzner configures it.
    /// `None` when `ip` is not an IPv6 network in CIDR notation.
    pub fn host_address(&self) -> Option<Ipv6Addr> {
        let network = self.ip.split('/').next()?;
        let network: Ipv6Addr = network.parse().ok()?;
        Some(Ipv6Addr::from(u128::from(network).checked_add(1)?))
    }
}

/// A server's protection flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerProtection {
    /// Delete protection.
    #[serde(default)]
    pub delete: bool,
    /// Rebuild protection.
    #[serde(default)]
    pub rebuild: bool,
}

/// An image's protection flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    /// Delete protection.
    #[serde(default)]
    pub delete: bool,
}

/// An image: a system image, a snapshot or a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// Its id.
    pub id: ImageId,
    /// System, app, snapshot or backup.
    #[serde(rename = "type")]
    pub kind: ImageType,
    /// Available, creating or unavailable.
    pub status: ImageStatus,
    /// Its name; null for snapshots (they are found by label).
    #[serde(default)]
    pub name: Option<String>,
    /// Its description.
    #[serde(default)]
    pub description: Option<String>,
    /// Its stored size in GB; null while creating.
    #[serde(default)]
    pub image_size: Option<f64>,
    /// The disk size a server needs to use it, in GB (a snapshot's is its source server's).
    pub disk_size: f64,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
    /// The server it was made from.
    #[serde(default)]
    pub created_from: Option<CreatedFrom>,
    /// The server a backup belongs to.
    #[serde(default)]
    pub bound_to: Option<i64>,
    /// The OS family, e.g. `debian`; kept as a string because the API adds distributions.
    #[serde(default)]
    pub os_flavor: Option<String>,
    /// The OS version, e.g. `12`.
    #[serde(default)]
    pub os_version: Option<String>,
    /// Its architecture.
    pub architecture: Architecture,
    /// Whether servers start from it faster.
    #[serde(default)]
    pub rapid_deploy: bool,
    /// Its protection flags.
    #[serde(default)]
    pub protection: Protection,
    /// When it was deprecated (RFC 3339).
    #[serde(default)]
    pub deprecated: Option<String>,
    /// When it was deleted (RFC 3339).
    #[serde(default)]
    pub deleted: Option<String>,
    /// Its labels.
    #[serde(default)]
    pub labels: Labels,
}

/// The server an image was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedFrom {
    /// The server's id.
    pub id: i64,
    /// The server's name.
    pub name: String,
}

/// An SSH key stored in the project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshKey {
    /// Its id.
    pub id: SshKeyId,
    /// Its name (unique per project).
    pub name: String,
    /// MD5 fingerprint, colon-separated hex.
    pub fingerprint: String,
    /// The public key in OpenSSH format.
    pub public_key: String,
    /// Its labels.
    #[serde(default)]
    pub labels: Labels,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
}

/// A server type: cores, memory, disk, architecture and where it is offered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerType {
    /// Its id.
    pub id: ServerTypeId,
    /// Its name, e.g. `cx23`.
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: Option<String>,
    /// Number of cores.
    #[serde(default)]
    pub cores: u32,
    /// Memory in GB.
    #[serde(default)]
    pub memory: f64,
    /// Disk in GB.
    pub disk: f64,
    /// CPU architecture.
    pub architecture: Architecture,
    /// Shared or dedicated.
    #[serde(default)]
    pub cpu_type: Option<CpuType>,
    /// Local or network storage.
    #[serde(default)]
    pub storage_type: Option<StorageType>,
    /// Deprecated flag (older form of `deprecation`).
    #[serde(default)]
    pub deprecated: Option<bool>,
    /// Deprecation details; null when not deprecated.
    #[serde(default)]
    pub deprecation: Option<Deprecation>,
    /// Per-location availability.
    #[serde(default)]
    pub locations: Vec<ServerTypeLocation>,
    /// Per-location prices.
    #[serde(default)]
    pub prices: Vec<ServerTypePrice>,
}

impl ServerType {
    /// Whether the type is deprecated (by either form the API uses).
    pub fn is_deprecated(&self) -> bool {
        self.deprecation.is_some() || self.deprecated == Some(true)
    }

    /// Whether the type can be ordered in `location` right now.
    pub fn is_available_in(&self, location: &str) -> bool {
        self.locations
            .iter()
            .any(|entry| entry.name == location && entry.available && entry.deprecation.is_none())
    }
}

/// A server type's availability in one location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTypeLocation {
    /// The location's id.
    #[serde(default)]
    pub id: Option<i64>,
    /// The location's name, e.g. `fsn1`.
    pub name: String,
    /// Deprecation of the type in this location.
    #[serde(default)]
    pub deprecation: Option<Deprecation>,
    /// Whether it can be ordered here now (added 2026-04; absent means the API predates the
    /// field, when every listed location was orderable, so it defaults to true).
    #[serde(default = "default_true")]
    pub available: bool,
    /// Whether Hetzner recommends this location for the type.
    #[serde(default)]
    pub recommended: bool,
}

fn default_true() -> bool {
    true
}

/// When a deprecation was announced and when the thing stops being available.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deprecation {
    /// Announcement time (RFC 3339).
    #[serde(default)]
    pub announced: Option<String>,
    /// Time after which it is unavailable (RFC 3339).
    #[serde(default)]
    pub unavailable_after: Option<String>,
}

/// A server type's price in one location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTypePrice {
    /// The location's name.
    pub location: String,
    /// Hourly price.
    #[serde(default)]
    pub price_hourly: Option<Price>,
    /// Monthly price.
    #[serde(default)]
    pub price_monthly: Option<Price>,
}

/// A price as decimal strings, as the API sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// Without VAT.
    pub net: String,
    /// With VAT.
    pub gross: String,
}

/// A location (a site with one or more datacenters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// Its id.
    pub id: LocationId,
    /// Its name, e.g. `fsn1`.
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    #[serde(default)]
    pub country: Option<String>,
    /// City.
    #[serde(default)]
    pub city: Option<String>,
    /// Network zone, e.g. `eu-central`.
    #[serde(default)]
    pub network_zone: Option<String>,
    /// Latitude.
    #[serde(default)]
    pub latitude: Option<f64>,
    /// Longitude.
    #[serde(default)]
    pub longitude: Option<f64>,
}

/// `meta` of a list answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The paging state.
    #[serde(default)]
    pub pagination: Option<Pagination>,
}

/// The paging state of a list answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pagination {
    /// This page (from 1).
    pub page: u32,
    /// Entries per page.
    pub per_page: u32,
    /// The previous page, if any.
    #[serde(default)]
    pub previous_page: Option<u32>,
    /// The next page; null on the last page.
    #[serde(default)]
    pub next_page: Option<u32>,
    /// The last page, if known.
    #[serde(default)]
    pub last_page: Option<u32>,
    /// The number of entries, if known.
    #[serde(default)]
    pub total_entries: Option<u64>,
}
