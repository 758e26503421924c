//! The fixed offer of the simulated cloud: locations, server types and system images, shaped like the live service in 2026.

use serde_json::{Value, json};

/// A location (`fsn1`, `nbg1`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// ID of the location.
    pub id: u64,
    /// Name, e.g. `fsn1`.
    pub name: String,
    /// Human-readable description.
    pub description: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
    /// Closest city.
    pub city: String,
    /// Latitude of the city.
    pub latitude: f64,
    /// Longitude of the city.
    pub longitude: f64,
    /// Network zone, e.g. `eu-central`.
    pub network_zone: String,
}

/// When a resource was (or will be) retired: RFC 3339 timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deprecation {
    /// When the deprecation was announced (RFC 3339).
    pub announced: String,
    /// After this (RFC 3339) the resource can no longer be ordered.
    pub unavailable_after: String,
}

/// Where a server type is offered, and whether it can be ordered there now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeLocation {
    /// Location name.
    pub location: String,
    /// False when the location has run out of this type (`resource_unavailable` on create).
    pub available: bool,
    /// How many more servers of this type the location can take; `None` is no limit. Each
    /// create takes one and each deleted server gives it back; at zero the type is listed
    /// `available: false` there and a create answers `resource_unavailable`.
    pub stock: Option<u32>,
    /// Whether the type is recommended there.
    pub recommended: bool,
    /// Deprecation of the type in this location, if any.
    pub deprecation: Option<Deprecation>,
}

impl TypeLocation {
    /// Whether a server of the type can be ordered here now: listed available, stock left.
    pub fn orderable(&self) -> bool {
        self.available && self.stock != Some(0)
    }
}

/// A server type (`cx23`, `cax11`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerType {
    /// ID of the server type.
    pub id: u64,
    /// Name, e.g. `cx23`.
    pub name: String,
    /// Human-readable description.
    pub description: String,
    /// Category, e.g. `Shared vCPU`.
    pub category: String,
    /// Number of vCPUs.
    pub cores: u32,
    /// GB.
    pub memory: f64,
    /// GB.
    pub disk: u64,
    /// `x86` or `arm`.
    pub architecture: String,
    /// `shared` or `dedicated`.
    pub cpu_type: String,
    /// `local` or `network`.
    pub storage_type: String,
    /// Net EUR per month; hourly prices are derived from it.
    pub monthly_net: f64,
    /// Net EUR per TB of traffic over the included amount.
    pub traffic_net_per_tb: f64,
    /// Bytes of traffic included per month.
    pub included_traffic: u64,
    /// Type-wide deprecation (the deprecated top-level field); per location in `locations`.
    pub deprecation: Option<Deprecation>,
    /// Where the type is offered.
    pub locations: Vec<TypeLocation>,
}

/// A system image such as `debian-12` for one architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemImage {
    /// ID of the image.
    pub id: u64,
    /// Name, e.g. `debian-12`.
    pub name: String,
    /// Human-readable description.
    pub description: String,
    /// Operating system flavor (`ubuntu`, `debian`).
    pub os_flavor: String,
    /// Operating system version, e.g. `12`.
    pub os_version: String,
    /// `x86` or `arm`.
    pub architecture: String,
    /// GB.
    pub disk_size: f64,
    /// RFC 3339 time after which the image is deprecated, if any.
    pub deprecated: Option<String>,
    /// Creation time (RFC 3339).
    pub created: String,
}

/// Everything the simulated cloud offers. [`Catalog::default`] is the Hetzner-like offer the
/// tests and the reference describe; callers may change it before starting a simulator.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    /// Locations, in id order.
    pub locations: Vec<Location>,
    /// Server types on offer.
    pub server_types: Vec<ServerType>,
    /// System images on offer.
    pub system_images: Vec<SystemImage>,
}

fn location(
    id: u64,
    name: &str,
    description: &str,
    country: &str,
    city: &str,
    coordinates: (f64, f64),
    network_zone: &str,
) -> Location {
    Location {
        id,
        name: name.into(),
        description: description.into(),
        country: country.into(),
        city: city.into(),
        latitude: coordinates.0,
        longitude: coordinates.1,
        network_zone: network_zone.into(),
    }
}

const EU: &[&str] = &["fsn1", "nbg1", "hel1"];
const ALL: &[&str] = &["fsn1", "nbg1", "hel1", "ash", "hil", "sin"];

