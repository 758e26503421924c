//! The simulator calls its machine host at the right moments: create on `POST /servers`,
//! power_on when a server reaches `running`, power_off when it reaches `off`, snapshot when
//! `create_image` starts, delete when `delete_server` ends, delete_image with the snapshot.

#[path = "fidelity/support.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use caph_sim::host::{
    AddressOnly, DiskSource, MachineError, MachineHost, MachineInfo, MachineSpec,
};
use serde_json::json;
use support::{HcloudSimConfig, manual, public_key, start};

/// Records every call, delegating addresses to [`AddressOnly`].
#[derive(Debug, Default)]
struct RecordingHost {
    addresses: AddressOnly,
    calls: Mutex<Vec<String>>,
    specs: Mutex<Vec<MachineSpec>>,
}

impl RecordingHost {
    fn note(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().expect("calls"))
    }
}

#[async_trait::async_trait]
impl MachineHost for RecordingHost {
    async fn create(&self, spec: MachineSpec) -> Result<MachineInfo, MachineError> {
        self.note(format!("create {}", spec.server_id));
        self.specs.lock().expect("specs").push(spec.clone());
        self.addresses.create(spec).await
    }
    async fn power_on(&self, server_id: u64) -> Result<(), MachineError> {
        self.note(format!("power_on {server_id}"));
        Ok(())
    }
    async fn power_off(&self, server_id: u64) -> Result<(), MachineError> {
        self.note(format!("power_off {server_id}"));
        Ok(())
    }
    async fn snapshot(&self, server_id: u64, image_id: u64) -> Result<u64, MachineError> {
        self.note(format!("snapshot {server_id} {image_id}"));
        Ok(2_500_000_000)
    }
    async fn delete(&self, server_id: u64) -> Result<(), MachineError> {
        self.note(format!("delete {server_id}"));
        Ok(())
    }
    async fn delete_image(&self, image_id: u64) -> Result<(), MachineError> {
        self.note(format!("delete_image {image_id}"));
        Ok(())
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn host_calls_follow_the_state_machines() {
    let host = Arc::new(RecordingHost::default());
    let harness = start(HcloudSimConfig {
        machines: host.clone(),
        ..manual()
    })
    .await;
    harness
        .post(
            "/ssh_keys",
            json!({"name": "k", "public_key": public_key(3)}),
        )
        .await;
    let user_data = "#cloud-config\n";
    let created = harness
        .create_server(
            "machine",
            json!({"ssh_keys": ["k"], "user_data": user_data, "image": "ubuntu-24.04"}),
        )
        .await;
    let server = created.body["server"]["id"].as_u64().expect("id");
    assert_eq!(host.take(), [format!("create {server}")]);
    let spec = host.specs.lock().expect("specs")[0].clone();
    assert_eq!(spec.hostname, "machine");
    assert_eq!(spec.authorized_keys, [public_key(3)]);
    assert_eq!(spec.user_data.as_deref(), Some(user_data));
    assert_eq!(
        spec.disk,
        DiskSource::System {
            name: "ubuntu-24.04".into(),
            architecture: "x86".into()
        }
    );
    assert_eq!(
        created.body["server"]["public_net"]["ipv4"]["ip"],
        harness.sim.state().servers[0]
            .ipv4
            .expect("address")
            .to_string()
    );

    harness.advance(27 * SECOND).await;
    assert_eq!(host.take(), Vec::<String>::new(), "still starting");
    harness.advance(SECOND).await;
    assert_eq!(host.take(), [format!("power_on {server}")]);

    harness
        .post(&format!("/servers/{server}/actions/shutdown"), json!({}))
        .await;
    harness.advance(5 * SECOND).await;
    assert_eq!(host.take(), Vec::<String>::new(), "still stopping");
    harness.advance(SECOND).await;
    assert_eq!(host.take(), [format!("power_off {server}")]);

    let snapshot = harness
        .post(
            &format!("/servers/{server}/actions/create_image"),
            json!({}),
        )
        .await;
    let image = snapshot.body["image"]["id"].as_u64().expect("id");
    assert!(harness.sim.settle().await);
    assert_eq!(host.take(), [format!("snapshot {server} {image}")]);
    // 60 s + 20 s per GB of the 2.5 GB reported.
    harness.advance(109 * SECOND).await;
    assert_eq!(
        harness.get(&format!("/images/{image}")).await.body["image"]["status"],
        "creating"
    );
    harness.advance(SECOND).await;
    let done = harness.get(&format!("/images/{image}")).await;
    assert_eq!(done.body["image"]["image_size"], 2.5);

    let from_snapshot = harness
        .create_server(
            "second",
            json!({"image": image, "start_after_create": false}),
        )
        .await;
    let second = from_snapshot.body["server"]["id"].as_u64().expect("id");
    assert_eq!(host.take(), [format!("create {second}")]);
    assert_eq!(
        host.specs.lock().expect("specs")[1].disk,
        DiskSource::Snapshot { image_id: image }
    );

    harness.delete(&format!("/images/{image}")).await;
    assert_eq!(host.take(), [format!("delete_image {image}")]);
    harness.delete(&format!("/servers/{server}")).await;
    harness.advance(3 * SECOND).await;
    assert_eq!(host.take(), Vec::<String>::new(), "still deleting");
    harness.advance(SECOND).await;
    assert_eq!(host.take(), [format!("delete {server}")]);
    harness.assert_openapi();
}

#[tokio::test]
async fn concurrent_creates_with_one_name_make_one_server() {
    let harness = Arc::new(start(manual()).await);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let harness = Arc::clone(&harness);
        tasks.push(tokio::spawn(async move {
            harness.create_server("same", json!({})).await.status
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
    assert_eq!(harness.sim.state().servers.len(), 1);
    harness.assert_openapi();
}

/// A host whose machines take a while to create, like a root filesystem copy.
#[derive(Debug, Default)]
struct SlowHost {
    addresses: AddressOnly,
}

#[async_trait::async_trait]
impl MachineHost for SlowHost {
    async fn create(&self, spec: MachineSpec) -> Result<MachineInfo, MachineError> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.addresses.create(spec).await
    }
    async fn power_on(&self, server_id: u64) -> Result<(), MachineError> {
        self.addresses.power_on(server_id).await
    }
    async fn power_off(&self, server_id: u64) -> Result<(), MachineError> {
        self.addresses.power_off(server_id).await
    }
    async fn snapshot(&self, server_id: u64, image_id: u64) -> Result<u64, MachineError> {
        self.addresses.snapshot(server_id, image_id).await
    }
    async fn delete(&self, server_id: u64) -> Result<(), MachineError> {
        self.addresses.delete(server_id).await
    }
    async fn delete_image(&self, image_id: u64) -> Result<(), MachineError> {
        self.addresses.delete_image(image_id).await
    }
}

#[tokio::test]
async fn a_client_hanging_up_mid_create_leaves_a_working_server() {
    let harness = start(HcloudSimConfig {
        machines: Arc::new(SlowHost::default()),
        ..manual()
    })
    .await;
    let hung_up = harness
        .http
        .post(format!("{}/servers", harness.base))
        .bearer_auth(support::TOKEN)
        .timeout(Duration::from_millis(50))
        .json(&json!({"name": "orphan", "server_type": "cx23", "image": "debian-12"}))
        .send()
        .await;
    assert!(hung_up.is_err(), "{hung_up:?}");
    harness.advance(30 * SECOND).await;
    let servers = harness.get("/servers?name=orphan").await;
    let server = &servers.body["servers"][0];
    assert_eq!(server["status"], "running", "{server}");
    assert!(server["public_net"]["ipv4"]["ip"].is_string());
    harness.assert_openapi();
}
