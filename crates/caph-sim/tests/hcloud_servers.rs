//! Server state machines of the hcloud simulator over plain HTTP: create, start, shutdown,
//! poweroff, poweron, reset, delete, and `locked` while an action runs.

#[path = "fidelity/support.rs"]
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Harness, manual, start};

fn id(value: &Value) -> u64 {
    value["id"].as_u64().expect("id")
}

async fn status(harness: &Harness, server: u64) -> String {
    let answer = harness.get(&format!("/servers/{server}")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body["server"]["status"]
        .as_str()
        .expect("status")
        .to_owned()
}

async fn action(harness: &Harness, action: u64) -> Value {
    let answer = harness.get(&format!("/actions/{action}")).await;
    assert_eq!(answer.status, 200);
    answer.body["action"].clone()
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn create_goes_through_initializing_off_starting_running() {
    let harness = start(manual()).await;
    let created = harness.create_server("build-1", json!({})).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let server = &created.body["server"];
    let server_id = id(server);
    assert_eq!(server["status"], "initializing");
    assert_eq!(server["name"], "build-1");
    assert_eq!(server["server_type"]["name"], "cx23");
    assert_eq!(server["location"]["name"], "fsn1");
    assert_eq!(server["image"]["name"], "debian-12");
    assert_eq!(server["image"]["architecture"], "x86");
    assert_eq!(server["primary_disk_size"], 40);
    let ip = server["public_net"]["ipv4"]["ip"].as_str().expect("ipv4");
    assert!(ip.starts_with("127.") && ip != "127.0.0.1", "{ip}");
    assert!(
        server["public_net"]["ipv6"]["ip"]
            .as_str()
            .expect("ipv6")
            .ends_with("::/64")
    );
    assert_eq!(created.body["action"]["command"], "create_server");
    assert_eq!(created.body["action"]["status"], "running");
    assert_eq!(created.body["action"]["progress"], 0);
    assert_eq!(created.body["action"]["finished"], Value::Null);
    assert_eq!(
        created.body["action"]["resources"],
        json!([{"id": server_id, "type": "server"}])
    );
    assert_eq!(created.body["next_actions"][0]["command"], "start_server");
    assert!(created.body["root_password"].is_string());
    let create_action = id(&created.body["action"]);
    let start_action = id(&created.body["next_actions"][0]);

    harness.advance(6 * SECOND).await;
    assert_eq!(status(&harness, server_id).await, "initializing");
    assert_eq!(action(&harness, create_action).await["progress"], 50);

    harness.advance(6 * SECOND).await;
    let create = action(&harness, create_action).await;
    assert_eq!(create["status"], "success");
    assert_eq!(create["progress"], 100);
    assert!(create["finished"].is_string());
    assert_eq!(status(&harness, server_id).await, "starting");
    assert_eq!(action(&harness, start_action).await["status"], "running");

    harness.advance(16 * SECOND).await;
    assert_eq!(status(&harness, server_id).await, "running");
    assert_eq!(action(&harness, start_action).await["status"], "success");
    harness.assert_openapi();
}

#[tokio::test]
async fn without_start_after_create_the_server_stays_off() {
    let harness = start(manual()).await;
    let created = harness
        .create_server("quiet", json!({"start_after_create": false}))
        .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.body["next_actions"], json!([]));
    harness.advance(60 * SECOND).await;
    assert_eq!(status(&harness, id(&created.body["server"])).await, "off");
    harness.assert_openapi();
}

async fn running_server(harness: &Harness, name: &str) -> u64 {
    let created = harness.create_server(name, json!({})).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    harness.advance(30 * SECOND).await;
    let server = id(&created.body["server"]);
    assert_eq!(status(harness, server).await, "running");
    server
}

#[tokio::test]
async fn shutdown_succeeds_early_and_the_server_reaches_off_later() {
    let harness = start(manual()).await;
    let server = running_server(&harness, "s1").await;
    let answer = harness
        .post(&format!("/servers/{server}/actions/shutdown"), json!({}))
        .await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.body["action"]["command"], "shutdown_server");
    let shutdown = id(&answer.body["action"]);
    assert_eq!(status(&harness, server).await, "stopping");
    harness.advance(SECOND).await;
    assert_eq!(action(&harness, shutdown).await["status"], "success");
    assert_eq!(status(&harness, server).await, "stopping");
    harness.advance(5 * SECOND).await;
    assert_eq!(status(&harness, server).await, "off");
    harness.assert_openapi();
}

#[tokio::test]
async fn poweroff_poweron_and_reset() {
    let harness = start(manual()).await;
    let server = running_server(&harness, "s2").await;
    let off = harness
        .post(&format!("/servers/{server}/actions/poweroff"), json!({}))
        .await;
    assert_eq!(off.status, 201);
    assert_eq!(off.body["action"]["command"], "stop_server");
    assert_eq!(status(&harness, server).await, "stopping");
    harness.advance(3 * SECOND).await;
    assert_eq!(status(&harness, server).await, "off");

    let on = harness
        .post(&format!("/servers/{server}/actions/poweron"), Value::Null)
        .await;
    assert_eq!(on.status, 201);
    assert_eq!(on.body["action"]["command"], "start_server");
    assert_eq!(status(&harness, server).await, "starting");
    harness.advance(10 * SECOND).await;
    assert_eq!(status(&harness, server).await, "running");

    let reset = harness
        .post(&format!("/servers/{server}/actions/reset"), json!({}))
        .await;
    assert_eq!(reset.status, 201);
    assert_eq!(reset.body["action"]["command"], "reset_server");
    assert_eq!(status(&harness, server).await, "running");
    harness.advance(12 * SECOND).await;
    assert_eq!(
        action(&harness, id(&reset.body["action"])).await["status"],
        "success"
    );
    assert_eq!(status(&harness, server).await, "running");
    harness.assert_openapi();
}

