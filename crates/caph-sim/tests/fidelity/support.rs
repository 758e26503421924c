//! Helpers shared by the hcloud simulator tests: start a simulator, talk plain HTTP to it, and
//! check every recorded answer against the OpenAPI description at the end.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

pub use caph_sim::hcloud::{HcloudSim, HcloudSimConfig, TimeMode};
use serde_json::{Value, json};

pub const TOKEN: &str = "test-token";

/// A simulator plus a plain HTTP client for it.
pub struct Harness {
    pub sim: HcloudSim,
    pub http: reqwest::Client,
    pub base: String,
}

/// An answer: status, headers and the JSON body (Null when there is none).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    }

    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// A config with manual time and recorded responses, as most tests want.
pub fn manual() -> HcloudSimConfig {
    HcloudSimConfig {
        token: TOKEN.into(),
        time: TimeMode::Manual,
        record_responses: true,
        ..Default::default()
    }
}

/// A config 1000x faster than real time, with recorded responses.
pub fn fast() -> HcloudSimConfig {
    HcloudSimConfig {
        token: TOKEN.into(),
        time: TimeMode::Scaled(0.001),
        record_responses: true,
        ..Default::default()
    }
}

pub async fn start(config: HcloudSimConfig) -> Harness {
    let sim = HcloudSim::start(config).await.expect("simulator starts");
    let base = sim.api_url();
    Harness {
        sim,
        http: reqwest::Client::new(),
        base,
    }
}

impl Harness {
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.call_as(method, path, body, Some(TOKEN)).await
    }

    pub async fn call_as(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("answer");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.call("POST", path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.call("PUT", path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.call("DELETE", path, None).await
    }

    /// Advances manual time and waits until its effects are applied.
    pub async fn advance(&self, by: Duration) {
        self.sim.advance(by);
        assert!(self.sim.settle().await, "simulator settles");
    }

    /// Creates a server (cx23, debian-12, fsn1 unless `extra` overrides) and returns the answer.
    pub async fn create_server(&self, name: &str, extra: Value) -> Answer {
        let mut body =
            json!({"name": name, "server_type": "cx23", "image": "debian-12", "location": "fsn1"});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            for (key, value) in extra {
                body.insert(key.clone(), value.clone());
            }
        }
        self.post("/servers", body).await
    }

    /// Polls an action in scaled time until it is no longer running.
    pub async fn wait_action(&self, id: u64) -> Value {
        // Scaled tests run 1000x: every simulated action finishes well within 10 s of real time.
        for _ in 0..2000 {
            let answer = self.get(&format!("/actions/{id}")).await;
            assert_eq!(answer.status, 200, "{:?}", answer.body);
            if answer.body["action"]["status"] != "running" {
                return answer.body["action"].clone();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("action {id} still running");
    }

    /// Checks every recorded answer against the OpenAPI description; call at the end of a test.
    pub fn assert_openapi(&self) {
        let Some(path) = openapi_path() else {
            eprintln!("SKIPPED OpenAPI check: hcloud-openapi.json not found beside the checkout");
            return;
        };
        let validator =
            caph_sim::openapi::Validator::load(&path).expect("OpenAPI description loads");
        let responses = self.sim.recorded_responses();
        assert!(!responses.is_empty(), "responses were recorded");
        let violations = validator.check_all(&responses);
        assert!(
            violations.is_empty(),
            "{} OpenAPI violations:\n{}",
            violations.len(),
            violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// `$CARGO_MANIFEST_DIR/../../../shared/reference/hcloud-openapi.json`, if it exists.
pub fn openapi_path() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference/hcloud-openapi.json");
    path.exists().then_some(path)
}

/// A syntactically valid OpenAPI-free ed25519 public key line, distinct per `seed`.
pub fn public_key(seed: u8) -> String {
    use base64::Engine as _;
    let mut blob = Vec::new();
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(&[seed; 32]);
    format!(
        "ssh-ed25519 {} key-{seed}",
        base64::engine::general_purpose::STANDARD.encode(&blob)
    )
}
