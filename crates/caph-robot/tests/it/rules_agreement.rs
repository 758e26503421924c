//! The installimage rule table that caph-sim's simulated installimage passes, run through the local
//! autosetup validation: both must accept and reject the same configs. The rules that need the
//! machine's drives are checked with `validate_with_drives` and the drives the case's machine line
//! names (or the table's default machine: two 512G drives).

use std::path::PathBuf;

use caph_robot::autosetup::{self, Drive, Machine};

struct Case {
    rule: String,
    accept: bool,
    machine: Machine,
    drives: Vec<Drive>,
    config: String,
}

/// `512G` and the like, in bytes (binary units, as the table's format says).
fn bytes(size: &str) -> u64 {
    let (number, unit) = size.split_at(size.len() - 1);
    let factor: u64 = match unit {
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => panic!("size {size} in the rule table"),
    };
    number.parse::<u64>().expect("a number") * factor
}

fn cases() -> Option<Vec<Case>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../caph-sim/tests/data/installimage_rules.txt");
    let text = std::fs::read_to_string(&path).ok()?;
    let mut cases = Vec::new();
    for block in text.split("\n=== ").skip(1) {
        let (header, body) = block.split_once('\n').unwrap_or((block, ""));
        let fields: Vec<&str> = header.split('|').map(str::trim).collect();
        let mut machine = Machine {
            uefi: false,
            arm: false,
        };
        let mut drives = vec![
            Drive {
                device: "/dev/sda".into(),
                size_bytes: 512 << 30,
            },
            Drive {
                device: "/dev/sdb".into(),
                size_bytes: 512 << 30,
            },
        ];
        let mut config = String::new();
        for line in body.lines() {
            let Some(facts) = line.strip_prefix("@ ") else {
                config.push_str(line);
                config.push('\n');
                continue;
            };
            for fact in facts.split_whitespace() {
                match fact.split_once('=') {
                    Some(("arch", arch)) => machine.arm = arch == "aarch64",
                    Some(("uefi", uefi)) => machine.uefi = uefi == "yes",
                    Some(("drives", list)) => {
                        drives = list
                            .split(',')
                            .map(|drive| {
                                let (device, size) = drive.split_once(':').expect("device:size");
                                Drive {
                                    device: device.to_string(),
                                    size_bytes: bytes(size),
                                }
                            })
                            .collect();
                    }
                    _ => {}
                }
            }
        }
        cases.push(Case {
            rule: fields[0].to_string(),
            accept: fields.get(1) == Some(&"accept"),
            machine,
            drives,
            config,
        });
    }
    Some(cases)
}

#[test]
fn local_validation_agrees_with_the_simulated_installimage() {
    let Some(cases) = cases() else {
        eprintln!(
            "SKIPPED local_validation_agrees_with_the_simulated_installimage: the rule table of caph-sim is absent"
        );
        return;
    };
    assert!(
        cases.len() >= 100,
        "the table shrank to {} cases",
        cases.len()
    );
    let mut disagreements = Vec::new();
    for case in &cases {
        let problems = autosetup::validate_with_drives(&case.config, case.machine, &case.drives);
        let accepted = problems.is_empty();
        if accepted != case.accept {
            let verdict = if accepted {
                "accepts".to_string()
            } else {
                format!(
                    "rejects ({})",
                    problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            };
            let expected = if case.accept { "accepts" } else { "rejects" };
            disagreements.push(format!(
                "{}: installimage {expected}, local validation {verdict}\n{}",
                case.rule, case.config
            ));
        }
    }
    eprintln!("{} cases checked", cases.len());
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}
