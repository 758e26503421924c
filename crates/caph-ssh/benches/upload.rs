//! Benchmark `upload` (run by `cargo xtask bench`): caph-ssh's streamed, sha256-verified upload,
//! with the digest known beforehand (as `build robot` uploads a tarball with its `.sha256`) and
//! hashed while sending, against OpenSSH's `scp` and `ssh 'cat > file'`, to the same loopback
//! sshd with the same key, the same file and the same destination directory.
//!
//! Every upload is its own process run under GNU time, connection and authentication included,
//! so wall time and peak RSS compare process to process: caph-ssh's runs this binary again as a
//! child (`CAPH_BENCH_UPLOAD_CHILD` set), which connects with a pinned host key, uploads and
//! prints the verified digest.

#[path = "../../../xtask/src/bench/harness.rs"]
mod harness;
// The sshd of the OpenSSH tests; the bench uses part of it.
#[allow(unused_imports, unused_macros)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use caph_ssh::{
    ConnectConfig, ConnectEvent, HostKeyPolicy, KeyPair, PublicKey, Sha256Hex, connect_when_ready,
};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use support::Sshd;

/// 512 MiB: long enough (seconds) that connection setup is a small part of the time, and far
/// more than any buffer on the way, so a transfer that buffered would show in its RSS.
const FILE_BYTES: u64 = 512 * 1024 * 1024;
/// Set in the environment of the child that does caph-ssh's upload.
const CHILD_VAR: &str = "CAPH_BENCH_UPLOAD_CHILD";
/// Debian's sftp server, which `scp` needs since OpenSSH 9 (it speaks SFTP by default).
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";
const TITLE: &str = "SSH upload vs OpenSSH scp";
/// Issue 14's target: a verified upload at 0.9x of `scp`'s throughput or better.
const SCP_TARGET: f64 = 0.9;

/// The ways to upload compared.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `Session::upload_expecting`: the digest known beforehand, nothing hashed on the client.
    CaphSshKnownDigest,
    /// `Session::upload`: hashed on the client while sending.
    CaphSsh,
    Scp,
    /// `scp` with the cipher caph-ssh prefers, for a like-for-like line.
    ScpAesGcm,
    SshCat,
    SshCatSha256,
    /// The same work with caph-ssh's cipher: the limit for caph-ssh's upload on this server.
    SshCatSha256AesGcm,
}

/// One way to upload, run as one process.
struct Case {
    label: &'static str,
    /// The destination file name in the destination directory.
    file: &'static str,
    kind: Kind,
}

impl Case {
    /// Whether the command prints the sha256 of what arrived (checked against the source's).
    fn prints_digest(&self) -> bool {
        matches!(
            self.kind,
            Kind::CaphSshKnownDigest
                | Kind::CaphSsh
                | Kind::SshCatSha256
                | Kind::SshCatSha256AesGcm
        )
    }
}

/// The cipher caph-ssh puts first (client preference decides an SSH negotiation).
const AES_GCM: &str = "aes256-gcm@openssh.com";

const CASES: [Case; 7] = [
    Case {
        label: "**caph-ssh upload, sha256 known** (`upload_expecting`, as `build robot` uploads a tarball with its `.sha256`: nothing hashed on the client; `tee temp \\| openssl dgst -sha256` on the server, then `chmod`, `mv`)",
        file: "caph-ssh-known.bin",
        kind: Kind::CaphSshKnownDigest,
    },
    Case {
        label: "**caph-ssh upload, hashed while sending** (`upload`, for a source without a recorded digest; the same server side)",
        file: "caph-ssh.bin",
        kind: Kind::CaphSsh,
    },
    Case {
        label: "OpenSSH `scp` (SFTP protocol)",
        file: "scp.bin",
        kind: Kind::Scp,
    },
    Case {
        label: "OpenSSH `scp -c aes256-gcm@openssh.com` (caph-ssh's cipher)",
        file: "scp-aes-gcm.bin",
        kind: Kind::ScpAesGcm,
    },
    Case {
        label: "OpenSSH `ssh host 'cat > file'`",
        file: "ssh-cat.bin",
        kind: Kind::SshCat,
    },
    Case {
        label: "OpenSSH `ssh host 'tee file \\| openssl dgst -sha256'` (caph-ssh's work)",
        file: "ssh-cat-sha256.bin",
        kind: Kind::SshCatSha256,
    },
    Case {
        label: "OpenSSH `ssh -c aes256-gcm@openssh.com host 'tee file \\| openssl dgst -sha256'` (caph-ssh's work and cipher)",
        file: "ssh-cat-sha256-aes-gcm.bin",
        kind: Kind::SshCatSha256AesGcm,
    },
];

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Run {
    seconds: f64,
    rss_kib: u64,
    /// User plus system seconds of the uploading process and its children (not the server's).
    cpu: f64,
}

