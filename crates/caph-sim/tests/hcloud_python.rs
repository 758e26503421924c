//! The official Python client (`hcloud` from PyPI) against the simulator: key, server, shutdown,
//! labelled snapshot, lookups by label selector and architecture, cleanup. It must pass unmodified.

#[path = "fidelity/support.rs"]
mod support;

use std::path::PathBuf;
use std::process::Stdio;

use support::{fast, public_key, start};

const PYTHON: &str = "python3";

async fn python_client_missing() -> Option<String> {
    let probe = tokio::process::Command::new(PYTHON)
        .args(["-c", "import hcloud"])
        .stdin(Stdio::null())
        .output()
        .await;
    match probe {
        Err(error) => Some(format!("{PYTHON} cannot run: {error}")),
        Ok(output) if !output.status.success() => Some(format!(
            "`import hcloud` fails (pip install hcloud): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Ok(_) => None,
    }
}

#[tokio::test]
async fn official_python_client_runs_unmodified() {
    if let Some(reason) = python_client_missing().await {
        eprintln!("SKIPPED official_python_client_runs_unmodified: {reason}");
        return;
    }
    let harness = start(fast()).await;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fidelity/official_python.py");
    let output = tokio::process::Command::new(PYTHON)
        .arg(&script)
        .env("HCLOUD_TOKEN", support::TOKEN)
        .env("HCLOUD_ENDPOINT", &harness.base)
        .env("PUBLIC_KEY", public_key(7))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert_eq!(stdout.trim(), "OK", "{stderr}");
    let state = harness.sim.state();
    assert!(state.servers.is_empty() && state.ssh_keys.is_empty() && state.snapshots().is_empty());
    assert!(harness.sim.request_log().len() > 10);
    harness.assert_openapi();
}
