//! A test run killed with SIGKILL cannot tear its machines down; the next `SshMachines::new` must.
//! The test re-runs its own binary as the run to be killed.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use caph_sim::host::{CloudInit, DiskSource, MachineHost, MachineSpec};
use caph_sim::machine::{SshMachines, SshMachinesConfig};

const TEST: &str = "machine_left_running_by_a_killed_run_is_swept";
/// Set in the child to the file it reports to: it creates a machine, reports it, and waits to be killed.
const CHILD_ENV: &str = "CAPH_SIM_ORPHAN_CHILD";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_left_running_by_a_killed_run_is_swept() {
    if let Some(report) = std::env::var_os(CHILD_ENV) {
        return be_the_killed_run(PathBuf::from(report)).await;
    }
    // Probe the prerequisites first, so a machine without them skips instead of failing.
    match SshMachines::new(SshMachinesConfig::default()) {
        Ok(probe) => probe.prepare_image("debian-12", "x86").await.unwrap(),
        Err(error) => {
            eprintln!("SKIPPED {TEST}: {error}");
            return;
        }
    }
    // The child reports through a file: a test's stdout is captured by the test harness.
    let report_dir = tempfile::tempdir().unwrap();
    let report = report_dir.path().join("ready");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--test-threads=1"])
        .env(CHILD_ENV, &report)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let line = loop {
        if let Ok(line) = std::fs::read_to_string(&report)
            && line.ends_with('\n')
        {
            break line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the child never reported its machine"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut fields = line.split_whitespace();
    let address: SocketAddr = fields.next().unwrap().parse().unwrap();
    let instance_dir = PathBuf::from(fields.next().unwrap());
    assert!(
        TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok(),
        "the child's machine runs"
    );

    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    // The machine outlives its owner: nothing tore it down.
    assert!(
        TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok(),
        "orphaned sshd still answers"
    );
    assert!(instance_dir.exists());

    let _sweeper = SshMachines::new(SshMachinesConfig::default()).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = TcpStream::connect_timeout(&address, Duration::from_secs(2)).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    assert!(!instance_dir.exists(), "the orphan's directory is swept");
}

async fn be_the_killed_run(report: PathBuf) {
    let machines = SshMachines::new(SshMachinesConfig::default()).unwrap();
    let info = machines
        .create(MachineSpec {
            server_id: 41,
            hostname: "orphan".to_owned(),
            disk: DiskSource::System {
                name: "debian-12".to_owned(),
                architecture: "x86".to_owned(),
            },
            authorized_keys: Vec::new(),
            user_data: None,
            cloud_init: CloudInit::Off,
        })
        .await
        .unwrap();
    machines.power_on(41).await.unwrap();
    let line = format!("{}:22 {}\n", info.ipv4, machines.instance_dir().display());
    std::fs::write(report, line).unwrap();
    // Wait to be killed; the bound only keeps a forgotten child from living forever.
    tokio::time::sleep(Duration::from_secs(300)).await;
}
