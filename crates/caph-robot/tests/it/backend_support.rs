//! Shared setup of the robot backend tests: the Robot simulator with rescue machines over real
//! sshd, a rootfs-like test tarball, a shipped spec, and a progress sink that records.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caph_core::ImageSpec;
use caph_core::backend::{Context, ProgressEvent, ProgressSink};
use caph_core::plan::{self, Action, Target};
use caph_robot::backend::{RobotBackend, RobotBackendConfig};
use caph_robot::client::{Credentials, RobotClient};
use caph_sim::machine::{SshMachines, SshMachinesConfig};
use caph_sim::robot::{
    RobotDrive, RobotServer, RobotSim, RobotSimConfig, SshRobotConfig, SshRobotMachines, TimeMode,
};
use tokio_util::sync::CancellationToken;

pub const USER: &str = "robot-user";
pub const PASSWORD: &str = "robot-secret";
pub const SERVER: u64 = 321;
/// The tarball's name: Debian 12, amd64, as installimage reads names.
pub const IMAGE_NAME: &str = "Debian-1200-bookworm-amd64-test.tar.gz";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shipped Debian 12 spec (its `[robot]` table: RAID1 on /dev/sda and /dev/sdb).
pub fn spec() -> ImageSpec {
    struct Files;
    impl caph_core::spec::SpecFiles for Files {
        fn read(&self, path: &str) -> Result<Vec<u8>, String> {
            std::fs::read(repo().join("images").join(path)).map_err(|error| error.to_string())
        }
    }
    let bytes = std::fs::read(repo().join("images/debian-12-k8s-1.36.toml")).expect("spec");
    caph_core::spec::load("debian-12-k8s-1.36.toml", &bytes, &Files).expect("valid spec")
}

/// Timeouts in seconds, as the simulator's boots take a second or two.
pub fn fast_config() -> RobotBackendConfig {
    RobotBackendConfig {
        ssh_port: 22,
        // The first rescue boot of a simulator copies the rescue template (~500 MB); with several
        // tests at once on two cores that takes tens of seconds.
        sw_reset_wait: Duration::from_secs(90),
        hw_reset_wait: Duration::from_secs(120),
        reboot_wait: Duration::from_secs(3),
        installed_wait: Duration::from_secs(120),
        install_timeout: Duration::from_secs(300),
        poll_interval: Duration::from_millis(500),
        dial_timeout: Duration::from_secs(3),
        cleanup_timeout: Duration::from_secs(30),
    }
}

/// Records every progress event, echoes output to stderr, and cancels when a line contains
/// the trigger.
#[derive(Debug, Default)]
pub struct Recorder {
    pub events: Mutex<Vec<ProgressEvent>>,
    pub cancel_on: Mutex<Option<(String, CancellationToken)>>,
}

impl Recorder {
    pub fn lines(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|event| match event {
                ProgressEvent::Output { line, .. } => Some(line.clone()),
                ProgressEvent::Phase { phase, detail, .. } => {
                    Some(format!("[{}] {detail}", phase.name()))
                }
                _ => None,
            })
            .collect()
    }
}

impl ProgressSink for Recorder {
    fn event(&self, event: ProgressEvent) {
        if let ProgressEvent::Output { line, .. } | ProgressEvent::Phase { detail: line, .. } =
            &event
        {
            eprintln!("[progress] {line}");
            if let Some((trigger, token)) = self.cancel_on.lock().unwrap().as_ref()
                && line.contains(trigger.as_str())
            {
                token.cancel();
            }
        }
        self.events.lock().unwrap().push(event);
    }
}

/// The simulator, its machines, a backend pointed at it, and a context.
pub struct Setup {
    pub sim: RobotSim,
    pub machines: Arc<SshMachines>,
    pub robot_machines: Arc<SshRobotMachines>,
    pub backend: RobotBackend,
    pub client: RobotClient,
    pub recorder: Arc<Recorder>,
    pub context: Context,
    pub work: tempfile::TempDir,
}

