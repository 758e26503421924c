//! The checks the simulated service makes on `POST /servers`, SSH keys and labels, with the
//! exact status codes and error bodies of the reference.

#[path = "fidelity/support.rs"]
mod support;

use serde_json::{Value, json};
use support::{Answer, Harness, manual, public_key, start};

fn assert_error(answer: &Answer, status: u16, code: &str, message: &str) {
    assert_eq!(answer.status, status, "{:?}", answer.body);
    assert_eq!(answer.code(), code, "{:?}", answer.body);
    assert_eq!(
        answer.body["error"]["message"], message,
        "{:?}",
        answer.body
    );
}

fn assert_invalid_field(answer: &Answer, field: &str, message: &str) {
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    assert_eq!(
        answer.body,
        json!({"error": {
            "code": "invalid_input",
            "message": format!("invalid input in field '{field}'"),
            "details": {"fields": [{"name": field, "messages": [message]}]},
        }})
    );
}

async fn create(harness: &Harness, body: Value) -> Answer {
    harness.post("/servers", body).await
}

#[tokio::test]
async fn server_names_must_be_unique_hostnames() {
    let harness = start(manual()).await;
    assert_eq!(harness.create_server("node-1", json!({})).await.status, 201);
    let again = harness.create_server("node-1", json!({})).await;
    assert_eq!(
        again.body,
        json!({"error": {"code": "uniqueness_error", "message": "server name is already used", "details": {"fields": [{"name": "name"}]}}})
    );
    assert_eq!(again.status, 409);
    let bad = harness.create_server("under_score", json!({})).await;
    assert_invalid_field(
        &bad,
        "name",
        "must be a valid hostname (RFC 1123): may only contain letters, digits, '-' and '.'",
    );
    let bad = harness.create_server("-lead", json!({})).await;
    assert_invalid_field(
        &bad,
        "name",
        "must be a valid hostname (RFC 1123): labels must not begin or end with '-'",
    );
    let missing = create(
        &harness,
        json!({"server_type": "cx23", "image": "debian-12"}),
    )
    .await;
    assert_invalid_field(&missing, "name", "Missing data for required field.");
    harness.assert_openapi();
}

#[tokio::test]
async fn unknown_types_images_locations_and_keys() {
    let harness = start(manual()).await;
    let answer = harness
        .create_server("a", json!({"server_type": "cx99"}))
        .await;
    assert_invalid_field(&answer, "server_type", "server type cx99 not found");
    let answer = harness.create_server("a", json!({"image": 1})).await;
    assert_invalid_field(&answer, "image", "image 1 not found");
    let answer = harness
        .create_server("a", json!({"location": "mars1"}))
        .await;
    assert_invalid_field(&answer, "location", "location mars1 not found");
    let answer = harness
        .create_server("a", json!({"ssh_keys": ["nobody"]}))
        .await;
    assert_invalid_field(&answer, "ssh_keys", "SSH key nobody not found");
    let answer = harness.create_server("a", json!({"location": "ash"})).await;
    assert_invalid_field(
        &answer,
        "location",
        "unsupported location for server type: cx23 is not offered in ash",
    );
    let answer = harness
        .create_server("a", json!({"datacenter": "fsn1-dc14"}))
        .await;
    assert_invalid_field(
        &answer,
        "datacenter",
        "datacenter was removed from the API: use location",
    );
    harness.assert_openapi();
}

#[tokio::test]
async fn ids_or_names_are_accepted() {
    let harness = start(manual()).await;
    let key = harness
        .post(
            "/ssh_keys",
            json!({"name": "k", "public_key": public_key(1)}),
        )
        .await;
    let key_id = key.body["ssh_key"]["id"].as_u64().expect("id");
    let types = harness.get("/server_types?name=cax11").await;
    let type_id = types.body["server_types"][0]["id"].clone();
    let images = harness
        .get("/images?name=ubuntu-24.04&architecture=arm")
        .await;
    let image_id = images.body["images"][0]["id"].clone();
    let answer = harness
        .create_server(
            "by-id",
            json!({"server_type": type_id, "image": image_id, "location": 3, "ssh_keys": [key_id]}),
        )
        .await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    assert_eq!(answer.body["server"]["server_type"]["name"], "cax11");
    assert_eq!(answer.body["server"]["location"]["name"], "hel1");
    assert_eq!(answer.body["server"]["image"]["architecture"], "arm");
    assert_eq!(answer.body["root_password"], Value::Null);
    // A system image name picks the image of the server type's architecture.
    let answer = harness
        .create_server(
            "by-name",
            json!({"server_type": "cax21", "image": "debian-13", "ssh_keys": ["k"]}),
        )
        .await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    assert_eq!(answer.body["server"]["image"]["architecture"], "arm");
    assert_eq!(harness.sim.state().servers[1].ssh_key_ids, vec![key_id]);
    harness.assert_openapi();
}

