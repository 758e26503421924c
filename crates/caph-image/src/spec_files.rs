//! Loading specs from the file system, with files beside the spec read relative to it.

use std::path::{Path, PathBuf};

use caph_core::spec::SpecFiles;
use caph_core::{Diagnostic, Diagnostics, ImageSpec};

/// Reads files relative to the spec's directory.
#[derive(Debug)]
struct BesideSpec(PathBuf);

impl SpecFiles for BesideSpec {
    fn read(&self, relative_path: &str) -> Result<Vec<u8>, String> {
        std::fs::read(self.0.join(relative_path)).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            _ => error.to_string(),
        })
    }
}

/// Loads and validates the spec at `path`; an unreadable file is reported as a diagnostic too.
pub fn load(path: &Path) -> Result<ImageSpec, Diagnostics> {
    let display = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| {
        let message = match error.kind() {
            std::io::ErrorKind::NotFound => "the spec file does not exist".to_string(),
            _ => format!("the spec file cannot be read: {error}"),
        };
        Diagnostics(vec![Diagnostic {
            file: display.clone(),
            line: 1,
            column: 1,
            field: String::new(),
            message,
            help: None,
        }])
    })?;
    let directory = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    caph_core::spec::load(&display, &bytes, &BesideSpec(directory))
}

/// Loads the spec at `path`; on problems prints them (stderr) and returns `None`, so a command can
/// exit with the failure code.
pub fn load_or_report(path: &Path) -> Option<ImageSpec> {
    match load(path) {
        Ok(spec) => Some(spec),
        Err(diagnostics) => {
            crate::output::note(&diagnostics.to_string());
            None
        }
    }
}
