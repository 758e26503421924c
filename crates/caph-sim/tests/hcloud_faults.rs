//! Scripted faults of the hcloud simulator: failing the Nth request to a route, dropped
//! connections, delays, actions ending in `error`, sold-out server types, and host failures.

#[path = "fidelity/support.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use caph_sim::hcloud::{ActionStatus, Fault, ServerStatus};
use caph_sim::host::{AddressOnly, MachineError, MachineHost, MachineInfo, MachineSpec};
use serde_json::{Value, json};
use support::{Harness, HcloudSimConfig, manual, public_key, start};

const SECOND: Duration = Duration::from_secs(1);

async fn running_server(harness: &Harness, name: &str) -> u64 {
    let created = harness.create_server(name, json!({})).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    harness.advance(30 * SECOND).await;
    created.body["server"]["id"].as_u64().expect("id")
}

#[tokio::test]
async fn nth_request_to_a_route_fails_once() {
    let harness = start(manual()).await;
    let server = running_server(&harness, "s").await;
    harness.sim.inject(Fault::FailRequest {
        route: "POST /servers/{id}/actions/create_image".into(),
        nth: 2,
        status: 503,
        code: "unavailable".into(),
        message: "try later".into(),
    });
    let path = format!("/servers/{server}/actions/create_image");
    let first = harness.post(&path, json!({})).await;
    assert_eq!(first.status, 201);
    harness.advance(300 * SECOND).await;
    let second = harness.post(&path, json!({})).await;
    assert_eq!(second.status, 503);
    assert_eq!(
        second.body,
        json!({"error": {"code": "unavailable", "message": "try later", "details": null}})
    );
    assert!(!second.header("X-Correlation-Id").is_empty());
    assert!(harness.sim.pending_faults().is_empty());
    let third = harness.post(&path, json!({})).await;
    assert_eq!(third.status, 201);
    // Only the two real calls made snapshots.
    harness.advance(300 * SECOND).await;
    assert_eq!(harness.sim.state().snapshots().len(), 2);
    harness.assert_openapi();
}

#[tokio::test]
async fn faults_on_one_route_fire_in_order() {
    let harness = start(manual()).await;
    harness
        .sim
        .inject(Fault::fail("GET /servers", 1, 409, "conflict"));
    harness
        .sim
        .inject(Fault::fail("GET /servers", 1, 504, "timeout"));
    harness
        .sim
        .inject(Fault::fail("GET /images", 1, 502, "bad_gateway"));
    let codes = [
        harness.get("/servers").await,
        harness.get("/servers").await,
        harness.get("/servers").await,
    ]
    .iter()
    .map(|answer| (answer.status, answer.code().to_owned()))
    .collect::<Vec<_>>();
    assert_eq!(
        codes,
        [
            (409, "conflict".to_owned()),
            (504, "timeout".to_owned()),
            (200, String::new())
        ]
    );
    assert_eq!(harness.sim.pending_faults().len(), 1);
    harness.assert_openapi();
}

#[tokio::test]
async fn dropped_connection_before_and_after_serving() {
    let harness = start(manual()).await;
    harness.sim.inject(Fault::DropConnection {
        route: "POST /ssh_keys".into(),
        nth: 1,
    });
    let request = || {
        harness
            .http
            .post(format!("{}/ssh_keys", harness.base))
            .bearer_auth(support::TOKEN)
            .json(&json!({"name": "k", "public_key": public_key(1)}))
            .send()
    };
    let dropped = request().await;
    assert!(dropped.is_err(), "{dropped:?}");
    assert!(harness.sim.state().ssh_keys.is_empty(), "not served");

    harness.sim.inject(Fault::DropResponse {
        route: "POST /ssh_keys".into(),
        nth: 1,
    });
    let dropped = request().await;
    assert!(dropped.is_err(), "{dropped:?}");
    assert_eq!(harness.sim.state().ssh_keys.len(), 1, "served");
    // The retry meets the key the lost answer created.
    let retry = request().await.expect("answer");
    assert_eq!(retry.status().as_u16(), 409);
    let statuses: Vec<Option<u16>> = harness
        .sim
        .request_log()
        .iter()
        .map(|record| record.status)
        .collect();
    assert_eq!(statuses, [None, None, Some(409)]);
    harness.assert_openapi();
}

#[tokio::test]
async fn delayed_answer() {
    let harness = start(manual()).await;
    harness.sim.inject(Fault::Delay {
        route: "GET /locations".into(),
        nth: 1,
        delay: Duration::from_secs(1),
    });
    let started = Instant::now();
    let answer = harness.get("/locations").await;
    assert_eq!(answer.status, 200);
    assert!(started.elapsed() >= Duration::from_secs(1));
    // Only the first is delayed: the second takes milliseconds (a second's margin for a loaded
    // machine).
    let started = Instant::now();
    harness.get("/locations").await;
    assert!(started.elapsed() < Duration::from_secs(1));
    harness.assert_openapi();
}

