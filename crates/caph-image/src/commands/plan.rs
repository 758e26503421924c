//! `caph-image plan`: the provisioning plan of a spec, as one script or as JSON.

use std::path::Path;
use std::process::ExitCode;

use caph_core::Arch;
use caph_core::plan::{self, Action, Target};
use serde_json::json;

use crate::cli::{EXIT_FAILURE, GlobalArgs, OutputFormat, PlanTarget};
use crate::{output, spec_files};

pub fn run(
    global: &GlobalArgs,
    spec_path: &Path,
    target: PlanTarget,
    arch: Arch,
) -> anyhow::Result<ExitCode> {
    let Some(spec) = spec_files::load_or_report(spec_path) else {
        return Ok(ExitCode::from(EXIT_FAILURE));
    };
    let target = match target {
        PlanTarget::Hcloud => Target::Hcloud,
        PlanTarget::Tarball => Target::Tarball,
    };
    let plan = plan::render(&spec, target, arch)?;
    match global.output {
        OutputFormat::Text => output::script(plan.render_script().trim_end()),
        OutputFormat::Json => output::json(&json!({
            "image_name": plan.image_name,
            "spec_sha256": plan.spec_digest,
            "target": target.name(),
            "architecture": arch.hcloud_name(),
            "steps": plan.steps.iter().map(|step| match &step.action {
                Action::Run { script } => json!({ "name": step.name, "kind": "run", "script": script }),
                Action::PlaceFile { path, mode, owner, content } => json!({
                    "name": step.name, "kind": "file", "path": path, "mode": format!("{mode:04o}"), "owner": owner,
                    "content": String::from_utf8_lossy(content),
                }),
            }).collect::<Vec<_>>(),
        })),
    }
    Ok(ExitCode::SUCCESS)
}
