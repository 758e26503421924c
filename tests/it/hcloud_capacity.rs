//! Capacity fallback of `caph-image build hcloud`: the spec's preferred locations and server types
//! are tried in order; preflight skips pairs that are sold out, deprecated or not offered, and
//! refuses names that do not exist, types of the other architecture and deprecated types, naming
//! the alternatives; a create refused for capacity (`resource_unavailable`, `placement_error`)
//! moves on to the next pair, with the reason in the progress and the result.

use caph_sim::hcloud::{Fault, HcloudSim, HcloudSimConfig, SimState, TimeMode};

use crate::cloud::{Cloud, TOKEN};
use crate::hcloud_build::run_caph_image_with;

/// A simulator without machines: enough for flows that end before a server runs.
async fn api_only() -> HcloudSim {
    HcloudSim::start(HcloudSimConfig {
        token: TOKEN.into(),
        time: TimeMode::Scaled(0.001),
        record_responses: true,
        ..Default::default()
    })
    .await
    .expect("the simulator starts")
}

fn env(sim: &HcloudSim) -> Vec<(&'static str, String)> {
    vec![
        ("HCLOUD_TOKEN", TOKEN.to_string()),
        ("HCLOUD_ENDPOINT", sim.api_url()),
    ]
}

/// The end-to-end spec with its `[hcloud]` table replaced by `hcloud`.
fn spec_with(cloud_spec: &str, hcloud: &str) -> String {
    let start = cloud_spec.find("[hcloud]").expect("the spec has [hcloud]");
    format!("{}{hcloud}", &cloud_spec[..start])
}

fn nothing_left(state: &SimState) {
    assert!(
        state.servers.is_empty(),
        "servers left: {:?}",
        state.servers
    );
    assert!(state.ssh_keys.is_empty(), "keys left: {:?}", state.ssh_keys);
    assert!(
        state.snapshots().is_empty(),
        "snapshots: {:?}",
        state.snapshots()
    );
}

/// A spec whose `[hcloud]` is `hcloud`, for builds that end before provisioning (its mirror is
/// never reached).
fn offline_spec(hcloud: &str) -> String {
    spec_with(
        &crate::cloud::spec_for_mirror("http://127.0.0.1:9", "capacity-node", &["x86"]),
        &format!("[hcloud]\n{hcloud}"),
    )
}