fn main() {
    if std::env::var_os(CHILD_VAR).is_some() {
        child();
        return;
    }
    let section = match unavailable() {
        Some(reason) => {
            eprintln!("SKIPPED upload: {reason}");
            harness::skipped_section(TITLE, &reason)
        }
        None => measure(),
    };
    harness::emit(&section).expect("the section is written");
}

/// Why this machine cannot run the benchmark, if it cannot.
fn unavailable() -> Option<String> {
    if let Some(reason) = support::unavailable() {
        return Some(reason);
    }
    for (path, package) in [
        ("/usr/bin/scp", "openssh-client"),
        ("/usr/bin/ssh", "openssh-client"),
        // The OpenSSH line that does caph-ssh's work hashes with it, as caph-ssh's upload does
        // on a server that has it.
        ("/usr/bin/openssl", "openssl"),
        (harness::GNU_TIME, "time"),
    ] {
        if !Path::new(path).exists() {
            return Some(format!("{path} is missing (Debian package {package})"));
        }
    }
    None
}

/// Files the uploads share.
struct Setup {
    sshd: Sshd,
    source: PathBuf,
    digest: String,
    dest_dir: PathBuf,
    key: PathBuf,
    known_hosts: PathBuf,
    host_public_key: PathBuf,
}

fn measure() -> String {
    let runs = harness::runs();
    let mut sshd = Sshd::prepare();
    let sftp = if Path::new(SFTP_SERVER).exists() {
        SFTP_SERVER
    } else {
        "internal-sftp"
    };
    sshd.add_config(&format!("Subsystem sftp {sftp}"));
    sshd.start();
    let dir = sshd.dir.path().to_path_buf();
    let source = dir.join("source.bin");
    eprintln!(
        "upload: writing {} MiB of random bytes...",
        FILE_BYTES >> 20
    );
    let digest = write_random_file(&source);
    let dest_dir = dir.join("dest");
    fs::create_dir(&dest_dir).expect("create the destination directory");
    let key = dir.join("client_key");
    support::write_private(
        &key,
        sshd.client_key.private_key_openssh().unwrap().expose(),
    );
    let known_hosts = dir.join("known_hosts");
    let host_line = sshd.host_key.public_key().to_openssh();
    fs::write(
        &known_hosts,
        format!("[{}]:{} {host_line}\n", sshd.addr.ip(), sshd.addr.port()),
    )
    .expect("write known_hosts");
    let host_public_key = dir.join("host_key.pub");
    fs::write(&host_public_key, &host_line).expect("write the host public key");
    let setup = Setup {
        sshd,
        source,
        digest,
        dest_dir,
        key,
        known_hosts,
        host_public_key,
    };
    let cipher = openssh_cipher(&setup);

    let mut measured: Vec<Vec<Run>> = vec![Vec::new(); CASES.len()];
    // Round robin, so a burst of load from elsewhere hits every command alike.
    for round in 1..=runs {
        for (case, runs) in CASES.iter().zip(&mut measured) {
            runs.push(run_case(&setup, case));
        }
        eprintln!("upload: round {round}/{runs} measured");
    }
    render(runs, &cipher, sftp, &measured)
}

