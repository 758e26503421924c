//! Integration tests of the Hetzner Cloud client: decoding on JSON literals, and every call
//! against the real simulator (`caph_sim::hcloud`) over HTTP on loopback.

mod api;
mod decode;
mod replace;
mod waiter;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use caph_hcloud::client::{Client, ClientConfig, RetryPolicy, Token};
use caph_sim::hcloud::{HcloudSim, HcloudSimConfig, TimeMode};
use caph_sim::openapi::Validator;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// The simulator's token; distinctive, so a test can search any text for it.
pub const TOKEN: &str = "caph-test-token-7d1f0c9a";

/// A simulator in scaled time with responses recorded.
pub async fn start_sim(scale: f64) -> HcloudSim {
    start_sim_with(HcloudSimConfig {
        time: TimeMode::Scaled(scale),
        ..Default::default()
    })
    .await
}

/// A simulator from a configuration (token and response recording are set here).
pub async fn start_sim_with(config: HcloudSimConfig) -> HcloudSim {
    let config = HcloudSimConfig {
        token: TOKEN.into(),
        record_responses: true,
        ..config
    };
    HcloudSim::start(config).await.expect("start the simulator")
}

/// Retries as in production, with the delays shrunk a thousandfold so tests stay fast.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(30),
        locked_delay: Duration::from_millis(2),
        ..RetryPolicy::default()
    }
}

/// A client for `endpoint` with fast retries.
pub fn client_for(endpoint: &str) -> Client {
    let mut config = ClientConfig::new(endpoint, Token::new(TOKEN));
    config.retry = fast_retry();
    Client::new(config).expect("build the client")
}

/// Requests the simulator saw for a route template such as `GET /servers/{id}`.
pub fn count(sim: &HcloudSim, route: &str) -> usize {
    let (method, template) = route.split_once(' ').expect("METHOD /template");
    sim.request_log()
        .iter()
        .filter(|record| record.method == method && record.route.as_deref() == Some(template))
        .count()
}

/// A distinct, well-formed OpenSSH ed25519 public key.
pub fn public_key(seed: u32) -> String {
    let mut blob = Vec::new();
    let kind = b"ssh-ed25519";
    blob.extend_from_slice(&(kind.len() as u32).to_be_bytes());
    blob.extend_from_slice(kind);
    let mut key = [7u8; 32];
    key[..4].copy_from_slice(&seed.to_be_bytes());
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(&key);
    format!(
        "ssh-ed25519 {} test-{seed}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

/// A stand-in for a load balancer in front of the API: the first `failures` connections get a
/// bare `status` answer with an HTML body (no API error JSON, as a proxy sends it), later ones
/// are passed through to the simulator. The simulator cannot answer without an API error body,
/// so this is the honest way to test the client's handling of bare 502 and 504 answers.
pub async fn bare_status_proxy(upstream: SocketAddr, status: u16, failures: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let address = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        let mut served = 0;
        while let Ok((mut inbound, _)) = listener.accept().await {
            if served < failures {
                served += 1;
                // Read the request head before answering, as a proxy does.
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match inbound.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                }
                let body = format!("<html><body><h1>{status} Gateway trouble</h1></body></html>");
                let answer = format!(
                    "HTTP/1.1 {status} Gateway trouble\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = inbound.write_all(answer.as_bytes()).await;
                let _ = inbound.shutdown().await;
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    address
}

/// Checks every answer the simulator recorded against the OpenAPI description beside the
/// checkout (`../shared/reference/hcloud-openapi.json`): the client was tested against answers
/// shaped like the real service's. Says so and returns when the description is absent.
pub fn assert_answers_match_openapi(sim: &HcloudSim) {
    static VALIDATOR: OnceLock<Option<Validator>> = OnceLock::new();
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/hcloud-openapi.json");
    let validator = VALIDATOR.get_or_init(|| {
        if !path.exists() {
            return None;
        }
        Some(Validator::load(&path).expect("load the OpenAPI description"))
    });
    let Some(validator) = validator else {
        eprintln!("SKIPPED OpenAPI check: {} is absent", path.display());
        return;
    };
    let responses = sim.recorded_responses();
    assert!(!responses.is_empty(), "nothing was recorded");
    let violations = validator.check_all(&responses);
    let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        listed.join("\n")
    );
}
