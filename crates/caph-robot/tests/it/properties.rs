//! Property tests (issue 12) of the autosetup renderer and parser: a layout the renderer
//! accepts parses back to the same layout, its file has exactly one line per entry, and a
//! layout it refuses holds a value that cannot be one field of a line. The parser never panics
//! on any text.
//!
//! `PROPTEST_CASES` sets the number of cases (default 512, about a second);
//! `cargo xtask fuzz --minutes N` runs them longer.

use caph_core::spec::{CryptPassword, DiskLayout, LogicalVolume, Partition, Size};
use caph_core::text::{check_field, check_line};
use caph_robot::autosetup;
use proptest::prelude::*;

#[path = "../../../caph-core/tests/it/proptest_config.rs"]
mod proptest_config;

use proptest_config::config;

/// A value: mostly plausible, sometimes with what a line-oriented file cannot hold.
fn value(plausible: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(plausible).prop_map(str::to_owned),
        2 => "[a-z0-9/._-]{0,12}",
        1 => (prop::sample::select(plausible), prop::sample::select(&[" ", "\n", "\r", "#", "\t", "\u{1b}", "\u{2028}", "\u{0}"][..]), "[a-zA-Z ]{0,6}")
            .prop_map(|(start, bad, rest)| format!("{start}{bad}{rest}")),
    ]
}

fn size() -> impl Strategy<Value = Size> {
    prop_oneof![
        Just(Size::All),
        (1u64..=u64::MAX).prop_map(Size::MiB),
        (1u64..1 << 20).prop_map(|gib| Size::MiB(gib * 1024)),
    ]
}

const DRIVES: &[&str] = &[
    "/dev/sda",
    "/dev/sdb",
    "/dev/nvme0n1",
    "/dev/nvme1n1",
    "/dev/vda",
];
const MOUNTS: &[&str] = &[
    "/",
    "/boot",
    "/boot/efi",
    "/var",
    "swap",
    "none",
    "lvm",
    "btrfs.1",
];
const FILESYSTEMS: &[&str] = &["ext4", "xfs", "btrfs", "swap", "esp", "vg0", "none"];
const NAMES: &[&str] = &["vg0", "vg1", "root", "var", "data"];

fn layout() -> impl Strategy<Value = DiskLayout> {
    let partition = (value(MOUNTS), value(FILESYSTEMS), size(), any::<bool>()).prop_map(
        |(mount, filesystem, size, crypt)| Partition {
            mount,
            filesystem,
            size,
            crypt,
        },
    );
    let volume = (
        value(NAMES),
        value(NAMES),
        value(MOUNTS),
        value(FILESYSTEMS),
        size(),
    )
        .prop_map(|(vg, name, mount, filesystem, size)| LogicalVolume {
            vg,
            name,
            mount,
            filesystem,
            size,
        });
    let password = prop::option::of(prop_oneof![
        "[ -~]{1,24}",
        "[ -~]{1,8}[\n\r\u{1b}][ -~]{0,8}",
    ]);
    (
        prop::collection::vec(value(DRIVES), 0..12),
        prop::option::of(prop::sample::select(&[0u8, 1, 5, 6, 10, 7][..])),
        prop::collection::vec(partition, 0..8),
        prop::collection::vec(volume, 0..6),
        password,
    )
        .prop_map(
            |(drives, raid_level, partitions, volumes, password)| DiskLayout {
                drives,
                raid_level,
                uefi: false,
                partitions,
                volumes,
                crypt_password: password.map(CryptPassword::new),
            },
        )
}

/// Whether every value of `layout` (and the host and image names) fits its place in a line.
fn fits(layout: &DiskLayout, hostname: &str, image: &str) -> bool {
    let fields = layout
        .drives
        .iter()
        .chain(
            layout
                .partitions
                .iter()
                .flat_map(|p| [&p.mount, &p.filesystem]),
        )
        .chain(
            layout
                .volumes
                .iter()
                .flat_map(|v| [&v.vg, &v.name, &v.mount, &v.filesystem]),
        )
        .map(String::as_str)
        .chain([hostname, image]);
    let fields_fit = fields.into_iter().all(|value| check_field(value).is_ok());
    let password_fits = layout
        .crypt_password
        .as_ref()
        .is_none_or(|password| check_line(password.expose()).is_ok());
    fields_fit && password_fits
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn rendered_layouts_parse_back_line_for_line(
        layout in layout(),
        hostname in value(&["node-1", "k8s-321"]),
    ) {
        let image = "/root/Debian-1200-bookworm-amd64-k8s.tar.gz";
        match autosetup::render(&layout, &hostname, image) {
            Ok(text) => {
                prop_assert!(fits(&layout, &hostname, image));
                // One line per entry: the comment, the drives, SWRAID (and SWRAIDLEVEL),
                // BOOTLOADER, HOSTNAME, CRYPTPASSWORD, the partitions, the volumes, IMAGE.
                let expected = 1
                    + layout.drives.len()
                    + if layout.raid_level.is_some() { 2 } else { 1 }
                    + 2
                    + usize::from(layout.crypt_password.is_some())
                    + layout.partitions.len()
                    + layout.volumes.len()
                    + 1;
                prop_assert_eq!(text.lines().count(), expected, "{}", autosetup::redacted(&text));
                let parsed = autosetup::parse(&text);
                prop_assert!(parsed.is_ok(), "{:?}", parsed.err());
                let parsed = parsed.unwrap_or_else(|_| unreachable!());
                prop_assert_eq!(&parsed.layout, &layout);
                prop_assert_eq!(parsed.hostname.as_deref(), Some(hostname.as_str()));
                prop_assert_eq!(parsed.image.as_deref(), Some(image));
            }
            Err(refused) => {
                prop_assert!(!fits(&layout, &hostname, image), "refused a layout that fits: {refused}");
                if let Some(password) = &layout.crypt_password {
                    prop_assert!(!refused.to_string().contains(password.expose()) || password.expose().len() < 3);
                }
            }
        }
    }

    #[test]
    fn any_text_parses_or_gets_problems_without_a_panic(
        lines in prop::collection::vec(
            (
                prop::sample::select(&["DRIVE1 ", "DRIVE10 ", "DRIVE2 ", "FORMATDRIVE1 ", "SWRAID ", "SWRAIDLEVEL ", "PART ", "LV ", "SUBVOL ", "CRYPTPASSWORD ", "HOSTNAME ", "IMAGE ", "BOOTLOADER ", "# ", " ", ""][..]),
                "[ -~\t]{0,30}",
            ),
            0..40,
        ),
    ) {
        let text: String = lines.iter().map(|(key, rest)| format!("{key}{rest}\n")).collect();
        let _ = autosetup::parse(&text);
        let _ = autosetup::parse_layout(&text);
        let _ = autosetup::validate(&text, autosetup::Machine { uefi: false, arm: false });
    }
}
