//! Spec values that end up in line-oriented files, and the rule each must follow there.
//!
//! [`LINE_FIELDS`] is the one list of them: the field, the file it lands in, and whether it is a
//! whole line's worth of text or one whitespace-separated field ([`crate::text`]). The loader
//! checks every listed value once, after the rest of validation, so a value that breaks a line
//! is refused with its field and position even where no other rule of the field catches it.

use std::ops::Range;

use toml::de::DeValue;

use super::reader::{Reader, Section};
use crate::text::{self, LineProblem};

/// How much of a line a value may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Text within one line ([`text::check_line`]).
    Line,
    /// One whitespace-separated field of a line ([`text::check_field`]).
    Field,
}

/// One kind of spec value that lands in a line-oriented file.
#[derive(Debug)]
struct LineField {
    /// The field's path: table keys, `[]` for every item of an array, `*` for every value of a
    /// table.
    path: &'static [&'static str],
    /// The file it lands in, for the message.
    file: &'static str,
    rule: Rule,
}

const AUTOSETUP: &str = "the autosetup file installimage reads";

/// Every spec value that lands in a line-oriented file.
const LINE_FIELDS: &[LineField] = &[
    LineField {
        path: &["robot", "hostname"],
        file: AUTOSETUP,
        rule: Rule::Field,
    },
    LineField {
        path: &["robot", "disk", "drives", "[]"],
        file: AUTOSETUP,
        rule: Rule::Field,
    },
    LineField {
        path: &["robot", "disk", "partitions", "[]", "*"],
        file: AUTOSETUP,
        rule: Rule::Field,
    },
    LineField {
        path: &["robot", "disk", "volumes", "[]", "*"],
        file: AUTOSETUP,
        rule: Rule::Field,
    },
    LineField {
        path: &["system", "sysctls", "*"],
        file: "/etc/sysctl.d/99-zz-caph-image.conf",
        rule: Rule::Line,
    },
    LineField {
        path: &["system", "kernel_modules", "[]"],
        file: "/etc/modules-load.d/caph-image.conf",
        rule: Rule::Field,
    },
    LineField {
        path: &["kubernetes", "apt_url"],
        file: "/etc/apt/sources.list.d/kubernetes.list",
        rule: Rule::Field,
    },
    LineField {
        path: &["base", "rootfs", "mirror"],
        file: "the apt sources mmdebstrap writes",
        rule: Rule::Field,
    },
    LineField {
        path: &["base", "rootfs", "suite"],
        file: "the apt sources mmdebstrap writes",
        rule: Rule::Field,
    },
    LineField {
        path: &["base", "rootfs", "components", "[]"],
        file: "the apt sources mmdebstrap writes",
        rule: Rule::Field,
    },
    LineField {
        path: &["hcloud", "server_type", "*"],
        file: "the HCloudMachineTemplate a build prints",
        rule: Rule::Field,
    },
    LineField {
        path: &["hcloud", "server_types", "*", "[]"],
        file: "the HCloudMachineTemplate a build prints",
        rule: Rule::Field,
    },
    LineField {
        path: &["hcloud", "location"],
        file: "the build's one-line progress and results",
        rule: Rule::Field,
    },
    LineField {
        path: &["hcloud", "locations", "[]"],
        file: "the build's one-line progress and results",
        rule: Rule::Field,
    },
    LineField {
        path: &["base", "hcloud", "*"],
        file: "the build's one-line progress and results",
        rule: Rule::Field,
    },
    LineField {
        path: &["image", "description"],
        file: "the one-line listing of `caph-image images list`",
        rule: Rule::Line,
    },
];

/// Reports every listed value that breaks its rule, unless its field already has a diagnostic.
pub(super) fn check(reader: &mut Reader<'_>, root: &Section<'_, '_>) {
    // A set, so that a spec with many problems is checked in linear time.
    let diagnosed: std::collections::HashSet<String> = reader
        .diagnostics
        .iter()
        .map(|diagnostic| diagnostic.field.clone())
        .collect();
    for line_field in LINE_FIELDS {
        let mut found = Vec::new();
        let Some((first, rest)) = line_field.path.split_first() else {
            continue;
        };
        if let Some(item) = root.table.get(*first) {
            collect(
                item.get_ref(),
                item.span(),
                rest,
                first.to_string(),
                &mut found,
            );
        }
        for (field, value, span) in found {
            let checked = match line_field.rule {
                Rule::Line => text::check_line(value),
                Rule::Field => text::check_field(value),
            };
            let Err(problem) = checked else { continue };
            if diagnosed.contains(&field) {
                continue;
            }
            let help = match problem {
                LineProblem::LineBreak(_) | LineProblem::Control(_) => {
                    "write it as plain text on one line"
                }
                LineProblem::Blank(_) | LineProblem::Comment | LineProblem::Empty => {
                    "write it as one word, without blanks or #"
                }
            };
            reader.error(
                &span,
                &field,
                format!(
                    "\"{}\" {}, which {} cannot hold in one {}",
                    text::Escaped(value),
                    problem.describe(),
                    line_field.file,
                    match line_field.rule {
                        Rule::Line => "line",
                        Rule::Field => "field",
                    }
                ),
                Some(help.to_string()),
            );
        }
    }
}

/// The string values at `path` below `value` (found at `span`), with their dotted field names
/// and spans. Values of other types are left to the loader's type checks.
fn collect<'v>(
    value: &'v DeValue<'_>,
    span: Range<usize>,
    path: &[&str],
    field: String,
    found: &mut Vec<(String, &'v str, Range<usize>)>,
) {
    let Some((segment, rest)) = path.split_first() else {
        if let DeValue::String(text) = value {
            found.push((field, text.as_ref(), span));
        }
        return;
    };
    match (*segment, value) {
        ("[]", DeValue::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                let item_field = format!("{field}[{index}]");
                collect(item.get_ref(), item.span(), rest, item_field, found);
            }
        }
        ("*", DeValue::Table(table)) => {
            for (key, item) in table.iter() {
                let item_field = format!("{field}.{}", key.get_ref());
                collect(item.get_ref(), item.span(), rest, item_field, found);
            }
        }
        (key, DeValue::Table(table)) => {
            if let Some(item) = table.get(key) {
                collect(
                    item.get_ref(),
                    item.span(),
                    rest,
                    format!("{field}.{key}"),
                    found,
                );
            }
        }
        _ => {}
    }
}
