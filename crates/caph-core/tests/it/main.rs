//! Integration tests of caph-core through its public interface: specs in, diagnostics or plans out.

mod compat_rules;
mod firstboot;
mod hostile;
mod plans;
mod properties;
mod proptest_config;
mod spec_errors;

use std::collections::BTreeMap;

use caph_core::spec::SpecFiles;

/// Files beside a spec, held in memory.
#[derive(Debug, Default)]
pub struct MapFiles(pub BTreeMap<String, Vec<u8>>);

impl SpecFiles for MapFiles {
    fn read(&self, relative_path: &str) -> Result<Vec<u8>, String> {
        self.0
            .get(relative_path)
            .cloned()
            .ok_or_else(|| "no such file".to_string())
    }
}

/// Files beside a spec on disk, as the CLI reads them.
#[derive(Debug)]
pub struct DirFiles(pub std::path::PathBuf);

impl SpecFiles for DirFiles {
    fn read(&self, relative_path: &str) -> Result<Vec<u8>, String> {
        std::fs::read(self.0.join(relative_path)).map_err(|error| error.to_string())
    }
}