/// The `caph-sim` binary with the installimage entry point: `CAPH_SIM_BINARY`, else the one
/// cargo built beside this test (`cargo build -p caph-sim`).
fn installimage_binary() -> Result<PathBuf, String> {
    let binary = match std::env::var_os("CAPH_SIM_BINARY") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().map_err(|error| error.to_string())?;
            // target/debug/deps/it-<hash> -> target/debug/caph-sim
            exe.parent()
                .and_then(Path::parent)
                .map(|dir| dir.join("caph-sim"))
                .ok_or("no target directory")?
        }
    };
    let output = Command::new(&binary)
        .args(["installimage", "-h"])
        .output()
        .map_err(|error| {
            format!(
                "{}: {error} (build it with `cargo build -p caph-sim` or set CAPH_SIM_BINARY)",
                binary.display()
            )
        })?;
    if String::from_utf8_lossy(&output.stdout).contains("usage: installimage") {
        Ok(binary)
    } else {
        Err(format!(
            "{} has no `installimage` entry point",
            binary.display()
        ))
    }
}

/// Starts everything, or says why it cannot run here.
pub async fn setup(server: RobotServer) -> Result<Setup, String> {
    let binary = installimage_binary()?;
    let machines = Arc::new(
        SshMachines::new(SshMachinesConfig {
            log: Some(Arc::new(|line: &str| eprintln!("[machines] {line}"))),
            ..Default::default()
        })
        .map_err(|error| error.to_string())?,
    );
    let robot_machines = Arc::new(SshRobotMachines::new(SshRobotConfig {
        machines: machines.clone(),
        real_installimage: None,
        installimage_binary: binary,
        rescue_packages: caph_sim::robot::RESCUE_PACKAGES
            .iter()
            .map(|name| name.to_string())
            .collect(),
        log: Some(Arc::new(|line: &str| eprintln!("[robot] {line}"))),
    }));
    let sim = RobotSim::start(RobotSimConfig {
        user: USER.into(),
        password: PASSWORD.into(),
        time: TimeMode::Scaled(0.01),
        servers: vec![server],
        machines: robot_machines.clone(),
        ..Default::default()
    })
    .await
    .map_err(|error| error.to_string())?;
    let client = RobotClient::new(&sim.url(), Credentials::new(USER, PASSWORD)).expect("client");
    let backend = RobotBackend::new(client.clone(), fast_config());
    let recorder = Arc::new(Recorder::default());
    let context = Context {
        progress: recorder.clone(),
        cancel: CancellationToken::new(),
        build_id: "test-build".into(),
    };
    Ok(Setup {
        sim,
        machines,
        robot_machines,
        backend,
        client,
        recorder,
        context,
        work: tempfile::tempdir().expect("work dir"),
    })
}

/// An EX44-like server with two small drives (the install writes real sparse disk images).
pub fn small_server() -> RobotServer {
    let mut server = RobotServer::new(SERVER, "node-1");
    server.drives = ["/dev/sda", "/dev/sdb"]
        .into_iter()
        .map(|device| RobotDrive::new(device, 3 << 30))
        .collect();
    server
}

pub fn sh(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What goes into the test tarball.
pub struct TreeOptions {
    /// Include `sed` (the post-install script needs it to take swap out of fstab).
    pub sed: bool,
    /// An incompressible file of this many bytes, to make the upload long.
    pub padding_bytes: usize,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            sed: true,
            padding_bytes: 0,
        }
    }
}

