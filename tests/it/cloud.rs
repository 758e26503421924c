//! A simulated Hetzner Cloud with real SSH machines and a download mirror, for end-to-end builds.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use caph_sim::hcloud::{HcloudSim, HcloudSimConfig, SimState, TimeMode};
use caph_sim::host::MachineHost;
use caph_sim::machine::{SshMachines, SshMachinesConfig};
use caph_sim::mirror::{Mirror, ReleaseVersions, release_artifacts};

pub const TOKEN: &str = "e2e-token";

pub const VERSIONS: fn() -> ReleaseVersions = || ReleaseVersions {
    containerd: "2.1.4".into(),
    // 1.3.3 and later have the November 2025 container-escape fixes caph-image requires.
    runc: "1.3.6".into(),
    crictl: "1.34.0".into(),
    cni: "1.9.1".into(),
    kubernetes: "1.34.2".into(),
};

/// The simulator, its machines and the mirror, alive together.
pub struct Cloud {
    pub sim: HcloudSim,
    /// Kept alive for the simulator (dropping it stops every machine).
    pub _machines: Arc<dyn MachineHost>,
    pub mirror: Mirror,
}

impl Cloud {
    /// Starts everything, or says why this machine cannot (not root, no sshd, no mmdebstrap).
    pub async fn start(test: &str) -> Option<Cloud> {
        // A thousandth of real time: the simulated waits vanish next to the real SSH work.
        match Cloud::start_scaled(0.001).await {
            Ok(cloud) => Some(cloud),
            Err(reason) => {
                eprintln!("SKIPPED {test}: {reason}");
                None
            }
        }
    }

    /// Starts everything with simulated time at `scale` of real time (the build benchmark,
    /// `crates/caph-image/benches/builds.rs`, includes this file), or says why this machine
    /// cannot.
    pub async fn start_scaled(scale: f64) -> Result<Cloud, String> {
        Cloud::start_observed(scale, None).await
    }

    /// [`Cloud::start_scaled`], with `on_request` told about every request the simulator
    /// answers.
    pub async fn start_observed(
        scale: f64,
        on_request: Option<caph_sim::hcloud::RequestObserver>,
    ) -> Result<Cloud, String> {
        let machines = Arc::new(
            SshMachines::new(SshMachinesConfig::default()).map_err(|error| error.to_string())?,
        );
        // Build (or find) the root filesystems first: a cold cache would otherwise hold up the
        // first `POST /servers` for minutes, past the client's request timeout.
        for arch in Cloud::architectures() {
            if let Err(error) = machines.prepare_image("debian-12", arch).await {
                panic!("preparing the debian-12 {arch} root filesystem: {error}");
            }
        }
        Ok(Cloud::start_on(scale, machines, on_request).await)
    }

    /// The simulator and the mirror with `machines` for its servers, whose system images are
    /// prepared (the build benchmark's cloud with rescue systems, `CloudMachines`).
    pub async fn start_on(
        scale: f64,
        machines: Arc<dyn MachineHost>,
        on_request: Option<caph_sim::hcloud::RequestObserver>,
    ) -> Cloud {
        let sim = HcloudSim::start(HcloudSimConfig {
            token: TOKEN.into(),
            time: TimeMode::Scaled(scale),
            machines: machines.clone(),
            record_responses: true,
            on_request,
            ..Default::default()
        })
        .await
        .expect("the simulator starts");
        let mirror = Mirror::start(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            release_artifacts(&VERSIONS(), &["amd64", "arm64"]),
        )
        .await
        .expect("the mirror starts");
        Cloud {
            sim,
            _machines: machines,
            mirror,
        }
    }

