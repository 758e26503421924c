//! One snapshot built the way the hcloud backend builds it, against the simulator, counting API
//! requests and simulated time: shared by the waiter test (`tests/it/waiter.rs`) and the polling
//! benchmark (`benches/polling.rs`), which include this file by path.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use caph_hcloud::client::{
    Client, CreateImageRequest, CreateServerRequest, PollSchedule, ServerStatus, WaitOptions,
};

/// The constant interval of the client we compare with (the official Go client's 500 ms).
pub const CONSTANT_POLL: Duration = Duration::from_millis(500);

/// What one snapshot build cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotRun {
    /// API requests sent, waits included.
    pub requests: u64,
    /// Wall time in simulated seconds (real seconds divided by the simulator's time scale).
    pub simulated_seconds: f64,
}

/// The two schedules compared, both scaled like the simulator's time: the waiter's default
/// (growing delays, batched actions) and a constant 500 ms poll.
pub fn schedules(scale: f64) -> [(&'static str, PollSchedule); 2] {
    [
        ("waiter", PollSchedule::default().scaled(scale)),
        (
            "constant",
            PollSchedule::constant(CONSTANT_POLL).scaled(scale),
        ),
    ]
}

/// Builds one snapshot the way the hcloud backend does (create server, wait until running,
/// shutdown, wait until off, create_image, wait until available, delete), polling on
/// `schedule`, against a simulator whose time runs at `scale` of real time.
pub async fn snapshot_run(
    client: &Client,
    name: &str,
    schedule: PollSchedule,
    scale: f64,
) -> SnapshotRun {
    let started = Instant::now();
    let options = WaitOptions {
        schedule,
        timeout: Duration::from_secs(120),
    };
    let before = client.requests_sent();
    let mut request = CreateServerRequest::new(name, "cx23", "debian-12");
    request.labels = BTreeMap::from([("caph-image-build".to_string(), name.to_string())]);
    let created = client.create_server(&request).await.unwrap();
    client
        .wait_for_actions(&created.all_actions(), &options, &mut |_| {})
        .await
        .unwrap();
    let id = created.server.id;
    client.shutdown_server(id).await.unwrap();
    client
        .wait_for_server_status(id, &ServerStatus::Off, &options, &mut |_| {})
        .await
        .unwrap();
    let snapshot = client
        .create_image(id, &CreateImageRequest::default())
        .await
        .unwrap();
    client
        .wait_for_action(&snapshot.action, &options, &mut |_| {})
        .await
        .unwrap();
    client.delete_server(id).await.unwrap();
    SnapshotRun {
        requests: client.requests_sent() - before,
        simulated_seconds: started.elapsed().div_f64(scale).as_secs_f64(),
    }
}
