//! The OpenAPI validator against the real description: it accepts the simulator's answers (the
//! other suites) and catches wrong ones, so a clean check means something.

#[path = "fidelity/support.rs"]
mod support;

use caph_sim::openapi::{Validator, ViolationKind};
use serde_json::json;

fn validator() -> Option<Validator> {
    let Some(path) = support::openapi_path() else {
        eprintln!("SKIPPED hcloud_openapi: hcloud-openapi.json not found beside the checkout");
        return None;
    };
    Some(Validator::load(path).expect("description loads"))
}

#[tokio::test]
async fn wrong_answers_are_caught() {
    let Some(validator) = validator() else {
        return;
    };
    let harness = support::start(support::manual()).await;
    let created = harness.create_server("checked", json!({})).await;
    let mut server = created.body["server"].clone();
    assert!(
        validator
            .check(
                "GET",
                "/servers/{id}",
                200,
                Some(&json!({"server": server}))
            )
            .is_empty()
    );

    // A missing required field, a wrong type, an unknown enum value, a non-nullable null.
    if let Some(object) = server.as_object_mut() {
        object.remove("public_net");
        object.insert("primary_disk_size".into(), json!("40"));
        object.insert("status".into(), json!("hibernating"));
        object.insert("labels".into(), json!(null));
    }
    let violations = validator.check(
        "GET",
        "/servers/{id}",
        200,
        Some(&json!({"server": server})),
    );
    let found: Vec<(String, ViolationKind)> = violations
        .iter()
        .map(|violation| (violation.pointer.clone(), violation.kind))
        .collect();
    assert!(
        found.contains(&("/server".into(), ViolationKind::Schema)),
        "{found:?}"
    );
    assert!(found.contains(&("/server/primary_disk_size".into(), ViolationKind::Schema)));
    assert!(found.contains(&("/server/status".into(), ViolationKind::UnknownEnumValue)));
    assert!(found.contains(&("/server/labels".into(), ViolationKind::Schema)));
    assert_eq!(violations.len(), 4, "{violations:#?}");

    // A server type location without `available` (what the Python client chokes on).
    let types = harness.get("/server_types?name=cx23").await;
    let mut body = types.body.clone();
    if let Some(place) = body["server_types"][0]["locations"][0].as_object_mut() {
        place.remove("available");
    }
    let violations = validator.check("GET", "/server_types", 200, Some(&body));
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!(violations[0].pointer, "/server_types/0/locations/0");

    // Statuses, bodies and routes.
    assert_eq!(
        validator.check("DELETE", "/images/{id}", 204, Some(&json!({})))[0].kind,
        ViolationKind::Body
    );
    assert!(
        validator
            .check("DELETE", "/images/{id}", 204, None)
            .is_empty()
    );
    assert_eq!(
        validator.check("GET", "/nothing", 200, None)[0].kind,
        ViolationKind::UnknownOperation
    );
    harness.assert_openapi();
}
