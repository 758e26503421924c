//! The drives a server's rescue system reports, and a layout's drive hints resolved against them.
//!
//! Device names are not a stable way to name a dedicated server's drives (`/dev/nvme0n1` on one
//! model is `/dev/sda` on another), so a layout may name drives by hint instead (see
//! [`DriveRef`]): a WWN, which identifies one drive for its life, or `smallest`, the smallest
//! drives of equal size (the usual pair for the system on a server with bigger data drives).
//! An install reads the drives with [`LSBLK_COMMAND`] in the rescue system, resolves the hints
//! with [`resolve`], and checks the resolved layout against the drives before anything is
//! written to them.

use std::fmt;

use caph_core::spec::{DiskLayout, DriveRef};

use crate::autosetup::Drive;

/// What the rescue system is asked: whole disks only (`--nodeps`), sizes in bytes, as JSON.
pub const LSBLK_COMMAND: &str =
    "lsblk --bytes --json --nodeps --output NAME,TYPE,SIZE,WWN,MODEL,SERIAL,ROTA";

/// A drive of the server, as its rescue system's `lsblk` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RescueDrive {
    /// `/dev/sda`.
    pub device: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Its World Wide Name (`0x5002538e40a1b2c3`, `eui.0025388b71c2b3e4`), where it has one.
    pub wwn: Option<String>,
    /// The model, where known.
    pub model: Option<String>,
    /// The serial number, where known.
    pub serial: Option<String>,
    /// Whether it spins.
    pub rotational: bool,
}

impl RescueDrive {
    /// The drive as installimage's size rules see it.
    pub fn as_drive(&self) -> Drive {
        Drive {
            device: self.device.clone(),
            size_bytes: self.size_bytes,
        }
    }
}

impl fmt::Display for RescueDrive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Decimal gigabytes, as drives are sold.
        write!(
            f,
            "{} ({:.1} GB{}",
            self.device,
            self.size_bytes as f64 / 1e9,
            if self.rotational { ", rotational" } else { "" }
        )?;
        if let Some(wwn) = &self.wwn {
            write!(f, ", WWN {wwn}")?;
        }
        if let Some(model) = &self.model {
            write!(f, ", {model}")?;
        }
        f.write_str(")")
    }
}

/// Reads [`LSBLK_COMMAND`]'s output: the disks, in its order (loop devices, CD drives and other
/// kinds are left out).
pub fn parse_lsblk(json: &str) -> Result<Vec<RescueDrive>, String> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|error| format!("lsblk's output is not JSON: {error}"))?;
    let devices = value["blockdevices"]
        .as_array()
        .ok_or_else(|| "lsblk's output has no blockdevices list".to_string())?;
    let text = |device: &serde_json::Value, key: &str| {
        device[key]
            .as_str()
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .map(str::to_owned)
    };
    let mut drives = Vec::new();
    for device in devices {
        if device["type"].as_str() != Some("disk") {
            continue;
        }
        let name = text(device, "name").ok_or_else(|| "an lsblk entry has no name".to_string())?;
        // lsblk writes sizes as numbers with --bytes (older releases as strings).
        let size_bytes = device["size"]
            .as_u64()
            .or_else(|| device["size"].as_str().and_then(|size| size.parse().ok()))
            .ok_or_else(|| format!("lsblk gives {name} no size"))?;
        let rotational = match &device["rota"] {
            serde_json::Value::Bool(rota) => *rota,
            serde_json::Value::String(rota) => rota == "1",
            serde_json::Value::Number(rota) => rota.as_u64() == Some(1),
            _ => false,
        };
        drives.push(RescueDrive {
            device: format!("/dev/{name}"),
            size_bytes,
            wwn: text(device, "wwn"),
            model: text(device, "model"),
            serial: text(device, "serial"),
            rotational,
        });
    }
    Ok(drives)
}

