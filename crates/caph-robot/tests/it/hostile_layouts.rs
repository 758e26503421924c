//! Issue 12: layouts and values written to change what installimage reads, each refused with
//! the line or value named; encryption carried through instead of dropped.

use caph_core::spec::{CryptPassword, DiskLayout, Partition, Size};
use caph_robot::autosetup::{self, Drive, Machine};
use caph_robot::backend::layout_from_autosetup;
use expect_test::expect;

const IMAGE: &str = "/root/Debian-1200-bookworm-amd64-k8s-v1.34.2.tar.gz";
const X86_BIOS: Machine = Machine {
    uefi: false,
    arm: false,
};

fn two_partitions() -> DiskLayout {
    let partition = |mount: &str, size| Partition {
        mount: mount.into(),
        filesystem: "ext4".into(),
        size,
        crypt: false,
    };
    DiskLayout {
        drives: vec!["/dev/sda".into()],
        raid_level: None,
        uefi: false,
        partitions: vec![
            partition("/boot", Size::MiB(1024)),
            partition("/", Size::All),
        ],
        volumes: Vec::new(),
        crypt_password: None,
    }
}

fn problems(result: Result<DiskLayout, Vec<autosetup::Problem>>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(problems) => problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[test]
fn issue_12_the_renderer_refuses_values_that_add_lines_or_fields() {
    let render = |layout: &DiskLayout, hostname: &str| {
        autosetup::render(layout, hostname, IMAGE)
            .map(|text| text.lines().count())
            .map_err(|error| error.to_string())
    };
    assert_eq!(render(&two_partitions(), "node-1"), Ok(8));

    let mut layout = two_partitions();
    layout.drives[0] = "/dev/sda\nIMAGE http://example.com/evil.tar.gz".into();
    expect![[r#"refusing to write /autosetup: "/dev/sda\nIMAGE http://example.com/evil.tar.gz" holds a line break (\n)"#]]
        .assert_eq(&render(&layout, "node-1").unwrap_err());

    let mut layout = two_partitions();
    layout.partitions[1].mount = "/ ext4 all\nPART /var".into();
    expect![[r#"refusing to write /autosetup: "/ ext4 all\nPART /var" holds a line break (\n)"#]]
        .assert_eq(&render(&layout, "node-1").unwrap_err());

    expect![[r#"refusing to write /autosetup: "node-1 # x" holds a space"#]]
        .assert_eq(&render(&two_partitions(), "node-1 # x").unwrap_err());

    // The passphrase is one line too, and the refusal does not show it.
    let mut layout = two_partitions();
    layout.crypt_password = Some(CryptPassword::new("s3cret\nIMAGE http://example.com/x.tar"));
    let refused = render(&layout, "node-1").unwrap_err();
    assert!(!refused.contains("s3cret"), "{refused}");
    expect![[
        r#"refusing to write /autosetup: "<the CRYPTPASSWORD passphrase>" holds a line break (\n)"#
    ]]
    .assert_eq(&refused);
}

#[test]
fn issue_12_layout_files_with_keys_the_layout_does_not_carry_are_refused() {
    let text = "DRIVE1 /dev/sda\nDRIVE2 /dev/sdb\nFORMATDRIVE2 1\nGOVERNOR performance\nHOSTNAME other\nPART /boot ext4 1G\nPART btrfs.1 btrfs all\nSUBVOL btrfs.1 @ /\n  PART /var ext4 10G\n";
    expect![[r#"
        line 3: FORMATDRIVE2 is a key caph-image does not carry into the autosetup file it writes, so installimage would never see it; remove the line
        line 4: GOVERNOR is a key caph-image does not carry into the autosetup file it writes, so installimage would never see it; remove the line
        line 5: HOSTNAME is not part of a layout: the hostname comes from the spec's [robot] hostname or --hostname; remove the line
        line 8: SUBVOL is a key caph-image does not carry into the autosetup file it writes, so installimage would never see it; remove the line
        line 9: starts with a blank, so installimage ignores it; remove the blank or the line"#]].assert_eq(&problems(layout_from_autosetup(text)));
}

#[test]
fn issue_12_layout_files_that_installimage_reads_otherwise_are_refused() {
    // A trailing comment after a PART's size is a fifth field: installimage encrypts.
    let text = "DRIVE1 /dev/sda\nPART /boot ext4 1G # boot\nPART / ext4 all\n";
    expect![[r##"line 2: PART has "#" after its size: installimage takes any fifth field as a request for encryption; write crypt (with CRYPTPASSWORD), or remove it"##]].assert_eq(&problems(layout_from_autosetup(text)));
    // DRIVE3 without DRIVE2, and a second SWRAID that installimage never reads.
    let text = "DRIVE1 /dev/sda\nDRIVE3 /dev/sdc\nSWRAID 0\nSWRAID 1\nPART / ext4 all\n";
    expect![[r#"
        line 4: SWRAID is given again (first on line 3); installimage reads only the first: remove one
        DRIVE3 without DRIVE2: number the drives DRIVE1, DRIVE2, ... without gaps"#]].assert_eq(&problems(layout_from_autosetup(text)));
}

#[test]
fn issue_12_encryption_is_carried_through_with_installimage_rules() {
    let text = "DRIVE1 /dev/sda\nCRYPTPASSWORD correct horse # battery\nPART /boot ext4 1G\nPART / ext4 all crypt\n";
    let layout = layout_from_autosetup(text).expect("a layout with crypt is carried");
    assert!(layout.partitions[1].crypt && !layout.partitions[0].crypt);
    assert!(!format!("{layout:?}").contains("horse"));
    let rendered = autosetup::render(&layout, "node-1", IMAGE).expect("renders");
    assert!(rendered.contains("\nPART / ext4 all crypt\n"), "{rendered}");
    // installimage reads the rest of the line, blanks and # included.
    assert!(rendered.contains("\nCRYPTPASSWORD correct horse # battery\n"));
    assert_eq!(autosetup::validate(&rendered, X86_BIOS), Vec::new());
    let shown = autosetup::redacted(&rendered);
    assert!(shown.contains("CRYPTPASSWORD [FILTERED]") && !shown.contains("horse"));
    // Parsed back, the same layout.
    assert_eq!(autosetup::parse(&rendered).expect("parses").layout, layout);

    // crypt without a passphrase: installimage's "Value for CRYPTPASSWORD is not defined".
    let text = "DRIVE1 /dev/sda\nPART /boot ext4 1G\nPART / ext4 all crypt\n";
    let layout = layout_from_autosetup(text).expect("parses");
    let problems: Vec<String> = caph_core::spec::validate_layout(&layout)
        .into_iter()
        .map(|problem| format!("{}: {}", problem.field, problem.message))
        .collect();
    expect!["partitions[1].crypt: asks for encryption, but no CRYPTPASSWORD is given"]
        .assert_eq(&problems.join("\n"));
}

#[test]
fn issue_12_partition_sizes_that_overflow_are_a_problem_not_a_panic() {
    let text = format!(
        "DRIVE1 /dev/sda\nBOOTLOADER grub\nHOSTNAME node-1\nPART /boot ext4 {max}M\nPART / ext4 {max}M\nIMAGE {IMAGE}\n",
        max = u64::MAX
    );
    let drives = [Drive {
        device: "/dev/sda".into(),
        size_bytes: u64::MAX,
    }];
    let problems: Vec<String> = autosetup::validate_with_drives(&text, X86_BIOS, &drives)
        .iter()
        .map(ToString::to_string)
        .collect();
    expect!["the partitions need more than 18446744073709551615 MiB, but the drives hold 17592186044415 MiB; make them smaller"].assert_eq(&problems.join("\n"));
}

#[test]
fn issue_12_the_layout_parser_is_linear() {
    // 50,000 drives: the parser looked each DRIVE<n> up with a scan of the whole file, 1.25
    // billion line comparisons; one pass takes a moment.
    const DRIVES: usize = 50_000;
    let mut text = String::new();
    for number in 1..=DRIVES {
        text.push_str(&format!("DRIVE{number} /dev/disk{number}\n"));
    }
    text.push_str("PART / ext4 all\n");
    let parsed = autosetup::parse(&text).expect("parses");
    assert_eq!(parsed.layout.drives.len(), DRIVES);
    assert_eq!(parsed.layout.drives[9], "/dev/disk10");
}
