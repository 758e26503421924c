//! The simulated installimage held to the real one: the same tarball and the same single-disk
//! config installed by Hetzner's installimage, CAPH's fork and the simulation, in the same kind
//! of rescue system; the installed trees are compared item by item. Every difference is either
//! fixed in the simulation or listed in [`KNOWN_DIFFERENCES`] with its reason; a listed
//! difference that no longer shows fails the test too, so the table stays true.

use std::collections::BTreeMap;
use std::path::Path;

use caph_sim::real_installimage::InstallimageKind;

use crate::installed_disk::{Expected, MountedSystem, check_real_install};
use crate::rescue_install::{RescueInstall, install_in_rescue};

/// The layout both installimages get: what this kernel can install for real.
const SINGLE_DISK: &str =
    "DRIVE1 /dev/sda\nBOOTLOADER grub\nPART /boot ext4 1024M\nPART / ext4 all\n";
const HOSTNAME: &str = "e2e-diff-1";

/// A difference between the real installimage and the simulation that stays, with its reason:
/// it is taken out of both sides of its item before they are compared. Each must still take
/// something out, or the test says the entry is stale.
pub struct KnownDifference {
    pub item: &'static str,
    pub what: &'static str,
    pub reason: &'static str,
    /// Whether the difference can show on this machine at all.
    pub applies: fn() -> bool,
    pub remove: fn(&str) -> String,
}

/// The known differences (see [`KnownDifference`]).
pub const KNOWN_DIFFERENCES: &[KnownDifference] = &[
    KnownDifference {
        item: "/etc/network/interfaces",
        what: "the IPv6 stanza",
        reason: "the real installimage configures the IPv6 address it finds on this host's interface; a simulated server has a loopback IPv4 address only, so the simulation is given none",
        applies: host_has_ipv6,
        remove: without_ipv6_stanza,
    },
    KnownDifference {
        item: "/etc/hosts",
        what: "the IPv6 address line",
        reason: "as for the network configuration: only the real installimage sees an IPv6 address",
        applies: host_has_ipv6,
        remove: without_ipv6_host_line,
    },
];

/// Whether a network interface of this machine that is not a virtual one has a global IPv6
/// address (`/proc/net/if_inet6`, scope 00), which the real installimage then configures.
fn host_has_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() == 6 && fields[3] == "00").then(|| fields[5].to_owned())
        })
        .any(|interface| {
            std::fs::canonicalize(format!("/sys/class/net/{interface}"))
                .is_ok_and(|path| !path.starts_with("/sys/devices/virtual"))
        })
}

fn without_ipv6_stanza(text: &str) -> String {
    let mut kept = Vec::new();
    let mut in_inet6 = false;
    for line in text.lines() {
        if line.starts_with("iface ") {
            in_inet6 = line.contains(" inet6 static") && !line.starts_with("iface lo ");
        }
        if !in_inet6 {
            kept.push(line);
        }
    }
    // The blank line before the removed stanza goes with it.
    while kept.last().is_some_and(|line| line.trim().is_empty()) {
        kept.pop();
    }
    kept.join("\n") + "\n"
}