#[tokio::test]
async fn next_action_of_a_command_ends_in_error() {
    let harness = start(manual()).await;
    let server = running_server(&harness, "s").await;
    harness.sim.inject(Fault::FailAction {
        command: "create_image".into(),
        code: "image_failed".into(),
        message: "disk read error".into(),
    });
    let answer = harness
        .post(
            &format!("/servers/{server}/actions/create_image"),
            json!({}),
        )
        .await;
    assert_eq!(answer.status, 201);
    let action = answer.body["action"]["id"].as_u64().expect("id");
    let image = answer.body["image"]["id"].as_u64().expect("id");
    harness.advance(300 * SECOND).await;
    let failed = harness.get(&format!("/actions/{action}")).await;
    assert_eq!(failed.body["action"]["status"], "error");
    assert_eq!(
        failed.body["action"]["error"],
        json!({"code": "image_failed", "message": "disk read error"})
    );
    assert!(failed.body["action"]["finished"].is_string());
    assert_eq!(harness.get(&format!("/images/{image}")).await.status, 404);
    // Consumed: the next snapshot works.
    let answer = harness
        .post(
            &format!("/servers/{server}/actions/create_image"),
            json!({}),
        )
        .await;
    harness.advance(300 * SECOND).await;
    let action = answer.body["action"]["id"].as_u64().expect("id");
    assert_eq!(
        harness.get(&format!("/actions/{action}")).await.body["action"]["status"],
        "success"
    );
    harness.assert_openapi();
}

#[tokio::test]
async fn failed_start_leaves_the_server_off() {
    let harness = start(manual()).await;
    harness.sim.inject(Fault::FailAction {
        command: "start_server".into(),
        code: "action_failed".into(),
        message: "boot failed".into(),
    });
    let created = harness.create_server("s", json!({})).await;
    harness.advance(30 * SECOND).await;
    let state = harness.sim.state();
    assert_eq!(state.servers[0].status, ServerStatus::Off);
    let start_action = created.body["next_actions"][0]["id"].as_u64().expect("id");
    let action = state
        .actions
        .iter()
        .find(|action| action.id == start_action)
        .expect("action");
    assert_eq!(action.status, ActionStatus::Error);
    assert_eq!(
        action.error,
        Some(("action_failed".to_owned(), "boot failed".to_owned()))
    );
    harness.assert_openapi();
}

#[tokio::test]
async fn a_location_runs_out_of_a_server_type() {
    let harness = start(manual()).await;
    harness.sim.inject(Fault::ExhaustServerType {
        location: "nbg1".into(),
        server_type: "cx33".into(),
    });
    let answer = harness
        .create_server("s", json!({"server_type": "cx33", "location": "nbg1"}))
        .await;
    assert_eq!(answer.status, 412);
    assert_eq!(
        answer.body,
        json!({"error": {"code": "resource_unavailable", "message": "error during placement", "details": {}}})
    );
    let elsewhere = harness
        .create_server("s", json!({"server_type": "cx33", "location": "fsn1"}))
        .await;
    assert_eq!(elsewhere.status, 201);
    let types = harness.get("/server_types?name=cx33").await;
    let places = types.body["server_types"][0]["locations"].clone();
    let nbg1 = places
        .as_array()
        .expect("locations")
        .iter()
        .find(|place| place["name"] == "nbg1")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(nbg1["available"], false);
    harness.assert_openapi();
}

/// Whether `server_type` is listed `available` in `location`.
async fn listed_available(harness: &Harness, server_type: &str, location: &str) -> Value {
    let types = harness
        .get(&format!("/server_types?name={server_type}"))
        .await;
    types.body["server_types"][0]["locations"]
        .as_array()
        .expect("locations")
        .iter()
        .find(|place| place["name"] == location)
        .map_or(Value::Null, |place| place["available"].clone())
}

#[tokio::test]
async fn stock_runs_out_with_creates_and_comes_back_with_deletes() {
    let harness = start(manual()).await;
    assert!(harness.sim.set_stock("cx23", "fsn1", Some(1)));
    assert!(
        !harness.sim.set_stock("cx23", "sin", Some(1)),
        "cx23 is not offered in sin"
    );
    let wanted = json!({"server_type": "cx23", "location": "fsn1"});
    let first = harness.create_server("a", wanted.clone()).await;
    assert_eq!(first.status, 201);
    // The last one is taken: the listing says so, and the next create is refused.
    assert_eq!(listed_available(&harness, "cx23", "fsn1").await, false);
    let second = harness.create_server("b", wanted.clone()).await;
    assert_eq!(
        (second.status, second.code()),
        (412, "resource_unavailable")
    );
    // Other locations keep their own stock.
    let nbg1 = harness
        .create_server("b", json!({"server_type": "cx23", "location": "nbg1"}))
        .await;
    assert_eq!(nbg1.status, 201);
    // A deleted server gives its place back.
    let id = first.body["server"]["id"].as_u64().expect("id");
    harness.advance(30 * SECOND).await;
    let deleted = harness.delete(&format!("/servers/{id}")).await;
    assert_eq!(deleted.status, 200);
    harness.advance(30 * SECOND).await;
    assert_eq!(listed_available(&harness, "cx23", "fsn1").await, true);
    let third = harness.create_server("c", wanted.clone()).await;
    assert_eq!(third.status, 201);
    // Changed during the run, both ways.
    assert!(harness.sim.set_stock("cx23", "fsn1", None));
    let unlimited = harness.create_server("d", wanted).await;
    assert_eq!(unlimited.status, 201);
    harness.assert_openapi();
}

