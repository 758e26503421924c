//! The HTTP surface of the hcloud simulator: authentication, unknown routes, headers on every
//! answer, the token bucket and 429, and the request log.

#[path = "fidelity/support.rs"]
mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::{HcloudSimConfig, manual, start};

#[tokio::test]
async fn bad_or_missing_token_is_unauthorized() {
    let harness = start(manual()).await;
    for token in [None, Some("wrong"), Some("")] {
        let answer = harness.call_as("GET", "/servers", None, token).await;
        assert_eq!(answer.status, 401);
        assert_eq!(
            answer.body,
            json!({"error": {"code": "unauthorized", "message": "unable to authenticate", "details": null}})
        );
    }
    // Unauthenticated requests do not use up the project's budget.
    let answer = harness.get("/servers").await;
    assert_eq!(answer.header("RateLimit-Remaining"), "3599");
    harness.assert_openapi();
}

#[tokio::test]
async fn unknown_routes_are_not_found_even_without_a_token() {
    let harness = start(manual()).await;
    for (method, path) in [
        ("GET", "/nothing"),
        ("GET", "/servers/1/nothing"),
        ("PATCH", "/servers"),
        ("GET", "/../v2/servers"),
    ] {
        let answer = harness.call_as(method, path, None, None).await;
        assert_eq!(answer.status, 404, "{method} {path}");
        assert_eq!(answer.code(), "not_found");
        assert!(!answer.header("X-Correlation-Id").is_empty());
    }
    let outside = harness
        .http
        .get(format!("http://{}/servers", harness.sim.local_addr()))
        .send()
        .await
        .expect("answer");
    assert_eq!(outside.status().as_u16(), 404);
    let log = harness.sim.request_log();
    assert_eq!(log.len(), 5);
    assert!(
        log.iter()
            .all(|record| record.route.is_none() && record.status == Some(404))
    );
    harness.assert_openapi_or_empty();
}

trait OpenApiOrEmpty {
    fn assert_openapi_or_empty(&self);
}

impl OpenApiOrEmpty for support::Harness {
    /// Unknown routes are recorded nowhere (they are in no description), so nothing to check.
    fn assert_openapi_or_empty(&self) {
        assert!(self.sim.recorded_responses().is_empty());
    }
}

#[tokio::test]
async fn every_answer_carries_correlation_and_rate_limit_headers() {
    // A slow refill, so that the counts below hold however slow the machine is.
    let harness = start(HcloudSimConfig {
        rate_limit_refill_per_second: 0.01,
        ..manual()
    })
    .await;
    let first = harness.get("/locations").await;
    let second = harness.get("/locations").await;
    let not_found = harness.get("/servers/42").await;
    for answer in [&first, &second, &not_found] {
        assert_eq!(answer.header("RateLimit-Limit"), "3600");
        assert_eq!(answer.header("content-type"), "application/json");
        assert_eq!(answer.header("X-Correlation-Id").len(), 16);
    }
    assert_ne!(
        first.header("X-Correlation-Id"),
        second.header("X-Correlation-Id")
    );
    assert_eq!(first.header("RateLimit-Remaining"), "3599");
    assert_eq!(second.header("RateLimit-Remaining"), "3598");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let reset: u64 = second.header("RateLimit-Reset").parse().expect("reset");
    // Two tokens missing after the second request, one back per 100 s: full in about 200 s.
    assert!(reset >= now + 190 && reset <= now + 202, "{reset} vs {now}");
    assert_eq!(not_found.body["error"]["message"], "server not found");
    harness.assert_openapi();
}

