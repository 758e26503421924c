//! List endpoints of the hcloud simulator: pagination, `sort`, `label_selector` and filters.

#[path = "fidelity/support.rs"]
mod support;

use serde_json::{Value, json};
use support::{Harness, manual, public_key, start};

fn names(body: &Value, plural: &str) -> Vec<String> {
    body[plural]
        .as_array()
        .expect("list")
        .iter()
        .map(|item| item["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn keys(harness: &Harness, count: u8) {
    for index in 0..count {
        let labels = json!({"parity": if index % 2 == 0 { "even" } else { "odd" }, "group": format!("g{}", index % 3)});
        let answer = harness
            .post(
                "/ssh_keys",
                json!({"name": format!("key-{index:02}"), "public_key": public_key(index), "labels": labels}),
            )
            .await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
    }
}

#[tokio::test]
async fn pagination_over_three_pages() {
    let harness = start(manual()).await;
    keys(&harness, 23).await;
    let first = harness.get("/ssh_keys?per_page=10").await;
    assert_eq!(
        first.body["meta"],
        json!({"pagination": {"page": 1, "per_page": 10, "previous_page": null, "next_page": 2, "last_page": 3, "total_entries": 23}})
    );
    assert_eq!(names(&first.body, "ssh_keys").len(), 10);
    let second = harness.get("/ssh_keys?per_page=10&page=2").await;
    assert_eq!(
        second.body["meta"]["pagination"],
        json!({"page": 2, "per_page": 10, "previous_page": 1, "next_page": 3, "last_page": 3, "total_entries": 23})
    );
    let third = harness.get("/ssh_keys?per_page=10&page=3").await;
    assert_eq!(
        third.body["meta"]["pagination"],
        json!({"page": 3, "per_page": 10, "previous_page": 2, "next_page": null, "last_page": 3, "total_entries": 23})
    );
    let mut all = names(&first.body, "ssh_keys");
    all.extend(names(&second.body, "ssh_keys"));
    all.extend(names(&third.body, "ssh_keys"));
    let expected: Vec<String> = (0..23).map(|index| format!("key-{index:02}")).collect();
    assert_eq!(all, expected);
    // Defaults: 25 per page; more than 50 is capped at 50.
    let default = harness.get("/ssh_keys").await;
    assert_eq!(default.body["meta"]["pagination"]["per_page"], 25);
    assert_eq!(default.body["meta"]["pagination"]["next_page"], Value::Null);
    let capped = harness.get("/ssh_keys?per_page=500").await;
    assert_eq!(capped.body["meta"]["pagination"]["per_page"], 50);
    let beyond = harness.get("/ssh_keys?per_page=10&page=7").await;
    assert_eq!(names(&beyond.body, "ssh_keys"), Vec::<String>::new());
    let bad = harness.get("/ssh_keys?page=0").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.code(), "invalid_input");
    harness.assert_openapi();
}

#[tokio::test]
async fn sorting_is_repeatable_with_directions() {
    let harness = start(manual()).await;
    keys(&harness, 4).await;
    let descending = harness.get("/ssh_keys?sort=name:desc").await;
    assert_eq!(
        names(&descending.body, "ssh_keys"),
        ["key-03", "key-02", "key-01", "key-00"]
    );
    let by_id = harness.get("/ssh_keys?sort=id").await;
    assert_eq!(
        names(&by_id.body, "ssh_keys"),
        ["key-00", "key-01", "key-02", "key-03"]
    );
    for server in ["b", "c", "a"] {
        harness.create_server(server, json!({})).await;
    }
    let sorted = harness.get("/servers?sort=name:asc").await;
    assert_eq!(names(&sorted.body, "servers"), ["a", "b", "c"]);
    let two_keys = harness.get("/servers?sort=created:desc&sort=id:desc").await;
    assert_eq!(names(&two_keys.body, "servers"), ["a", "c", "b"]);
    let bad = harness.get("/servers?sort=colour").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"]["details"]["fields"][0]["name"], "sort");
    let bad = harness.get("/servers?sort=name:sideways").await;
    assert_eq!(bad.status, 400);
    harness.assert_openapi();
}

#[tokio::test]
async fn label_selectors_in_every_form() {
    let harness = start(manual()).await;
    keys(&harness, 6).await;
    let cases: [(&str, &[&str]); 9] = [
        ("parity==even", &["key-00", "key-02", "key-04"]),
        ("parity=odd", &["key-01", "key-03", "key-05"]),
        ("parity!=odd", &["key-00", "key-02", "key-04"]),
        (
            "group",
            &["key-00", "key-01", "key-02", "key-03", "key-04", "key-05"],
        ),
        ("!group", &[]),
        (
            "group in (g0,g2)",
            &["key-00", "key-02", "key-03", "key-05"],
        ),
        ("group notin (g0,g2)", &["key-01", "key-04"]),
        ("parity==even,group in (g0,g1)", &["key-00", "key-04"]),
        (
            "parity==even,group notin (g0),!missing",
            &["key-02", "key-04"],
        ),
    ];
    for (selector, expected) in cases {
        let encoded: String = url_encode(selector);
        let answer = harness
            .get(&format!("/ssh_keys?label_selector={encoded}"))
            .await;
        assert_eq!(answer.status, 200, "{selector}: {:?}", answer.body);
        assert_eq!(names(&answer.body, "ssh_keys"), expected, "{selector}");
    }
    let broken = harness
        .get("/ssh_keys?label_selector=group%20in%20(g0")
        .await;
    assert_eq!(broken.status, 400);
    assert_eq!(broken.code(), "invalid_input");
    harness.assert_openapi();
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn server_filters() {
    let harness = start(manual()).await;
    harness
        .create_server(
            "web",
            json!({"labels": {"role": "web"}, "start_after_create": false}),
        )
        .await;
    harness
        .create_server("db", json!({"labels": {"role": "db"}}))
        .await;
    harness.advance(std::time::Duration::from_secs(30)).await;
    let by_name = harness.get("/servers?name=db").await;
    assert_eq!(names(&by_name.body, "servers"), ["db"]);
    let running = harness.get("/servers?status=running").await;
    assert_eq!(names(&running.body, "servers"), ["db"]);
    let off_or_running = harness.get("/servers?status=off&status=running").await;
    assert_eq!(names(&off_or_running.body, "servers"), ["web", "db"]);
    let selected = harness.get("/servers?label_selector=role%3Dweb").await;
    assert_eq!(names(&selected.body, "servers"), ["web"]);
    let bad = harness.get("/servers?status=sleeping").await;
    assert_eq!(bad.status, 400);
    harness.assert_openapi();
}

#[tokio::test]
async fn server_types_and_locations() {
    let harness = start(manual()).await;
    let locations = harness.get("/locations").await;
    assert_eq!(
        names(&locations.body, "locations"),
        ["fsn1", "nbg1", "hel1", "ash", "hil", "sin"]
    );
    let zones: Vec<&str> = locations.body["locations"]
        .as_array()
        .expect("locations")
        .iter()
        .map(|location| location["network_zone"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        zones,
        [
            "eu-central",
            "eu-central",
            "eu-central",
            "us-east",
            "us-west",
            "ap-southeast"
        ]
    );
    let one = harness.get("/locations?name=hil").await;
    assert_eq!(one.body["locations"][0]["city"], "Hillsboro, OR");
    let location = harness.get("/locations/1").await;
    assert_eq!(location.body["location"]["name"], "fsn1");

    let types = harness.get("/server_types?sort=name").await;
    assert_eq!(
        names(&types.body, "server_types"),
        ["cax11", "cax21", "ccx13", "cx22", "cx23", "cx33", "cx43"]
    );
    let cx23 = harness.get("/server_types?name=cx23").await;
    let cx23 = &cx23.body["server_types"][0];
    assert_eq!(cx23["architecture"], "x86");
    assert_eq!(cx23["cores"], 2);
    assert_eq!(cx23["memory"], 4.0);
    assert_eq!(cx23["disk"], 40);
    assert_eq!(cx23["cpu_type"], "shared");
    assert_eq!(cx23["storage_type"], "local");
    assert_eq!(cx23["deprecated"], false);
    assert_eq!(
        cx23["locations"][0],
        json!({"id": 1, "name": "fsn1", "deprecation": null, "available": true, "recommended": true})
    );
    assert_eq!(cx23["prices"][0]["location"], "fsn1");
    assert_eq!(cx23["prices"][0]["price_monthly"]["net"], "2.9900");
    let by_id = harness.get(&format!("/server_types/{}", cx23["id"])).await;
    assert_eq!(by_id.body["server_type"]["name"], "cx23");
    assert_eq!(harness.get("/server_types/1").await.status, 404);
    harness.assert_openapi();
}

#[tokio::test]
async fn actions_by_id_and_per_server() {
    let harness = start(manual()).await;
    let created = harness.create_server("s", json!({})).await;
    let server = created.body["server"]["id"].as_u64().expect("id");
    let create = created.body["action"]["id"].as_u64().expect("id");
    let start_action = created.body["next_actions"][0]["id"].as_u64().expect("id");
    let both = harness
        .get(&format!("/actions?id={create}&id={start_action}&id=1"))
        .await;
    assert_eq!(both.status, 200);
    let commands: Vec<&str> = both.body["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|action| action["command"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(commands, ["create_server", "start_server"]);
    let none = harness.get("/actions").await;
    assert_eq!(none.status, 400);
    assert_eq!(none.code(), "invalid_input");
    let per_server = harness.get(&format!("/servers/{server}/actions")).await;
    assert_eq!(per_server.body["actions"].as_array().map(Vec::len), Some(2));
    let one = harness
        .get(&format!("/servers/{server}/actions/{create}"))
        .await;
    assert_eq!(one.body["action"]["command"], "create_server");
    assert_eq!(harness.get("/actions/1").await.status, 404);
    harness.assert_openapi();
}
