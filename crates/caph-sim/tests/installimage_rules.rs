//! installimage's validation rules, one accepted and one rejected config per rule, from `tests/data/installimage_rules.txt`.

use std::path::Path;

use caph_sim::installimage::{Drive, MachineFacts, validate};

/// One case of the table.
#[derive(Debug)]
struct Case {
    rule: String,
    /// `None`: accepted; `Some(text)`: rejected with a message containing `text`.
    rejection: Option<String>,
    facts: MachineFacts,
    config: String,
    line: usize,
}

fn size_bytes(text: &str) -> u64 {
    let (digits, unit) = text.split_at(text.len() - 1);
    let number: u64 = digits.parse().unwrap_or_else(|_| panic!("size {text}"));
    let mib = match unit {
        "M" => 1,
        "G" => 1024,
        "T" => 1024 * 1024,
        _ => panic!("size unit in {text}"),
    };
    number * mib * 1024 * 1024
}

fn load() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/installimage_rules.txt");
    let text = std::fs::read_to_string(&path).expect("the rule table");
    let mut cases: Vec<Case> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if let Some(header) = line.strip_prefix("=== ") {
            let fields: Vec<&str> = header.split(" | ").collect();
            let rejection = match fields.get(1).copied() {
                Some("accept") => None,
                Some("reject") => Some(
                    fields
                        .get(2)
                        .expect("a rejection names its message")
                        .to_string(),
                ),
                other => panic!("line {}: outcome {other:?}", index + 1),
            };
            let mut facts = MachineFacts::two_drives(size_bytes("512G"), Path::new("/nonexistent"));
            facts.ipv4 = "127.0.0.2".into();
            cases.push(Case {
                rule: fields[0].to_owned(),
                rejection,
                facts,
                config: String::new(),
                line: index + 1,
            });
            continue;
        }
        let Some(case) = cases.last_mut() else {
            continue;
        };
        if let Some(machine) = line.strip_prefix("@ ") {
            for setting in machine.split_whitespace() {
                let (key, value) = setting.split_once('=').expect("key=value");
                match key {
                    "arch" => case.facts.arch = value.to_owned(),
                    "uefi" => case.facts.uefi = value == "yes",
                    "drives" => {
                        case.facts.drives = value
                            .split(',')
                            .map(|drive| {
                                let (device, size) = drive.split_once(':').expect("device:size");
                                Drive {
                                    device: device.to_owned(),
                                    size_bytes: size_bytes(size),
                                }
                            })
                            .collect();
                    }
                    other => panic!("line {}: machine key {other}", index + 1),
                }
            }
            continue;
        }
        case.config.push_str(line);
        case.config.push('\n');
    }
    cases
}

#[test]
fn every_rule_has_an_accepted_and_a_rejected_config_and_each_behaves() {
    let cases = load();
    assert!(cases.len() > 100, "the table has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let errors = validate(&case.config, &case.facts);
        match (&case.rejection, errors.first()) {
            (None, None) => {}
            (None, Some(error)) => failures.push(format!(
                "line {} ({}): expected acceptance, got {error:?}",
                case.line, case.rule
            )),
            (Some(expected), None) => failures.push(format!(
                "line {} ({}): expected rejection with {expected:?}, accepted",
                case.line, case.rule
            )),
            (Some(expected), Some(error)) if !error.contains(expected.as_str()) => {
                failures.push(format!(
                    "line {} ({}): expected {expected:?}, got {error:?}",
                    case.line, case.rule
                ))
            }
            (Some(_), Some(_)) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every rule of the table has at least one accepted and one rejected config.
    let mut rules: Vec<&str> = cases.iter().map(|case| case.rule.as_str()).collect();
    rules.sort_unstable();
    rules.dedup();
    let lonely: Vec<&str> = rules
        .iter()
        .copied()
        .filter(|rule| {
            let accepted = cases
                .iter()
                .any(|case| case.rule == *rule && case.rejection.is_none());
            let rejected = cases
                .iter()
                .any(|case| case.rule == *rule && case.rejection.is_some());
            !(accepted && rejected)
        })
        .collect();
    assert!(lonely.is_empty(), "rules without both outcomes: {lonely:?}");
}

#[test]
fn every_check_of_the_reference_is_in_the_table() {
    let cases = load();
    // Section 3 of the reference, rule by rule (a rule covered by several names is listed once
    // per name).
    for rule in [
        "image-extension",
        "image-source",
        "image-distro",
        "image-arch",
        "drive1-block-device",
        "drive-raid-block-device",
        "drive-duplicate",
        "formatdrive-and-swraid",
        "swraid-value",
        "swraidlevel-value",
        "raid-drive-count",
        "raid5-drive-count",
        "raid6-drive-count",
        "raid-needs-boot",
        "boot-or-root-not-on-lvm",
        "primary-partition",
        "part-mount",
        "part-filesystem",
        "part-fs-none",
        "esp-mount",
        "esp-size",
        "esp-not-all",
        "all-on-last-partition",
        "part-size-number",
        "boot-min-size",
        "root-min-size",
        "uefi-one-esp",
        "at-least-one-partition",
        "vg-needs-lv",
        "lv-needs-vg",
        "lv-vg-defined",
        "lv-mount",
        "lv-filesystem",
        "lv-root-min-size",
        "lv-all-on-last",
        "btrfs-subvolumes",
        "mount-points-unique",
        "has-root",
        "hostname",
        "total-size",
        "total-size-raid",
        "drive-prefix-key",
        "swraid-prefix-key",
        "first-match-wins",
        "bootloader",
    ] {
        assert!(
            cases.iter().any(|case| case.rule == rule),
            "{rule} is missing"
        );
    }
}