#[tokio::test]
async fn token_bucket_answers_429_and_refills() {
    let harness = start(HcloudSimConfig {
        rate_limit_capacity: 3,
        // One token a second: slow enough that a loaded machine still sends the first four
        // requests before a token comes back.
        rate_limit_refill_per_second: 1.0,
        ..manual()
    })
    .await;
    for remaining in ["2", "1", "0"] {
        let answer = harness.get("/locations").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("RateLimit-Remaining"), remaining);
    }
    let limited = harness.get("/locations").await;
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.body,
        json!({"error": {"code": "rate_limit_exceeded", "message": "limit of 3 requests per hour reached", "details": null}})
    );
    assert_eq!(limited.header("RateLimit-Limit"), "3");
    assert_eq!(limited.header("RateLimit-Remaining"), "0");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = harness.get("/locations").await;
    assert_eq!(again.status, 200);
    let statuses: Vec<Option<u16>> = harness
        .sim
        .request_log()
        .iter()
        .map(|record| record.status)
        .collect();
    assert_eq!(
        statuses,
        [Some(200), Some(200), Some(200), Some(429), Some(200)]
    );
    harness.assert_openapi();
}

#[tokio::test]
async fn request_log_names_routes() {
    let harness = start(manual()).await;
    let created = harness.create_server("logged", json!({})).await;
    let id = created.body["server"]["id"].as_u64().expect("id");
    harness.get(&format!("/servers/{id}")).await;
    let log = harness.sim.request_log();
    assert_eq!(log[0].method, "POST");
    assert_eq!(log[0].path, "/v1/servers");
    assert_eq!(log[0].route.as_deref(), Some("/servers"));
    assert_eq!(log[0].status, Some(201));
    assert_eq!(log[1].path, format!("/v1/servers/{id}"));
    assert_eq!(log[1].route.as_deref(), Some("/servers/{id}"));
    let recorded = harness.sim.recorded_responses();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[1].route, "/servers/{id}");
    assert_eq!(
        recorded[1]
            .body
            .as_ref()
            .map(|body| &body["server"]["name"]),
        Some(&json!("logged"))
    );
    harness.assert_openapi();
}

#[tokio::test]
async fn secrets_stay_out_of_debug_output() {
    let harness = start(HcloudSimConfig {
        token: "s3cret-token-value".into(),
        ..manual()
    })
    .await;
    let config = format!(
        "{:?}",
        HcloudSimConfig {
            token: "s3cret-token-value".into(),
            ..manual()
        }
    );
    assert!(!config.contains("s3cret"), "{config}");
    assert!(!format!("{:?}", harness.sim).contains("s3cret"));
    let private = "-----BEGIN OPENSSH PRIVATE KEY-----";
    let user_data = format!("#cloud-config\nssh_keys:\n  ed25519_private: |\n    {private}\n");
    let answer = harness
        .call_as(
            "POST",
            "/servers",
            Some(json!({"name": "s", "server_type": "cx23", "image": "debian-12", "user_data": user_data})),
            Some("s3cret-token-value"),
        )
        .await;
    assert_eq!(answer.status, 201);
    let state = format!("{:?}", harness.sim.state());
    assert!(!state.contains(private), "{state}");
    assert!(state.contains("bytes>"));
    harness.assert_openapi();
}

#[tokio::test]
async fn extra_fields_are_added_to_every_object_with_an_id() {
    let harness = start(HcloudSimConfig {
        extra_fields: true,
        ..manual()
    })
    .await;
    let created = harness.create_server("grown", json!({})).await;
    assert_eq!(created.status, 201);
    for pointer in [
        "/server",
        "/server/server_type",
        "/server/location",
        "/server/image",
        "/action",
        "/next_actions/0",
    ] {
        let object = created.body.pointer(pointer).expect(pointer);
        assert!(object["x_future_field"].is_object(), "{pointer}");
    }
    assert!(created.body.get("x_future_field").is_none());
    // Still valid against today's description: unknown properties are allowed.
    harness.assert_openapi();
}

#[tokio::test]
async fn an_observer_hears_of_every_request() {
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&heard);
    let harness = start(HcloudSimConfig {
        on_request: Some(std::sync::Arc::new(
            move |record: &caph_sim::hcloud::RequestRecord| {
                sink.lock().expect("sink").push(format!(
                    "{} {} {:?}",
                    record.method, record.path, record.status
                ));
            },
        )),
        ..manual()
    })
    .await;
    harness.get("/locations").await;
    harness.get("/nothing").await;
    assert_eq!(
        *heard.lock().expect("heard"),
        ["GET /v1/locations Some(200)", "GET /v1/nothing Some(404)"]
    );
    harness.assert_openapi();
}