fn without_ipv6_host_line(text: &str) -> String {
    text.lines()
        .filter(|line| {
            let address = line.split_whitespace().next().unwrap_or("");
            // The fixed IPv6 names (::1, fe00::0, ff0x::) stay; a machine's own address goes.
            !(address.contains(':')
                && !address.starts_with("::1")
                && !address.starts_with("fe00::")
                && !address.starts_with("ff0"))
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Reads `path` below the mounted system, or `<absent>`.
fn read(system: &MountedSystem, path: &str) -> String {
    std::fs::read_to_string(system.root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|_| "<absent>".into())
}

/// The network facts of an install (its address, netmask, network, gateway, interface name),
/// which differ by design: the real installimage writes what it finds on this host's interface
/// (and predicts the interface's name in the new system), the simulation what its machine facts
/// say about the simulated server.
struct Network {
    words: Vec<(String, &'static str)>,
}

impl Network {
    fn of(system: &MountedSystem) -> Network {
        let interfaces = read(system, "/etc/network/interfaces");
        let mut words = Vec::new();
        for line in interfaces.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["iface", name, "inet", "static"] => words.push((name.to_string(), "<interface>")),
                ["address", address] if !address.contains(':') => {
                    words.push((address.to_string(), "<address>"))
                }
                ["gateway", gateway] if !gateway.contains(':') => {
                    words.push((gateway.to_string(), "<gateway>"))
                }
                ["netmask", netmask] if netmask.contains('.') => {
                    words.push((format!("netmask {netmask}"), "netmask <netmask>"))
                }
                ["#", "route", network, "via", _] => {
                    if let Some((address, prefix)) = network.split_once('/') {
                        words.push((format!("{address}/{prefix}"), "<network>"));
                        words.push((format!("-net {address} "), "-net <network> "));
                    }
                }
                _ => {}
            }
        }
        // Longest first, so that an address is not half-replaced by a shorter one.
        words.sort_by_key(|(word, _)| std::cmp::Reverse(word.len()));
        Network { words }
    }

    fn normalize(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (word, placeholder) in &self.words {
            text = text.replace(word.as_str(), placeholder);
        }
        text
    }
}

/// The compared items of an installed system, normalized: random key material, UUIDs and the
/// rescue system's own network facts replaced by placeholders.
fn items(system: &MountedSystem, authorized_key: &str) -> BTreeMap<&'static str, String> {
    let network = Network::of(system);
    let mut items = BTreeMap::new();
    let mut host_keys: Vec<String> = std::fs::read_dir(system.root.join("etc/ssh"))
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("ssh_host_"))
                .map(|name| {
                    let empty = read(system, &format!("/etc/ssh/{name}")).is_empty();
                    format!("{name}{}", if empty { " (empty)" } else { "" })
                })
                .collect()
        })
        .unwrap_or_default();
    host_keys.sort();
    items.insert("host keys (/etc/ssh/ssh_host_*)", host_keys.join("\n"));
    items.insert("/etc/hostname", read(system, "/etc/hostname"));
    items.insert("/etc/hosts", network.normalize(&read(system, "/etc/hosts")));
    let mut fstab = read(system, "/etc/fstab");
    if let caph_sim::installimage::InstalledDisk::Images { partitions } = &system.manifest.disk {
        for partition in partitions {
            if !partition.uuid.is_empty() {
                fstab = fstab.replace(&partition.uuid, &format!("<uuid of {}>", partition.mount));
            }
        }
    }
    items.insert("/etc/fstab", fstab);
    items.insert(
        "/etc/network/interfaces",
        network.normalize(&read(system, "/etc/network/interfaces")),
    );
    // installimage shuffles its resolvers: their order carries no meaning.
    let resolv = read(system, "/etc/resolv.conf");
    let (mut nameservers, others): (Vec<&str>, Vec<&str>) = resolv
        .lines()
        .partition(|line| line.starts_with("nameserver "));
    nameservers.sort_unstable();
    items.insert(
        "/etc/resolv.conf",
        others
            .into_iter()
            .chain(nameservers)
            .map(|line| format!("{line}\n"))
            .collect(),
    );
    // Each install makes a machine-id of its own: its shape is what both must agree on.
    let machine_id = read(system, "/etc/machine-id");
    items.insert(
        "/etc/machine-id",
        if machine_id.trim().len() == 32 && machine_id.trim().bytes().all(|b| b.is_ascii_hexdigit())
        {
            "<32 hex digits, made by this install>\n".to_string()
        } else {
            machine_id
        },
    );
    // Each install is made with a key of its own.
    let material = authorized_key.split_whitespace().nth(1).unwrap_or("<none>");
    items.insert(
        "/root/.ssh/authorized_keys",
        read(system, "/root/.ssh/authorized_keys").replace(material, "<activation key>"),
    );
    items.insert("/etc/ssh/sshd_config", read(system, "/etc/ssh/sshd_config"));
    let sysctl_dir = system.root.join("etc/sysctl.d");
    let mut sysctl: Vec<String> = std::fs::read_dir(&sysctl_dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let content = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    format!("--- {name}\n{content}")
                })
                .collect()
        })
        .unwrap_or_default();
    sysctl.sort();
    items.insert("/etc/sysctl.d", sysctl.join(""));
    // installimage extracts with `--anchored` excludes: /sys, /proc and /dev are left empty,
    // while usr/include/sys and other nested names of the same words are kept.
    let mut excluded = Vec::new();
    for path in ["proc", "sys", "dev"] {
        let count = std::fs::read_dir(system.root.join(path))
            .map(|entries| entries.count())
            .unwrap_or(usize::MAX);
        excluded.push(format!("/{path}: {count} entries"));
    }
    excluded.push(format!(
        "/usr/include/sys kept: {}",
        system.root.join("usr/include/sys").exists() || !system.root.join("usr/include").exists()
    ));
    items.insert("excluded paths", excluded.join("\n"));
    items
}