/// Fills `path` with `FILE_BYTES` random (incompressible) bytes and returns their sha256.
fn write_random_file(path: &Path) -> String {
    let mut file = fs::File::create(path).expect("create the source file");
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut rng = rand::rng();
    for _ in 0..FILE_BYTES / chunk.len() as u64 {
        rng.fill_bytes(&mut chunk);
        hasher.update(&chunk);
        file.write_all(&chunk).expect("write the source file");
    }
    file.sync_all().expect("sync the source file");
    hex::encode(hasher.finalize())
}

/// The OpenSSH client options every OpenSSH command here uses: this key only, this host key only,
/// no configuration from the machine.
fn openssh_options(setup: &Setup) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-i".into(),
        setup.key.display().to_string(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", setup.known_hosts.display()),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
    ]
}

fn ssh_command(setup: &Setup, options: &[&str], remote: &str) -> Command {
    let mut command = Command::new("/usr/bin/ssh");
    command
        .args(openssh_options(setup))
        .args(options)
        .arg("-p")
        .arg(setup.sshd.addr.port().to_string())
        .arg(format!("{}@{}", setup.sshd.user, setup.sshd.addr.ip()))
        .arg(remote);
    command
}

/// The cipher OpenSSH's client negotiates with this sshd (from `ssh -v`).
fn openssh_cipher(setup: &Setup) -> String {
    let output = ssh_command(setup, &["-v"], "true")
        .output()
        .expect("run ssh -v");
    assert!(
        output.status.success(),
        "ssh to the benchmark's sshd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .find_map(|line| line.split_once("kex: client->server cipher: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("unknown")
        .to_owned()
}

fn run_case(setup: &Setup, case: &Case) -> Run {
    let dest = setup.dest_dir.join(case.file);
    let dest_text = dest.display().to_string();
    let command = match case.kind {
        Kind::CaphSsh | Kind::CaphSshKnownDigest => {
            let mut command =
                Command::new(std::env::current_exe().expect("the benchmark's own path"));
            command
                .env(CHILD_VAR, "1")
                .arg(setup.sshd.addr.to_string())
                .arg(&setup.sshd.user)
                .arg(&setup.key)
                .arg(&setup.host_public_key)
                .arg(&setup.source)
                .arg(&dest);
            if case.kind == Kind::CaphSshKnownDigest {
                command.arg(&setup.digest);
            }
            command
        }
        Kind::Scp | Kind::ScpAesGcm => {
            let mut command = Command::new("/usr/bin/scp");
            command.args(openssh_options(setup)).args([
                "-q",
                "-P",
                &setup.sshd.addr.port().to_string(),
            ]);
            if case.kind == Kind::ScpAesGcm {
                command.args(["-c", AES_GCM]);
            }
            command.arg(&setup.source).arg(format!(
                "{}@{}:{dest_text}",
                setup.sshd.user,
                setup.sshd.addr.ip()
            ));
            command
        }
        Kind::SshCat => ssh_command(setup, &[], &format!("cat > '{dest_text}'")),
        Kind::SshCatSha256 => ssh_command(
            setup,
            &[],
            &format!("tee '{dest_text}' | openssl dgst -sha256 -r"),
        ),
        Kind::SshCatSha256AesGcm => ssh_command(
            setup,
            &["-c", AES_GCM],
            &format!("tee '{dest_text}' | openssl dgst -sha256 -r"),
        ),
    };
    let report = setup.dest_dir.join(format!("{}.time", case.file));
    let mut timed = harness::under_gnu_time(&command, &report);
    let source = fs::File::open(&setup.source).expect("open the source file");
    // The ssh commands read the file on stdin; the others ignore it.
    timed.stdin(Stdio::from(source)).stderr(Stdio::piped());
    let started = Instant::now();
    let output = timed.output().expect("run the upload");
    let seconds = started.elapsed().as_secs_f64();
    let usage = harness::read_gnu_time(&report).expect("GNU time's report");
    // A benchmark of a failed upload is worthless.
    assert!(
        output.status.success(),
        "{:?} failed: {}",
        command.get_program(),
        String::from_utf8_lossy(&output.stderr)
    );
    let size = fs::metadata(&dest).map(|meta| meta.len()).unwrap_or(0);
    assert_eq!(size, FILE_BYTES, "{} arrived incomplete", case.file);
    if case.prints_digest() {
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            printed.starts_with(&setup.digest),
            "{}: the digest {printed:?} is not the source's {}",
            case.file,
            setup.digest
        );
    }
    // Removed at once, so its dirty pages are dropped instead of written back during the next
    // upload.
    fs::remove_file(&dest).expect("remove the uploaded file");
    Run {
        seconds,
        rss_kib: usage.rss_kib,
        cpu: usage.cpu,
    }
}

