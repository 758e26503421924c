//! Autosetup files: shipped layouts, rendering from specs, and installimage's rules.

use std::path::PathBuf;

use caph_robot::autosetup::{self, Machine};

const X86_BIOS: Machine = Machine {
    uefi: false,
    arm: false,
};
const IMAGE: &str = "/root/Ubuntu-2404-noble-amd64-k8s-v1.36.0.tar.gz";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn problems(text: &str, machine: Machine) -> Vec<String> {
    autosetup::validate(text, machine)
        .into_iter()
        .map(|problem| problem.to_string())
        .collect()
}

#[test]
fn shipped_layouts_are_valid() {
    for (name, machine) in [
        ("single-disk", X86_BIOS),
        ("raid1", X86_BIOS),
        ("raid1-lvm", X86_BIOS),
        (
            "uefi",
            Machine {
                uefi: true,
                arm: false,
            },
        ),
    ] {
        let layout =
            std::fs::read_to_string(repo().join(format!("installimage/{name}.autosetup"))).unwrap();
        let text = format!("{layout}BOOTLOADER grub\nHOSTNAME node-1\nIMAGE {IMAGE}\n");
        assert_eq!(problems(&text, machine), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn rendered_spec_layouts_parse_back_to_the_same_layout() {
    struct NoFiles;
    impl caph_core::spec::SpecFiles for NoFiles {
        fn read(&self, path: &str) -> Result<Vec<u8>, String> {
            std::fs::read(repo().join("images").join(path)).map_err(|error| error.to_string())
        }
    }
    for name in [
        "ubuntu-24.04-k8s-1.36",
        "debian-13-k8s-1.36",
        "debian-12-k8s-1.36",
    ] {
        let bytes = std::fs::read(repo().join(format!("images/{name}.toml"))).unwrap();
        let spec = caph_core::spec::load(name, &bytes, &NoFiles).unwrap();
        let robot = spec.robot.unwrap();
        let text = autosetup::render(&robot.disk, "node-1", IMAGE).expect("renders");
        assert!(text.find("SWRAID ").unwrap() < text.find("SWRAIDLEVEL").unwrap_or(usize::MAX));
        let parsed = autosetup::parse(&text).unwrap();
        assert_eq!(parsed.layout, robot.disk, "{name}");
        assert_eq!(parsed.hostname.as_deref(), Some("node-1"));
        assert_eq!(problems(&text, X86_BIOS), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn rejections() {
    let base =
        "DRIVE1 /dev/sda\nBOOTLOADER grub\nHOSTNAME n\nPART /boot ext4 1G\nPART / ext4 all\n";
    assert_eq!(problems(&format!("{base}IMAGE /root/Ubuntu-2404-noble-amd64-k8s.tar.zip\n"), X86_BIOS), vec![
        "IMAGE \"Ubuntu-2404-noble-amd64-k8s.tar.zip\" has an extension installimage does not take; use one of tar, tar.gz, tar.bz, tar.bz2, tar.xz, tar.zst, tgz, tbz, txz".to_string()
    ]);
    assert_eq!(problems(&format!("{base}IMAGE /root/Ubuntu-2404-noble-k8s.tar.gz\n"), X86_BIOS), vec![
        "IMAGE \"Ubuntu-2404-noble-k8s.tar.gz\": can not determine image arch from filename; name it like Ubuntu-2404-noble-amd64-flavor.tar.gz".to_string()
    ]);
    assert_eq!(problems(&format!("{base}IMAGE {IMAGE}\n"), Machine { uefi: false, arm: true }), vec![
        "IMAGE \"Ubuntu-2404-noble-amd64-k8s-v1.36.0.tar.gz\" is for amd64, but the machine is aarch64".to_string()
    ]);
    assert_eq!(problems(&format!("{base}IMAGE {IMAGE}\n"), Machine { uefi: true, arm: false }), vec![
        "partitions: a UEFI layout needs exactly one esp partition, found 0; add one partition with mount = \"/boot/efi\", filesystem = \"esp\", size = \"512M\"".to_string()
    ]);
    let no_hostname = base.replace("HOSTNAME n\n", "");
    assert_eq!(
        problems(&format!("{no_hostname}IMAGE {IMAGE}\n"), X86_BIOS),
        vec!["HOSTNAME is missing; add HOSTNAME <name>".to_string()]
    );
    let raid_and_format = "DRIVE1 /dev/sda\nDRIVE2 /dev/sdb\nFORMATDRIVE2 yes\nSWRAID 1\nSWRAIDLEVEL 1\nHOSTNAME n\nPART / ext4 all\n";
    assert_eq!(
        problems(&format!("{raid_and_format}IMAGE {IMAGE}\n"), X86_BIOS),
        vec!["FORMATDRIVE and SWRAID exclude each other; remove one".to_string()]
    );
}
