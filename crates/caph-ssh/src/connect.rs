//! Connect when ready: dial with backoff until a deadline, verify the host key, authenticate.
//!
//! A freshly created server refuses connections while it boots, then accepts TCP while sshd is not
//! yet answering, then answers. [`connect_when_ready`] keeps dialing through all of that until its
//! overall deadline, each dial bounded by its own timeout; it stops at once on a verdict that
//! another try cannot change: a host key other than the pinned one.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use crate::connection::ConnectionThread;
use crate::error::SshError;
use crate::keys::{Fingerprint, KeyPair, PublicKey};
use crate::session::Session;

/// How long to wait for a server to accept SSH, by default. Real Hetzner Cloud servers take about
/// 20-40 s from creation to SSH; arm types and busy locations can take a few minutes. Five minutes
/// covers the slow tail without hiding a server that will never come up.
pub const DEFAULT_READY_DEADLINE: Duration = Duration::from_secs(300);

/// The bound on one dial (TCP connect plus SSH handshake and authentication), by default. A TCP
/// connect to a booting host whose packets are dropped would otherwise hang for the kernel's ~2
/// minutes of SYN retries; a live sshd completes the whole exchange in well under a second, and a
/// freshly booted one busy with cloud-init in a few seconds.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(20);

/// The first pause between dials: short, because simulated servers and warm hosts are ready in
/// milliseconds, and a real server's readiness should not wait on a long first sleep.
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);

/// The longest pause between dials: at most this much latency is added after the server becomes
/// ready (1 s on average), while a 5-minute wait still makes fewer than 160 dials, each a refused
/// connection or a banner that does not come. At 5 s the wait after readiness was most of the
/// tool's overhead in `build robot` (BENCHMARKS.md, installs).
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Public-key rejections tolerated before giving up. On a cloud server sshd can answer a moment
/// before cloud-init has written `authorized_keys`; a rejection then is transient. More than three
/// in a row (spread over the backoff, i.e. a few seconds) means the key is really not authorized,
/// and hammering the server would only trip its `MaxAuthTries` and fail2ban-style protections.
const AUTH_REJECTIONS_TOLERATED: u32 = 3;

/// Send a keepalive after this long without hearing from the server, by default. OpenSSH answers
/// each one, so a long silent command (an apt install, a big unpack) keeps the connection alive
/// and proven.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Unanswered keepalives before the connection is declared dead, by default: a dead server
/// (powered off, network gone) is noticed within about a minute (4 x 15 s), while a server that
/// stalls for tens of seconds under load is not dropped.
pub const DEFAULT_KEEPALIVE_MAX: usize = 4;

/// Which host keys to accept.
#[derive(Clone, Debug)]
pub enum HostKeyPolicy {
    /// Only this key; anything else is a hard [`SshError::HostKeyMismatch`]. Used for servers whose
    /// host key we generated and handed to cloud-init.
    Pinned(PublicKey),
    /// Trust on first use, then pinned: the first key seen through this handle is recorded (and
    /// reported as [`ConnectEvent::HostKeyTrusted`]); every later connection that shares the handle
    /// must present the same key. Used for the rescue system, whose key we cannot choose.
    TrustOnFirstUse(TofuPin),
}

/// The shared record of a trust-on-first-use host key; clones share it, so connections made later
/// in the run (after a reboot, say) are held to the key the first one saw.
#[derive(Clone, Default)]
pub struct TofuPin {
    recorded: Arc<Mutex<Option<PublicKey>>>,
}

impl TofuPin {
    /// An empty record: the next connection's key will be trusted.
    pub fn new() -> TofuPin {
        TofuPin::default()
    }

