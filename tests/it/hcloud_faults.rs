//! Leak-proofing of `caph-image build hcloud`: a failure at every API call of the flow, failed
//! actions, lost answers, SIGINT in every phase, SIGKILL followed by `gc`, name collisions and a
//! checksum mismatch. After each, the simulator must hold no server, no key and no unfinished
//! snapshot of the build, and the exit code and message must name the cause.
//!
//! Cases run concurrently (each with its own simulator, machines and mirror), x86 only: the
//! two-architecture flow is covered by `hcloud_build`.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use caph_sim::hcloud::{Fault, ImageStatus};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;

use crate::cloud::Cloud;
use crate::hcloud_build::run_caph_image;

/// Cases in flight at once: builds mostly wait on sshd, apt and the disk, so a few overlap well on
/// two cores without starving each other.
const PARALLEL_CASES: usize = 4;

/// What a case does to the build.
#[derive(Debug, Clone)]
enum Disturbance {
    Fault(Fault),
    /// SIGINT when the progress shows this phase for x86, with an optional fault that makes the phase last.
    Interrupt {
        phase: &'static str,
        stretch: Option<Fault>,
    },
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    disturbance: Disturbance,
    /// Text the error output must contain.
    cause: String,
    exit_code: i32,
}

fn api_failure(route: &str, nth: u32) -> Case {
    Case {
        name: format!("{route} #{nth} fails"),
        disturbance: Disturbance::Fault(Fault::fail(route, nth, 500, "server_error")),
        cause: "server_error".to_string(),
        exit_code: 1,
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // Every call the flow makes, by route and occurrence. GET /images is a list without polling,
    // so its occurrences are stable: preflight (base, name by label, name), commit lookup (2),
    // post-check (2).
    for (route, count) in [
        ("GET /locations", 1),
        ("GET /server_types", 1),
        ("GET /images", 7),
        ("POST /ssh_keys", 1),
        ("POST /servers", 1),
        ("GET /actions", 1),
        ("GET /servers/{id}", 1),
        ("POST /servers/{id}/actions/shutdown", 1),
        ("POST /servers/{id}/actions/create_image", 1),
        ("GET /images/{id}", 1),
        ("PUT /images/{id}", 1),
        ("DELETE /servers/{id}", 1),
        ("DELETE /ssh_keys/{id}", 1),
    ] {
        for nth in 1..=count {
            cases.push(api_failure(route, nth));
        }
    }
    for command in [
        "create_server",
        "start_server",
        "shutdown_server",
        "create_image",
    ] {
        cases.push(Case {
            name: format!("action {command} ends in error"),
            disturbance: Disturbance::Fault(Fault::FailAction {
                command: command.into(),
                code: "action_failed".into(),
                message: format!("injected failure of {command}"),
            }),
            cause: format!("injected failure of {command}"),
            exit_code: 1,
        });
    }
    // Answers lost after the API acted: the server, and the snapshot, exist but the client never
    // learns their ids; the build-label sweep must find them.
    for (route, cause) in [
        ("POST /servers", "creating the build server"),
        (
            "POST /servers/{id}/actions/create_image",
            "creating the snapshot",
        ),
    ] {
        cases.push(Case {
            name: format!("{route} answer lost"),
            disturbance: Disturbance::Fault(Fault::DropResponse {
                route: route.into(),
                nth: 1,
            }),
            cause: format!("{cause}: {} ", route.split(' ').next().unwrap_or_default()),
            exit_code: 1,
        });
    }
    let delay = |route: &str| {
        Some(Fault::Delay {
            route: route.into(),
            nth: 1,
            delay: Duration::from_secs(4),
        })
    };
    for (phase, stretch) in [
        ("create", delay("POST /servers")),
        ("connect", None),
        ("provision", None),
        ("shutdown", delay("POST /servers/{id}/actions/shutdown")),
        ("capture", delay("POST /servers/{id}/actions/create_image")),
        ("verify", delay("PUT /images/{id}")),
        ("cleanup", delay("DELETE /servers/{id}")),
    ] {
        cases.push(Case {
            name: format!("SIGINT during {phase}"),
            disturbance: Disturbance::Interrupt { phase, stretch },
            cause: format!("cancelled during {phase}"),
            exit_code: 130,
        });
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_and_interrupt_leaves_nothing_behind() {
    // One probe decides whether this machine can run the matrix at all.
    if Cloud::start("every_fault_and_interrupt_leaves_nothing_behind")
        .await
        .is_none()
    {
        return;
    }
    let cases = cases();
    let permits = Arc::new(Semaphore::new(PARALLEL_CASES));
    let mut tasks = tokio::task::JoinSet::new();
    for case in cases.clone() {
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire().await;
            let verdict = run_case(&case).await;
            (case.name, verdict)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.expect("a case task panicked"));
    }
    results.sort();
    let failed: Vec<&(String, Result<String, String>)> = results
        .iter()
        .filter(|(_, verdict)| verdict.is_err())
        .collect();
    eprintln!(
        "fault matrix: {} cases, {} failed",
        results.len(),
        failed.len()
    );
    for (name, verdict) in &results {
        match verdict {
            Ok(summary) => eprintln!("  ok    {name}: {summary}"),
            Err(problem) => eprintln!("  FAIL  {name}: {problem}"),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed",
        failed.len(),
        results.len()
    );
}

/// Runs one case; `Ok` holds a one-line summary, `Err` what went wrong.
async fn run_case(case: &Case) -> Result<String, String> {
    let cloud = Cloud::start(&case.name)
        .await
        .ok_or("the cloud did not start")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(
        dir.path().join("node.toml"),
        cloud.spec("fault-node", &["x86"]),
    )
    .map_err(|e| e.to_string())?;
    let args = ["build", "hcloud", "node.toml", "--no-progress"];
    let (code, stderr) = match &case.disturbance {
        Disturbance::Fault(fault) => {
            cloud.sim.inject(fault.clone());
            let output = run_caph_image(&cloud, dir.path(), &args).await;
            (
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
        Disturbance::Interrupt { phase, stretch } => {
            if let Some(fault) = stretch {
                cloud.sim.inject(fault.clone());
            }
            interrupt_at(cloud.env(), dir.path(), &args, &format!("x86: {phase}:")).await?
        }
    };
    if code != case.exit_code {
        return Err(format!(
            "exit code {code}, wanted {}; stderr:\n{stderr}",
            case.exit_code
        ));
    }
    if !stderr.contains(&case.cause) {
        return Err(format!(
            "the error does not name the cause ({:?}); stderr:\n{stderr}",
            case.cause
        ));
    }
    if stderr.contains(crate::cloud::TOKEN) {
        return Err("the API token appears in the output".to_string());
    }
    let leftovers = leftovers(&cloud);
    if !leftovers.is_empty() {
        return Err(format!("left behind: {}", leftovers.join(", ")));
    }
    let snapshots = cloud.state().snapshots().len();
    Ok(format!(
        "exit {code}, cause named, nothing left ({snapshots} finished snapshot(s))"
    ))
}

/// Servers, keys and unfinished snapshots in the simulator.
fn leftovers(cloud: &Cloud) -> Vec<String> {
    let state = cloud.state();
    let mut found: Vec<String> = state
        .servers
        .iter()
        .map(|server| format!("server {} ({})", server.id, server.name))
        .collect();
    found.extend(
        state
            .ssh_keys
            .iter()
            .map(|key| format!("SSH key {} ({})", key.id, key.name)),
    );
    found.extend(
        state
            .snapshots()
            .into_iter()
            .filter(|image| {
                image.status != ImageStatus::Available
                    || image.labels.contains_key("caph-image-build")
                    || !image.labels.contains_key("caph-image-name")
            })
            .map(|image| format!("unfinished snapshot {} ({:?})", image.id, image.status)),
    );
    found
}

/// Runs the binary with `env` and sends SIGINT when a stderr line contains `marker`; returns the
/// exit code and stderr.
pub async fn interrupt_at(
    env: impl IntoIterator<Item = (&'static str, String)>,
    dir: &std::path::Path,
    args: &[&str],
    marker: &str,
) -> Result<(i32, String), String> {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args(args)
        .current_dir(dir)
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id().ok_or("no pid")?;
    let mut lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
    let mut stderr = String::new();
    let mut sent = false;
    while let Ok(Some(line)) = lines.next_line().await {
        stderr.push_str(&line);
        stderr.push('\n');
        if !sent && line.contains(marker) {
            sent = true;
            let status = std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("kill -INT failed".to_string());
            }
        }
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    if !sent {
        return Err(format!(
            "the build never showed {marker:?}; stderr:\n{stderr}"
        ));
    }
    Ok((status.code().unwrap_or(-1), stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_run_is_cleaned_by_gc() {
    let Some(cloud) = Cloud::start("a_killed_run_is_cleaned_by_gc").await else {
        return;
    };
    // Resources of the project that are not this tool's: nothing may touch them.
    let client = caph_hcloud::Client::new(caph_hcloud::ClientConfig::new(
        cloud.sim.api_url(),
        caph_hcloud::Token::new(crate::cloud::TOKEN),
    ))
    .unwrap();
    let bystander_key = client
        .create_ssh_key(&caph_hcloud::client::CreateSshKeyRequest {
            name: "someone-elses-key".into(),
            public_key: caph_ssh::KeyPair::generate_ed25519("bystander")
                .unwrap()
                .public_key()
                .to_openssh(),
            labels: [("team".to_string(), "web".to_string())].into(),
        })
        .await
        .unwrap();
    let bystander_snapshot = cloud.sim.add_snapshot(caph_sim::hcloud::SnapshotSeed {
        description: "someone else's snapshot".into(),
        labels: [(
            "caph-image-name".to_string(),
            "someone-elses-image".to_string(),
        )]
        .into(),
        architecture: "x86".into(),
        disk_size: 40.0,
        image_size: 1.5,
        os_flavor: "debian".into(),
        os_version: Some("12".into()),
        created_from: None,
        delete_protected: false,
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        cloud.spec("killed-node", &["x86"]),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args(["build", "hcloud", "node.toml", "--no-progress"])
        .current_dir(dir.path())
        .envs(cloud.env())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains("x86: provision:") {
            std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
            break;
        }
    }
    child.wait().await.unwrap();
    assert!(
        !leftovers(&cloud).is_empty(),
        "a SIGKILLed build should have left its server and key"
    );

    let dry = run_caph_image(
        &cloud,
        dir.path(),
        &["gc", "--older-than", "0", "--dry-run"],
    )
    .await;
    assert_eq!(dry.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would delete server"));
    assert!(!leftovers(&cloud).is_empty(), "--dry-run removed something");

    let gc = run_caph_image(&cloud, dir.path(), &["gc", "--older-than", "0"]).await;
    assert_eq!(
        gc.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let report = String::from_utf8_lossy(&gc.stdout).into_owned();
    assert!(
        report.contains("deleted server") && report.contains("deleted SSH key"),
        "{report}"
    );
    let state = cloud.state();
    let keys: Vec<u64> = state.ssh_keys.iter().map(|key| key.id).collect();
    assert_eq!(
        keys,
        vec![bystander_key.id.0 as u64],
        "gc touched another key"
    );
    assert!(
        state
            .snapshots()
            .iter()
            .any(|image| image.id == bystander_snapshot),
        "gc touched another snapshot"
    );
    assert!(state.servers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_taken_name_stops_the_build_and_replace_ends_with_exactly_one() {
    let Some(cloud) =
        Cloud::start("a_taken_name_stops_the_build_and_replace_ends_with_exactly_one").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        cloud.spec("taken-node", &["x86"]),
    )
    .unwrap();
    let first = run_caph_image(
        &cloud,
        dir.path(),
        &["build", "hcloud", "node.toml", "--no-progress"],
    )
    .await;
    assert_eq!(first.status.code(), Some(0));
    let old = cloud
        .state()
        .snapshots()
        .into_iter()
        .map(|image| image.id)
        .collect::<Vec<_>>();
    assert_eq!(old.len(), 1);

    let creates_before = creates(&cloud);
    let again = run_caph_image(
        &cloud,
        dir.path(),
        &["build", "hcloud", "node.toml", "--no-progress"],
    )
    .await;
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("already taken by snapshot") && stderr.contains("--replace"),
        "{stderr}"
    );
    assert_eq!(
        creates(&cloud),
        creates_before,
        "the refused build created something"
    );

    let replace = run_caph_image(
        &cloud,
        dir.path(),
        &["build", "hcloud", "node.toml", "--no-progress", "--replace"],
    )
    .await;
    assert_eq!(
        replace.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&replace.stderr)
    );
    let now: Vec<_> = cloud
        .state()
        .snapshots()
        .into_iter()
        .filter(|image| {
            image.labels.get("caph-image-name").map(String::as_str) == Some("taken-node")
        })
        .map(|image| image.id)
        .collect();
    assert_eq!(now.len(), 1, "exactly one snapshot carries the name");
    assert_ne!(now, old, "the old snapshot was replaced");
    assert_eq!(leftovers(&cloud), Vec::<String>::new());
}

/// How many create calls the simulator has served.
fn creates(cloud: &Cloud) -> usize {
    cloud
        .sim
        .request_log()
        .iter()
        .filter(|request| {
            request.method == "POST"
                && matches!(request.route.as_deref(), Some("/servers" | "/ssh_keys"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checksum_mismatch_fails_with_both_digests_and_leaks_nothing() {
    let Some(cloud) =
        Cloud::start("a_checksum_mismatch_fails_with_both_digests_and_leaks_nothing").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        cloud.spec("tampered-node", &["x86"]),
    )
    .unwrap();
    let tampered = b"not the runc that was published".to_vec();
    let actual = caph_sim::mirror::sha256_hex(&tampered);
    cloud.mirror.replace("runc/v1.3.6/runc.amd64", tampered);
    let output = run_caph_image(
        &cloud,
        dir.path(),
        &["build", "hcloud", "node.toml", "--no-progress"],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("checksum mismatch")
            && stderr.contains(&format!("got {actual}"))
            && stderr.contains("expected sha256 "),
        "{stderr}"
    );
    assert!(stderr.contains("step 11/21 \"runc\""), "{stderr}");
    assert_eq!(leftovers(&cloud), Vec::<String>::new());
    assert!(cloud.state().snapshots().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ignored_shutdown_falls_back_to_poweroff() {
    let Some(cloud) = Cloud::start("an_ignored_shutdown_falls_back_to_poweroff").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        cloud.spec("stubborn-node", &["x86"]),
    )
    .unwrap();
    cloud.sim.inject(Fault::IgnoreShutdown);
    let output = run_caph_image(
        &cloud,
        dir.path(),
        &[
            "build",
            "hcloud",
            "node.toml",
            "--no-progress",
            "--shutdown-timeout",
            "3s",
        ],
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("powering off"));
    assert!(
        cloud
            .sim
            .request_log()
            .iter()
            .any(|request| request.route.as_deref() == Some("/servers/{id}/actions/poweroff"))
    );
    assert_eq!(leftovers(&cloud), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_on_error_keeps_the_server_and_says_how_to_reach_it() {
    let Some(cloud) = Cloud::start("keep_on_error_keeps_the_server_and_says_how_to_reach_it").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        cloud.spec("kept-node", &["x86"]),
    )
    .unwrap();
    cloud.sim.inject(Fault::FailAction {
        command: "create_image".into(),
        code: "action_failed".into(),
        message: "injected snapshot failure".into(),
    });
    let output = run_caph_image(
        &cloud,
        dir.path(),
        &[
            "build",
            "hcloud",
            "node.toml",
            "--no-progress",
            "--keep-on-error",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(stderr.contains("injected snapshot failure"), "{stderr}");
    let command = stderr
        .lines()
        .find_map(|line| line.split("reach the kept server with: ").nth(1))
        .unwrap_or_else(|| panic!("no ssh command in: {stderr}"));
    let state = cloud.state();
    assert_eq!(state.servers.len(), 1, "the server is kept");
    assert_eq!(state.ssh_keys.len(), 1, "its key is kept");
    assert!(
        state.snapshots().is_empty(),
        "the failed snapshot is not kept"
    );

    // The printed command works as it is: the key file is private and the host key is pinned.
    let key_file = command.split_whitespace().nth(2).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dir.path().join(key_file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let login = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{command} -o BatchMode=yes cat /etc/caph-image-release"
        ))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    assert!(String::from_utf8_lossy(&login.stdout).contains("CAPH_IMAGE_NAME=kept-node"));

    let gc = run_caph_image(&cloud, dir.path(), &["gc", "--older-than", "0"]).await;
    assert_eq!(gc.status.code(), Some(0));
    assert_eq!(leftovers(&cloud), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_run_creates_nothing_and_images_can_be_listed_and_pruned() {
    let Some(cloud) =
        Cloud::start("dry_run_creates_nothing_and_images_can_be_listed_and_pruned").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        cloud.spec("listed-node", &["x86"]),
    )
    .unwrap();

    let dry = run_caph_image(
        &cloud,
        dir.path(),
        &["build", "hcloud", "node.toml", "--dry-run"],
    )
    .await;
    assert_eq!(dry.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(
        stdout.contains("ok: x86: the image name \"listed-node\" is free")
            && stdout.contains("# ---- step 1/21: wait-for-system ----"),
        "{stdout}"
    );
    assert!(
        cloud
            .sim
            .request_log()
            .iter()
            .all(|request| request.method == "GET"),
        "a dry run sent a change"
    );

    let built = run_caph_image(
        &cloud,
        dir.path(),
        &[
            "build",
            "hcloud",
            "node.toml",
            "--no-progress",
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(built.status.code(), Some(0));
    let id =
        serde_json::from_slice::<serde_json::Value>(&built.stdout).unwrap()["snapshots"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();

    let listed = run_caph_image(&cloud, dir.path(), &["images", "list", "--output", "json"]).await;
    let images: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 1);
    assert_eq!(images[0]["id"], id.as_str());
    assert_eq!(images[0]["name"], "listed-node");

    let would = run_caph_image(
        &cloud,
        dir.path(),
        &["images", "prune", "--keep", "0", "--dry-run"],
    )
    .await;
    assert!(String::from_utf8_lossy(&would.stdout).contains(&format!("would delete {id}")));
    assert_eq!(cloud.state().snapshots().len(), 1);
    let kept = run_caph_image(&cloud, dir.path(), &["images", "prune", "--keep", "1"]).await;
    assert_eq!(kept.status.code(), Some(0));
    assert_eq!(
        cloud.state().snapshots().len(),
        1,
        "--keep 1 keeps the newest"
    );
    let pruned = run_caph_image(
        &cloud,
        dir.path(),
        &["images", "prune", "--keep", "0", "--name", "listed-node"],
    )
    .await;
    assert_eq!(pruned.status.code(), Some(0));
    assert!(cloud.state().snapshots().is_empty());
}