/// The layout with every drive hint replaced by the device of the drive it picks. Device paths
/// stay as they are (whether the server has them is for the drive rules to say).
pub fn resolve(layout: &DiskLayout, drives: &[RescueDrive]) -> Result<DiskLayout, String> {
    let wanted_smallest = layout
        .drives
        .iter()
        .filter(|drive| matches!(DriveRef::parse(drive), Some(DriveRef::Smallest)))
        .count();
    let mut smallest = smallest_equal(drives, wanted_smallest)?.into_iter();
    let mut resolved = layout.clone();
    for drive in &mut resolved.drives {
        match DriveRef::parse(drive) {
            Some(DriveRef::Device(_)) => {}
            Some(DriveRef::Wwn(wwn)) => {
                let found = drives
                    .iter()
                    .find(|candidate| {
                        candidate
                            .wwn
                            .as_deref()
                            .is_some_and(|known| known.eq_ignore_ascii_case(wwn))
                    })
                    .ok_or_else(|| format!("no drive of the server has the WWN {wwn}"))?;
                *drive = found.device.clone();
            }
            Some(DriveRef::Smallest) => {
                // `smallest_equal` returned exactly as many as the layout asks for.
                if let Some(found) = smallest.next() {
                    *drive = found.device.clone();
                }
            }
            None => {
                return Err(format!(
                    "\"{drive}\" is neither a device path nor a drive hint"
                ));
            }
        }
    }
    Ok(resolved)
}

/// The `count` smallest drives of equal size, by device name; none for a count of 0.
fn smallest_equal(drives: &[RescueDrive], count: usize) -> Result<Vec<&RescueDrive>, String> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut sizes: Vec<u64> = drives.iter().map(|drive| drive.size_bytes).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for size in sizes {
        let mut same: Vec<&RescueDrive> = drives
            .iter()
            .filter(|drive| drive.size_bytes == size)
            .collect();
        if same.len() >= count {
            same.sort_by(|a, b| a.device.cmp(&b.device));
            same.truncate(count);
            return Ok(same);
        }
    }
    Err(format!(
        "the layout asks for the {count} smallest drives of equal size, and the server has no {count} drives of one size"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(device: &str, gb: u64, wwn: &str) -> RescueDrive {
        RescueDrive {
            device: device.into(),
            size_bytes: gb * 1_000_000_000,
            wwn: Some(wwn.into()),
            model: None,
            serial: None,
            rotational: false,
        }
    }

    fn layout(drives: &[&str]) -> DiskLayout {
        DiskLayout {
            drives: drives.iter().map(|drive| drive.to_string()).collect(),
            raid_level: None,
            uefi: false,
            partitions: Vec::new(),
            volumes: Vec::new(),
            crypt_password: None,
        }
    }

    #[test]
    fn lsblk_output_becomes_disks_only() {
        let json = r#"{"blockdevices": [
            {"name":"nvme1n1","type":"disk","size":3840755982336,"wwn":"eui.36344730","model":"SAMSUNG MZQL23T8HCLS-00A07","serial":"S64HNE0T","rota":false},
            {"name":"nvme0n1","type":"disk","size":512110190592,"wwn":null,"model":null,"serial":null,"rota":false},
            {"name":"loop0","type":"loop","size":1073741824,"wwn":null,"model":null,"serial":null,"rota":true},
            {"name":"sr0","type":"rom","size":"1073741312","wwn":null,"model":"QEMU DVD-ROM","serial":null,"rota":"1"}
        ]}"#;
        let drives = parse_lsblk(json).unwrap();
        assert_eq!(
            drives.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "/dev/nvme1n1 (3840.8 GB, WWN eui.36344730, SAMSUNG MZQL23T8HCLS-00A07)",
                "/dev/nvme0n1 (512.1 GB)"
            ]
        );
        assert!(parse_lsblk("lsblk: command not found").is_err());
        assert!(parse_lsblk("{}").is_err());
    }

    #[test]
    fn hints_resolve_to_devices() {
        let drives = [
            drive("/dev/sdc", 4000, "0x3"),
            drive("/dev/sdb", 480, "0x2"),
            drive("/dev/sda", 480, "0x1"),
            drive("/dev/sdd", 240, "0x4"),
        ];
        // The two smallest of equal size: not the single 240 GB drive.
        assert_eq!(
            resolve(&layout(&["smallest", "smallest"]), &drives)
                .unwrap()
                .drives,
            ["/dev/sda", "/dev/sdb"]
        );
        assert_eq!(
            resolve(&layout(&["smallest"]), &drives).unwrap().drives,
            ["/dev/sdd"]
        );
        assert_eq!(
            resolve(&layout(&["wwn:0X3", "/dev/sdx"]), &drives)
                .unwrap()
                .drives,
            ["/dev/sdc", "/dev/sdx"]
        );
        assert_eq!(
            resolve(&layout(&["wwn:0x9"]), &drives).unwrap_err(),
            "no drive of the server has the WWN 0x9"
        );
        assert!(
            resolve(&layout(&["smallest"; 3]), &drives)
                .unwrap_err()
                .contains("no 3 drives of one size")
        );
    }
}