/// A rootfs-like tarball: a usrmerged tree with bash and the tools the post-install script and
/// the verification use (systemctl with its libraries), the files the spec's plan places
/// (sysctl config, containerd and kubelet units), containerd enabled the way `systemctl enable`
/// does it, and kubelet and containerd stand-ins that print the spec's versions (the real
/// binaries are 50-100 MB downloads). Returns the tarball's path.
pub fn make_tarball(work: &Path, spec: &ImageSpec, options: &TreeOptions) -> PathBuf {
    let tree = work.join("tree");
    for dir in [
        "etc/ssh",
        "etc/sysctl.d",
        "etc/systemd/system/multi-user.target.wants",
        "boot",
        "usr/sbin",
        "usr/local/bin",
        "root",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var/lib/dbus",
    ] {
        std::fs::create_dir_all(tree.join(dir)).expect("dir");
    }
    let mut binaries = vec![
        "/usr/bin/bash",
        "/usr/bin/env",
        "/usr/bin/true",
        "/usr/bin/cat",
        "/usr/bin/head",
        "/usr/bin/wc",
        "/usr/bin/grep",
        "/usr/bin/hostname",
        "/usr/bin/ssh-keygen",
        "/usr/bin/systemctl",
        // The shared node checks read sysctl files and fstab with these.
        "/usr/bin/mawk",
        "/usr/bin/sort",
        "/usr/bin/ls",
    ];
    if options.sed {
        binaries.push("/usr/bin/sed");
    }
    for binary in binaries {
        caph_sim::libraries::copy_with_libraries(Path::new(binary), &tree)
            .unwrap_or_else(|error| panic!("copying {binary} and its libraries: {error}"));
    }
    // systemctl loads libsystemd-shared from a private directory that ldd names too; nothing more.
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
    ] {
        if !tree.join(link).exists() && tree.join(target).exists() {
            std::os::unix::fs::symlink(target, tree.join(link)).expect("symlink");
        }
    }
    // The files the spec's plan places, as the rootfs build would.
    let plan = plan::render(spec, Target::Tarball, caph_core::Arch::X86).expect("the plan");
    for step in &plan.steps {
        if let Action::PlaceFile { path, content, .. } = &step.action {
            let target = tree.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().expect("parent")).expect("dir");
            std::fs::write(&target, content).expect("placed file");
        }
    }
    assert!(
        tree.join("etc/sysctl.d/99-zz-caph-image.conf").exists(),
        "the plan places the sysctl file"
    );
    assert!(tree.join("etc/systemd/system/containerd.service").exists());
    // The host key placeholders the hygiene step leaves for installimage to regenerate.
    for key_type in plan::HOST_KEY_PLACEHOLDER_TYPES {
        std::fs::write(tree.join(format!("etc/ssh/ssh_host_{key_type}_key")), "")
            .expect("host key placeholder");
    }
    std::os::unix::fs::symlink("mawk", tree.join("usr/bin/awk")).expect("awk");
    for unit in ["containerd.service", "kubelet.service"] {
        std::os::unix::fs::symlink(
            format!("/etc/systemd/system/{unit}"),
            tree.join("etc/systemd/system/multi-user.target.wants")
                .join(unit),
        )
        .expect("enable the unit");
    }
    let files = [
        (
            "usr/local/bin/kubelet".to_string(),
            format!(
                "#!/bin/bash\necho \"Kubernetes v{}\"\n",
                spec.kubernetes.version
            ),
        ),
        (
            "usr/local/bin/containerd".to_string(),
            format!(
                "#!/bin/bash\necho \"containerd github.com/containerd/containerd/v2 v{}\"\n",
                spec.containerd.version
            ),
        ),
        (
            "etc/ssh/sshd_config".into(),
            "PermitRootLogin prohibit-password\n".into(),
        ),
        ("etc/hostname".into(), "image-builder\n".into()),
        (
            "etc/passwd".into(),
            "root:x:0:0:root:/root:/bin/bash\n".into(),
        ),
        ("etc/group".into(), "root:x:0:\n".into()),
        ("etc/machine-id".into(), String::new()),
        ("boot/vmlinuz-6.1.0-test".into(), "not a kernel\n".into()),
        (
            "boot/initrd.img-6.1.0-test".into(),
            "not an initrd\n".into(),
        ),
        (
            "usr/sbin/update-initramfs".into(),
            "#!/bin/sh\nexit 0\n".into(),
        ),
        ("usr/sbin/grub-install".into(), "#!/bin/sh\nexit 0\n".into()),
        // RAID layouts need mdadm in the image: installimage checks that it is there; the
        // simulated arrays are not real, so nothing runs it.
        ("usr/sbin/mdadm".into(), "#!/bin/sh\nexit 0\n".into()),
    ];
    for (path, content) in files {
        std::fs::write(tree.join(&path), content).expect("file");
    }
    for path in [
        "usr/local/bin/kubelet",
        "usr/local/bin/containerd",
        "usr/sbin/update-initramfs",
        "usr/sbin/grub-install",
        "usr/sbin/mdadm",
    ] {
        sh(Command::new("chmod").arg("0755").arg(tree.join(path)));
    }
    if options.padding_bytes > 0 {
        let mut padding = vec![0u8; options.padding_bytes];
        rand_fill(&mut padding);
        std::fs::write(tree.join("root/padding.bin"), padding).expect("padding");
    }
    let tarball = work.join(IMAGE_NAME);
    sh(Command::new("tar")
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=security.capability",
            "-czf",
        ])
        .arg(&tarball)
        .arg("-C")
        .arg(&tree)
        .arg("."));
    tarball
}

/// Incompressible bytes (xorshift; quality does not matter, only that gzip cannot shrink them).
fn rand_fill(buffer: &mut [u8]) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in buffer.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}