#[tokio::test]
async fn a_running_action_locks_the_server() {
    let harness = start(manual()).await;
    let created = harness.create_server("busy", json!({})).await;
    let server = id(&created.body["server"]);
    let answer = harness
        .post(&format!("/servers/{server}/actions/poweroff"), json!({}))
        .await;
    assert_eq!(answer.status, 423);
    assert_eq!(answer.code(), "locked");
    harness.advance(30 * SECOND).await;
    let answer = harness
        .post(
            &format!("/servers/{server}/actions/create_image"),
            json!({}),
        )
        .await;
    assert_eq!(answer.status, 201);
    let answer = harness
        .post(&format!("/servers/{server}/actions/shutdown"), json!({}))
        .await;
    assert_eq!(answer.status, 423);
    assert_eq!(answer.code(), "locked");
    harness.assert_openapi();
}

#[tokio::test]
async fn delete_goes_through_deleting_to_not_found() {
    let harness = start(manual()).await;
    let server = running_server(&harness, "gone").await;
    let answer = harness.delete(&format!("/servers/{server}")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["action"]["command"], "delete_server");
    assert_eq!(status(&harness, server).await, "deleting");
    let again = harness.delete(&format!("/servers/{server}")).await;
    assert_eq!(again.status, 423);
    harness.advance(4 * SECOND).await;
    let answer = harness.get(&format!("/servers/{server}")).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.code(), "not_found");
    assert!(harness.sim.state().servers.is_empty());
    harness.assert_openapi();
}

#[tokio::test]
async fn power_calls_in_the_target_state_just_succeed() {
    let harness = start(manual()).await;
    let server = running_server(&harness, "idempotent").await;
    let on = harness
        .post(&format!("/servers/{server}/actions/poweron"), json!({}))
        .await;
    assert_eq!(on.status, 201);
    assert_eq!(status(&harness, server).await, "running");
    harness.advance(10 * SECOND).await;
    assert_eq!(
        action(&harness, id(&on.body["action"])).await["status"],
        "success"
    );
    assert_eq!(status(&harness, server).await, "running");
    harness
        .post(&format!("/servers/{server}/actions/poweroff"), json!({}))
        .await;
    harness.advance(3 * SECOND).await;
    let off_again = harness
        .post(&format!("/servers/{server}/actions/shutdown"), json!({}))
        .await;
    assert_eq!(off_again.status, 201);
    assert_eq!(status(&harness, server).await, "off");
    harness.advance(6 * SECOND).await;
    assert_eq!(
        action(&harness, id(&off_again.body["action"])).await["status"],
        "success"
    );
    assert_eq!(status(&harness, server).await, "off");
    harness.assert_openapi();
}

#[tokio::test]
async fn rescue_is_enabled_and_turns_itself_off_on_boot() {
    let harness = start(manual()).await;
    let server = running_server(&harness, "rescue").await;
    let enabled = harness
        .post(
            &format!("/servers/{server}/actions/enable_rescue"),
            json!({"type": "linux64"}),
        )
        .await;
    assert_eq!(enabled.status, 201);
    assert_eq!(enabled.body["action"]["command"], "enable_rescue");
    assert_eq!(
        enabled.body["root_password"].as_str().map(str::len),
        Some(20)
    );
    harness.advance(2 * SECOND).await;
    let answer = harness.get(&format!("/servers/{server}")).await;
    assert_eq!(answer.body["server"]["rescue_enabled"], true);
    harness
        .post(&format!("/servers/{server}/actions/reset"), json!({}))
        .await;
    harness.advance(12 * SECOND).await;
    let answer = harness.get(&format!("/servers/{server}")).await;
    assert_eq!(answer.body["server"]["rescue_enabled"], false);
    let bad = harness
        .post(
            &format!("/servers/{server}/actions/enable_rescue"),
            json!({"type": "freebsd64"}),
        )
        .await;
    assert_eq!(bad.status, 400);
    harness.assert_openapi();
}

#[tokio::test]
async fn update_and_protect_servers() {
    let harness = start(manual()).await;
    let server = running_server(&harness, "before").await;
    harness.create_server("taken", json!({})).await;
    let renamed = harness
        .put(
            &format!("/servers/{server}"),
            json!({"name": "after", "labels": {"k": "v"}}),
        )
        .await;
    assert_eq!(renamed.status, 200);
    assert_eq!(renamed.body["server"]["name"], "after");
    assert_eq!(renamed.body["server"]["labels"], json!({"k": "v"}));
    let clash = harness
        .put(&format!("/servers/{server}"), json!({"name": "taken"}))
        .await;
    assert_eq!(clash.status, 409);
    assert_eq!(clash.code(), "uniqueness_error");
    let protect = harness
        .post(
            &format!("/servers/{server}/actions/change_protection"),
            json!({"delete": true, "rebuild": true}),
        )
        .await;
    assert_eq!(protect.status, 201);
    harness.advance(SECOND).await;
    let refused = harness.delete(&format!("/servers/{server}")).await;
    assert_eq!(refused.status, 423);
    assert_eq!(refused.code(), "protected");
    let answer = harness.get(&format!("/servers/{server}")).await;
    assert_eq!(
        answer.body["server"]["protection"],
        json!({"delete": true, "rebuild": true})
    );
    harness.assert_openapi();
}