    /// The architectures this machine can build: x86 always, arm where qemu-user runs arm binaries.
    pub fn architectures() -> Vec<&'static str> {
        if Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() {
            vec!["x86", "arm"]
        } else {
            eprintln!(
                "note: no qemu-aarch64 binfmt handler (apt-get install qemu-user-static binfmt-support): building x86 only"
            );
            vec!["x86"]
        }
    }

    /// A test spec whose artifacts come from the mirror.
    pub fn spec(&self, name: &str, architectures: &[&str]) -> String {
        spec_for_mirror(&self.mirror.url(), name, architectures)
    }

    /// The environment the real binary needs to talk to the simulator.
    pub fn env(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("HCLOUD_TOKEN", TOKEN.to_string()),
            ("HCLOUD_ENDPOINT", self.sim.api_url()),
        ])
    }

    pub fn state(&self) -> SimState {
        self.sim.state()
    }

    /// The simulator's state after a build, which must have left no server and no SSH key.
    pub fn state_with_nothing_left(&self) -> SimState {
        let state = self.sim.state();
        assert!(
            state.servers.is_empty(),
            "servers left: {:?}",
            state.servers
        );
        assert!(state.ssh_keys.is_empty(), "keys left: {:?}", state.ssh_keys);
        state
    }

    /// Checks every answer the simulator gave against the OpenAPI description.
    pub fn assert_openapi_clean(&self) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/reference/hcloud-openapi.json");
        if !path.exists() {
            eprintln!("SKIPPED OpenAPI check: {} is absent", path.display());
            return;
        }
        let validator =
            caph_sim::openapi::Validator::load(&path).expect("the OpenAPI description loads");
        let violations = validator.check_all(&self.sim.recorded_responses());
        assert!(
            violations.is_empty(),
            "answers that break the OpenAPI description: {violations:#?}"
        );
    }
}

