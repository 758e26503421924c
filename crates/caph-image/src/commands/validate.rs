//! `caph-image validate`: every problem in every spec, with file, line and column.

use std::path::PathBuf;
use std::process::ExitCode;

use caph_core::Diagnostic;
use serde_json::json;

use crate::cli::{EXIT_FAILURE, GlobalArgs, OutputFormat};
use crate::{output, spec_files};

pub fn run(global: &GlobalArgs, specs: &[PathBuf], strict: bool) -> anyhow::Result<ExitCode> {
    let mut all_valid = true;
    let mut reports = Vec::new();
    for path in specs {
        let result = spec_files::load(path);
        let warnings: &[Diagnostic] = result.as_ref().map_or(&[], |spec| &spec.warnings);
        // Under --strict a warning fails the spec like an error.
        let passes = result.is_ok() && (warnings.is_empty() || !strict);
        all_valid &= passes;
        match global.output {
            OutputFormat::Text => match &result {
                Ok(spec) => {
                    for warning in warnings {
                        output::result(&spec_files::warning_line(warning));
                    }
                    let verdict = match (warnings.len(), strict) {
                        (0, _) => "valid".to_string(),
                        (count, true) => format!("{count} warning{} (--strict)", plural(count)),
                        (count, false) => format!("valid, {count} warning{}", plural(count)),
                    };
                    output::result(&format!(
                        "{}: {verdict} ({}, spec sha256 {})",
                        path.display(),
                        spec.image.name,
                        spec.short_digest()
                    ))
                }
                Err(diagnostics) => {
                    output::result(&diagnostics.to_string());
                    let count = diagnostics.0.len();
                    output::note(&format!(
                        "{}: {count} problem{}",
                        path.display(),
                        plural(count)
                    ));
                }
            },
            OutputFormat::Json => reports.push(match &result {
                Ok(spec) => json!({
                    "file": path.display().to_string(),
                    "valid": passes,
                    "image_name": spec.image.name,
                    "spec_sha256": spec.digest,
                    "problems": [],
                    "warnings": warnings.iter().map(diagnostic_json).collect::<Vec<_>>(),
                }),
                Err(diagnostics) => json!({
                    "file": path.display().to_string(),
                    "valid": false,
                    "problems": diagnostics.0.iter().map(diagnostic_json).collect::<Vec<_>>(),
                    "warnings": [],
                }),
            }),
        }
    }
    if global.output == OutputFormat::Json {
        output::json(&json!(reports));
    }
    Ok(if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn diagnostic_json(diagnostic: &Diagnostic) -> serde_json::Value {
    json!({
        "file": diagnostic.file, "line": diagnostic.line, "column": diagnostic.column,
        "field": diagnostic.field, "message": diagnostic.message, "help": diagnostic.help,
    })
}