    /// The key recorded so far, if any connection got that far.
    pub fn recorded(&self) -> Option<PublicKey> {
        match self.recorded.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Records `presented` if nothing is recorded yet. Returns whether it was newly recorded, or the
    /// recorded key's fingerprint when it differs.
    fn check_or_record(&self, presented: &PublicKey) -> Result<bool, Fingerprint> {
        let mut guard = match self.recorded.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match guard.as_ref() {
            None => {
                *guard = Some(presented.clone());
                Ok(true)
            }
            Some(recorded) if recorded.same_key(presented) => Ok(false),
            Some(recorded) => Err(recorded.fingerprint()),
        }
    }
}

impl fmt::Debug for TofuPin {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.recorded() {
            Some(key) => write!(formatter, "TofuPin({})", key.fingerprint()),
            None => formatter.write_str("TofuPin(<nothing yet>)"),
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct ConnectConfig {
    /// The server's address (port 22 on real servers).
    pub addr: SocketAddr,
    /// The remote user (`root` on Hetzner servers and in the rescue system).
    pub user: String,
    /// The key to authenticate with.
    pub client_key: KeyPair,
    /// Which host keys to accept.
    pub host_key: HostKeyPolicy,
    /// The overall wait for the server to accept SSH.
    pub deadline: Duration,
    /// The bound on one dial.
    pub dial_timeout: Duration,
    /// Silence after which a keepalive is sent.
    pub keepalive_interval: Duration,
    /// Unanswered keepalives after which the connection counts as lost.
    pub keepalive_max: usize,
}

impl ConnectConfig {
    /// A config with the default deadline and dial timeout.
    pub fn new(
        addr: SocketAddr,
        user: &str,
        client_key: KeyPair,
        host_key: HostKeyPolicy,
    ) -> ConnectConfig {
        ConnectConfig {
            addr,
            user: user.to_owned(),
            client_key,
            host_key,
            deadline: DEFAULT_READY_DEADLINE,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_max: DEFAULT_KEEPALIVE_MAX,
        }
    }
}

/// What connect-when-ready reports while it works.
#[derive(Debug)]
pub enum ConnectEvent<'a> {
    /// A dial failed in a way worth retrying; the next one starts after `delay`.
    Retrying {
        /// The dial that failed, counted from 1.
        attempt: u32,
        /// Why it failed.
        error: &'a SshError,
        /// The pause before the next dial.
        delay: Duration,
    },
    /// Trust on first use recorded this server's host key; it is pinned from now on.
    HostKeyTrusted {
        /// The server's address.
        addr: SocketAddr,
        /// The recorded key's fingerprint.
        fingerprint: &'a Fingerprint,
    },
    /// Connected and authenticated.
    Connected {
        /// The server's address.
        addr: SocketAddr,
        /// Dials it took.
        attempts: u32,
        /// Time since connect-when-ready started.
        elapsed: Duration,
    },
}

/// Dials `config.addr` until it accepts SSH with the expected host key and our client key, or the
/// deadline passes. Connection refused/reset/timeouts and early disconnects are retried; a host key
/// mismatch is returned at once; an authentication rejection is retried
/// `AUTH_REJECTIONS_TOLERATED` times (cloud-init may still be installing the key), then returned.
pub async fn connect_when_ready(
    config: &ConnectConfig,
    on_event: &mut (dyn FnMut(ConnectEvent<'_>) + Send),
) -> Result<Session, SshError> {
    let started = Instant::now();
    let deadline = started + config.deadline;
    let mut attempt: u32 = 0;
    let mut auth_rejections: u32 = 0;
    let mut backoff = INITIAL_BACKOFF;
    loop {
        attempt += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let dial_bound = config
            .dial_timeout
            .min(remaining)
            .max(Duration::from_millis(1));
        let error = match tokio::time::timeout(dial_bound, dial(config)).await {
            Ok(Ok((session, newly_trusted))) => {
                if newly_trusted {
                    let fingerprint = session.host_key().fingerprint();
                    on_event(ConnectEvent::HostKeyTrusted {
                        addr: config.addr,
                        fingerprint: &fingerprint,
                    });
                }
                on_event(ConnectEvent::Connected {
                    addr: config.addr,
                    attempts: attempt,
                    elapsed: started.elapsed(),
                });
                return Ok(session);
            }
            Ok(Err(error)) => error,
            Err(_elapsed) => SshError::DialTimeout {
                addr: config.addr,
                timeout: dial_bound,
            },
        };
        let retry = match &error {
            SshError::AuthRejected { .. } => {
                auth_rejections += 1;
                auth_rejections <= AUTH_REJECTIONS_TOLERATED
            }
            other => other.is_transient(),
        };
        if !retry {
            return Err(error);
        }
        let delay = jittered(backoff);
        if Instant::now() + delay >= deadline {
            return Err(SshError::NotReady {
                addr: config.addr,
                waited: started.elapsed(),
                attempts: attempt,
                last: Box::new(error),
            });
        }
        on_event(ConnectEvent::Retrying {
            attempt,
            error: &error,
            delay,
        });
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// ±25 % around `base`, so that concurrent builds (one per architecture) do not dial in lockstep.
fn jittered(base: Duration) -> Duration {
    let factor: f64 = rand::rng().random_range(0.75..1.25);
    base.mul_f64(factor)
}

/// The russh client configuration of a connection.
fn client_config(config: &ConnectConfig) -> Arc<russh::client::Config> {
    Arc::new(russh::client::Config {
        keepalive_interval: Some(config.keepalive_interval),
        keepalive_max: config.keepalive_max,
        // No inactivity timeout: a command may legitimately print nothing for many minutes;
        // keepalives (answered by a live server) are what tell a dead connection from a quiet one.
        inactivity_timeout: None,
        // Line-by-line output and small control messages matter more than packet coalescing.
        nodelay: true,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(CIPHER_PREFERENCE),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// AES-256-GCM first: russh runs it on aws-lc (AES-NI on x86, the AES instructions on arm),
/// and its ChaCha20-Poly1305 in plain Rust is slower: when this order was chosen, putting
/// AES-GCM first made a verified 512 MiB upload to a loopback sshd about a fifth faster. OpenSSH
/// itself is faster with it too: in `cargo xtask bench upload` (BENCHMARKS.md, 2026-12-06 10:01)
/// `scp -c aes256-gcm@openssh.com` moved 368 MB/s against 285 with its default ChaCha20, and
/// caph-ssh's verified upload ran at 257 MB/s with the sha256 known (0.90x `scp`) and 242 MB/s
/// hashing while sending (0.85x). Every OpenSSH since 6.2 offers it. The rest is russh's own
/// order, as fallbacks.
const CIPHER_PREFERENCE: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// One dial: TCP connect, handshake with host key check, public key authentication, all on a
/// new connection thread (see [`ConnectionThread`]), which the session then keeps.
/// Returns the session and whether trust on first use recorded its key just now.
async fn dial(config: &ConnectConfig) -> Result<(Session, bool), SshError> {
    let addr = config.addr;
    let connection = match ConnectionThread::start() {
        Ok(connection) => connection,
        Err(source) => return Err(SshError::Connect { addr, source }),
    };
    let config = config.clone();
    // Dropping `dialing` (the caller's dial timeout) aborts the dial on the connection thread.
    let dialing = connection.spawn(async move { dial_on_this_thread(&config).await });
    match dialing.await {
        Ok(Ok(dialed)) => Ok((
            Session::new(dialed.handle, addr, dialed.host_key, connection),
            dialed.newly_trusted,
        )),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(SshError::Connect {
            addr,
            source: std::io::Error::other("the connection thread stopped during the dial"),
        }),
    }
}

/// What a dial established.
struct Dialed {
    handle: russh::client::Handle<ClientHandler>,
    host_key: PublicKey,
    newly_trusted: bool,
}

/// The dial itself. It runs on the connection thread, because russh spawns its session task
/// on the runtime that connects and the socket belongs to that runtime's reactor.
async fn dial_on_this_thread(config: &ConnectConfig) -> Result<Dialed, SshError> {
    let addr = config.addr;
    let stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(source) => return Err(SshError::Connect { addr, source }),
    };
    // Best effort: the connection works without it, only with more latency per line.
    let _ = stream.set_nodelay(true);
    let presented = Arc::new(Mutex::new(None));
    let newly_trusted = Arc::new(AtomicBool::new(false));
    let handler = ClientHandler {
        policy: config.host_key.clone(),
        presented: Arc::clone(&presented),
        newly_trusted: Arc::clone(&newly_trusted),
    };
    let mut handle =
        match russh::client::connect_stream(client_config(config), stream, handler).await {
            Ok(handle) => handle,
            Err(HandlerError::Mismatch {
                expected,
                presented,
            }) => {
                return Err(SshError::HostKeyMismatch {
                    addr,
                    expected,
                    presented,
                });
            }
            Err(HandlerError::Certificate) => return Err(SshError::HostCertificate { addr }),
            Err(HandlerError::Russh(source)) => return Err(SshError::Handshake { addr, source }),
        };
    let key = PrivateKeyWithHashAlg::new(config.client_key.russh_private(), None);
    let auth = match handle
        .authenticate_publickey(config.user.as_str(), key)
        .await
    {
        Ok(auth) => auth,
        Err(source) => return Err(SshError::Handshake { addr, source }),
    };
    if !auth.success() {
        return Err(SshError::AuthRejected {
            addr,
            user: config.user.clone(),
            key: config.client_key.fingerprint(),
        });
    }
    let host_key = match presented.lock() {
        Ok(mut guard) => guard.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    let Some(host_key) = host_key else {
        // russh calls `check_server_key` before completing the key exchange, so a handshake that
        // succeeded has recorded it; treat the impossible case as a protocol failure.
        return Err(SshError::Handshake {
            addr,
            source: russh::Error::UnknownKey,
        });
    };
    Ok(Dialed {
        handle,
        host_key,
        newly_trusted: newly_trusted.load(Ordering::SeqCst),
    })
}

/// The russh handler: checks the host key against the policy; everything else is russh's default.
pub(crate) struct ClientHandler {
    policy: HostKeyPolicy,
    presented: Arc<Mutex<Option<PublicKey>>>,
    newly_trusted: Arc<AtomicBool>,
}

/// The handler's error: russh's own, or the host key verdict with both fingerprints.
#[derive(Debug)]
pub(crate) enum HandlerError {
    Russh(russh::Error),
    Mismatch {
        expected: Fingerprint,
        presented: Fingerprint,
    },
    Certificate,
}

impl From<russh::Error> for HandlerError {
    fn from(error: russh::Error) -> HandlerError {
        HandlerError::Russh(error)
    }
}

impl russh::client::Handler for ClientHandler {
    type Error = HandlerError;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, HandlerError> {
        let presented = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => PublicKey::from_russh(key.clone()),
            PublicKeyOrCertificate::Certificate(_) => return Err(HandlerError::Certificate),
        };
        match &self.policy {
            HostKeyPolicy::Pinned(expected) => {
                if !expected.same_key(&presented) {
                    return Err(HandlerError::Mismatch {
                        expected: expected.fingerprint(),
                        presented: presented.fingerprint(),
                    });
                }
            }
            HostKeyPolicy::TrustOnFirstUse(pin) => match pin.check_or_record(&presented) {
                Ok(newly) => self.newly_trusted.store(newly, Ordering::SeqCst),
                Err(recorded) => {
                    return Err(HandlerError::Mismatch {
                        expected: recorded,
                        presented: presented.fingerprint(),
                    });
                }
            },
        }
        match self.presented.lock() {
            Ok(mut guard) => *guard = Some(presented),
            Err(poisoned) => *poisoned.into_inner() = Some(presented),
        }
        Ok(true)
    }
}
