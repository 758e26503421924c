//! Scripts run in a mount and PID namespace of their own (`unshare --mount --propagation private
//! --pid --fork --kill-child`), for work that mounts file systems.
//!
//! Why a namespace: a mount made in the host's namespace is copied into every namespace another
//! process creates while it exists (a simulated machine, a container), and stays mounted there
//! after it is unmounted here, holding its loop device busy for as long as that process lives. In a
//! private namespace nobody else sees the mounts, and they all go when the namespace's last
//! process ends: on success, on failure, and when the script is killed (the child is started with
//! `kill_on_drop`, and `--kill-child` takes the namespace's first process, and so all of it, down
//! with `unshare`).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::BootError;

/// How many of a failing script's last output lines go into the error.
const TAIL_LINES: usize = 25;

/// Runs `script` with bash (`set -euo pipefail` added) in a private mount and PID namespace, with
/// `args` as `$1`, `$2`, ...; each line it prints (standard output and error together) goes to
/// `on_line`. `what` names the work in an error, which ends with the script's last lines.
pub async fn run_private(
    what: &str,
    script: &str,
    args: &[OsString],
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<(), BootError> {
    let failed = |detail: String| BootError::Failed {
        what: what.to_string(),
        detail,
    };
    let mut child = tokio::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "--",
            "bash",
            "-c",
        ])
        .arg(format!("set -euo pipefail\nexec 2>&1\n{script}"))
        .arg("caph-boot")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // The script's own errors go to its output (`exec 2>&1`); this is unshare's, if any.
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| failed(format!("cannot run unshare (util-linux): {error}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| failed("no output pipe".to_string()))?;
    let stderr = child.stderr.take();
    // Killed and reaped if this future is dropped (a cancellation): its namespace goes with it.
    let mut child = crate::child::Reaped(child);
    let unshare_errors = tokio::spawn(async move {
        let mut text = String::new();
        if let Some(stderr) = stderr {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    });
    let mut lines = BufReader::new(stdout).lines();
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|error| failed(format!("reading its output: {error}")))?
    {
        on_line(&line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child
        .0
        .wait()
        .await
        .map_err(|error| failed(format!("waiting for it: {error}")))?;
    if status.success() {
        return Ok(());
    }
    let unshare_errors = unshare_errors.await.unwrap_or_default();
    tail.extend(unshare_errors.lines().map(str::to_owned));
    let tail: Vec<String> = tail
        .iter()
        .map(|line| format!("  | {}", caph_core::text::Escaped(line)))
        .collect();
    Err(failed(format!(
        "exited with {status}; its last output:\n{}",
        tail.join("\n")
    )))
}

/// Runs `script` like [`run_private`] and returns what it printed.
pub async fn output_private(
    what: &str,
    script: &str,
    args: &[OsString],
) -> Result<String, BootError> {
    let mut output = String::new();
    run_private(what, script, args, &mut |line: &str| {
        output.push_str(line);
        output.push('\n');
    })
    .await?;
    Ok(output)
}