struct TypeSpec {
    id: u64,
    name: &'static str,
    cores: u32,
    memory: f64,
    disk: u64,
    architecture: &'static str,
    cpu_type: &'static str,
    monthly_net: f64,
    locations: &'static [&'static str],
}

fn server_type(spec: TypeSpec) -> ServerType {
    let category = if spec.cpu_type == "dedicated" {
        "Dedicated vCPU"
    } else {
        "Shared vCPU"
    };
    ServerType {
        id: spec.id,
        name: spec.name.into(),
        description: spec.name.to_uppercase(),
        category: category.into(),
        cores: spec.cores,
        memory: spec.memory,
        disk: spec.disk,
        architecture: spec.architecture.into(),
        cpu_type: spec.cpu_type.into(),
        storage_type: "local".into(),
        monthly_net: spec.monthly_net,
        traffic_net_per_tb: 1.0,
        included_traffic: 21_990_232_555_520,
        deprecation: None,
        locations: spec
            .locations
            .iter()
            .map(|name| TypeLocation {
                location: (*name).into(),
                available: true,
                stock: None,
                recommended: true,
                deprecation: None,
            })
            .collect(),
    }
}

fn system_image(
    id: u64,
    name: &str,
    flavor: &str,
    version: &str,
    architecture: &str,
    deprecated: Option<&str>,
) -> SystemImage {
    let pretty_flavor = if flavor == "ubuntu" {
        "Ubuntu"
    } else {
        "Debian"
    };
    SystemImage {
        id,
        name: name.into(),
        description: format!("{pretty_flavor} {version}"),
        os_flavor: flavor.into(),
        os_version: version.into(),
        architecture: architecture.into(),
        disk_size: 5.0,
        deprecated: deprecated.map(str::to_owned),
        created: "2025-06-01T00:00:00+00:00".into(),
    }
}