#[tokio::test]
async fn stock_sells_out_between_a_listing_and_the_order() {
    let harness = start(manual()).await;
    harness.sim.inject(Fault::SellOut {
        route: "POST /servers".into(),
        nth: 1,
        location: "fsn1".into(),
        server_type: "cx23".into(),
    });
    // Listed as available until the order arrives.
    assert_eq!(listed_available(&harness, "cx23", "fsn1").await, true);
    let order = harness
        .create_server("s", json!({"server_type": "cx23", "location": "fsn1"}))
        .await;
    assert_eq!((order.status, order.code()), (412, "resource_unavailable"));
    assert!(harness.sim.pending_faults().is_empty());
    // The sell-out stays.
    assert_eq!(listed_available(&harness, "cx23", "fsn1").await, false);
    let elsewhere = harness
        .create_server("s", json!({"server_type": "cx23", "location": "nbg1"}))
        .await;
    assert_eq!(elsewhere.status, 201);
    harness.assert_openapi();
}

/// A host whose power-on and snapshot fail, to see host errors end actions in `error`.
#[derive(Debug, Default)]
struct BrokenHost {
    addresses: AddressOnly,
}

#[async_trait::async_trait]
impl MachineHost for BrokenHost {
    async fn create(&self, spec: MachineSpec) -> Result<MachineInfo, MachineError> {
        self.addresses.create(spec).await
    }
    async fn power_on(&self, _server_id: u64) -> Result<(), MachineError> {
        Err(MachineError("sshd did not start".into()))
    }
    async fn power_off(&self, server_id: u64) -> Result<(), MachineError> {
        self.addresses.power_off(server_id).await
    }
    async fn snapshot(&self, _server_id: u64, _image_id: u64) -> Result<u64, MachineError> {
        Err(MachineError("no space left".into()))
    }
    async fn delete(&self, server_id: u64) -> Result<(), MachineError> {
        self.addresses.delete(server_id).await
    }
    async fn delete_image(&self, _image_id: u64) -> Result<(), MachineError> {
        Ok(())
    }
}

#[tokio::test]
async fn host_errors_end_actions_in_error() {
    let harness = start(HcloudSimConfig {
        machines: Arc::new(BrokenHost::default()),
        ..manual()
    })
    .await;
    let created = harness.create_server("s", json!({})).await;
    let server = created.body["server"]["id"].as_u64().expect("id");
    let start_action = created.body["next_actions"][0]["id"].as_u64().expect("id");
    harness.advance(30 * SECOND).await;
    let action = harness.get(&format!("/actions/{start_action}")).await;
    assert_eq!(
        action.body["action"]["error"],
        json!({"code": "action_failed", "message": "machine host: sshd did not start"})
    );
    assert_eq!(
        harness.get(&format!("/servers/{server}")).await.body["server"]["status"],
        "off"
    );
    let snapshot = harness
        .post(
            &format!("/servers/{server}/actions/create_image"),
            json!({}),
        )
        .await;
    let action = snapshot.body["action"]["id"].as_u64().expect("id");
    harness.advance(300 * SECOND).await;
    let action = harness.get(&format!("/actions/{action}")).await;
    assert_eq!(action.body["action"]["status"], "error");
    assert_eq!(
        action.body["action"]["error"]["message"],
        "machine host: no space left"
    );
    assert!(harness.sim.state().snapshots().is_empty());
    harness.assert_openapi();
}

#[tokio::test]
async fn an_ignored_shutdown_leaves_the_server_running() {
    let harness = start(manual()).await;
    let server = running_server(&harness, "stubborn").await;
    harness.sim.inject(Fault::IgnoreShutdown);
    let shutdown = harness
        .post(&format!("/servers/{server}/actions/shutdown"), json!({}))
        .await;
    assert_eq!(shutdown.status, 201);
    harness.advance(60 * SECOND).await;
    let action = shutdown.body["action"]["id"].as_u64().expect("id");
    assert_eq!(
        harness.get(&format!("/actions/{action}")).await.body["action"]["status"],
        "success"
    );
    assert_eq!(harness.sim.state().servers[0].status, ServerStatus::Running);
    // The fallback works.
    harness
        .post(&format!("/servers/{server}/actions/poweroff"), json!({}))
        .await;
    harness.advance(3 * SECOND).await;
    assert_eq!(harness.sim.state().servers[0].status, ServerStatus::Off);
    harness.assert_openapi();
}
