//! `caph-image validate`: every problem in every spec, with file, line and column.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use crate::cli::{EXIT_FAILURE, GlobalArgs, OutputFormat};
use crate::{output, spec_files};

pub fn run(global: &GlobalArgs, specs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut all_valid = true;
    let mut reports = Vec::new();
    for path in specs {
        let result = spec_files::load(path);
        all_valid &= result.is_ok();
        match global.output {
            OutputFormat::Text => match &result {
                Ok(spec) => output::result(&format!("{}: valid ({}, spec sha256 {})", path.display(), spec.image.name, spec.short_digest())),
                Err(diagnostics) => {
                    output::result(&diagnostics.to_string());
                    let count = diagnostics.0.len();
                    output::note(&format!("{}: {count} problem{}", path.display(), if count == 1 { "" } else { "s" }));
                }
            },
            OutputFormat::Json => reports.push(match &result {
                Ok(spec) => json!({ "file": path.display().to_string(), "valid": true, "image_name": spec.image.name, "spec_sha256": spec.digest, "problems": [] }),
                Err(diagnostics) => json!({
                    "file": path.display().to_string(),
                    "valid": false,
                    "problems": diagnostics.0.iter().map(|d| json!({
                        "file": d.file, "line": d.line, "column": d.column, "field": d.field, "message": d.message, "help": d.help,
                    })).collect::<Vec<_>>(),
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