impl Default for Catalog {
    fn default() -> Self {
        let locations = vec![
            location(
                1,
                "fsn1",
                "Falkenstein DC Park 1",
                "DE",
                "Falkenstein",
                (50.47612, 12.370071),
                "eu-central",
            ),
            location(
                2,
                "nbg1",
                "Nuremberg DC Park 1",
                "DE",
                "Nuremberg",
                (49.452102, 11.076665),
                "eu-central",
            ),
            location(
                3,
                "hel1",
                "Helsinki DC Park 1",
                "FI",
                "Helsinki",
                (60.169855, 24.938379),
                "eu-central",
            ),
            location(
                4,
                "ash",
                "Ashburn, VA",
                "US",
                "Ashburn, VA",
                (39.045821, -77.487073),
                "us-east",
            ),
            location(
                5,
                "hil",
                "Hillsboro, OR",
                "US",
                "Hillsboro, OR",
                (45.54222, -122.951924),
                "us-west",
            ),
            location(
                6,
                "sin",
                "Singapore",
                "SG",
                "Singapore",
                (1.283333, 103.833333),
                "ap-southeast",
            ),
        ];
        let x86 = "x86";
        let arm = "arm";
        let mut server_types = vec![
            server_type(TypeSpec {
                id: 22,
                name: "cx22",
                cores: 2,
                memory: 4.0,
                disk: 40,
                architecture: x86,
                cpu_type: "shared",
                monthly_net: 3.79,
                locations: EU,
            }),
            server_type(TypeSpec {
                id: 108,
                name: "cx23",
                cores: 2,
                memory: 4.0,
                disk: 40,
                architecture: x86,
                cpu_type: "shared",
                monthly_net: 2.99,
                locations: EU,
            }),
            server_type(TypeSpec {
                id: 109,
                name: "cx33",
                cores: 4,
                memory: 8.0,
                disk: 80,
                architecture: x86,
                cpu_type: "shared",
                monthly_net: 4.99,
                locations: EU,
            }),
            server_type(TypeSpec {
                id: 110,
                name: "cx43",
                cores: 8,
                memory: 16.0,
                disk: 160,
                architecture: x86,
                cpu_type: "shared",
                monthly_net: 8.99,
                locations: EU,
            }),
            server_type(TypeSpec {
                id: 45,
                name: "cax11",
                cores: 2,
                memory: 4.0,
                disk: 40,
                architecture: arm,
                cpu_type: "shared",
                monthly_net: 3.79,
                locations: EU,
            }),
            server_type(TypeSpec {
                id: 93,
                name: "cax21",
                cores: 4,
                memory: 8.0,
                disk: 80,
                architecture: arm,
                cpu_type: "shared",
                monthly_net: 6.49,
                locations: EU,
            }),
            server_type(TypeSpec {
                id: 96,
                name: "ccx13",
                cores: 2,
                memory: 8.0,
                disk: 80,
                architecture: x86,
                cpu_type: "dedicated",
                monthly_net: 12.49,
                locations: ALL,
            }),
        ];
        // cx22 is retired: deprecated everywhere and no longer orderable.
        let retired = Deprecation {
            announced: "2025-10-16T06:00:00+00:00".into(),
            unavailable_after: "2026-01-01T00:00:00+00:00".into(),
        };
        server_types[0].deprecation = Some(retired.clone());
        for place in &mut server_types[0].locations {
            place.deprecation = Some(retired.clone());
            place.available = false;
            place.recommended = false;
        }
        // cx43 is sold out in hel1: listed, but `available: false` there.
        for place in &mut server_types[3].locations {
            if place.location == "hel1" {
                place.available = false;
                place.recommended = false;
            }
        }
        let deprecated_2004 = Some("2025-05-31T00:00:00+00:00");
        let system_images = vec![
            system_image(161547269, "ubuntu-24.04", "ubuntu", "24.04", x86, None),
            system_image(161547270, "ubuntu-24.04", "ubuntu", "24.04", arm, None),
            system_image(67794396, "ubuntu-22.04", "ubuntu", "22.04", x86, None),
            system_image(103908070, "ubuntu-22.04", "ubuntu", "22.04", arm, None),
            system_image(114690387, "debian-12", "debian", "12", x86, None),
            system_image(114690389, "debian-12", "debian", "12", arm, None),
            system_image(290765881, "debian-13", "debian", "13", x86, None),
            system_image(290765882, "debian-13", "debian", "13", arm, None),
            system_image(
                15512617,
                "ubuntu-20.04",
                "ubuntu",
                "20.04",
                x86,
                deprecated_2004,
            ),
            system_image(
                103908130,
                "ubuntu-20.04",
                "ubuntu",
                "20.04",
                arm,
                deprecated_2004,
            ),
        ];
        Catalog {
            locations,
            server_types,
            system_images,
        }
    }
}

fn price(net: f64) -> Value {
    // Germany's 19 % VAT, as the API's gross prices for a German project.
    json!({"net": format!("{net:.4}"), "gross": format!("{:.4}", net * 1.19)})
}

fn deprecation_json(deprecation: &Option<Deprecation>) -> Value {
    match deprecation {
        Some(deprecation) => json!({
            "announced": deprecation.announced,
            "unavailable_after": deprecation.unavailable_after,
        }),
        None => Value::Null,
    }
}

impl Location {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "country": self.country,
            "city": self.city,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "network_zone": self.network_zone,
        })
    }
}

impl ServerType {
    pub(crate) fn to_json(&self, catalog: &Catalog) -> Value {
        let location_id = |name: &str| {
            catalog
                .locations
                .iter()
                .find(|location| location.name == name)
                .map_or(0, |location| location.id)
        };
        let hours_per_month = 730.0;
        json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "cores": self.cores,
            "memory": self.memory,
            "disk": self.disk,
            "architecture": self.architecture,
            "cpu_type": self.cpu_type,
            "storage_type": self.storage_type,
            "deprecated": self.deprecation.is_some(),
            "deprecation": deprecation_json(&self.deprecation),
            "prices": self.locations.iter().map(|place| json!({
                "location": place.location,
                "price_hourly": price(self.monthly_net / hours_per_month),
                "price_monthly": price(self.monthly_net),
                "price_per_tb_traffic": price(self.traffic_net_per_tb),
                "included_traffic": self.included_traffic,
            })).collect::<Vec<_>>(),
            "locations": self.locations.iter().map(|place| json!({
                "id": location_id(&place.location),
                "name": place.location,
                "deprecation": deprecation_json(&place.deprecation),
                "available": place.orderable(),
                "recommended": place.recommended,
            })).collect::<Vec<_>>(),
        })
    }
}
