//! Images in the hcloud simulator: the system images, `create_image` from `creating` to
//! `available`, updates, protection and deletion.

#[path = "fidelity/support.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use caph_sim::hcloud::{ImageKind, ImageStatus};
use caph_sim::host::AddressOnly;
use serde_json::{Value, json};
use support::{Harness, manual, start};

async fn running_server(harness: &Harness, name: &str, extra: Value) -> u64 {
    let created = harness.create_server(name, extra).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    harness.advance(Duration::from_secs(30)).await;
    created.body["server"]["id"].as_u64().expect("id")
}

#[tokio::test]
async fn system_images_exist_for_both_architectures() {
    let harness = start(manual()).await;
    let answer = harness.get("/images?type=system&per_page=50").await;
    assert_eq!(answer.status, 200);
    let images = answer.body["images"].as_array().expect("images");
    for name in ["ubuntu-22.04", "ubuntu-24.04", "debian-12", "debian-13"] {
        let mut ids = Vec::new();
        for architecture in ["x86", "arm"] {
            let image = images
                .iter()
                .find(|image| image["name"] == name && image["architecture"] == architecture)
                .unwrap_or_else(|| panic!("{name} {architecture}"));
            assert_eq!(image["status"], "available");
            assert_eq!(image["type"], "system");
            ids.push(image["id"].clone());
        }
        assert_ne!(ids[0], ids[1], "{name}");
    }
    // Deprecated images only appear on request.
    assert!(!images.iter().any(|image| image["name"] == "ubuntu-20.04"));
    let all = harness
        .get("/images?type=system&include_deprecated=true&name=ubuntu-20.04")
        .await;
    assert_eq!(all.body["images"].as_array().map(Vec::len), Some(2));
    assert!(all.body["images"][0]["deprecated"].is_string());
    harness.assert_openapi();
}

#[tokio::test]
async fn create_image_goes_from_creating_to_available() {
    let harness = start(support::HcloudSimConfig {
        machines: Arc::new(AddressOnly::with_snapshot_bytes(3_000_000_000)),
        ..manual()
    })
    .await;
    let server = running_server(
        &harness,
        "builder",
        json!({"server_type": "cax11", "image": "ubuntu-24.04"}),
    )
    .await;
    let answer = harness
        .post(
            &format!("/servers/{server}/actions/create_image"),
            json!({"type": "snapshot", "description": "node image", "labels": {"caph-image-name": "n1"}}),
        )
        .await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    let image = &answer.body["image"];
    let image_id = image["id"].as_u64().expect("id");
    assert_eq!(image["status"], "creating");
    assert_eq!(image["type"], "snapshot");
    assert_eq!(image["image_size"], Value::Null);
    assert_eq!(image["name"], Value::Null);
    assert_eq!(image["disk_size"], 40.0);
    assert_eq!(image["architecture"], "arm");
    assert_eq!(image["os_flavor"], "ubuntu");
    assert_eq!(image["os_version"], "24.04");
    assert_eq!(
        image["created_from"],
        json!({"id": server, "name": "builder"})
    );
    assert_eq!(image["labels"], json!({"caph-image-name": "n1"}));
    assert_eq!(image["description"], "node image");
    let action = &answer.body["action"];
    assert_eq!(action["command"], "create_image");
    assert_eq!(
        action["resources"],
        json!([{"id": server, "type": "server"}, {"id": image_id, "type": "image"}])
    );
    // 60 s plus 20 s per GB of the 3 GB the host reported: 120 s.
    harness.advance(Duration::from_secs(60)).await;
    let action_id = action["id"].as_u64().expect("id");
    let progress = harness.get(&format!("/actions/{action_id}")).await;
    assert_eq!(progress.body["action"]["progress"], 50);
    assert_eq!(
        harness.get(&format!("/images/{image_id}")).await.body["image"]["status"],
        "creating"
    );
    harness.advance(Duration::from_secs(60)).await;
    let done = harness.get(&format!("/images/{image_id}")).await;
    assert_eq!(done.body["image"]["status"], "available");
    assert_eq!(done.body["image"]["image_size"], 3.0);
    let state = harness.sim.state();
    let snapshot = state.snapshots()[0];
    assert_eq!(snapshot.kind, ImageKind::Snapshot);
    assert_eq!(snapshot.status, ImageStatus::Available);
    assert_eq!(snapshot.created_from, Some((server, "builder".to_owned())));
    harness.assert_openapi();
}