/// Runs `build hcloud` on a spec with `hcloud` as its `[hcloud]`; it must fail with exit code 1
/// and leave nothing behind. Returns its standard error.
async fn refused_build(sim: &HcloudSim, hcloud: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node.toml"), offline_spec(hcloud)).unwrap();
    let output = run_caph_image_with(
        &env(sim),
        dir.path(),
        &["build", "hcloud", "node.toml", "--no-progress"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    nothing_left(&sim.state());
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_deprecated_and_foreign_names_are_refused_with_the_alternatives() {
    let sim = api_only().await;
    // cx22 is retired in the simulated catalog, cax11 is arm, cx99 does not exist.
    let stderr = refused_build(
        &sim,
        "architectures = [\"x86\"]\nlocations = [\"fsn1\"]\n\n[hcloud.server_types]\nx86 = [\"cx99\", \"cx22\", \"cax11\"]\n",
    )
    .await;
    let alternatives = "x86 types are cx23 (40 GB disk), ccx13 (80 GB disk), cx33 (80 GB disk), cx43 (160 GB disk)";
    for expected in [
        format!("x86: server type \"cx99\" does not exist; {alternatives}"),
        "x86: server type cx22 is deprecated, unavailable after 2026-01-01T00:00:00+00:00; choose a current x86 type: cx23 (40 GB disk)".to_string(),
        format!("x86: server type cax11 is arm, not x86; {alternatives}"),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    // A location that does not exist names those that do.
    let stderr = refused_build(
        &sim,
        "architectures = [\"x86\"]\nlocations = [\"fsn1\", \"mars1\"]\n\n[hcloud.server_types]\nx86 = [\"cx23\"]\n",
    )
    .await;
    assert!(
        stderr.contains(
            "location \"mars1\" does not exist; use one of fsn1, nbg1, hel1, ash, hil, sin"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_preferred_pair_sold_out_is_refused_in_preflight_listing_them() {
    let sim = api_only().await;
    for location in ["fsn1", "nbg1"] {
        assert!(sim.set_stock("cx23", location, Some(0)));
    }
    let stderr = refused_build(
        &sim,
        "architectures = [\"x86\"]\nlocations = [\"fsn1\", \"nbg1\", \"ash\"]\n\n[hcloud.server_types]\nx86 = [\"cx23\"]\n",
    )
    .await;
    assert!(
        stderr.contains(
            "x86: none of the preferred types can be ordered in a preferred location now: cx23 in fsn1: sold out, cx23 in nbg1: sold out, cx23 in ash: not offered there; add a location to hcloud.locations where they can be ordered now (cx23 in hel1) or try later"
        ),
        "{stderr}"
    );
    // Preflight created nothing; no server was even asked for.
    assert!(
        !sim.request_log()
            .iter()
            .any(|record| record.method == "POST"),
        "preflight sent a POST"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_lost_for_every_pair_at_create_ends_with_what_was_tried_and_nothing_left() {
    let sim = api_only().await;
    // Listed as orderable in preflight, gone when ordered: fsn1 sells out as the first create
    // arrives; nbg1 cannot place the server.
    sim.inject(Fault::SellOut {
        route: "POST /servers".into(),
        nth: 1,
        location: "fsn1".into(),
        server_type: "cx23".into(),
    });
    sim.inject(Fault::fail("POST /servers", 2, 412, "placement_error"));
    let stderr = refused_build(
        &sim,
        "architectures = [\"x86\"]\nlocations = [\"fsn1\", \"nbg1\"]\n\n[hcloud.server_types]\nx86 = [\"cx23\"]\n",
    )
    .await;
    // The progress says why each pair was passed over and what comes next.
    assert!(
        stderr.contains(
            "cx23 in fsn1: resource_unavailable: error during placement; trying cx23 in nbg1"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("no preferred server type could be created in a preferred location: cx23 in fsn1: resource_unavailable: error during placement; cx23 in nbg1: placement_error: injected placement_error; add locations to hcloud.locations or types to hcloud.server_types, or try later"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_build_moves_on_past_pairs_without_capacity_and_says_where_it_ran() {
    let Some(cloud) =
        Cloud::start("a_build_moves_on_past_pairs_without_capacity_and_says_where_it_ran").await
    else {
        return;
    };
    // fsn1 is sold out before the build (preflight skips it), nbg1 sells out between preflight
    // and the order, hel1 takes the order but cannot place the server (its action fails with
    // placement_error); cx33 in fsn1, the next type, has room.
    assert!(cloud.sim.set_stock("cx23", "fsn1", Some(0)));
    cloud.sim.inject(Fault::SellOut {
        route: "POST /servers".into(),
        nth: 1,
        location: "nbg1".into(),
        server_type: "cx23".into(),
    });
    cloud.sim.inject(Fault::FailAction {
        command: "create_server".into(),
        code: "placement_error".into(),
        message: "no host has room".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        spec_with(
            &cloud.spec("capacity-node", &["x86"]),
            "[hcloud]\narchitectures = [\"x86\"]\nlocations = [\"fsn1\", \"nbg1\", \"hel1\"]\n\n[hcloud.server_types]\nx86 = [\"cx23\", \"cx33\"]\n",
        ),
    )
    .unwrap();
    let output = crate::hcloud_build::run_caph_image(
        &cloud,
        dir.path(),
        &[
            "build",
            "hcloud",
            "node.toml",
            "--no-progress",
            "--output",
            "json",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    for warning in [
        "cx23 in nbg1: resource_unavailable: error during placement; trying cx23 in hel1",
        "cx23 in hel1: placement_error: no host has room; trying cx33 in fsn1",
        "built on cx33: the snapshot's disk is 80 GB, so it will not fit cx23 (40 GB)",
    ] {
        assert!(
            stderr.contains(warning),
            "missing {warning:?} in:\n{stderr}"
        );
    }
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let snapshot = &result["snapshots"][0];
    assert_eq!(snapshot["labels"]["build-location"], "fsn1");
    assert_eq!(snapshot["labels"]["build-server-type"], "cx33");
    assert_eq!(
        snapshot["notes"],
        serde_json::json!([
            "built on cx33 in fsn1",
            "passed over cx23 in fsn1: sold out",
            "passed over cx23 in nbg1: resource_unavailable: error during placement",
            "passed over cx23 in hel1: placement_error: no host has room",
        ])
    );
    // The template names the type the snapshot fits.
    assert!(
        snapshot["machine_template"]
            .as_str()
            .unwrap()
            .contains("type: cx33"),
        "{snapshot}"
    );
    // The labels are on the snapshot itself, and nothing else is left.
    let state = cloud.state_with_nothing_left();
    let made = state.snapshots();
    assert_eq!(made.len(), 1);
    assert_eq!(
        made[0].labels.get("build-location").map(String::as_str),
        Some("fsn1")
    );
    cloud.assert_openapi_clean();
}
