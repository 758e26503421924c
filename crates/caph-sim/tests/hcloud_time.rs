//! Time in the hcloud simulator: manual mode stands still until advanced; scaled mode runs a
//! whole build (create, shutdown, snapshot, delete) in milliseconds.

#[path = "fidelity/support.rs"]
mod support;

use std::time::{Duration, Instant};

use caph_sim::hcloud::{Durations, ServerStatus};
use serde_json::json;
use support::{HcloudSimConfig, fast, manual, start};

#[tokio::test]
async fn manual_time_stands_still_until_advanced() {
    let harness = start(manual()).await;
    let created = harness.create_server("still", json!({})).await;
    let server = created.body["server"]["id"].as_u64().expect("id");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(harness.sim.now(), Duration::ZERO);
    let answer = harness.get(&format!("/servers/{server}")).await;
    assert_eq!(answer.body["server"]["status"], "initializing");
    harness.advance(Duration::from_secs(11)).await;
    assert_eq!(
        harness.sim.state().servers[0].status,
        ServerStatus::Initializing
    );
    harness.advance(Duration::from_secs(1)).await;
    assert_eq!(
        harness.sim.state().servers[0].status,
        ServerStatus::Starting
    );
    // Timestamps follow simulated time.
    let action = harness
        .get(&format!("/actions/{}", created.body["action"]["id"]))
        .await;
    let started = &action.body["action"]["started"].as_str().expect("started")[..19];
    let finished = &action.body["action"]["finished"]
        .as_str()
        .expect("finished")[..19];
    assert_ne!(started, finished);
    harness.assert_openapi();
}

#[tokio::test]
async fn configured_durations_apply() {
    let harness = start(HcloudSimConfig {
        durations: Durations {
            create: Duration::from_secs(1),
            start: Duration::from_secs(1),
            ..Durations::default()
        },
        ..manual()
    })
    .await;
    harness.create_server("quick", json!({})).await;
    harness.advance(Duration::from_secs(2)).await;
    assert_eq!(harness.sim.state().servers[0].status, ServerStatus::Running);
    harness.assert_openapi();
}

#[tokio::test]
async fn scaled_time_runs_a_build_in_milliseconds() {
    let harness = start(fast()).await;
    let started = Instant::now();
    let created = harness.create_server("fast", json!({})).await;
    let server = created.body["server"]["id"].as_u64().expect("id");
    let start_action = created.body["next_actions"][0]["id"].as_u64().expect("id");
    assert_eq!(harness.wait_action(start_action).await["status"], "success");
    let shutdown = harness
        .post(&format!("/servers/{server}/actions/shutdown"), json!({}))
        .await;
    harness
        .wait_action(shutdown.body["action"]["id"].as_u64().expect("id"))
        .await;
    // The server reaches off a few simulated seconds after the action.
    let mut status = String::new();
    for _ in 0..200 {
        let answer = harness.get(&format!("/servers/{server}")).await;
        status = answer.body["server"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if status == "off" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(status, "off");
    let image = harness
        .post(
            &format!("/servers/{server}/actions/create_image"),
            json!({}),
        )
        .await;
    let done = harness
        .wait_action(image.body["action"]["id"].as_u64().expect("id"))
        .await;
    assert_eq!(done["status"], "success");
    let deleted = harness.delete(&format!("/servers/{server}")).await;
    harness
        .wait_action(deleted.body["action"]["id"].as_u64().expect("id"))
        .await;
    assert_eq!(harness.get(&format!("/servers/{server}")).await.status, 404);
    // About 28 + 7 + 84 + 4 simulated seconds at 1000x: 0.12 s plus polling; the bound leaves
    // room for a loaded machine and still fails a simulator running in real time.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(harness.sim.now() >= Duration::from_secs(120));
    harness.assert_openapi();
}