#[tokio::test]
async fn architecture_and_disk_size_are_checked() {
    let harness = start(manual()).await;
    let arm_image = harness
        .get("/images?name=debian-12&architecture=arm")
        .await
        .body["images"][0]["id"]
        .clone();
    let answer = harness
        .create_server("a", json!({"image": arm_image}))
        .await;
    assert_eq!(
        answer.body,
        json!({"error": {"code": "invalid_input", "message": "image has incompatible architecture", "details": {"fields": [{"name": "image", "messages": ["image has incompatible architecture"]}]}}})
    );
    // A snapshot of an 80 GB server does not fit a 40 GB type.
    let big = harness
        .create_server("big", json!({"server_type": "cx33"}))
        .await;
    let big_id = big.body["server"]["id"].as_u64().expect("id");
    harness.advance(std::time::Duration::from_secs(30)).await;
    let snapshot = harness
        .post(
            &format!("/servers/{big_id}/actions/create_image"),
            json!({}),
        )
        .await;
    let snapshot_id = snapshot.body["image"]["id"].clone();
    assert_eq!(snapshot.body["image"]["disk_size"], 80.0);
    let answer = harness
        .create_server("b", json!({"image": snapshot_id}))
        .await;
    assert_invalid_field(&answer, "image", "image 300000001 is not available yet");
    harness.advance(std::time::Duration::from_secs(300)).await;
    let answer = harness
        .create_server("b", json!({"image": snapshot_id}))
        .await;
    assert_error(
        &answer,
        400,
        "invalid_input",
        "image disk is bigger than server type disk",
    );
    let answer = harness
        .create_server("c", json!({"image": snapshot_id, "server_type": "cx43"}))
        .await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    harness.assert_openapi();
}

#[tokio::test]
async fn deprecated_and_unavailable_server_types() {
    let harness = start(manual()).await;
    let answer = harness
        .create_server("old", json!({"server_type": "cx22"}))
        .await;
    assert_invalid_field(
        &answer,
        "server_type",
        "server type cx22 is deprecated and can no longer be ordered",
    );
    let answer = harness
        .create_server(
            "sold-out",
            json!({"server_type": "cx43", "location": "hel1"}),
        )
        .await;
    assert_eq!(answer.status, 412);
    assert_eq!(
        answer.body,
        json!({"error": {"code": "resource_unavailable", "message": "error during placement", "details": {}}})
    );
    let types = harness.get("/server_types?name=cx43").await;
    let hel1 = types.body["server_types"][0]["locations"]
        .as_array()
        .expect("locations")
        .iter()
        .find(|place| place["name"] == "hel1")
        .cloned()
        .expect("hel1");
    assert_eq!(hel1["available"], false);
    assert_eq!(hel1["recommended"], false);
    let old = harness.get("/server_types?name=cx22").await;
    assert_eq!(old.body["server_types"][0]["deprecated"], true);
    assert!(
        old.body["server_types"][0]["locations"][0]["deprecation"]["unavailable_after"].is_string()
    );
    harness.assert_openapi();
}

#[tokio::test]
async fn user_data_is_limited_to_32_kib() {
    let harness = start(manual()).await;
    let fits = "x".repeat(32 * 1024);
    assert_eq!(
        harness
            .create_server("fits", json!({"user_data": fits}))
            .await
            .status,
        201
    );
    let answer = harness
        .create_server("too-big", json!({"user_data": "x".repeat(32 * 1024 + 1)}))
        .await;
    assert_invalid_field(
        &answer,
        "user_data",
        "user_data must not be longer than 32 KiB",
    );
    assert_eq!(
        harness.sim.state().servers[0]
            .user_data
            .as_deref()
            .map(str::len),
        Some(32 * 1024)
    );
    harness.assert_openapi();
}

#[tokio::test]
async fn label_syntax_and_reserved_prefix() {
    let harness = start(manual()).await;
    let cases = [
        (
            json!({"a b": "x"}),
            "label key 'a b' may only contain alphanumerics, '-', '_' and '.'",
        ),
        (
            json!({"k": "1.30+k3s"}),
            "label value '1.30+k3s' of key 'k' may only contain alphanumerics, '-', '_' and '.'",
        ),
        (
            json!({"k": "-x"}),
            "label value '-x' of key 'k' must begin and end with an alphanumeric character",
        ),
        (
            json!({"hetzner.cloud/x": "y"}),
            "label key 'hetzner.cloud/x' uses the reserved prefix hetzner.cloud/",
        ),
        (json!({"k": 1}), "value of label 'k' must be a string"),
    ];
    for (labels, message) in cases {
        let answer = harness
            .create_server("labelled", json!({"labels": labels}))
            .await;
        assert_invalid_field(&answer, "labels", message);
        let answer = harness
            .post(
                "/ssh_keys",
                json!({"name": "k", "public_key": public_key(9), "labels": labels}),
            )
            .await;
        assert_invalid_field(&answer, "labels", message);
    }
    let fine = json!({"example.com/role": "", "caph-image-name": "ubuntu-24.04-k8s-v1.30.2"});
    let answer = harness
        .create_server("labelled", json!({"labels": fine}))
        .await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.body["server"]["labels"], fine);
    harness.assert_openapi();
}

