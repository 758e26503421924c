//! Test harness: a real OpenSSH `sshd` on a loopback address, with a generated host key and one
//! authorized client key, killed (with every session process it spawned) on drop.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caph_ssh::{ConnectConfig, HostKeyPolicy, KeyPair};

pub const SSHD: &str = "/usr/sbin/sshd";

/// A prepared (and possibly running) sshd.
pub struct Sshd {
    pub addr: SocketAddr,
    pub user: String,
    pub host_key: KeyPair,
    pub client_key: KeyPair,
    pub dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Why the OpenSSH tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !Path::new(SSHD).exists() {
        return Some(format!("{SSHD} is missing (Debian package openssh-server)"));
    }
    None
}

fn current_user() -> String {
    if is_root() {
        return "root".to_owned();
    }
    if let Ok(user) = std::env::var("USER") {
        return user;
    }
    let output = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|status| {
            status
                .lines()
                .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A random loopback address other than 127.0.0.1, with a port that was free a moment ago.
fn free_loopback_addr() -> SocketAddr {
    loop {
        let ip = Ipv4Addr::new(
            127,
            rand::random_range(1..=254),
            rand::random(),
            rand::random_range(2..=254),
        );
        if let Ok(listener) = TcpListener::bind((ip, 0)) {
            return listener.local_addr().expect("local addr");
        }
    }
}

/// Writes a file only its owner can read: ssh and sshd refuse keys others can read.
pub fn write_private(path: &Path, content: &str) {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(content.as_bytes()).unwrap();
}

impl Sshd {
    /// Writes keys and config for a new sshd; does not start it.
    pub fn prepare() -> Sshd {
        let host_key = KeyPair::generate_ed25519("test host").unwrap();
        let client_key = KeyPair::generate_ed25519("test client").unwrap();
        Sshd::prepare_with(host_key, client_key, free_loopback_addr())
    }

    pub fn prepare_with(host_key: KeyPair, client_key: KeyPair, addr: SocketAddr) -> Sshd {
        if is_root() {
            // Privilege separation directory: sshd refuses to start as root without it.
            fs::create_dir_all("/run/sshd").unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let host_key_path = dir.path().join("host_key");
        write_private(
            &host_key_path,
            host_key.private_key_openssh().unwrap().expose(),
        );
        let authorized = dir.path().join("authorized_keys");
        fs::write(
            &authorized,
            format!("{}\n", client_key.public_key().to_openssh()),
        )
        .unwrap();
        let user = current_user();
        let config = dir.path().join("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress {addr}\n\
                 HostKey {host_key}\n\
                 AuthorizedKeysFile {authorized}\n\
                 PidFile none\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\n\
                 AllowUsers {user}\n\
                 LogLevel VERBOSE\n",
                host_key = host_key_path.display(),
                authorized = authorized.display(),
            ),
        )
        .unwrap();
        let log = dir.path().join("sshd.log");
        Sshd {
            addr,
            user,
            host_key,
            client_key,
            dir,
            config,
            log,
            child: None,
        }
    }

    /// Starts sshd and waits until its port accepts TCP.
    pub fn start(&mut self) {
        self.spawn();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("sshd exited with {status}: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "sshd did not listen on {} within 10 s: {}",
            self.addr,
            self.log_text()
        );
    }

    /// Starts sshd without waiting.
    pub fn spawn(&mut self) {
        let log = fs::File::create(&self.log).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sshd");
        self.child = Some(child);
    }

    /// Adds a line to sshd_config (before [`Sshd::start`]).
    pub fn add_config(&self, line: &str) {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&self.config)
            .unwrap();
        writeln!(file, "{line}").unwrap();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A connect config pinning this server's host key.
    pub fn pinned_config(&self) -> ConnectConfig {
        let mut config = ConnectConfig::new(
            self.addr,
            &self.user,
            self.client_key.clone(),
            HostKeyPolicy::Pinned(self.host_key.public_key()),
        );
        config.deadline = Duration::from_secs(20);
        config.dial_timeout = Duration::from_secs(5);
        config
    }

    /// Stops (SIGSTOP) sshd and every process it spawned: the TCP connections stay open but nothing
    /// answers, like a server that hung or a network that silently drops packets.
    pub fn freeze_all(&self) {
        let Some(child) = self.child.as_ref() else {
            return;
        };
        let mut victims = descendants(child.id());
        victims.push(child.id());
        for pid in &victims {
            let _ = Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Kills sshd and every process it spawned (session processes call setsid, so a process
    /// group kill would miss them): the server is gone, as if the machine died.
    pub fn kill_all(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let mut victims = descendants(child.id());
        victims.push(child.id());
        for pid in &victims {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = child.wait();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Every process below `root`, found through /proc's parent links.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(after_name) = stat.rfind(')').map(|index| &stat[index + 1..]) else {
            continue;
        };
        let Some(ppid) = after_name
            .split_whitespace()
            .nth(1)
            .and_then(|field| field.parse::<u32>().ok())
        else {
            continue;
        };
        parents.push((pid, ppid));
    }
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        for (pid, ppid) in &parents {
            if *ppid == parent && !found.contains(pid) {
                found.push(*pid);
            }
        }
        index += 1;
    }
    found.remove(0);
    found
}

/// Peak resident memory of this process so far, in bytes.
pub fn peak_rss() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmHWM:") {
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().unwrap();
            return kib * 1024;
        }
    }
    0
}

macro_rules! require_sshd {
    ($name:literal) => {
        if let Some(reason) = support::unavailable() {
            eprintln!("SKIPPED {}: {}", $name, reason);
            return;
        }
    };
}
pub(crate) use require_sshd;
