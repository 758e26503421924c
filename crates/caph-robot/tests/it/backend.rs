//! The robot backend end to end against the Robot simulator, whose servers boot a rescue system
//! over real sshd with a simulated installimage, then the installed system: the full flow, and
//! each fault with the state it leaves and the message it gives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caph_robot::backend::{
    InstallCause, InstallError, InstallTarget, RobotBackend, layout_from_autosetup,
};
use caph_robot::client::{Credentials, RobotClient, md5_fingerprint};
use caph_sim::robot::{Fault, Power, RobotAddressOnly, RobotSim, RobotSimConfig, TimeMode};
use caph_ssh::{ConnectConfig, HostKeyPolicy, KeyPair};
use tokio_util::sync::CancellationToken;

use crate::backend_support::{
    self as support, IMAGE_NAME, PASSWORD, Recorder, SERVER, Setup, TreeOptions, USER,
};

/// The message as a user sees it (it stands alone: no source chain to add).
fn full_message(error: &InstallError) -> String {
    assert!(std::error::Error::source(error).is_none());
    error.to_string()
}

/// Sets up the simulator with real machines, or prints SKIPPED and returns `None`.
async fn setup_or_skip(test: &str) -> Option<Setup> {
    match support::setup(support::small_server()).await {
        Ok(setup) => Some(setup),
        Err(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            None
        }
    }
}

/// The end state every failure after the activation must leave: no pending activation.
fn assert_no_pending_rescue(setup: &Setup) {
    let state = setup.sim.state();
    assert!(
        !state.servers[0].rescue_active,
        "the rescue activation must not stay pending"
    );
}

/// The real `sha256sum`'s line for `tarball`, run in its directory so that it names the bare file.
fn sha256sum_line(tarball: &std::path::Path) -> String {
    let output = std::process::Command::new("sha256sum")
        .arg(tarball.file_name().expect("a file name"))
        .current_dir(tarball.parent().expect("a directory"))
        .output()
        .expect("sha256sum runs");
    assert!(output.status.success(), "sha256sum failed");
    String::from_utf8(output.stdout).expect("text")
}

