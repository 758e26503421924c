//! The `caph-sim` binary: prints its endpoint, accepts only its token, stops on SIGTERM.

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
