//! The `caph-sim` binary: prints its endpoint, accepts only its token, stops on SIGTERM, and
//! with `--ssh-machines` puts a real sshd behind each server.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

struct Running {
    child: Child,
    lines: Vec<String>,
}

/// Starts the binary and reads the `expected_lines` lines it prints on start.
async fn run(args: &[&str], expected_lines: usize) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_caph-sim"))
        .args(args)
        .env_remove("CAPH_SIM_TOKEN")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("caph-sim starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout).lines();
    let mut lines = Vec::new();
    for _ in 0..expected_lines {
        let line = tokio::time::timeout(Duration::from_secs(10), reader.next_line())
            .await
            .expect("prints in time")
            .expect("reads")
            .expect("a line");
        lines.push(line);
    }
    Running { child, lines }
}

async fn status(url: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{url}/servers"))
        .bearer_auth(token)
        .send()
        .await
        .expect("answer")
        .status()
        .as_u16()
}

async fn terminate(mut running: Running) {
    let pid = running.child.id().expect("pid").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), running.child.wait())
        .await
        .expect("exits in time")
        .expect("exit status");
    assert!(exit.success(), "{exit}");
}

#[tokio::test]
async fn serves_with_the_given_token_until_sigterm() {
    let running = run(
        &[
            "--hcloud-listen",
            "127.0.0.1:0",
            "--token",
            "given",
            "--time-scale",
            "0.001",
        ],
        1,
    )
    .await;
    let url = running.lines[0]
        .strip_prefix("hcloud: ")
        .expect("endpoint line")
        .to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/v1"),
        "{url}"
    );
    assert_eq!(status(&url, "given").await, 200);
    assert_eq!(status(&url, "other").await, 401);
    terminate(running).await;
}

#[tokio::test]
async fn generates_and_prints_a_token_when_none_is_given() {
    let running = run(&["--hcloud-listen", "127.0.0.1:0"], 2).await;
    let url = running.lines[0]
        .strip_prefix("hcloud: ")
        .expect("endpoint")
        .to_owned();
    let token = running.lines[1]
        .strip_prefix("token: ")
        .expect("token line")
        .to_owned();
    assert_eq!(token.len(), 64);
    assert_eq!(status(&url, &token).await, 200);
    assert_eq!(status(&url, "").await, 401);
    terminate(running).await;
}

#[tokio::test]
async fn rejects_a_bad_time_scale() {
    let output = Command::new(env!("CARGO_BIN_EXE_caph-sim"))
        .args(["--hcloud-listen", "127.0.0.1:0", "--time-scale", "0"])
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--time-scale"));
}

/// Bound on waits that involve real machine work (building a Debian root filesystem the first
/// time takes about half a minute; later starts take a second or two).
const MACHINE_WAIT: Duration = Duration::from_secs(300);

#[tokio::test]
async fn ssh_machines_answer_ssh_on_the_server_address() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_caph-sim"))
        .args([
            "--hcloud-listen",
            "127.0.0.1:0",
            "--token",
            "t",
            "--time-scale",
            "0.001",
            "--ssh-machines",
        ])
        .env_remove("CAPH_SIM_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("caph-sim starts");
    // Drained all along: a first root filesystem build logs enough to fill a pipe.
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr_pipe, &mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("starts in time")
        .expect("reads");
    let Some(first) = first else {
        child.wait().await.expect("exit");
        let stderr = stderr_task.await.expect("stderr");
        assert!(stderr.contains("--ssh-machines"), "{stderr}");
        eprintln!(
            "SKIPPED ssh_machines_answer_ssh_on_the_server_address: {}",
            stderr.trim()
        );
        return;
    };
    let url = first.strip_prefix("hcloud: ").expect("endpoint").to_owned();
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, body: Option<serde_json::Value>| {
        let mut request = http
            .request(method, format!("{url}{path}"))
            .bearer_auth("t");
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };
    let created = call(
        reqwest::Method::POST,
        "/servers".into(),
        Some(serde_json::json!({"name": "ssh-demo", "server_type": "cx23", "image": "debian-12"})),
    )
    .await
    .expect("answer");
    assert_eq!(created.status().as_u16(), 201);
    let created: serde_json::Value = created.json().await.expect("json");
    let id = created["server"]["id"].as_u64().expect("id");
    let address = created["server"]["public_net"]["ipv4"]["ip"]
        .as_str()
        .expect("ip")
        .to_owned();
    let deadline = std::time::Instant::now() + MACHINE_WAIT;
    loop {
        let server: serde_json::Value = call(reqwest::Method::GET, format!("/servers/{id}"), None)
            .await
            .expect("answer")
            .json()
            .await
            .expect("json");
        if server["server"]["status"] == "running" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{server}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stream = tokio::net::TcpStream::connect((address.as_str(), 22))
        .await
        .expect("sshd listens on the server address");
    let mut banner = vec![0u8; 64];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut stream, &mut banner),
    )
    .await
    .expect("banner in time")
    .expect("reads");
    let banner = String::from_utf8_lossy(&banner[..read]).into_owned();
    assert!(banner.starts_with("SSH-2.0-OpenSSH"), "{banner}");
    call(reqwest::Method::DELETE, format!("/servers/{id}"), None)
        .await
        .expect("answer");
    loop {
        let status = call(reqwest::Method::GET, format!("/servers/{id}"), None)
            .await
            .expect("answer")
            .status()
            .as_u16();
        if status == 404 {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    terminate(Running {
        child,
        lines: Vec::new(),
    })
    .await;
}

#[tokio::test]
async fn serves_the_robot_api_beside_or_instead_of_hcloud() {
    let running = run(
        &[
            "--robot-listen",
            "127.0.0.1:0",
            "--robot-user",
            "u",
            "--robot-password",
            "pw",
            "--time-scale",
            "0.001",
        ],
        1,
    )
    .await;
    let url = running.lines[0]
        .strip_prefix("robot: ")
        .expect("robot endpoint line")
        .to_owned();
    let answer = reqwest::Client::new()
        .get(format!("{url}/server"))
        .basic_auth("u", Some("pw"))
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status().as_u16(), 200);
    terminate(running).await;

    let both = run(
        &[
            "--hcloud-listen",
            "127.0.0.1:0",
            "--token",
            "t",
            "--robot-listen",
            "127.0.0.1:0",
        ],
        3,
    )
    .await;
    assert!(
        both.lines[0].starts_with("hcloud: http://"),
        "{:?}",
        both.lines
    );
    assert!(
        both.lines[1].starts_with("robot: http://"),
        "{:?}",
        both.lines
    );
    let password = both.lines[2]
        .strip_prefix("robot-password: ")
        .expect("generated password line");
    assert_eq!(password.len(), 20);
    terminate(both).await;
}

#[tokio::test]
async fn nothing_to_serve_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_caph-sim"))
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--hcloud-listen"));
}

#[tokio::test]
async fn installimage_entry_point_is_the_simulated_installimage() {
    let output = Command::new(env!("CARGO_BIN_EXE_caph-sim"))
        .args(["installimage", "-h"])
        .output()
        .await
        .expect("runs");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("usage: installimage"));
}
