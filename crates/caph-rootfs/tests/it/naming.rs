//! installimage's naming rule, table-driven.

use caph_core::Arch;
use caph_rootfs::naming::{
    Distro, ImageName, installimage_accepts, installimage_distro, provider_url_accepts,
};
use caph_rootfs::pack::Compression;

#[test]
fn valid_names_render_and_parse_back() {
    let table = [
        (
            Distro::Ubuntu,
            "2404",
            "noble",
            Arch::X86,
            "k8s-v1.31.2",
            Compression::gzip(),
            "Ubuntu-2404-noble-amd64-k8s-v1.31.2.tar.gz",
        ),
        (
            Distro::Debian,
            "1200",
            "bookworm",
            Arch::Arm,
            "k8s-v1.30.0",
            Compression::zstd(),
            "Debian-1200-bookworm-arm64-k8s-v1.30.0.tar.zst",
        ),
        (
            Distro::Ubuntu,
            "2204",
            "jammy",
            Arch::Arm,
            "base",
            Compression::None,
            "Ubuntu-2204-jammy-arm64-base.tar",
        ),
    ];
    for (distro, version, codename, arch, flavor, compression, file_name) in table {
        let name = ImageName::new(distro, version, codename, arch, flavor).unwrap();
        assert_eq!(name.file_name(compression), file_name);
        assert_eq!(ImageName::parse(file_name).unwrap(), (name, compression));
        assert_eq!(installimage_distro(file_name), distro.installimage_name());
        assert!(installimage_accepts(file_name));
        assert!(file_name.contains(&format!("-{}-", arch.debian_name())));
    }
}

#[test]
fn names_installimage_would_misread_are_refused() {
    let table: [(Distro, &str, &str, &str, &str); 12] = [
        (
            Distro::Debian,
            "1200",
            "bookworm",
            "archive",
            "would be detected as arch",
        ),
        (
            Distro::Debian,
            "1200",
            "bookworm",
            "almalike",
            "would be detected as alma",
        ),
        (
            Distro::Debian,
            "1200",
            "bookworm",
            "k8s-rhel-compat",
            "would be detected as rhel",
        ),
        (
            Distro::Ubuntu,
            "2404",
            "noble",
            "opensuse",
            "suse is checked before ubuntu",
        ),
        (Distro::Ubuntu, "2404", "noble", "search", "contains arch"),
        (
            Distro::Debian,
            "1200",
            "bookworm",
            "k8s-amd64-extra",
            "a second architecture field",
        ),
        (
            Distro::Debian,
            "1200",
            "bookworm",
            "k8s-64",
            "64 is an architecture to installimage",
        ),
        (
            Distro::Debian,
            "12",
            "bookworm",
            "k8s",
            "the version must be four digits",
        ),
        (
            Distro::Debian,
            "12.0",
            "bookworm",
            "k8s",
            "the version must be digits",
        ),
        (
            Distro::Debian,
            "1200",
            "Bookworm",
            "k8s",
            "codenames are lowercase",
        ),
        (Distro::Debian, "1200", "bookworm", "k8s v1", "no spaces"),
        (
            Distro::Debian,
            "1200",
            "bookworm",
            "-k8s",
            "must start with a letter or digit",
        ),
    ];
    for (distro, version, codename, flavor, why) in table {
        let result = ImageName::new(distro, version, codename, Arch::X86, flavor);
        assert!(result.is_err(), "{flavor:?} accepted although {why}");
    }
    let error =
        ImageName::new(Distro::Debian, "1200", "bookworm", Arch::X86, "archive").unwrap_err();
    assert!(error.to_string().contains("\"arch\""), "{error}");
}

#[test]
fn malformed_file_names_are_refused() {
    for file_name in [
        "Ubuntu-2404-noble-amd64-k8s.tar.bz2",
        "Ubuntu-2404-noble-amd64.tar.gz",
        "Fedora-4000-rawhide-amd64-k8s.tar.gz",
        "Ubuntu-2404-noble-x86_64-k8s.tar.gz",
        "Ubuntu-2404-noble-amd64-.tar.gz",
    ] {
        assert!(ImageName::parse(file_name).is_err(), "{file_name} accepted");
    }
}

#[test]
fn installimage_detection_follows_its_keyword_order() {
    assert_eq!(
        installimage_distro("Debian-1200-bookworm-amd64-base.tar.gz"),
        "debian"
    );
    assert_eq!(
        installimage_distro("Ubuntu-2404-noble-amd64-base.tar.gz"),
        "ubuntu"
    );
    assert_eq!(
        installimage_distro("Debian-1200-bookworm-amd64-archive.tar.gz"),
        "arch"
    );
    assert_eq!(
        installimage_distro("Ubuntu-2404-noble-amd64-suse.tar.gz"),
        "suse"
    );
}

#[test]
fn the_provider_url_field_does_not_take_zstd() {
    assert!(provider_url_accepts("Ubuntu-2404-noble-amd64-k8s.tar.gz"));
    assert!(provider_url_accepts("Ubuntu-2404-noble-amd64-k8s.tar"));
    assert!(!provider_url_accepts("Ubuntu-2404-noble-amd64-k8s.tar.zst"));
    assert!(installimage_accepts("Ubuntu-2404-noble-amd64-k8s.tar.zst"));
    assert!(!installimage_accepts("Ubuntu-2404-noble-amd64-k8s.zip"));
    assert_eq!(Compression::gzip().extension(), "tar.gz");
    assert_eq!(Compression::zstd().extension(), "tar.zst");
    assert_eq!(Compression::None.extension(), "tar");
}