#[tokio::test]
async fn snapshots_are_found_by_label_selector_and_architecture() {
    let harness = start(manual()).await;
    let x86 = running_server(&harness, "x", json!({})).await;
    let arm = running_server(&harness, "a", json!({"server_type": "cax11"})).await;
    for (server, version) in [(x86, "v1"), (arm, "v1"), (x86, "v2")] {
        let answer = harness
            .post(
                &format!("/servers/{server}/actions/create_image"),
                json!({"labels": {"caph-image-name": "node", "version": version}}),
            )
            .await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        harness.advance(Duration::from_secs(300)).await;
    }
    let found = harness
        .get("/images?type=snapshot&label_selector=caph-image-name%3D%3Dnode,version%3Dv1&architecture=arm")
        .await;
    let images = found.body["images"].as_array().expect("images");
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["created_from"]["id"], arm);
    let not_v1 = harness
        .get("/images?type=snapshot&label_selector=version%20notin%20(v1)&sort=id:desc")
        .await;
    assert_eq!(not_v1.body["images"].as_array().map(Vec::len), Some(1));
    assert_eq!(not_v1.body["images"][0]["labels"]["version"], "v2");
    let any = harness
        .get("/images?label_selector=caph-image-name&sort=created:desc&sort=id:asc")
        .await;
    assert_eq!(any.body["meta"]["pagination"]["total_entries"], 3);
    harness.assert_openapi();
}

#[tokio::test]
async fn update_protect_and_delete_images() {
    let harness = start(manual()).await;
    let server = running_server(&harness, "s", json!({})).await;
    let answer = harness
        .post(
            &format!("/servers/{server}/actions/create_image"),
            json!({}),
        )
        .await;
    let image = answer.body["image"]["id"].as_u64().expect("id");
    harness.advance(Duration::from_secs(300)).await;

    let updated = harness
        .put(
            &format!("/images/{image}"),
            json!({"description": "d", "labels": {"x": "1"}}),
        )
        .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.body["image"]["description"], "d");
    assert_eq!(updated.body["image"]["labels"], json!({"x": "1"}));
    // Labels are replaced as a whole.
    let replaced = harness
        .put(&format!("/images/{image}"), json!({"labels": {"y": "2"}}))
        .await;
    assert_eq!(replaced.body["image"]["labels"], json!({"y": "2"}));

    let protect = harness
        .post(
            &format!("/images/{image}/actions/change_protection"),
            json!({"delete": true}),
        )
        .await;
    assert_eq!(protect.status, 201);
    assert_eq!(protect.body["action"]["command"], "change_protection");
    let refused = harness.delete(&format!("/images/{image}")).await;
    assert_eq!(refused.status, 423);
    assert_eq!(
        refused.body,
        json!({"error": {"code": "protected", "message": "image is protected against deletion", "details": null}})
    );
    harness
        .post(
            &format!("/images/{image}/actions/change_protection"),
            json!({"delete": false}),
        )
        .await;
    let deleted = harness.delete(&format!("/images/{image}")).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(harness.get(&format!("/images/{image}")).await.status, 404);
    assert!(harness.sim.state().snapshots().is_empty());

    let system = harness.get("/images?name=debian-12").await.body["images"][0]["id"].clone();
    let refused = harness.delete(&format!("/images/{system}")).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.code(), "forbidden");
    harness.assert_openapi();
}

#[tokio::test]
async fn server_from_a_snapshot() {
    let harness = start(manual()).await;
    let server = running_server(&harness, "source", json!({"image": "debian-13"})).await;
    let answer = harness
        .post(
            &format!("/servers/{server}/actions/create_image"),
            json!({}),
        )
        .await;
    let image = answer.body["image"]["id"].clone();
    harness.advance(Duration::from_secs(300)).await;
    let created = harness.create_server("copy", json!({"image": image})).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["server"]["image"]["type"], "snapshot");
    assert_eq!(created.body["server"]["image"]["os_version"], "13");
    harness.assert_openapi();
}

#[tokio::test]
async fn seeded_snapshots_are_listed_like_made_ones() {
    let harness = start(manual()).await;
    let id = harness.sim.add_snapshot(caph_sim::hcloud::SnapshotSeed {
        labels: [("caph-image-name".to_owned(), "old".to_owned())].into(),
        architecture: "arm".into(),
        created_from: Some((7, "earlier-build".into())),
        delete_protected: true,
        ..Default::default()
    });
    let found = harness
        .get("/images?type=snapshot&label_selector=caph-image-name%3Dold&architecture=arm")
        .await;
    assert_eq!(found.body["images"][0]["id"], id);
    assert_eq!(found.body["images"][0]["status"], "available");
    assert_eq!(found.body["images"][0]["image_size"], 1.2);
    assert_eq!(found.body["images"][0]["protection"]["delete"], true);
    assert_eq!(
        found.body["images"][0]["created_from"]["name"],
        "earlier-build"
    );
    let created = harness
        .create_server("from-seed", json!({"server_type": "cax11", "image": id}))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    harness.assert_openapi();
}
