//! The installimage rule table that caph-sim's simulated installimage passes, run through the local
//! autosetup validation: both must accept and reject the same configs.
//!
//! A few rules need facts only the rescue system has (which drives exist, how big they are); the
//! local check cannot see them and leaves them to installimage. They are listed in
//! `NEEDS_THE_MACHINE` and reported, never counted as agreement.

use std::path::PathBuf;

use caph_robot::autosetup::{self, Machine};

/// Rules that depend on the machine's drives, which a check before touching the server cannot know.
const NEEDS_THE_MACHINE: &[&str] = &[
    "drive1-block-device",
    "drive-raid-block-device",
    "drive-prefix-key",
    "total-size",
    "total-size-raid",
];

struct Case {
    rule: String,
    accept: bool,
    machine: Machine,
    config: String,
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
        let mut config = String::new();
        for line in body.lines() {
            if let Some(facts) = line.strip_prefix("@ ") {
                for fact in facts.split_whitespace() {
                    match fact.split_once('=') {
                        Some(("arch", arch)) => machine.arm = arch == "aarch64",
                        Some(("uefi", uefi)) => machine.uefi = uefi == "yes",
                        _ => {}
                    }
                }
            } else {
                config.push_str(line);
                config.push('\n');
            }
        }
        cases.push(Case {
            rule: fields[0].to_string(),
            accept: fields.get(1) == Some(&"accept"),
            machine,
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
    let mut left_to_installimage = 0;
    for case in &cases {
        let problems = autosetup::validate(&case.config, case.machine);
        let accepted = problems.is_empty();
        if accepted == case.accept {
            continue;
        }
        if NEEDS_THE_MACHINE.contains(&case.rule.as_str()) && accepted {
            left_to_installimage += 1;
            continue;
        }
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
        disagreements.push(format!(
            "{}: installimage {}s, local validation {verdict}\n{}",
            case.rule,
            if case.accept { "accept" } else { "reject" },
            case.config
        ));
    }
    eprintln!(
        "{} cases; {} left to installimage (they need the machine's drives)",
        cases.len(),
        left_to_installimage
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}
