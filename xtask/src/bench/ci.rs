//! The `ci` section: `.ci/run` on a clean clone of the committed `HEAD`, timed whole, as CI runs
//! it (the packages it installs, the compile from nothing, the one test command of the README).
//!
//! It is not part of `bench all`: it takes the machine for twenty minutes or more, and it measures
//! the budget of the test suite (issue: 30 minutes on two cores), not a ratio. What stays warm on
//! this machine and not on a fresh one is said in the section: installed Debian packages, cargo's
//! download cache, and the simulators' root filesystem caches in `/var/cache/caph-sim`.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, ensure};

use super::harness::{GNU_TIME, RESULT_PREFIX};

/// The budget the whole run must stay within, in minutes.
const BUDGET_MINUTES: f64 = 30.0;

/// Clones `HEAD` of `workspace` into `scratch`, runs its `.ci/run` as root, and returns the
/// section. The clone (with its target directory) is removed afterwards.
pub fn run(workspace: &Path, scratch: &Path) -> Result<String> {
    ensure!(
        running_as_root(),
        "the ci section runs .ci/run, which needs root (its simulated servers are sshd chroots)"
    );
    let head = git(workspace, &["rev-parse", "--short=12", "HEAD"])?;
    let dirty = git(
        workspace,
        &["status", "--porcelain", "--untracked-files=no"],
    )?;
    if !dirty.is_empty() {
        eprintln!(
            "note: the checkout has uncommitted changes; the clone measures HEAD ({head}) without them"
        );
    }
    let shared = workspace
        .join("../shared")
        .canonicalize()
        .context("../shared beside the checkout (the vendored installimage the tests read)")?;
    let root = scratch.join("ci-clone");
    remove_tree(&root)?;
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let clone = root.join("caph-image");
    let status = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(workspace)
        .arg(&clone)
        .status()
        .context("running git clone")?;
    ensure!(
        status.success(),
        "git clone of {} failed",
        workspace.display()
    );
    // The tests find the vendored programs at ../shared, as beside the real checkout.
    std::os::unix::fs::symlink(&shared, root.join("shared"))
        .context("linking ../shared beside the clone")?;

    let log_path = scratch.join("ci-run.log");
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let times_path = scratch.join("ci-run.time");
    eprintln!(
        "running .ci/run in a clean clone of {head} (log: {})...",
        log_path.display()
    );
    let started = Instant::now();
    let status = Command::new(GNU_TIME)
        .args(["-f", "%e %U %S", "-o"])
        .arg(&times_path)
        .arg(clone.join(".ci/run"))
        .current_dir(&clone)
        // The clone builds in its own target directory, from nothing, as CI does.
        .env_remove("CARGO_TARGET_DIR")
        // nextest shows what passing tests printed too (the same tests, the same order), so
        // that a test that skipped itself shows its SKIPPED line here.
        .env("NEXTEST_SUCCESS_OUTPUT", "final")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("running .ci/run")?;
    let wall = started.elapsed().as_secs_f64();
    let times = fs::read_to_string(&times_path).unwrap_or_default();
    let cpu: f64 = times
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse::<f64>().ok())
        .sum();
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let summary = text
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with("Summary ["))
        .map(|line| line.trim().to_owned())
        .unwrap_or_else(|| "no nextest summary line".to_owned());
    let skipped = text
        .lines()
        .filter(|line| line.contains("SKIPPED "))
        .count();
    remove_tree(&root)?;
    ensure!(
        status.success(),
        ".ci/run failed ({status}) after {wall:.0} s; see {}",
        log_path.display()
    );

    let minutes = wall / 60.0;
    let verdict = if minutes <= BUDGET_MINUTES {
        "met"
    } else {
        "MISSED"
    };
    let mut section = String::from("## The whole CI run on a clean clone\n\n");
    section.push_str(&format!(
        "- `.ci/run` on `git clone` of commit `{head}`, as root, timed whole under GNU time: its `apt-get` (packages already installed here), the compile of the workspace from nothing into the clone's own target directory, then the README's test command (with `NEXTEST_SUCCESS_OUTPUT=final`, so that what passing tests print is shown too and a test that skipped itself is counted)\n"
    ));
    section.push_str("- warm on this machine and not on a fresh one: the installed Debian packages, cargo's download cache, and the simulators' root filesystem caches (`/var/cache/caph-sim`), which a fresh machine builds with mmdebstrap in its first tests\n\n");
    section.push_str("| run | wall s | wall min | CPU s (user+sys) | tests | SKIPPED lines |\n|---|---:|---:|---:|---|---:|\n");
    section.push_str(&format!(
        "| `.ci/run` | {wall:.0} | {minutes:.1} | {cpu:.0} | {} | {skipped} |\n\n",
        summary.replace('|', "\\|")
    ));
    section.push_str(&format!(
        "{RESULT_PREFIX} `.ci/run` on a clean clone took {minutes:.1} min ({wall:.0} s; target at most {BUDGET_MINUTES:.0} min: {verdict}), {summary}, {skipped} SKIPPED lines.\n"
    ));
    Ok(section)
}

fn git(workspace: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(workspace)
        .output()
        .context("running git")?;
    ensure!(output.status.success(), "git {} failed", args.join(" "));
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Removes a directory tree without crossing into other file systems: a test killed mid-run may
/// leave a mount below it, and what is mounted there is not the clone's.
fn remove_tree(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let status = Command::new("rm")
        .args(["-rf", "--one-file-system"])
        .arg(path)
        .status()
        .context("running rm")?;
    ensure!(status.success(), "removing {} failed", path.display());
    Ok(())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}
