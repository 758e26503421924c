//! Loading specs from the file system, with files beside the spec read relative to it.

use std::path::{Path, PathBuf};

use caph_core::spec::SpecFiles;
use caph_core::{Diagnostic, Diagnostics, ImageSpec};
use caph_rootfs::input::{self, InputError, SpecDirectory};

/// Reads files relative to the spec's directory, by [`caph_rootfs::input`]'s rules: resolved
/// inside the directory, regular files only, at most [`input::BESIDE_SPEC_LIMIT`] bytes.
#[derive(Debug)]
struct BesideSpec(Result<SpecDirectory, String>);

impl SpecFiles for BesideSpec {
    fn read(&self, relative_path: &str) -> Result<Vec<u8>, String> {
        let directory = self.0.as_ref().map_err(Clone::clone)?;
        directory
            .read(relative_path, input::BESIDE_SPEC_LIMIT)
            .map_err(|error| error.rule())
    }

    fn check(&self, relative_path: &str) -> Result<(), String> {
        let directory = self.0.as_ref().map_err(Clone::clone)?;
        directory
            .open_file(relative_path)
            .map(drop)
            .map_err(|error| error.rule())
    }
}

/// Loads and validates the spec at `path`; an unreadable file is reported as a diagnostic too.
pub fn load(path: &Path) -> Result<ImageSpec, Diagnostics> {
    let display = path.display().to_string();
    let bytes = input::read_regular(path, input::SPEC_LIMIT).map_err(|error| {
        let message = match error {
            InputError::Missing { .. } => "the spec file does not exist".to_string(),
            other => format!("the spec file cannot be read: {}", other.rule()),
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
        .filter(|parent| !parent.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let files = BesideSpec(SpecDirectory::open(&directory).map_err(|error| error.to_string()));
    caph_core::spec::load_as_of(&display, &bytes, &files, today())
}

/// Today's date (UTC), for the end-of-life warnings.
pub fn today() -> caph_core::releases::Date {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
    caph_core::releases::Date::from_unix(unix)
}

/// A warning as a line: the diagnostic with `warning:` after its position.
pub fn warning_line(warning: &Diagnostic) -> String {
    let text = warning.to_string();
    let position = format!("{}:{}:{}: ", warning.file, warning.line, warning.column);
    match text.strip_prefix(&position) {
        Some(rest) => format!("{position}warning: {rest}"),
        None => format!("warning: {text}"),
    }
}

/// Loads the spec at `path`; on problems prints them (stderr) and returns `None`, so a command can
/// exit with the failure code.
pub fn load_or_report(path: &Path) -> Option<ImageSpec> {
    match load(path) {
        Ok(spec) => {
            for warning in &spec.warnings {
                crate::output::note(&warning_line(warning));
            }
            Some(spec)
        }
        Err(diagnostics) => {
            // One note a diagnostic: each is one line.
            for diagnostic in &diagnostics.0 {
                crate::output::note(&diagnostic.to_string());
            }
            None
        }
    }
}