#[tokio::test]
async fn ssh_keys_are_unique_by_name_and_fingerprint() {
    let harness = start(manual()).await;
    let answer = harness
        .post(
            "/ssh_keys",
            json!({"name": "one", "public_key": public_key(1)}),
        )
        .await;
    assert_eq!(answer.status, 201);
    let key = &answer.body["ssh_key"];
    assert_eq!(key["name"], "one");
    let fingerprint = key["fingerprint"].as_str().expect("fingerprint");
    assert_eq!(fingerprint.len(), 47);
    assert_eq!(fingerprint.matches(':').count(), 15);
    let same_key = harness
        .post(
            "/ssh_keys",
            json!({"name": "two", "public_key": public_key(1)}),
        )
        .await;
    assert_eq!(
        same_key.body,
        json!({"error": {"code": "uniqueness_error", "message": "SSH key with the same fingerprint already exists", "details": {"fields": [{"name": "public_key"}]}}})
    );
    assert_eq!(same_key.status, 409);
    let same_name = harness
        .post(
            "/ssh_keys",
            json!({"name": "one", "public_key": public_key(2)}),
        )
        .await;
    assert_eq!(same_name.status, 409);
    assert_eq!(
        same_name.body["error"]["details"]["fields"][0]["name"],
        "name"
    );
    let broken = harness
        .post(
            "/ssh_keys",
            json!({"name": "bad", "public_key": "ssh-ed25519 nonsense"}),
        )
        .await;
    assert_invalid_field(&broken, "public_key", "invalid public key");
    let by_fingerprint = harness
        .get(&format!("/ssh_keys?fingerprint={fingerprint}"))
        .await;
    assert_eq!(by_fingerprint.body["ssh_keys"][0]["name"], "one");
    let id = key["id"].as_u64().expect("id");
    let renamed = harness
        .put(
            &format!("/ssh_keys/{id}"),
            json!({"name": "renamed", "labels": {"a": "b"}}),
        )
        .await;
    assert_eq!(renamed.status, 200);
    assert_eq!(renamed.body["ssh_key"]["labels"], json!({"a": "b"}));
    let deleted = harness.delete(&format!("/ssh_keys/{id}")).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(deleted.body, Value::Null);
    assert_eq!(harness.get(&format!("/ssh_keys/{id}")).await.status, 404);
    assert!(harness.sim.state().ssh_keys.is_empty());
    harness.assert_openapi();
}

#[tokio::test]
async fn invalid_json_and_wrong_types() {
    let harness = start(manual()).await;
    let response = harness
        .http
        .post(format!("{}/servers", harness.base))
        .bearer_auth(support::TOKEN)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "json_error");
    let answer = harness
        .create_server("typed", json!({"start_after_create": "yes"}))
        .await;
    assert_invalid_field(&answer, "start_after_create", "Not a valid boolean.");
    let answer = create(
        &harness,
        json!({"name": 5, "server_type": "cx23", "image": "debian-12"}),
    )
    .await;
    assert_invalid_field(&answer, "name", "Not a valid string.");
    harness.assert_openapi();
}

#[tokio::test]
async fn the_project_server_limit() {
    let harness = start(support::HcloudSimConfig {
        server_limit: Some(2),
        ..manual()
    })
    .await;
    assert_eq!(harness.create_server("one", json!({})).await.status, 201);
    assert_eq!(harness.create_server("two", json!({})).await.status, 201);
    let third = harness.create_server("three", json!({})).await;
    assert_eq!(third.status, 403);
    assert_eq!(
        third.body,
        json!({"error": {"code": "resource_limit_exceeded", "message": "server limit of 2 exceeded", "details": {"limits": [{"name": "server_limit"}]}}})
    );
    // Deleted servers free their place.
    let first = harness.sim.state().servers[0].id;
    harness.delete(&format!("/servers/{first}")).await;
    harness.advance(std::time::Duration::from_secs(10)).await;
    assert_eq!(harness.create_server("three", json!({})).await.status, 201);
    harness.assert_openapi();
}