/// caph-ssh's upload, in its own process: `ADDR USER KEY HOST_PUBLIC_KEY SOURCE DEST [SHA256]`,
/// with the digest known beforehand when `SHA256` is given.
fn child() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, user, key, host_key, source, dest, expected) = match &args[..] {
        [addr, user, key, host_key, source, dest] => {
            (addr, user, key, host_key, source, dest, None)
        }
        [addr, user, key, host_key, source, dest, digest] => (
            addr,
            user,
            key,
            host_key,
            source,
            dest,
            Some(Sha256Hex::parse(digest).expect("a sha256")),
        ),
        _ => panic!("usage: ADDR USER KEY HOST_PUBLIC_KEY SOURCE DEST [SHA256], got {args:?}"),
    };
    let addr: SocketAddr = addr.parse().expect("an address");
    let key = KeyPair::from_openssh(&fs::read_to_string(key).expect("read the key"))
        .expect("an OpenSSH private key");
    let host_key = PublicKey::from_openssh(
        fs::read_to_string(host_key)
            .expect("read the host key")
            .trim(),
    )
    .expect("an OpenSSH public key");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let config = ConnectConfig::new(addr, user, key, HostKeyPolicy::Pinned(host_key));
        let session = connect_when_ready(&config, &mut |_: ConnectEvent<'_>| {})
            .await
            .expect("connect");
        let source = tokio::fs::File::open(source)
            .await
            .expect("open the source");
        let report = match &expected {
            Some(expected) => session
                .upload_expecting(source, dest, 0o600, expected, &mut |_| {})
                .await
                .expect("upload"),
            None => session
                .upload(source, dest, 0o600, &mut |_| {})
                .await
                .expect("upload"),
        };
        session.close().await;
        println!("{}  {}", report.sha256, report.bytes);
    });
}