/// Writes `<tarball>.sha256` as `sha256sum` writes it, and returns the digest.
fn write_checksum_file(tarball: &std::path::Path) -> String {
    let line = sha256sum_line(tarball);
    std::fs::write(format!("{}.sha256", tarball.display()), &line).expect("the checksum file");
    line[..64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_the_tarball_and_the_node_answers_with_the_layouts_hostname() {
    let test = "installs_the_tarball_and_the_node_answers_with_the_layouts_hostname";
    let Some(setup) = setup_or_skip(test).await else {
        return;
    };
    let spec = support::spec();
    let tarball = support::make_tarball(setup.work.path(), &spec, &TreeOptions::default());
    // With the checksum file `build tarball` writes: the upload is checked against it.
    let recorded = write_checksum_file(&tarball);
    // A hung OS ignores the sw reset: the backend must escalate to hw and still succeed.
    setup.sim.inject(Fault::IgnoreSwReset {
        server_number: SERVER,
    });
    let key = KeyPair::generate_ed25519("test").expect("key");
    let mut target = InstallTarget::new(SERVER, &tarball);
    target.key = Some(key.clone());
    let started = Instant::now();
    let report = setup
        .backend
        .install(&setup.context, &spec, &target)
        .await
        .unwrap_or_else(|error| panic!("{}", full_message(&error)));
    eprintln!("installed in {:.1?}: {report:#?}", started.elapsed());

    assert_eq!(report.hostname, format!("node-{SERVER}"));
    assert_eq!(report.image, IMAGE_NAME);
    assert_eq!(report.tarball_sha256, recorded);
    let lines = setup.recorder.lines();
    for expected in [
        format!("sha256 {recorded} matches {IMAGE_NAME}.sha256"),
        format!("the rescue system's sha256 {recorded} matches {IMAGE_NAME}.sha256"),
    ] {
        assert!(
            lines.iter().any(|line| line.contains(&expected)),
            "{expected:?} in {lines:#?}"
        );
    }
    assert_ne!(
        report.host_key_fingerprint,
        report.rescue_host_key_fingerprint
    );
    assert!(report.autosetup.contains("SWRAID 1\nSWRAIDLEVEL 1\n"));
    assert!(
        report.checks.iter().any(|check| check
            == &format!(
                "kubelet-version: \"Kubernetes v{}\"",
                spec.kubernetes.version
            )),
        "{:?}",
        report.checks
    );
    let state = setup.sim.state();
    assert_eq!(state.servers[0].power, Power::Disk);
    assert!(!state.servers[0].rescue_active);
    assert_eq!(
        state.servers[0].resets,
        vec!["sw".to_string(), "hw".to_string()],
        "sw ignored, then hw into the rescue system; `reboot` into the installed system"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("trusted on first use and pinned")),
        "the rescue host key fingerprint is printed"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("INSTALLATION COMPLETE"))
    );
    assert!(
        lines
            .iter()
            .any(|line| line == "the rescue system went down")
    );

    // SSH into the installed server, pinned to the key the report names.
    let address = SocketAddr::new(report.ip.parse().expect("ip"), 22);
    let host_key = caph_ssh::PublicKey::from_openssh(&report.host_key).expect("host key");
    let session = caph_ssh::connect_when_ready(
        &ConnectConfig::new(address, "root", key, HostKeyPolicy::Pinned(host_key)),
        &mut |_| {},
    )
    .await
    .expect("the installed system answers");
    let output = session
        .exec_capture("cat /etc/hostname; cat /etc/caph-image-install; cat /etc/fstab; test -x /usr/local/bin/kubelet && echo kubelet-there")
        .await
        .expect("commands run");
    eprintln!("{}", output.stdout);
    assert!(output.stdout.starts_with(&format!("node-{SERVER}\n")));
    assert!(
        output
            .stdout
            .contains(&format!("image={} ", spec.image.name))
    );
    assert!(output.stdout.contains("kubelet-there"));
    assert!(
        !setup.sim.state().servers[0]
            .machine_errors
            .iter()
            .any(|e| !e.is_empty())
    );
    // The key was the caller's: stored in Robot and left there; nothing else.
    let fingerprint = md5_fingerprint(&target.key.unwrap().public_key().to_openssh()).unwrap();
    let keys = setup.sim.state().keys;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].fingerprint, fingerprint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_onto_disk_images_with_a_shipped_layout_and_an_ephemeral_key() {
    let test = "installs_onto_disk_images_with_a_shipped_layout_and_an_ephemeral_key";
    let Some(setup) = setup_or_skip(test).await else {
        return;
    };
    let spec = support::spec();
    let tarball = support::make_tarball(setup.work.path(), &spec, &TreeOptions::default());
    let layout_text =
        std::fs::read_to_string(support::repo().join("installimage/single-disk.autosetup"))
            .expect("shipped layout");
    // The shipped /boot is 1 GiB; the simulated drive is 3 GiB, enough for / as well.
    let layout = layout_from_autosetup(&layout_text).expect("layout");
    // The test's own key, authorized beside the ephemeral one, to look at the result.
    let visitor = KeyPair::generate_ed25519("visitor").expect("key");
    let stored = setup
        .client
        .create_key("visitor", &visitor.public_key().to_openssh())
        .await
        .expect("key stored");
    let mut target = InstallTarget::new(SERVER, &tarball);
    target.layout = Some(layout);
    target.hostname = Some("disk-node".into());
    target.extra_keys = vec![stored.fingerprint.clone()];
    let report = setup
        .backend
        .install(&setup.context, &spec, &target)
        .await
        .unwrap_or_else(|error| panic!("{}", full_message(&error)));
    assert_eq!(report.hostname, "disk-node");
    // No checksum file beside this tarball: hashed while sent, and confirmed by the server.
    let lines = setup.recorder.lines();
    assert!(
        lines.iter().any(|line| line
            .contains(".sha256 beside the tarball: its sha256 is computed while it is sent")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|line| line.contains(&format!(
            "sha256 {} confirmed on the rescue system",
            report.tarball_sha256
        ))),
        "{lines:#?}"
    );
    // The ephemeral key is gone from Robot; the visitor's stays.
    let keys = setup.sim.state().keys;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].fingerprint, stored.fingerprint);
    // The disk images hold the system.
    let disk_dir = setup.robot_machines.disk_dir(SERVER).expect("disk dir");
    assert!(
        disk_dir.join("sda.img").exists()
            || std::fs::read_dir(&disk_dir).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".img")),
        "disk images in {}",
        disk_dir.display()
    );
    let address = SocketAddr::new(report.ip.parse().expect("ip"), 22);
    let host_key = caph_ssh::PublicKey::from_openssh(&report.host_key).expect("host key");
    let session = caph_ssh::connect_when_ready(
        &ConnectConfig::new(address, "root", visitor, HostKeyPolicy::Pinned(host_key)),
        &mut |_| {},
    )
    .await
    .expect("the installed system answers the visitor");
    let output = session
        .exec_capture("hostname; cat /etc/fstab")
        .await
        .expect("runs");
    assert!(
        output.stdout.starts_with("disk-node\n"),
        "{}",
        output.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescue_that_never_comes_up_escalates_sw_to_hw_then_times_out_and_removes_the_activation() {
    // No machines needed: the server never boots, so this runs without root.
    let sim = RobotSim::start(RobotSimConfig {
        user: USER.into(),
        password: PASSWORD.into(),
        time: TimeMode::Scaled(0.01),
        servers: vec![support::small_server()],
        machines: Arc::new(RobotAddressOnly::default()),
        ..Default::default()
    })
    .await
    .expect("simulator");
    sim.inject(Fault::RescueNeverBoots {
        server_number: SERVER,
    });
    let client = RobotClient::new(&sim.url(), Credentials::new(USER, PASSWORD)).expect("client");
    let mut config = support::fast_config();
    config.sw_reset_wait = Duration::from_secs(2);
    config.hw_reset_wait = Duration::from_secs(2);
    let backend = RobotBackend::new(client, config);
    let recorder = Arc::new(Recorder::default());
    let context = caph_core::backend::Context {
        progress: recorder.clone(),
        cancel: CancellationToken::new(),
        build_id: "never".into(),
    };
    let work = tempfile::tempdir().expect("dir");
    let tarball = work.path().join(IMAGE_NAME);
    std::fs::write(&tarball, b"not used").expect("tarball");
    let started = Instant::now();
    let error = backend
        .install(
            &context,
            &support::spec(),
            &InstallTarget::new(SERVER, &tarball),
        )
        .await
        .expect_err("no rescue system");
    let message = full_message(&error);
    eprintln!("after {:.1?}: {message}", started.elapsed());
    assert!(matches!(error.cause, InstallCause::RescueTimeout { .. }));
    assert_eq!(error.phase, "rescue");
    assert!(
        message.contains(
            "the rescue system did not come up: sw reset, waited 2s, then hw reset, waited 2s"
        ),
        "{message}"
    );
    assert!(message.contains("installimage did not run, so nothing on its disks changed"));
    assert!(
        message.contains("removed the rescue activation this run made"),
        "{message}"
    );
    assert!(message.contains("deleted the temporary Robot key"));
    let state = sim.state();
    assert_eq!(
        state.servers[0].resets,
        vec!["sw".to_string(), "hw".to_string()]
    );
    assert!(!state.servers[0].rescue_active);
    assert!(state.keys.is_empty(), "the ephemeral key is gone");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_autosetup_touches_nothing() {
    let (sim, backend, context) = without_machines("bad").await;
    // No architecture in the name: installimage would refuse it; so does the local check.
    let mut target = InstallTarget::new(SERVER, "/nonexistent/Debian-1200-bookworm-test.tar.gz");
    target.hostname = Some("node-1".into());
    let error = backend
        .install(&context, &support::spec(), &target)
        .await
        .expect_err("refused locally");
    let message = error.to_string();
    assert_eq!(error.phase, "prepare");
    assert!(
        message.contains("can not determine image arch from filename"),
        "{message}"
    );
    assert!(message.contains(&format!("nothing was changed on server {SERVER}")));
    assert!(sim.request_log().is_empty(), "no Robot call was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_upload_stops_before_installimage() {
    let test = "a_cut_upload_stops_before_installimage";
    let Some(setup) = setup_or_skip(test).await else {
        return;
    };
    let spec = support::spec();
    let tarball = support::make_tarball(setup.work.path(), &spec, &TreeOptions::default());
    // The first connection after the rescue boot is the backend's: cut it 256 KiB into the upload.
    setup
        .robot_machines
        .cut_next_connection_after(SERVER, 256 * 1024);
    let error = setup
        .backend
        .install(&setup.context, &spec, &InstallTarget::new(SERVER, &tarball))
        .await
        .expect_err("the upload breaks off");
    let message = full_message(&error);
    eprintln!("{message}");
    assert_eq!(error.phase, "upload");
    assert!(matches!(error.cause, InstallCause::Ssh { .. }));
    assert!(
        message.contains(
            "is in the rescue system; installimage did not run; nothing on its disks changed"
        ),
        "{message}"
    );
    assert!(
        !setup
            .recorder
            .lines()
            .iter()
            .any(|line| line.contains("Found AUTOSETUP")),
        "installimage never ran"
    );
    assert_no_pending_rescue(&setup);
    assert_eq!(setup.sim.state().servers[0].power, Power::Rescue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_wrong_on_arrival_stops_before_installimage() {
    let test = "a_checksum_wrong_on_arrival_stops_before_installimage";
    let Some(setup) = setup_or_skip(test).await else {
        return;
    };
    let spec = support::spec();
    let tarball = support::make_tarball(setup.work.path(), &spec, &TreeOptions::default());
    // Damages the upload on its way into the rescue system's disk, as a broken link or a
    // tampering middlebox would: the rescue system's `tee` (through which the upload is written
    // and hashed) gets a fourth byte that is not the one sent. Put in place as soon as the
    // rescue system's disk exists, long before the upload starts.
    let machines = setup.machines.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher_stop = stop.clone();
    let watcher = std::thread::spawn(move || -> bool {
        use std::os::unix::fs::PermissionsExt as _;
        let damaging_tee = format!(
            "#!/bin/sh\n# Test fault: the tarball's bytes are damaged on their way in.\ncase \"$*\" in\n  *{IMAGE_NAME}*) {{ dd bs=1 count=3 2>/dev/null; dd bs=1 count=1 of=/dev/null 2>/dev/null; printf X; cat; }} | /usr/bin/tee \"$@\" ;;\n  *) exec /usr/bin/tee \"$@\" ;;\nesac\n"
        );
        while !watcher_stop.load(std::sync::atomic::Ordering::SeqCst) {
            for boot in 0..64 {
                let Some(root) = machines.machine_root(SERVER * 1_000_000 + boot) else {
                    continue;
                };
                let bin = root.join("usr/local/bin");
                if bin.is_dir() {
                    let tee = bin.join("tee");
                    return std::fs::write(&tee, &damaging_tee).is_ok()
                        && std::fs::set_permissions(&tee, std::fs::Permissions::from_mode(0o755))
                            .is_ok();
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    });
    let result = setup
        .backend
        .install(&setup.context, &spec, &InstallTarget::new(SERVER, &tarball))
        .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let corrupted = watcher.join().expect("watcher");
    if !corrupted {
        panic!("the rescue system's disk never appeared; result: {result:?}");
    }
    let error = result.expect_err("the checksum does not match");
    let message = full_message(&error);
    eprintln!("{message}");
    assert_eq!(error.phase, "upload");
    assert!(message.contains("is corrupt: sent sha256"), "{message}");
    assert!(message.contains("installimage did not run; nothing on its disks changed"));
    assert!(
        !setup
            .recorder
            .lines()
            .iter()
            .any(|line| line.contains("Found AUTOSETUP")),
        "installimage never ran"
    );
    assert_no_pending_rescue(&setup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installimage_rejecting_the_config_is_surfaced_in_its_own_words() {
    let test = "installimage_rejecting_the_config_is_surfaced_in_its_own_words";
    let Some(setup) = setup_or_skip(test).await else {
        return;
    };
    let spec = support::spec();
    let built = support::make_tarball(setup.work.path(), &spec, &TreeOptions::default());
    // An arm64 image for a server taken to be arm64: locally valid, but the server is x86_64,
    // which only installimage in its rescue system can tell.
    let tarball = built.with_file_name("Debian-1200-bookworm-arm64-test.tar.gz");
    std::fs::rename(&built, &tarball).expect("renamed");
    let mut target = InstallTarget::new(SERVER, &tarball);
    target.machine = Some(caph_robot::autosetup::Machine {
        uefi: false,
        arm: true,
    });
    let error = setup
        .backend
        .install(&setup.context, &spec, &target)
        .await
        .expect_err("installimage rejects it");
    let message = full_message(&error);
    eprintln!("{message}");
    assert_eq!(error.phase, "installimage");
    assert!(
        message.contains("installimage rejected the config (exit status 1)"),
        "{message}"
    );
    assert!(
        message.contains("ERROR: can not install an arm64 image on a x86_64 system"),
        "installimage's own words: {message}"
    );
    assert!(
        message
            .contains("installimage stopped before touching the disks, so nothing on them changed"),
        "{message}"
    );
    assert_no_pending_rescue(&setup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_install_script_that_fails_leaves_no_marker_and_fails_the_install() {
    let test = "a_post_install_script_that_fails_leaves_no_marker_and_fails_the_install";
    let Some(setup) = setup_or_skip(test).await else {
        return;
    };
    let spec = support::spec();
    assert!(spec.system.disable_swap, "the script edits fstab with sed");
    // An image without sed: the post-install script fails before its last line.
    let tarball = support::make_tarball(
        setup.work.path(),
        &spec,
        &TreeOptions {
            sed: false,
            ..TreeOptions::default()
        },
    );
    let error = setup
        .backend
        .install(&setup.context, &spec, &InstallTarget::new(SERVER, &tarball))
        .await
        .expect_err("no marker");
    let message = full_message(&error);
    eprintln!("{message}");
    assert_eq!(error.phase, "installimage");
    assert!(matches!(error.cause, InstallCause::MarkerMissing { .. }));
    assert!(message.contains("did not print its marker CAPH_IMAGE_POST_INSTALL_FINISHED"));
    assert!(
        message.contains("sed"),
        "the script's failure is in the tail: {message}"
    );
    assert!(
        message.contains("installimage wrote the new system to the disks of server 321, but the install is incomplete"),
        "{message}"
    );
    assert_no_pending_rescue(&setup);
    assert_eq!(setup.sim.state().servers[0].power, Power::Rescue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_the_install_cleans_up_and_says_what_is_left() {
    let test = "ctrl_c_during_the_install_cleans_up_and_says_what_is_left";
    let Some(setup) = setup_or_skip(test).await else {
        return;
    };
    let spec = support::spec();
    let tarball = support::make_tarball(setup.work.path(), &spec, &TreeOptions::default());
    *setup.recorder.cancel_on.lock().unwrap() = Some((
        "Press X to continue".to_string(),
        setup.context.cancel.clone(),
    ));
    let error = setup
        .backend
        .install(&setup.context, &spec, &InstallTarget::new(SERVER, &tarball))
        .await
        .expect_err("cancelled");
    let message = full_message(&error);
    eprintln!("{message}");
    assert!(error.is_cancelled());
    assert_eq!(error.phase, "installimage");
    assert!(
        message.contains("installimage failed or was interrupted while installing"),
        "{message}"
    );
    assert!(message.contains("deleted the temporary Robot key"));
    assert_no_pending_rescue(&setup);
    assert!(setup.sim.state().keys.is_empty());
    let backend_error: caph_core::backend::BackendError = error.into();
    assert!(matches!(
        backend_error,
        caph_core::backend::BackendError::Cancelled {
            phase: "installimage",
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_through_the_backend_trait_checks_the_server_and_the_autosetup() {
    use caph_core::backend::{Backend, BuildRequest};
    let sim = RobotSim::start(RobotSimConfig {
        user: USER.into(),
        password: PASSWORD.into(),
        servers: vec![support::small_server()],
        machines: Arc::new(RobotAddressOnly::default()),
        ..Default::default()
    })
    .await
    .expect("simulator");
    let client = RobotClient::new(&sim.url(), Credentials::new(USER, PASSWORD)).expect("client");
    let context = caph_core::backend::Context {
        progress: Arc::new(Recorder::default()),
        cancel: CancellationToken::new(),
        build_id: "preflight".into(),
    };
    let request = BuildRequest {
        spec: Arc::new(support::spec()),
        architectures: vec![caph_core::Arch::X86],
        replace: false,
        keep_on_error: false,
    };
    let backend = RobotBackend::new(client, support::fast_config());
    assert_eq!(backend.name(), "robot");
    // Without a target, build refuses before touching anything.
    assert!(matches!(
        backend.build(&context, &request).await,
        Err(caph_core::backend::BackendError::Preflight(_))
    ));
    let good = backend
        .clone()
        .with_target(InstallTarget::new(SERVER, format!("/tmp/{IMAGE_NAME}")));
    let report = good.preflight(&context, &request).await.expect("preflight");
    assert_eq!(report.problems, Vec::<String>::new());
    assert!(
        report.checks.iter().any(|check| check
            == &format!(
                "autosetup for node-{SERVER} with {IMAGE_NAME} passes installimage's rules"
            )),
        "{:?}",
        report.checks
    );
    let missing = backend.with_target(InstallTarget::new(999, format!("/tmp/{IMAGE_NAME}")));
    let report = missing
        .preflight(&context, &request)
        .await
        .expect("preflight");
    assert!(
        report
            .problems
            .iter()
            .any(|problem| problem.contains("SERVER_NOT_FOUND")),
        "{:?}",
        report.problems
    );
    // Preflight only reads.
    assert!(
        sim.request_log()
            .iter()
            .all(|record| record.method == "GET"),
        "{:?}",
        sim.request_log()
    );
}

/// A Robot simulator whose servers have no machines behind them (so no root is needed), the
/// backend on it and a context: for refusals that must happen before any Robot call.
async fn without_machines(build_id: &str) -> (RobotSim, RobotBackend, caph_core::backend::Context) {
    let sim = RobotSim::start(RobotSimConfig {
        user: USER.into(),
        password: PASSWORD.into(),
        servers: vec![support::small_server()],
        machines: Arc::new(RobotAddressOnly::default()),
        ..Default::default()
    })
    .await
    .expect("simulator");
    let client = RobotClient::new(&sim.url(), Credentials::new(USER, PASSWORD)).expect("client");
    let backend = RobotBackend::new(client, support::fast_config());
    let context = caph_core::backend::Context {
        progress: Arc::new(Recorder::default()),
        cancel: CancellationToken::new(),
        build_id: build_id.into(),
    };
    (sim, backend, context)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_checksum_file_is_refused_before_anything_is_touched() {
    // No machines needed: nothing may reach Robot, so this runs without root.
    let (sim, backend, context) = without_machines("sidecar").await;
    let work = tempfile::tempdir().expect("dir");
    let tarball = work.path().join(IMAGE_NAME);
    std::fs::write(&tarball, b"a tarball beside a broken checksum file").expect("tarball");
    let checksum_file = work.path().join(format!("{IMAGE_NAME}.sha256"));
    let digest = "ab".repeat(32);
    for (content, problem) in [
        // Cut short, as an interrupted write leaves it.
        (
            digest[..40].to_string(),
            "does not start with a sha256 (64 hex digits)",
        ),
        // The checksum file of another tarball, renamed.
        (
            format!("{digest}  other.tar.gz\n"),
            "records the sha256 of \"other.tar.gz\", not of the tarball",
        ),
        (String::new(), "is empty"),
    ] {
        std::fs::write(&checksum_file, &content).expect("checksum file");
        let error = backend
            .install(
                &context,
                &support::spec(),
                &InstallTarget::new(SERVER, &tarball),
            )
            .await
            .expect_err("the checksum file is malformed");
        let message = full_message(&error);
        assert!(
            matches!(error.cause, InstallCause::ChecksumFile { .. }),
            "{message}"
        );
        for expected in [
            format!("{} {problem}", checksum_file.display()),
            format!("`sha256sum {IMAGE_NAME} > {IMAGE_NAME}.sha256`"),
            format!("nothing was changed on server {SERVER}"),
        ] {
            assert!(message.contains(&expected), "{expected:?} in {message}");
        }
    }
    assert!(sim.request_log().is_empty(), "no Robot call was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarball_changed_after_its_checksum_file_is_refused_before_anything_is_touched() {
    // No machines needed: nothing may reach Robot, so this runs without root.
    let (sim, backend, context) = without_machines("changed").await;
    let work = tempfile::tempdir().expect("dir");
    let spec = support::spec();
    let tarball = support::make_tarball(work.path(), &spec, &TreeOptions::default());
    let recorded = write_checksum_file(&tarball);
    // One byte flipped after the checksum file was written, as bit rot or an edit would.
    let mut bytes = std::fs::read(&tarball).expect("tarball");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&tarball, &bytes).expect("tarball");
    let actual = sha256sum_line(&tarball)[..64].to_owned();
    let error = backend
        .install(&context, &spec, &InstallTarget::new(SERVER, &tarball))
        .await
        .expect_err("the digests differ");
    let message = full_message(&error);
    assert!(
        matches!(error.cause, InstallCause::TarballChecksum { .. }),
        "{message}"
    );
    for expected in [
        format!("has sha256 {actual}, but {IMAGE_NAME}.sha256 beside it says {recorded}"),
        format!("nothing was changed on server {SERVER}"),
    ] {
        assert!(message.contains(&expected), "{expected:?} in {message}");
    }
    assert!(sim.request_log().is_empty(), "no Robot call was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_that_does_not_take_is_followed_by_a_hw_reset() {
    let test = "a_reboot_that_does_not_take_is_followed_by_a_hw_reset";
    let Some(setup) = setup_or_skip(test).await else {
        return;
    };
    let spec = support::spec();
    let tarball = support::make_tarball(setup.work.path(), &spec, &TreeOptions::default());
    // The rescue system's `reboot` (the simulator's script) is replaced by one that fails, as a
    // reboot that hangs in a kernel driver never takes the machine down.
    let machines = setup.machines.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher_stop = stop.clone();
    let watcher = std::thread::spawn(move || -> bool {
        while !watcher_stop.load(std::sync::atomic::Ordering::SeqCst) {
            for boot in 0..64 {
                let Some(root) = machines.machine_root(SERVER * 1_000_000 + boot) else {
                    continue;
                };
                let script = root.join("usr/local/sbin/reboot");
                let hostname =
                    std::fs::read_to_string(root.join("etc/hostname")).unwrap_or_default();
                if hostname.trim() == "rescue" && script.exists() {
                    return std::fs::write(
                        &script,
                        "#!/bin/sh\necho 'reboot: the machine did not go down' >&2\nexit 1\n",
                    )
                    .is_ok();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    let result = setup
        .backend
        .install(&setup.context, &spec, &InstallTarget::new(SERVER, &tarball))
        .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        watcher.join().expect("watcher"),
        "the rescue's reboot was replaced"
    );
    let report = result.unwrap_or_else(|error| panic!("{}", full_message(&error)));
    assert_eq!(report.hostname, format!("node-{SERVER}"));
    let lines = setup.recorder.lines();
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("the rescue system still answers")
                && line.ends_with("after reboot: hw reset")),
        "{lines:#?}"
    );
    assert_eq!(
        setup.sim.state().servers[0].resets,
        vec!["sw".to_string(), "hw".to_string()],
        "sw into the rescue system, hw after the reboot did not take"
    );
    assert_eq!(setup.sim.state().servers[0].power, Power::Disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_only_ephemeral_keys_left_by_killed_runs() {
    use caph_core::backend::{Backend, GcOptions};
    let sim = RobotSim::start(RobotSimConfig {
        user: USER.into(),
        password: PASSWORD.into(),
        servers: vec![support::small_server()],
        machines: Arc::new(RobotAddressOnly::default()),
        ..Default::default()
    })
    .await
    .expect("simulator");
    let client = RobotClient::new(&sim.url(), Credentials::new(USER, PASSWORD)).expect("client");
    for name in ["caph-image-build-killed", "someones-own-key"] {
        let key = KeyPair::generate_ed25519(name).expect("key");
        client
            .create_key(name, &key.public_key().to_openssh())
            .await
            .expect("stored");
    }
    let backend = RobotBackend::new(client, support::fast_config());
    let context = caph_core::backend::Context {
        progress: Arc::new(Recorder::default()),
        cancel: CancellationToken::new(),
        build_id: "gc".into(),
    };
    // Keys made a moment ago are younger than a day: kept.
    let report = backend
        .gc(
            &context,
            GcOptions {
                older_than: Duration::from_secs(86_400),
                dry_run: false,
            },
        )
        .await
        .expect("gc");
    assert!(report.removed.is_empty(), "{:?}", report.removed);
    let dry = backend
        .gc(
            &context,
            GcOptions {
                older_than: Duration::ZERO,
                dry_run: true,
            },
        )
        .await
        .expect("gc");
    assert_eq!(dry.removed.len(), 1, "{:?}", dry.removed);
    assert!(dry.removed[0].starts_with("Robot key caph-image-build-killed ("));
    assert_eq!(sim.state().keys.len(), 2, "a dry run removes nothing");
    let real = backend
        .gc(
            &context,
            GcOptions {
                older_than: Duration::ZERO,
                dry_run: false,
            },
        )
        .await
        .expect("gc");
    assert_eq!(real.removed, dry.removed);
    let keys = sim.state().keys;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].name, "someones-own-key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_waiting_for_the_rescue_system_removes_the_pending_activation() {
    let sim = RobotSim::start(RobotSimConfig {
        user: USER.into(),
        password: PASSWORD.into(),
        time: TimeMode::Scaled(0.01),
        servers: vec![support::small_server()],
        machines: Arc::new(RobotAddressOnly::default()),
        ..Default::default()
    })
    .await
    .expect("simulator");
    sim.inject(Fault::RescueNeverBoots {
        server_number: SERVER,
    });
    let client = RobotClient::new(&sim.url(), Credentials::new(USER, PASSWORD)).expect("client");
    let backend = RobotBackend::new(client, support::fast_config());
    let recorder = Arc::new(Recorder::default());
    let cancel = CancellationToken::new();
    *recorder.cancel_on.lock().unwrap() = Some(("sw reset; waiting up to".into(), cancel.clone()));
    let context = caph_core::backend::Context {
        progress: recorder.clone(),
        cancel,
        build_id: "cancel-rescue".into(),
    };
    let work = tempfile::tempdir().expect("dir");
    let tarball = work.path().join(IMAGE_NAME);
    std::fs::write(&tarball, b"not used").expect("tarball");
    let started = Instant::now();
    let error = backend
        .install(
            &context,
            &support::spec(),
            &InstallTarget::new(SERVER, &tarball),
        )
        .await
        .expect_err("cancelled");
    let message = full_message(&error);
    assert!(error.is_cancelled(), "{message}");
    assert_eq!(error.phase, "rescue");
    assert!(
        message.contains("removed the rescue activation this run made"),
        "{message}"
    );
    assert!(
        message.contains("nothing on its disks changed"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "cancellation is prompt"
    );
    let state = sim.state();
    assert!(!state.servers[0].rescue_active);
    assert!(state.keys.is_empty());
    assert!(
        sim.request_log()
            .iter()
            .any(|record| record.method == "DELETE"
                && record.path == format!("/boot/{SERVER}/rescue")),
        "DELETE /boot/{SERVER}/rescue was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_12_an_encrypted_layout_is_installed_encrypted_and_its_passphrase_never_shown() {
    let test = "issue_12_an_encrypted_layout_is_installed_encrypted_and_its_passphrase_never_shown";
    let Some(setup) = setup_or_skip(test).await else {
        return;
    };
    const PASSPHRASE: &str = "correct horse # battery";
    let spec = support::spec();
    let tarball = support::make_tarball(setup.work.path(), &spec, &TreeOptions::default());
    let layout = layout_from_autosetup(&format!(
        "DRIVE1 /dev/sda\nCRYPTPASSWORD {PASSPHRASE}\nPART /boot ext4 1G\nPART / ext4 all crypt\n"
    ))
    .expect("a layout with crypt is carried");
    let mut target = InstallTarget::new(SERVER, &tarball);
    target.layout = Some(layout);
    let report = setup
        .backend
        .install(&setup.context, &spec, &target)
        .await
        .unwrap_or_else(|error| panic!("{}", full_message(&error)));
    assert!(report.autosetup.contains("PART / ext4 all crypt\n"));
    assert!(report.autosetup.contains("CRYPTPASSWORD [FILTERED]\n"));
    assert!(!format!("{report:?}").contains("horse"));
    // installimage shows its config, passphrase included; the progress shows it filtered.
    let lines = setup.recorder.lines();
    assert!(lines.iter().all(|line| !line.contains("horse")));
    assert!(lines.iter().any(|line| line == "CRYPTPASSWORD [FILTERED]"));
    // installimage encrypted / with the passphrase as written, blanks and # included.
    let disk_dir = setup.robot_machines.disk_dir(SERVER).expect("disk dir");
    let manifest: caph_sim::installimage::Manifest = serde_json::from_str(
        &std::fs::read_to_string(disk_dir.join(caph_sim::installimage::MANIFEST_NAME))
            .expect("manifest"),
    )
    .expect("manifest json");
    let [encrypted] = manifest.encrypted.as_slice() else {
        panic!("one encrypted partition: {:?}", manifest.encrypted);
    };
    assert_eq!(encrypted.mount, "/");
    assert!(encrypted.opens_with(PASSPHRASE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_naming_a_drive_the_server_lacks_is_refused_with_the_drives_it_has() {
    let test = "a_layout_naming_a_drive_the_server_lacks_is_refused_with_the_drives_it_has";
    let Some(setup) = setup_or_skip(test).await else {
        return;
    };
    let spec = support::spec();
    let tarball = support::make_tarball(setup.work.path(), &spec, &TreeOptions::default());
    let mut target = InstallTarget::new(SERVER, &tarball);
    target.layout = Some(
        layout_from_autosetup("DRIVE1 /dev/nvme0n1\nPART /boot ext4 512M\nPART / ext4 all\n")
            .expect("a layout"),
    );
    let error = setup
        .backend
        .install(&setup.context, &spec, &target)
        .await
        .expect_err("the server has no nvme0n1");
    let message = full_message(&error);
    eprintln!("{message}");
    assert!(
        matches!(error.cause, InstallCause::Drives { .. }),
        "{message}"
    );
    assert!(
        message.contains("DRIVE1 /dev/nvme0n1 is not a drive of this machine"),
        "{message}"
    );
    // The drives the rescue system's lsblk lists, and nothing was uploaded or installed.
    assert!(
        message.contains("the rescue system shows: /dev/sda (3.2 GB), /dev/sdb (3.2 GB)")
            || message.contains("the rescue system shows: /dev/sda (3.2 GB); /dev/sdb (3.2 GB)"),
        "{message}"
    );
    assert!(
        message.contains("installimage did not run; nothing on its disks changed"),
        "{message}"
    );
    assert!(
        !setup
            .recorder
            .lines()
            .iter()
            .any(|line| line.contains("upload")),
        "nothing was uploaded"
    );
    assert_no_pending_rescue(&setup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drive_hints_resolve_against_the_rescue_systems_drives() {
    let test = "drive_hints_resolve_against_the_rescue_systems_drives";
    let Some(setup) = setup_or_skip(test).await else {
        return;
    };
    let spec = support::spec();
    let tarball = support::make_tarball(setup.work.path(), &spec, &TreeOptions::default());
    let mut target = InstallTarget::new(SERVER, &tarball);
    target.layout = Some(
        layout_from_autosetup(
            "DRIVE1 smallest\nDRIVE2 smallest\nSWRAID 1\nSWRAIDLEVEL 1\nPART /boot ext4 512M\nPART / ext4 all\n",
        )
        .expect("a layout"),
    );
    let report = setup
        .backend
        .install(&setup.context, &spec, &target)
        .await
        .expect("the install");
    assert!(
        report
            .autosetup
            .contains("DRIVE1 /dev/sda\nDRIVE2 /dev/sdb\n"),
        "{}",
        report.autosetup
    );
    assert!(
        setup
            .recorder
            .lines()
            .iter()
            .any(|line| line.contains("drives: /dev/sda (3.2 GB); /dev/sdb (3.2 GB)")),
        "{:?}",
        setup.recorder.lines()
    );
}
