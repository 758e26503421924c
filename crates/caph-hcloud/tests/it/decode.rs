//! Lenient decoding: unknown fields ignored, unknown enum values kept, `datacenter` optional,
//! nulls accepted where the API sends them. JSON literals shaped like live answers.

use caph_hcloud::client::{
    Action, ActionStatus, Architecture, ErrorCode, Image, ImageStatus, ImageType, Server,
    ServerStatus, ServerType, SshKey,
};

const SERVER_WITHOUT_DATACENTER: &str = r#"{
  "id": 42, "name": "caph-build-1", "status": "hibernating",
  "created": "2026-11-21T05:00:00+00:00",
  "public_net": {
    "ipv4": {"id": 1, "ip": "127.0.1.5", "blocked": false, "dns_ptr": "static.example"},
    "ipv6": {"id": 2, "ip": "2001:db8:1:2::/64", "blocked": false, "dns_ptr": []},
    "floating_ips": [], "firewalls": [], "brand_new_net_field": {"x": 1}
  },
  "server_type": {
    "id": 1, "name": "cx23", "description": "CX23", "cores": 2, "memory": 4.0, "disk": 40,
    "architecture": "riscv", "cpu_type": "shared", "storage_type": "local",
    "deprecated": false, "deprecation": null, "category": "cost_optimized",
    "locations": [{"id": 1, "name": "fsn1", "deprecation": null, "available": true, "recommended": true}],
    "prices": [{"location": "fsn1", "price_hourly": {"net": "0.0048", "gross": "0.0057"},
                "price_monthly": {"net": "2.99", "gross": "3.56"}, "included_traffic": 21990232555520,
                "price_per_tb_traffic": {"net": "1", "gross": "1.19"}}]
  },
  "location": {"id": 1, "name": "fsn1", "description": "Falkenstein DC Park 1", "country": "DE",
               "city": "Falkenstein", "latitude": 50.47612, "longitude": 12.370071, "network_zone": "eu-central"},
  "image": null, "iso": null, "primary_disk_size": 40, "labels": {"caph-image-build": "b1"},
  "rescue_enabled": false, "locked": false, "backup_window": null,
  "protection": {"delete": false, "rebuild": false},
  "private_net": [], "volumes": [], "load_balancers": [], "placement_group": null,
  "included_traffic": 21990232555520, "ingoing_traffic": null, "outgoing_traffic": null,
  "a_field_from_the_future": [1, 2, 3]
}"#;

#[test]
fn server_without_datacenter_with_unknown_fields_and_values() {
    let server: Server = serde_json::from_str(SERVER_WITHOUT_DATACENTER).unwrap();
    assert_eq!(server.id.0, 42);
    assert_eq!(server.status, ServerStatus::Unknown("hibernating".into()));
    assert_eq!(
        server.server_type.architecture,
        Architecture::Unknown("riscv".into())
    );
    assert_eq!(server.server_type.disk, 40.0);
    assert!(server.server_type.is_available_in("fsn1"));
    assert!(!server.server_type.is_available_in("hel1"));
    assert_eq!(
        server.public_net.ipv4.as_ref().unwrap().ip.to_string(),
        "127.0.1.5"
    );
    let host = server
        .public_net
        .ipv6
        .as_ref()
        .unwrap()
        .host_address()
        .unwrap();
    assert_eq!(host.to_string(), "2001:db8:1:2::1");
    assert_eq!(server.image, None);
    assert_eq!(server.labels["caph-image-build"], "b1");
    // Unknown values survive a round trip unchanged.
    let again: serde_json::Value = serde_json::to_value(&server).unwrap();
    assert_eq!(again["status"], "hibernating");
    assert_eq!(again["server_type"]["architecture"], "riscv");
}

#[test]
fn server_with_the_old_datacenter_field_still_decodes() {
    let mut value: serde_json::Value = serde_json::from_str(SERVER_WITHOUT_DATACENTER).unwrap();
    value["datacenter"] = serde_json::json!({"id": 1, "name": "fsn1-dc14", "location": {"id": 1}});
    value["status"] = serde_json::json!("unknown");
    let server: Server = serde_json::from_value(value).unwrap();
    // The API's own "unknown" status is kept as a string, like any value the client lacks.
    assert_eq!(server.status.as_str(), "unknown");
}