/// Installs `tarball` with the real installimage of `kind` and with the simulation, checks the
/// real install, and compares the two trees.
async fn compare(dir: &Path, tarball: &Path, kind: InstallimageKind) {
    let archive = match crate::vendored_installimage(kind) {
        Ok(archive) => archive,
        Err(reason) => {
            eprintln!("SKIPPED the differential test of {kind:?}: {reason}");
            return;
        }
    };
    let label = archive.label.clone();
    let real = install_in_rescue(
        tarball,
        SINGLE_DISK,
        HOSTNAME,
        Some(archive),
        &dir.join(format!("real-{kind:?}")),
    )
    .await;
    assert_installed(&real, &label);
    assert!(real.ran.contains("for real"), "{}", real.ran);
    check_real_install(
        &real.drive,
        "/dev/sda",
        &Expected {
            hostname: HOSTNAME,
            authorized_keys: std::slice::from_ref(&real.authorized_key),
            rescue_host_key_fingerprints: std::slice::from_ref(&real.rescue_host_key_fingerprint),
        },
    )
    .await;
    let simulated = install_in_rescue(
        tarball,
        SINGLE_DISK,
        HOSTNAME,
        None,
        &dir.join(format!("simulated-{kind:?}")),
    )
    .await;
    assert_installed(&simulated, "the simulated installimage");

    let real_items = items(
        &MountedSystem::mount(&real.drive, "/dev/sda").await,
        &real.authorized_key,
    );
    let simulated_items = items(
        &MountedSystem::mount(&simulated.drive, "/dev/sda").await,
        &simulated.authorized_key,
    );
    let mut unexplained = Vec::new();
    let mut stale = Vec::new();
    for (item, real_text) in &real_items {
        let mut real_text = real_text.clone();
        let mut simulated_text = simulated_items[item].clone();
        for known in KNOWN_DIFFERENCES
            .iter()
            .filter(|known| known.item == *item && (known.applies)())
        {
            let (real_after, simulated_after) =
                ((known.remove)(&real_text), (known.remove)(&simulated_text));
            if real_after == real_text && simulated_after == simulated_text {
                stale.push(format!("{item}: {}", known.what));
            }
            real_text = real_after;
            simulated_text = simulated_after;
        }
        if real_text != simulated_text {
            unexplained.push(format!(
                "{item}\n  real ({label}):\n{}\n  simulated:\n{}",
                indent(&real_text),
                indent(&simulated_text)
            ));
        }
    }
    for known in KNOWN_DIFFERENCES.iter().filter(|known| (known.applies)()) {
        eprintln!(
            "{label} and the simulation differ, as known, in {}: {} ({})",
            known.item, known.what, known.reason
        );
    }
    assert!(
        unexplained.is_empty(),
        "the simulated installimage differs from {label}:\n{}",
        unexplained.join("\n")
    );
    assert!(
        stale.is_empty(),
        "listed as known differences, but not there (remove them from KNOWN_DIFFERENCES): {stale:?}"
    );
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    | {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_installed(install: &RescueInstall, what: &str) {
    assert_eq!(install.exit_code, 0, "{what} failed:\n{}", install.output);
    assert!(
        install.output.contains("INSTALLATION COMPLETE"),
        "{what}:\n{}",
        install.output
    );
    assert!(
        install.output.contains("CAPH_IMAGE_POST_INSTALL_FINISHED"),
        "{what}: the post-install script did not finish:\n{}",
        install.output
    );
}

/// The differential test on one tarball: CAPH's fork against the simulation (Hetzner's own
/// installimage is checked by `build robot` on the same tarball).
pub async fn real_and_simulated(dir: &Path, tarball: &Path) {
    compare(dir, tarball, InstallimageKind::CaphFork).await;
}