/// The end-to-end test spec, its artifacts downloaded from `mirror`.
pub fn spec_for_mirror(mirror: &str, name: &str, architectures: &[&str]) -> String {
    let list = architectures
        .iter()
        .map(|arch| format!("\"{arch}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[image]
name = "{name}"
description = "end-to-end test image"

[base]
distribution = "debian"
version = "12"

[base.hcloud]
x86 = "debian-12"
arm = "debian-12"

[kubernetes]
version = "1.34.2"
source = "binaries"
binaries_url = "{mirror}/kubernetes"

[containerd]
version = "2.1.4"
url = "{mirror}/containerd"

[runc]
version = "1.3.6"
url = "{mirror}/runc"

[crictl]
version = "1.34.0"
url = "{mirror}/crictl"

[cni]
version = "1.9.1"
url = "{mirror}/cni"

[system]
kernel_modules = ["ip_vs"]

[system.sysctls]
"vm.max_map_count" = "524288"

[[system.files]]
path = "/etc/e2e-marker"
content = "built by the end-to-end test\n"

[hcloud]
architectures = [{list}]
location = "fsn1"

[hcloud.server_type]
x86 = "cx23"
arm = "cax11"
"#
    )
}

/// Where an end-to-end test that needs no fault injection runs: the simulator, unless the
/// environment asks for a real Hetzner Cloud project (`CAPH_IMAGE_LIVE=1` with `HCLOUD_TOKEN`,
/// and `HCLOUD_ENDPOINT` if not the public API). Never set in CI; see README, "Live runs".
pub enum Target {
    /// The simulator with SSH machines and a loopback mirror.
    Sim(Cloud),
    /// A real project; everything the test makes carries `run_id` in its names.
    Live {
        token: String,
        endpoint: String,
        run_id: String,
    },
}

/// The environment variable that switches [`Target`] to a real project.
pub const LIVE_VARIABLE: &str = "CAPH_IMAGE_LIVE";

impl Target {
    /// The simulator, or the real project when `CAPH_IMAGE_LIVE=1`; `None` (after SKIPPED) when
    /// the simulator cannot run here.
    pub async fn start(test: &str) -> Option<Target> {
        if std::env::var(LIVE_VARIABLE).as_deref() != Ok("1") {
            return Cloud::start(test).await.map(Target::Sim);
        }
        let token = std::env::var("HCLOUD_TOKEN").unwrap_or_default();
        assert!(
            !token.is_empty(),
            "{LIVE_VARIABLE}=1 runs {test} against a real Hetzner Cloud project: set HCLOUD_TOKEN to a read-write token of a project made for tests"
        );
        let endpoint = std::env::var("HCLOUD_ENDPOINT")
            .unwrap_or_else(|_| caph_hcloud::DEFAULT_ENDPOINT.to_string());
        let run_id = format!("{:08x}", rand::random::<u32>());
        eprintln!("{test}: LIVE against {endpoint}, names end in -{run_id}");
        Some(Target::Live {
            token,
            endpoint,
            run_id,
        })
    }

    /// The architectures to build: live, both (the real service runs arm natively).
    pub fn architectures(&self) -> Vec<&'static str> {
        match self {
            Target::Sim(_) => Cloud::architectures(),
            Target::Live { .. } => vec!["x86", "arm"],
        }
    }

    /// An image name of this run (live runs must not touch a project's own images).
    pub fn image_name(&self, base: &str) -> String {
        match self {
            Target::Sim(_) => base.to_string(),
            Target::Live { run_id, .. } => format!("{base}-{run_id}"),
        }
    }

    /// The end-to-end spec: artifacts from the mirror, or live from their upstream sites (a
    /// real server cannot reach a loopback mirror).
    pub fn spec(&self, name: &str, architectures: &[&str]) -> String {
        match self {
            Target::Sim(cloud) => cloud.spec(name, architectures),
            Target::Live { .. } => spec_for_mirror("unused", name, architectures)
                .lines()
                .filter(|line| !line.starts_with("url = ") && !line.starts_with("binaries_url = "))
                .map(|line| format!("{line}\n"))
                .collect(),
        }
    }

    /// The environment `caph-image` runs with.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Target::Sim(cloud) => cloud.env().into_iter().collect(),
            Target::Live {
                token, endpoint, ..
            } => vec![
                ("HCLOUD_TOKEN", token.clone()),
                ("HCLOUD_ENDPOINT", endpoint.clone()),
            ],
        }
    }

    /// A client of the same API.
    pub fn client(&self) -> caph_hcloud::Client {
        let (endpoint, token) = match self {
            Target::Sim(cloud) => (cloud.sim.api_url(), TOKEN.to_string()),
            Target::Live {
                token, endpoint, ..
            } => (endpoint.clone(), token.clone()),
        };
        caph_hcloud::Client::new(caph_hcloud::ClientConfig::new(
            endpoint,
            caph_hcloud::Token::new(token),
        ))
        .expect("a client")
    }

    /// The simulator, for checks only it can make (its request log, the mirror, OpenAPI).
    pub fn sim(&self) -> Option<&Cloud> {
        match self {
            Target::Sim(cloud) => Some(cloud),
            Target::Live { .. } => None,
        }
    }

    /// Asks the API, as `caph-image gc` would, whether anything of a build is left: servers, SSH
    /// keys or snapshots with the build label.
    pub async fn assert_nothing_left(&self) {
        use caph_hcloud::client::{ListImagesParams, ListServersParams, ListSshKeysParams};
        let client = self.client();
        let selector = || {
            caph_hcloud::client::LabelSelector::new()
                .exists("caph-image-build")
                .expect("a selector")
        };
        let servers = client
            .list_servers(&ListServersParams {
                label_selector: Some(selector()),
                ..Default::default()
            })
            .await
            .expect("servers listed");
        let keys = client
            .list_ssh_keys(&ListSshKeysParams {
                label_selector: Some(selector()),
                ..Default::default()
            })
            .await
            .expect("keys listed");
        let images = client
            .list_images(&ListImagesParams {
                label_selector: Some(selector()),
                ..Default::default()
            })
            .await
            .expect("images listed");
        let names = |list: Vec<String>| list.join(", ");
        assert!(
            servers.is_empty() && keys.is_empty() && images.is_empty(),
            "left behind: servers [{}], SSH keys [{}], unfinished snapshots [{}]",
            names(servers.iter().map(|server| server.name.clone()).collect()),
            names(keys.iter().map(|key| key.name.clone()).collect()),
            names(images.iter().map(|image| image.id.to_string()).collect())
        );
    }

    /// Live: deletes the snapshots the test made (they are billed); the simulator drops its own.
    pub async fn remove_snapshots(&self, ids: &[i64]) {
        if let Target::Live { .. } = self {
            let client = self.client();
            for id in ids {
                client
                    .delete_image(caph_hcloud::client::ImageId(*id))
                    .await
                    .expect("the test's snapshot is deleted");
            }
        }
    }
}