#[test]
fn server_type_from_before_availability_fields() {
    let literal = r#"{"id": 9, "name": "cax11", "cores": 2, "memory": 4, "disk": 40, "architecture": "arm",
        "cpu_type": "shared", "storage_type": "local", "description": "CAX11",
        "locations": [{"id": 1, "name": "fsn1", "deprecation": null}], "prices": []}"#;
    let server_type: ServerType = serde_json::from_str(literal).unwrap();
    assert_eq!(server_type.architecture, Architecture::Arm);
    // Without the 2026-04 fields a listed location counts as orderable.
    assert!(server_type.is_available_in("fsn1"));
    assert!(!server_type.is_deprecated());
}

#[test]
fn snapshot_while_creating_has_nulls() {
    let literal = r#"{"id": 7, "type": "snapshot", "status": "creating", "name": null, "description": "k8s",
        "image_size": null, "disk_size": 40, "created": "2026-11-21T05:00:00+00:00",
        "created_from": {"id": 42, "name": "caph-build-1"}, "bound_to": null, "os_flavor": "debian",
        "os_version": "12", "architecture": "x86", "rapid_deploy": false, "protection": {"delete": false},
        "deprecated": null, "deleted": null, "labels": {"caph-image-name": "k8s-1.33"}, "new_thing": true}"#;
    let image: Image = serde_json::from_str(literal).unwrap();
    assert_eq!(image.kind, ImageType::Snapshot);
    assert_eq!(image.status, ImageStatus::Creating);
    assert_eq!(image.name, None);
    assert_eq!(image.image_size, None);
    assert_eq!(image.created_from.unwrap().id, 42);
    let future = literal
        .replace("\"creating\"", "\"replicating\"")
        .replace("\"snapshot\"", "\"golden\"");
    let image: Image = serde_json::from_str(&future).unwrap();
    assert_eq!(image.status, ImageStatus::Unknown("replicating".into()));
    assert_eq!(image.kind, ImageType::Unknown("golden".into()));
}

#[test]
fn actions_running_failed_and_unknown() {
    let literal = r#"[
      {"id": 1, "command": "create_server", "status": "running", "progress": 40,
       "started": "2026-11-21T05:00:00+00:00", "finished": null,
       "resources": [{"id": 42, "type": "server"}], "error": null},
      {"id": 2, "command": "create_image", "status": "error", "progress": 100,
       "started": "2026-11-21T05:00:00+00:00", "finished": "2026-11-21T05:01:00+00:00",
       "resources": [{"id": 42, "type": "server"}], "error": {"code": "image_failed", "message": "boom"}},
      {"id": 3, "command": "frobnicate", "status": "paused", "progress": 0,
       "started": "2026-11-21T05:00:00+00:00", "finished": null, "resources": [], "error": null, "parent": 9}
    ]"#;
    let actions: Vec<Action> = serde_json::from_str(literal).unwrap();
    assert_eq!(actions[0].status, ActionStatus::Running);
    assert_eq!(actions[0].resources[0].kind, "server");
    assert_eq!(actions[1].error.as_ref().unwrap().code, "image_failed");
    assert_eq!(actions[2].status, ActionStatus::Unknown("paused".into()));
}

#[test]
fn ssh_key_and_error_codes() {
    let literal = r#"{"id": 5, "name": "caph-b1", "fingerprint": "b7:2f:30:a0:2f:6c:58:6c:21:04:58:61:ba:06:3b:2f",
        "public_key": "ssh-ed25519 AAAA caph", "labels": {}, "created": "2026-11-21T05:00:00+00:00"}"#;
    let key: SshKey = serde_json::from_str(literal).unwrap();
    assert_eq!(key.name, "caph-b1");
    let code: ErrorCode = serde_json::from_str(r#""rate_limit_exceeded""#).unwrap();
    assert_eq!(code, ErrorCode::RateLimitExceeded);
    let code: ErrorCode = serde_json::from_str(r#""quota_melted""#).unwrap();
    assert_eq!(code.as_str(), "quota_melted");
}
