//! Where a build server can be made: the preferred server types and locations checked against
//! what the API offers and can sell right now, in the order a build tries them.
//!
//! Preflight reads every location and server type once (`GET /locations`, `GET /server_types`)
//! and turns the preference lists into ordered (type, location) pairs. Types are the outer loop:
//! every preferred location is tried for the first type before the second type is tried, because a
//! snapshot's disk is its build server's and never shrinks, so a bigger type makes a snapshot that
//! no longer fits the smaller one. A name that does not exist, a type of the other architecture
//! or a deprecated type stops the build with the alternatives named; a pair that is sold out
//! (`available: false`), not offered, or deprecated in its location is skipped with its reason.
//! At create time [`is_capacity_error`] tells the errors that move a build on to the next pair.

use caph_core::Arch;

use super::lookup::architecture;
use crate::client::{Client, Error, ErrorCode, Location, ServerType};

/// A (server type, location) pair that preflight found orderable.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The server type, e.g. `cx23`.
    pub server_type: String,
    /// The location, e.g. `fsn1`.
    pub location: String,
    /// The type's disk in GB: the snapshot's disk size.
    pub disk_gb: f64,
    /// Whether Hetzner recommends the type in this location.
    pub recommended: bool,
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} in {}", self.server_type, self.location)
    }
}

/// The pairs one architecture's build tries, in order, and the pairs preflight left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArchPlacement {
    /// Orderable pairs, most preferred first.
    pub candidates: Vec<Candidate>,
    /// Preferred pairs that cannot be ordered now, each as `cx23 in fsn1: sold out`.
    pub skipped: Vec<String>,
}

/// What the API offers: every location and every server type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Offer {
    /// Every location.
    pub locations: Vec<Location>,
    /// Every server type.
    pub server_types: Vec<ServerType>,
}

impl Offer {
    /// Reads the offer; the first call doubles as the token check (401 on a bad token).
    pub async fn read(client: &Client) -> Result<Offer, Error> {
        let locations = client.list_locations(None).await?;
        let server_types = client.list_server_types(None).await?;
        Ok(Offer {
            locations,
            server_types,
        })
    }

    /// The current (not deprecated) types of `arch`, smallest disk first, with their disks:
    /// `cx23 (40 GB), cx33 (80 GB)`.
    fn current_types(&self, arch: Arch) -> String {
        let mut types: Vec<&ServerType> = self
            .server_types
            .iter()
            .filter(|server_type| {
                server_type.architecture == architecture(arch) && !server_type.is_deprecated()
            })
            .collect();
        types.sort_by(|a, b| a.disk.total_cmp(&b.disk).then(a.name.cmp(&b.name)));
        let names: Vec<String> = types
            .iter()
            .map(|server_type| format!("{} ({} GB disk)", server_type.name, server_type.disk))
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }

    fn location_names(&self) -> String {
        let names: Vec<&str> = self
            .locations
            .iter()
            .map(|location| location.name.as_str())
            .collect();
        names.join(", ")
    }

    /// Where `server_type` can be ordered now, as `fsn1, nbg1`.
    fn orderable_in(server_type: &ServerType) -> Vec<&str> {
        server_type
            .locations
            .iter()
            .filter(|place| place.available && place.deprecation.is_none())
            .map(|place| place.name.as_str())
            .collect()
    }
}

/// The problems with the preferred locations, independent of the architecture: each names the
/// locations that exist.
pub fn location_problems(offer: &Offer, locations: &[String]) -> Vec<String> {
    locations
        .iter()
        .filter(|wanted| !offer.locations.iter().any(|known| &&known.name == wanted))
        .map(|wanted| {
            format!(
                "location \"{wanted}\" does not exist; use one of {}",
                offer.location_names()
            )
        })
        .collect()
}

/// The offer read once, and the pairs one architecture's temporary server can go on: the
/// placement when there is one, and every problem with the locations and the types (for a
/// preflight error). Uploads and verifications, which run one architecture, start with it.
pub(crate) async fn read_and_plan(
    client: &crate::client::Client,
    arch: Arch,
    server_types: &[String],
    locations: &[String],
) -> Result<(Option<ArchPlacement>, Vec<String>), caph_core::backend::BackendError> {
    let offer =
        Offer::read(client)
            .await
            .map_err(|error| caph_core::backend::BackendError::Failed {
                context: "checking the API token, locations and server types".to_string(),
                source: Box::new(error),
            })?;
    let mut problems = location_problems(&offer, locations);
    let placement = match plan(&offer, arch, server_types, locations) {
        Ok(placement) => Some(placement),
        Err(found) => {
            problems.extend(found);
            None
        }
    };
    Ok((placement, problems))
}

