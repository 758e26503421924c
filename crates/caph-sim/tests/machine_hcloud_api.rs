//! Issue 3's SSH test: through the simulated Hetzner Cloud API over HTTP, a server created with an
//! SSH key and a cloud-init host key is reached with caph-ssh pinning that key, runs a command in
//! its chroot, powers off (connection refused), is snapshotted, and a second server created from
//! the snapshot holds the file the first one wrote.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caph_sim::hcloud::{HcloudSim, HcloudSimConfig, TimeMode};
use caph_sim::machine::{SshMachines, SshMachinesConfig};
use caph_ssh::{ConnectConfig, HostKeyPolicy, KeyPair, Session, TofuPin, connect_when_ready};
use serde_json::{Value, json};

const TOKEN: &str = "machine-test-token";

/// Bound on any wait for a state change. The simulator runs at 1/1000 of real time, so real waits
/// are host work: starting sshd and copying a root filesystem take seconds, but on a fresh machine
/// the first start also builds the Debian root filesystem (30 s idle, 80-100 s measured on a busy
/// 2-core machine); ten minutes leaves room for a slow mirror without hanging forever.
const WAIT_LIMIT: Duration = Duration::from_secs(600);

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, body)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 201, "POST {path}: {answer}");
        answer
    }

    async fn wait_for(&self, path: &str, pointer: &str, wanted: &str) -> Value {
        let started = Instant::now();
        loop {
            let body = self.get(path).await;
            if body.pointer(pointer).and_then(Value::as_str) == Some(wanted) {
                return body;
            }
            assert!(
                started.elapsed() < WAIT_LIMIT,
                "{path}{pointer} never became {wanted}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_action(&self, action: &Value) {
        let id = action["id"].as_u64().unwrap();
        let done = self
            .wait_for(&format!("/actions/{id}"), "/action/status", "success")
            .await;
        assert_eq!(done["action"]["error"], Value::Null);
    }
}

fn ip_of(server: &Value) -> Ipv4Addr {
    server["public_net"]["ipv4"]["ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn connect(ip: Ipv4Addr, client: &KeyPair, policy: HostKeyPolicy) -> Session {
    let mut config = ConnectConfig::new(SocketAddr::from((ip, 22)), "root", client.clone(), policy);
    config.deadline = Duration::from_secs(30);
    connect_when_ready(&config, &mut |_| {}).await.unwrap()
}

async fn run(session: &Session, command: &str) -> String {
    let output = session.exec_capture(command).await.unwrap();
    assert_eq!(output.exit_code, 0, "`{command}`: {}", output.stderr);
    output.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_over_the_hcloud_api_pinned_chroot_power_snapshot() {
    let test = "machine_over_the_hcloud_api_pinned_chroot_power_snapshot";
    let config = SshMachinesConfig {
        log: Some(Arc::new(|line: &str| eprintln!("[machines] {line}"))),
        background_disks: true,
        ..Default::default()
    };
    let machines = match SshMachines::new(config) {
        Ok(machines) => Arc::new(machines),
        Err(error) => {
            eprintln!("SKIPPED {test}: {error}");
            return;
        }
    };
    // No warm-up: with background disks, `POST /servers` answers at once while the disk is
    // prepared (including a first root filesystem build of ~30 s); the start action waits for it.
    let instance_dir = machines.instance_dir().to_path_buf();
    let sim = HcloudSim::start(HcloudSimConfig {
        token: TOKEN.to_owned(),
        time: TimeMode::Scaled(0.001),
        machines: machines.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let api = Api {
        client: reqwest::Client::new(),
        base: sim.api_url(),
    };
    let clock = Instant::now();
    let stage = |name: &str| eprintln!("{:>8.2?} {name}", clock.elapsed());

    let client_key = KeyPair::generate_ed25519("caph-image build").unwrap();
    let host_key = KeyPair::generate_ed25519("builder host").unwrap();
    let pem = host_key.private_key_openssh().unwrap();
    let indented: String = pem
        .expose()
        .lines()
        .map(|line| format!("    {line}\n"))
        .collect();
    let user_data = format!(
        "#cloud-config\nssh_keys:\n  ed25519_private: |\n{indented}  ed25519_public: {}\n",
        host_key.public_key().to_openssh()
    );

    let key = api
        .post(
            "/ssh_keys",
            json!({"name": "build-key", "public_key": client_key.public_key().to_openssh()}),
        )
        .await;
    let key_id = key["ssh_key"]["id"].as_u64().unwrap();
    let created = api
        .post(
            "/servers",
            json!({
                "name": "builder", "server_type": "cx23", "image": "debian-12", "location": "fsn1",
                "ssh_keys": [key_id], "user_data": user_data, "labels": {"caph-image-build": "t1"}
            }),
        )
        .await;
    let server_id = created["server"]["id"].as_u64().unwrap();
    let ip = ip_of(&created["server"]);
    api.wait_for(
        &format!("/servers/{server_id}"),
        "/server/status",
        "running",
    )
    .await;

    stage("server running");
    let session = connect(
        ip,
        &client_key,
        HostKeyPolicy::Pinned(host_key.public_key()),
    )
    .await;
    assert_eq!(
        run(
            &session,
            "echo made-on-builder > /root/provisioned && hostname"
        )
        .await
        .trim(),
        "builder"
    );
    assert!(
        machines
            .machine_root(server_id)
            .unwrap()
            .join("root/provisioned")
            .exists(),
        "written in the chroot"
    );

    stage("first command ran");
    let shutdown = api
        .post(&format!("/servers/{server_id}/actions/shutdown"), json!({}))
        .await;
    api.wait_action(&shutdown["action"]).await;
    api.wait_for(&format!("/servers/{server_id}"), "/server/status", "off")
        .await;
    let refused = TcpStream::connect_timeout(&SocketAddr::from((ip, 22)), Duration::from_secs(2))
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    stage("server off, connection refused");
    let imaged = api
        .post(
            &format!("/servers/{server_id}/actions/create_image"),
            json!({"type": "snapshot", "description": "node image", "labels": {"caph-image-name": "test-node"}}),
        )
        .await;
    let image_id = imaged["image"]["id"].as_u64().unwrap();
    api.wait_action(&imaged["action"]).await;
    let image = api
        .wait_for(&format!("/images/{image_id}"), "/image/status", "available")
        .await;
    assert!(
        image["image"]["image_size"].as_f64().unwrap() > 0.0,
        "{image}"
    );

    stage("snapshot available");
    let second = api
        .post(
            "/servers",
            json!({"name": "from-snapshot", "server_type": "cx23", "image": image_id, "location": "fsn1", "ssh_keys": [key_id]}),
        )
        .await;
    stage("second server created");
    let second_id = second["server"]["id"].as_u64().unwrap();
    let second_ip = ip_of(&second["server"]);
    assert_ne!(second_ip, ip);
    api.wait_for(
        &format!("/servers/{second_id}"),
        "/server/status",
        "running",
    )
    .await;
    stage("second server running");
    let session_b = connect(
        second_ip,
        &client_key,
        HostKeyPolicy::TrustOnFirstUse(TofuPin::new()),
    )
    .await;
    assert_eq!(
        run(&session_b, "cat /root/provisioned").await,
        "made-on-builder\n"
    );
    assert_eq!(run(&session_b, "hostname").await.trim(), "from-snapshot");
    session_b.close().await;

    stage("file found on the second server");
    for id in [server_id, second_id] {
        let (status, deleted) = api
            .call(reqwest::Method::DELETE, &format!("/servers/{id}"), None)
            .await;
        assert_eq!(status, 200, "{deleted}");
        api.wait_action(&deleted["action"]).await;
    }
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/images/{image_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/ssh_keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert!(
        TcpStream::connect_timeout(&SocketAddr::from((second_ip, 22)), Duration::from_secs(2))
            .is_err()
    );

    stage("everything deleted");
    // The simulator's tasks hold the host until their abort has been processed.
    drop(sim);
    let started = Instant::now();
    while Arc::strong_count(&machines) > 1 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        Arc::strong_count(&machines),
        1,
        "the simulator released the machines"
    );
    drop(machines);
    assert!(!instance_dir.exists(), "nothing left on disk");
}