fn render(runs: usize, cipher: &str, sftp: &str, measured: &[Vec<Run>]) -> String {
    let megabytes = FILE_BYTES as f64 / 1e6;
    let seconds =
        |runs: &[Run]| harness::median(&runs.iter().map(|run| run.seconds).collect::<Vec<_>>());
    let rss = |runs: &[Run]| {
        harness::median(
            &runs
                .iter()
                .map(|run| harness::kib_to_mib(run.rss_kib))
                .collect::<Vec<_>>(),
        )
    };
    let mut text = String::new();
    let _ = writeln!(text, "## {TITLE}\n");
    let _ = writeln!(
        text,
        "- one OpenSSH `sshd` on a loopback address (the OpenSSH tests' harness), one ed25519 \
         client key, one file of {} MiB of random bytes read from the page cache, one \
         destination directory on the same disk; each uploaded file is checked for its size (and \
         its sha256 where the command prints one) and removed",
        FILE_BYTES >> 20
    );
    let _ = writeln!(
        text,
        "- every upload is one process under GNU time, connection and authentication included; \
         caph-ssh's are a small program (release build) around `Session::upload_expecting`, \
         which streams the file given the sha256 known beforehand (as `build robot` does with a \
         tarball's `.sha256`) and hashes nothing, and around `Session::upload`, which hashes the \
         file while sending it; on the server `tee` writes it to a temporary file and hands the \
         same bytes to `openssl dgst -sha256` (hashed as written, never read back); the \
         server's digest is compared with the expected (or the sent) one, then the mode set and \
         the file renamed"
    );
    let _ = writeln!(
        text,
        "- cipher: OpenSSH's client negotiated `{cipher}` by default; caph-ssh offers \
         `{AES_GCM}` first (russh runs it on aws-lc), and the client's order decides an SSH \
         negotiation, so the `scp -c {AES_GCM}` line is the like-for-like transfer and the last line \
         (OpenSSH doing caph-ssh's server-side work with caph-ssh's cipher) the like-for-like \
         verified upload; `scp` uses the \
         SFTP protocol (server: `{sftp}`); client and server share the machine's cores, so this \
         measures CPU cost more than any network"
    );
    let _ = writeln!(
        text,
        "- median of {runs} round-robin runs; MB/s is 10^6 bytes per second of wall time; peak \
         RSS is the largest process (for `scp`, its `ssh`); client CPU is the user and system \
         time of the uploading process and its children (GNU time), the server's not included\n"
    );
    let _ = writeln!(
        text,
        "| upload of {} MiB | wall s | MB/s | client CPU s | peak RSS MiB |",
        FILE_BYTES >> 20
    );
    let _ = writeln!(text, "|---|---:|---:|---:|---:|");
    let cpu = |runs: &[Run]| harness::median(&runs.iter().map(|run| run.cpu).collect::<Vec<_>>());
    for (case, runs) in CASES.iter().zip(measured) {
        let _ = writeln!(
            text,
            "| {} | {:.2} | {:.0} | {:.2} | {:.1} |",
            case.label,
            seconds(runs),
            megabytes / seconds(runs),
            cpu(runs),
            rss(runs)
        );
    }
    let throughput = |index: usize| megabytes / seconds(&measured[index]);
    let index = |kind: Kind| CASES.iter().position(|case| case.kind == kind).unwrap_or(0);
    let (known, hashing, scp, scp_aes_gcm, same_work, same_work_aes_gcm) = (
        index(Kind::CaphSshKnownDigest),
        index(Kind::CaphSsh),
        index(Kind::Scp),
        index(Kind::ScpAesGcm),
        index(Kind::SshCatSha256),
        index(Kind::SshCatSha256AesGcm),
    );
    let against_scp = |index: usize| throughput(index) / throughput(scp);
    let _ = writeln!(
        text,
        "\n{} caph-ssh's verified upload with the sha256 known (`build robot`'s upload of a \
         tarball with its `.sha256`) runs at {:.0} MB/s, {:.2}x `scp`'s {:.0} MB/s (default \
         cipher; target {SCP_TARGET}x: {}), {:.2}x `scp -c {AES_GCM}`'s {:.0} MB/s, {:.2}x \
         `ssh 'tee file | openssl dgst -sha256'` (the same work) and {:.2}x the same work with \
         its cipher ({:.0} MB/s, itself {:.2}x `scp`: the limit of this check here), with {:.1} \
         MiB peak RSS ({:.1} MiB for `scp`); hashed while sending (no recorded digest) it runs at \
         {:.0} MB/s, {:.2}x `scp`, with {:.2} client CPU s against {:.2} with the sha256 known.",
        harness::RESULT_PREFIX,
        throughput(known),
        against_scp(known),
        throughput(scp),
        if against_scp(known) >= SCP_TARGET {
            "met"
        } else {
            "MISSED"
        },
        throughput(known) / throughput(scp_aes_gcm),
        throughput(scp_aes_gcm),
        throughput(known) / throughput(same_work),
        throughput(known) / throughput(same_work_aes_gcm),
        throughput(same_work_aes_gcm),
        against_scp(same_work_aes_gcm),
        rss(&measured[known]),
        rss(&measured[scp]),
        throughput(hashing),
        against_scp(hashing),
        cpu(&measured[hashing]),
        cpu(&measured[known]),
    );
    text
}