/// The server type a one-architecture job takes when none is given: the smallest of the
/// architecture (`cx23`, `cax11`).
pub fn default_server_type(arch: Arch) -> &'static str {
    match arch {
        Arch::X86 => "cx23",
        Arch::Arm => "cax11",
    }
}

/// The pairs `arch` can be built on, or the problems that stop it (each naming alternatives).
pub fn plan(
    offer: &Offer,
    arch: Arch,
    server_types: &[String],
    locations: &[String],
) -> Result<ArchPlacement, Vec<String>> {
    let mut problems = Vec::new();
    let mut types = Vec::new();
    for name in server_types {
        match offer.server_types.iter().find(|known| &known.name == name) {
            None => problems.push(format!(
                "{arch}: server type \"{name}\" does not exist; {arch} types are {}",
                offer.current_types(arch)
            )),
            Some(server_type) if server_type.architecture != architecture(arch) => {
                problems.push(format!(
                    "{arch}: server type {name} is {}, not {arch}; {arch} types are {}",
                    server_type.architecture,
                    offer.current_types(arch)
                ))
            }
            Some(server_type) if server_type.is_deprecated() => {
                let until = server_type
                    .deprecation
                    .as_ref()
                    .and_then(|deprecation| deprecation.unavailable_after.as_deref())
                    .map(|time| format!(", unavailable after {time}"))
                    .unwrap_or_default();
                problems.push(format!(
                    "{arch}: server type {name} is deprecated{until}; choose a current {arch} type: {} (a snapshot fits only types with at least its disk)",
                    offer.current_types(arch)
                ));
            }
            Some(server_type) => types.push(server_type),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut placement = ArchPlacement::default();
    for server_type in &types {
        for location in locations {
            let place = server_type
                .locations
                .iter()
                .find(|place| &place.name == location);
            let reason = match place {
                None => Some("not offered there".to_string()),
                Some(place) if place.deprecation.is_some() => Some(format!(
                    "deprecated there{}",
                    place
                        .deprecation
                        .as_ref()
                        .and_then(|deprecation| deprecation.unavailable_after.as_deref())
                        .map(|time| format!(" (unavailable after {time})"))
                        .unwrap_or_default()
                )),
                Some(place) if !place.available => Some("sold out".to_string()),
                Some(_) => None,
            };
            match reason {
                Some(reason) => placement
                    .skipped
                    .push(format!("{} in {location}: {reason}", server_type.name)),
                None => placement.candidates.push(Candidate {
                    server_type: server_type.name.clone(),
                    location: location.clone(),
                    disk_gb: server_type.disk,
                    recommended: place.is_some_and(|place| place.recommended),
                }),
            }
        }
    }
    if placement.candidates.is_empty() {
        let elsewhere: Vec<String> = types
            .iter()
            .filter_map(|server_type| {
                let places = Offer::orderable_in(server_type);
                (!places.is_empty())
                    .then(|| format!("{} in {}", server_type.name, places.join(", ")))
            })
            .collect();
        let hint = if elsewhere.is_empty() {
            format!(
                "add other types to hcloud.server_types.{arch} ({arch} types are {}) or try later",
                offer.current_types(arch)
            )
        } else {
            format!(
                "add a location to hcloud.locations where they can be ordered now ({}) or try later",
                elsewhere.join("; ")
            )
        };
        return Err(vec![format!(
            "{arch}: none of the preferred types can be ordered in a preferred location now: {}; {hint}",
            placement.skipped.join(", ")
        )]);
    }
    Ok(placement)
}

/// Whether a failed create should move on to the next pair: the location has run out of the type
/// (`resource_unavailable`) or could not place the server (`placement_error`), whether the API
/// refused the create or its action failed afterwards.
pub fn is_capacity_error(error: &Error) -> bool {
    match error {
        Error::ActionFailed { code, .. } => {
            code == ErrorCode::ResourceUnavailable.as_str()
                || code == ErrorCode::PlacementError.as_str()
        }
        other => matches!(
            other.code(),
            Some(ErrorCode::ResourceUnavailable | ErrorCode::PlacementError)
        ),
    }
}
