//! caph-ssh against a real OpenSSH sshd on loopback: host keys, readiness, exec, upload, failures.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caph_ssh::{
    ConnectEvent, HostKeyPolicy, KeyPair, OutputLine, OutputStream, Sha256Hex, SshError, TofuPin,
    connect_when_ready,
};
use support::{Sshd, require_sshd};

fn no_events() -> impl FnMut(ConnectEvent<'_>) + Send {
    |_| {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_host_key_connects_and_commands_stream_their_output() {
    require_sshd!("pinned_host_key_connects_and_commands_stream_their_output");
    let mut sshd = Sshd::prepare();
    sshd.start();
    let session = connect_when_ready(&sshd.pinned_config(), &mut no_events())
        .await
        .unwrap();
    assert_eq!(
        session.host_key().fingerprint(),
        sshd.host_key.fingerprint()
    );

    let mut lines = Vec::new();
    let status = session
        .exec(
            "echo one; echo oops >&2; sleep 0.2; echo two; printf partial",
            &mut |line: OutputLine<'_>| lines.push((line.stream, line.text.to_owned())),
        )
        .await
        .unwrap();
    assert_eq!(status, 0);
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|(stream, _)| *stream == OutputStream::Stdout)
        .map(|(_, text)| text.as_str())
        .collect();
    let stderr: Vec<&str> = lines
        .iter()
        .filter(|(stream, _)| *stream == OutputStream::Stderr)
        .map(|(_, text)| text.as_str())
        .collect();
    assert_eq!(stdout, ["one", "two", "partial"]);
    assert_eq!(stderr, ["oops"]);

    let status = session
        .exec("echo failing >&2; exit 3", &mut |_| {})
        .await
        .unwrap();
    assert_eq!(status, 3);

    // Lines arrive while the command runs, not when it ends.
    let started = Instant::now();
    let mut first_line_after = None;
    session
        .exec("echo early; sleep 1; echo late", &mut |line: OutputLine<
            '_,
        >| {
            if line.text == "early" {
                first_line_after = Some(started.elapsed());
            }
        })
        .await
        .unwrap();
    let first_line_after = first_line_after.expect("saw the early line");
    assert!(
        first_line_after < Duration::from_millis(900),
        "first line only after {first_line_after:?}"
    );

    let mut echoed = Vec::new();
    let status = session
        .exec_with_stdin(
            "tr a-z A-Z",
            &b"hello\nworld\n"[..],
            &mut |line: OutputLine<'_>| echoed.push(line.text.to_owned()),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, echoed),
        (0, vec!["HELLO".to_owned(), "WORLD".to_owned()])
    );

    let captured = session.exec_capture("cat").await.unwrap();
    assert_eq!(
        (captured.exit_code, captured.stdout.as_str()),
        (0, ""),
        "stdin is closed, not left open"
    );

    let error = session
        .exec("kill -TERM $$", &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(error, SshError::Signalled { ref signal, .. } if signal == "TERM"),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("killed by signal TERM"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_mismatch_is_a_hard_error_naming_both_fingerprints() {
    require_sshd!("pinned_mismatch_is_a_hard_error_naming_both_fingerprints");
    let mut sshd = Sshd::prepare();
    sshd.start();
    let other = KeyPair::generate_ed25519("impostor").unwrap();
    let mut config = sshd.pinned_config();
    config.host_key = HostKeyPolicy::Pinned(other.public_key());
    let started = Instant::now();
    let mut retries = 0;
    let error = connect_when_ready(&config, &mut |event: ConnectEvent<'_>| {
        if matches!(event, ConnectEvent::Retrying { .. }) {
            retries += 1;
        }
    })
    .await
    .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, SshError::HostKeyMismatch { .. }),
        "{error:?}"
    );
    assert!(
        message.contains(other.fingerprint().as_str()),
        "expected fingerprint missing: {message}"
    );
    assert!(
        message.contains(sshd.host_key.fingerprint().as_str()),
        "presented fingerprint missing: {message}"
    );
    assert_eq!(retries, 0, "a mismatch is not retried");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_on_first_use_records_the_first_key_and_pins_it() {
    require_sshd!("trust_on_first_use_records_the_first_key_and_pins_it");
    let mut sshd = Sshd::prepare();
    sshd.start();
    let pin = TofuPin::new();
    let mut config = sshd.pinned_config();
    config.host_key = HostKeyPolicy::TrustOnFirstUse(pin.clone());

    let trusted = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&trusted);
    let mut on_event = move |event: ConnectEvent<'_>| {
        if let ConnectEvent::HostKeyTrusted { fingerprint, .. } = event {
            record.lock().unwrap().push(fingerprint.clone());
        }
    };
    let first = connect_when_ready(&config, &mut on_event).await.unwrap();
    assert_eq!(
        trusted.lock().unwrap().as_slice(),
        [sshd.host_key.fingerprint()]
    );
    assert_eq!(
        pin.recorded().unwrap().fingerprint(),
        sshd.host_key.fingerprint()
    );
    first.close().await;

    // The same server again: accepted, nothing newly trusted.
    let again = connect_when_ready(&config, &mut on_event).await.unwrap();
    assert_eq!(trusted.lock().unwrap().len(), 1);
    again.close().await;

    // A different server on the same address (a reinstall, or an impostor): refused.
    drop(sshd);
    let mut replaced = Sshd::prepare_with(
        KeyPair::generate_ed25519("new host").unwrap(),
        config.client_key.clone(),
        config.addr,
    );
    replaced.start();
    let error = connect_when_ready(&config, &mut on_event)
        .await
        .unwrap_err();
    assert!(
        matches!(error, SshError::HostKeyMismatch { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains(replaced.host_key.fingerprint().as_str()),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_when_ready_waits_for_a_server_that_starts_late() {
    require_sshd!("connect_when_ready_waits_for_a_server_that_starts_late");
    let mut sshd = Sshd::prepare();
    let config = sshd.pinned_config();
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        sshd.start();
        sshd
    });
    let mut refused = 0;
    let started = Instant::now();
    let session = connect_when_ready(&config, &mut |event: ConnectEvent<'_>| {
        if let ConnectEvent::Retrying { error, .. } = event {
            assert!(error.is_transient(), "{error}");
            refused += 1;
        }
    })
    .await
    .unwrap();
    let waited = started.elapsed();
    let _sshd = starter.join().unwrap();
    assert!(
        refused >= 2,
        "expected refused dials before sshd started, saw {refused}"
    );
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert_eq!(session.exec("true", &mut |_| {}).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_gives_up_at_the_deadline_with_the_last_error() {
    require_sshd!("connect_gives_up_at_the_deadline_with_the_last_error");
    let sshd = Sshd::prepare(); // never started: every dial is refused
    let mut config = sshd.pinned_config();
    config.deadline = Duration::from_secs(2);
    let started = Instant::now();
    let error = connect_when_ready(&config, &mut no_events())
        .await
        .unwrap_err();
    assert!(
        started.elapsed() <= Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    let SshError::NotReady {
        attempts, ref last, ..
    } = error
    else {
        panic!("{error:?}")
    };
    assert!(attempts >= 3, "{attempts}");
    assert!(matches!(**last, SshError::Connect { .. }), "{last:?}");
    let chain = format!("{error}: {}", std::error::Error::source(&error).unwrap());
    assert!(chain.contains(&sshd.addr.to_string()), "{chain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorized_key_is_rejected_after_a_few_tries() {
    require_sshd!("an_unauthorized_key_is_rejected_after_a_few_tries");
    let mut sshd = Sshd::prepare();
    sshd.start();
    let mut config = sshd.pinned_config();
    config.client_key = KeyPair::generate_ed25519("stranger").unwrap();
    let mut retries = 0;
    let error = connect_when_ready(&config, &mut |event: ConnectEvent<'_>| {
        if matches!(event, ConnectEvent::Retrying { .. }) {
            retries += 1;
        }
    })
    .await
    .unwrap_err();
    assert!(matches!(error, SshError::AuthRejected { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains(config.client_key.fingerprint().as_str()),
        "{error}"
    );
    assert_eq!(
        retries, 3,
        "tolerated rejections while cloud-init installs keys"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_command_is_a_clear_error() {
    require_sshd!("a_server_killed_mid_command_is_a_clear_error");
    let mut sshd = Sshd::prepare();
    sshd.start();
    let session = connect_when_ready(&sshd.pinned_config(), &mut no_events())
        .await
        .unwrap();
    let addr = sshd.addr;
    let killer = Arc::new(Mutex::new(Some(sshd)));
    let in_callback = Arc::clone(&killer);
    let started = Instant::now();
    let error = session
        .exec(
            "echo started; sleep 60; echo never",
            &mut |line: OutputLine<'_>| {
                if line.text == "started" {
                    // The whole server dies: listener and session processes.
                    in_callback.lock().unwrap().take();
                }
            },
        )
        .await
        .unwrap_err();
    assert!(
        killer.lock().unwrap().is_none(),
        "the command started before the kill"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "noticed only after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(error, SshError::ConnectionLost { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("connection to {addr} lost while running `echo started; sleep 60; echo never`")
    );
    assert!(session.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_writes_atomically_and_verifies_the_checksum() {
    require_sshd!("upload_writes_atomically_and_verifies_the_checksum");
    let mut sshd = Sshd::prepare();
    sshd.start();
    let session = connect_when_ready(&sshd.pinned_config(), &mut no_events())
        .await
        .unwrap();
    let target = sshd.dir.path().join("uploaded file.bin");
    let data: Vec<u8> = (0..300_000u32).map(|index| (index % 251) as u8).collect();
    let mut progress = Vec::new();
    let report = session
        .upload(&data[..], target.to_str().unwrap(), 0o640, &mut |bytes| {
            progress.push(bytes)
        })
        .await
        .unwrap();
    assert_eq!(report.bytes, data.len() as u64);
    assert_eq!(std::fs::read(&target).unwrap(), data);
    use sha2::Digest;
    assert_eq!(report.sha256, hex::encode(sha2::Sha256::digest(&data)));
    assert_eq!(progress.last().copied(), Some(data.len() as u64));
    assert!(progress.windows(2).all(|pair| pair[0] < pair[1]));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert_no_temporary_files(sshd.dir.path());

    // A target directory that does not exist: the remote `cat` fails and says why.
    let error = session
        .upload(&b"x"[..], "/nonexistent-dir/file", 0o644, &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(error, SshError::UploadCommandFailed { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("No such file or directory"),
        "{error}"
    );
}

/// A `ForceCommand` script that runs the requested command, but first feeds an upload's data
/// (the command that starts with `umask 077`) through `damage`, a shell pipeline stage.
fn server_that_damages_uploads(sshd: &Sshd, damage: &str) -> std::path::PathBuf {
    let script = sshd.dir.path().join("damage.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             case \"$SSH_ORIGINAL_COMMAND\" in\n\
             \"umask 077 && \"*) {damage} | eval \"$SSH_ORIGINAL_COMMAND\";;\n\
             *) eval \"$SSH_ORIGINAL_COMMAND\";;\n\
             esac\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// A `damage` stage for [`server_that_damages_uploads`]: one byte flipped on the way to the disk,
/// as a broken link or a tampering middlebox might, the fourth becoming an `X`. `dd bs=1` reads
/// exactly the bytes it passes on, so nothing else is lost.
const FOURTH_BYTE_BECOMES_X: &str =
    "{ dd bs=1 count=3 2>/dev/null; dd bs=1 count=1 of=/dev/null 2>/dev/null; printf X; cat; }";

/// `data` as [`FOURTH_BYTE_BECOMES_X`] delivers it.
fn with_fourth_byte_x(data: &[u8]) -> Vec<u8> {
    let mut damaged = data.to_vec();
    damaged[3] = b'X';
    damaged
}

/// Starts `sshd` with [`server_that_damages_uploads`] feeding uploads through `damage`.
fn start_damaging_uploads(sshd: &mut Sshd, damage: &str) {
    let script = server_that_damages_uploads(sshd, damage);
    sshd.add_config(&format!("ForceCommand {}", script.display()));
    sshd.start();
}

/// Uploads `data` to a server whose copy arrives as `damaged`, and checks the refusal: both
/// digests named, no target, no temporary file.
async fn check_damaged_upload_is_refused(sshd: &Sshd, data: &[u8], damaged: &[u8]) {
    let session = connect_when_ready(&sshd.pinned_config(), &mut no_events())
        .await
        .unwrap();
    let target = sshd.dir.path().join("target");
    let error = session
        .upload(data, target.to_str().unwrap(), 0o644, &mut |_| {})
        .await
        .unwrap_err();
    let (sent, remote) = (sha256_of(data).to_string(), sha256_of(damaged).to_string());
    let message = error.to_string();
    assert!(
        matches!(error, SshError::ChecksumMismatch { .. }),
        "{error:?}"
    );
    assert!(
        message.contains(&sent) && message.contains(&remote),
        "{message}"
    );
    assert!(!target.exists(), "the target must not appear");
    assert_no_temporary_files(sshd.dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_upload_fails_with_both_digests_and_leaves_no_file() {
    require_sshd!("a_corrupted_upload_fails_with_both_digests_and_leaves_no_file");
    let mut sshd = Sshd::prepare();
    start_damaging_uploads(&mut sshd, FOURTH_BYTE_BECOMES_X);
    let data = b"kubelet binary, allegedly\n";
    check_damaged_upload_is_refused(&sshd, data, &with_fourth_byte_x(data)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_openssl_hashes_with_sha256sum_and_still_catches_damage() {
    require_sshd!("a_server_without_openssl_hashes_with_sha256sum_and_still_catches_damage");
    let mut sshd = Sshd::prepare();
    // `openssl` as a shell function that fails, as on a server without it: the upload falls
    // back to coreutils' sha256sum. The damage this time is a byte appended on the way.
    let script = server_that_damages_uploads(&sshd, "{ cat; printf X; }");
    let wrapper = sshd.dir.path().join("no-openssl.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nopenssl() {{ echo 'openssl: not here' >&2; return 127; }}\n. {}\n",
            script.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    sshd.add_config(&format!("ForceCommand {}", wrapper.display()));
    sshd.start();

    // The remote digest in the error is sha256sum's: `openssl` gave none.
    let data = b"containerd, allegedly\n";
    let mut damaged = data.to_vec();
    damaged.push(b'X');
    check_damaged_upload_is_refused(&sshd, data, &damaged).await;
}

fn sha256_of(data: &[u8]) -> Sha256Hex {
    use sha2::Digest;
    Sha256Hex::parse(&hex::encode(sha2::Sha256::digest(data))).expect("a digest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_with_a_known_digest_is_written_when_the_server_agrees() {
    require_sshd!("an_upload_with_a_known_digest_is_written_when_the_server_agrees");
    let mut sshd = Sshd::prepare();
    sshd.start();
    let session = connect_when_ready(&sshd.pinned_config(), &mut no_events())
        .await
        .unwrap();
    let target = sshd.dir.path().join("rootfs.tar.gz");
    // Several chunks, the last one partial.
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17u32)
        .map(|index| (index % 253) as u8)
        .collect();
    let expected = sha256_of(&data);
    let mut progress = Vec::new();
    let report = session
        .upload_expecting(
            &data[..],
            target.to_str().unwrap(),
            0o600,
            &expected,
            &mut |bytes| progress.push(bytes),
        )
        .await
        .unwrap();
    assert_eq!(report.bytes, data.len() as u64);
    assert_eq!(report.sha256, expected.as_str());
    assert_eq!(std::fs::read(&target).unwrap(), data);
    assert_eq!(progress.last().copied(), Some(data.len() as u64));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_no_temporary_files(sshd.dir.path());
}

/// Uploads `data` expecting `expected` and checks the refusal: both digests named, the two
/// possible causes said, no target, no temporary file, the session still usable.
async fn check_known_digest_upload_is_refused(
    sshd: &Sshd,
    data: &[u8],
    expected: &Sha256Hex,
    arrived: &[u8],
) {
    let session = connect_when_ready(&sshd.pinned_config(), &mut no_events())
        .await
        .unwrap();
    let target = sshd.dir.path().join("target");
    let error = session
        .upload_expecting(data, target.to_str().unwrap(), 0o644, expected, &mut |_| {})
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, SshError::ExpectedDigestMismatch { .. }),
        "{error:?}"
    );
    let remote = sha256_of(arrived);
    assert!(
        message.contains(&format!("the expected sha256 is {expected}"))
            && message.contains(&format!("the server's copy has sha256 {remote}")),
        "{message}"
    );
    assert!(
        message.contains(
            "either the file differs from its recorded digest or the transfer corrupted it"
        ),
        "{message}"
    );
    assert!(!target.exists(), "the target must not appear");
    assert_no_temporary_files(sshd.dir.path());
    let output = session.exec_capture("echo still here").await.unwrap();
    assert_eq!(output.stdout, "still here\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_changed_after_its_digest_was_recorded_fails_the_known_digest_upload() {
    require_sshd!("a_source_changed_after_its_digest_was_recorded_fails_the_known_digest_upload");
    let mut sshd = Sshd::prepare();
    sshd.start();
    let recorded: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|index| (index % 241) as u8)
        .collect();
    let expected = sha256_of(&recorded);
    // One byte flipped after the digest was written down; nothing here hashes the source, so
    // only the server's digest can tell.
    let mut changed = recorded.clone();
    changed[1_000_003] ^= 0x01;
    check_known_digest_upload_is_refused(&sshd, &changed, &expected, &changed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_damaged_on_the_way_fail_the_known_digest_upload() {
    require_sshd!("bytes_damaged_on_the_way_fail_the_known_digest_upload");
    let mut sshd = Sshd::prepare();
    // The fourth byte becomes an `X` between the SSH channel and the server's `tee`.
    start_damaging_uploads(&mut sshd, FOURTH_BYTE_BECOMES_X);
    let data = b"etcd snapshot, allegedly\n";
    let damaged = with_fourth_byte_x(data);
    check_known_digest_upload_is_refused(&sshd, data, &sha256_of(data), &damaged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_notice_a_server_that_stops_answering() {
    require_sshd!("keepalives_notice_a_server_that_stops_answering");
    let mut sshd = Sshd::prepare();
    sshd.start();
    let mut config = sshd.pinned_config();
    // Short keepalives so the test is quick; the defaults notice the same within about a minute.
    config.keepalive_interval = Duration::from_millis(500);
    config.keepalive_max = 2;
    let session = connect_when_ready(&config, &mut no_events()).await.unwrap();
    let sshd = Arc::new(Mutex::new(sshd));
    let in_callback = Arc::clone(&sshd);
    let mut frozen_at = None;
    let error = session
        .exec("echo started; sleep 30", &mut |line: OutputLine<'_>| {
            if line.text == "started" {
                // Hung, not dead: the socket stays open and the kernel still ACKs, nothing answers.
                in_callback.lock().unwrap().freeze_all();
                frozen_at = Some(Instant::now());
            }
        })
        .await
        .unwrap_err();
    let noticed_after = frozen_at.expect("the command started").elapsed();
    assert!(
        matches!(error, SshError::ConnectionLost { .. }),
        "{error:?}"
    );
    assert!(
        noticed_after < Duration::from_secs(10),
        "noticed only after {noticed_after:?}"
    );
    eprintln!("a frozen server was noticed after {noticed_after:?}");
}

/// Fails if an upload's temporary file (`*.caph-upload-*`) is left in `dir`.
fn assert_no_temporary_files(dir: &std::path::Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().contains("caph-upload"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A source that yields `good` bytes in small reads, then fails like a disk read error.
struct FailingSource {
    good: usize,
}

impl tokio::io::AsyncRead for FailingSource {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.good == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("disk read failed")));
        }
        let length = self.good.min(buffer.remaining()).min(64 * 1024);
        buffer.put_slice(&vec![b'z'; length]);
        self.good -= length;
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_fails_midway_leaves_no_file_and_the_session_usable() {
    require_sshd!("a_source_that_fails_midway_leaves_no_file_and_the_session_usable");
    let mut sshd = Sshd::prepare();
    sshd.start();
    let session = connect_when_ready(&sshd.pinned_config(), &mut no_events())
        .await
        .unwrap();
    let target = sshd.dir.path().join("target");
    // Several chunks read ahead and some sent before the failure.
    let source = FailingSource {
        good: 5 * 1024 * 1024 + 123,
    };
    let error = session
        .upload(source, target.to_str().unwrap(), 0o644, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(error, SshError::UploadSource { .. }), "{error:?}");
    assert!(!target.exists(), "the target must not appear");
    assert_no_temporary_files(sshd.dir.path());
    // The connection survives a failed channel.
    let output = session.exec_capture("echo still here").await.unwrap();
    assert_eq!(output.stdout, "still here\n");
}
