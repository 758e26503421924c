//! A client for the Hetzner Robot web service: dedicated servers, rescue activation, resets and SSH keys.
//!
//! Basic auth, form-encoded bodies, every object wrapped in a one-key object named after its type.
//! Rate limiting is HTTP 403 with code `RATE_LIMIT_EXCEEDED`, honoured by waiting (bounded).
//! The password never appears in `Debug`, `Display` or any error.

use std::fmt;
use std::time::Duration;

use md5::{Digest, Md5};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The real Robot web service.
pub const DEFAULT_ENDPOINT: &str = "https://robot-ws.your-server.de";

/// How many times a rate-limited call waits and tries again. With the spacing below this covers a
/// few minutes, long enough for a short burst to pass, short enough that a build does not hang for
/// the hour a spent budget can take to refill.
const RATE_LIMIT_ATTEMPTS: u32 = 5;
/// The longest single wait after `RATE_LIMIT_EXCEEDED`: the Robot API gives no reset time, only the
/// window (`interval`), so the client waits one average request spacing, capped here.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Reads (GET) are retried this often on connection errors; writes never are, so a reset or a
/// rescue activation is not sent twice.
const READ_ATTEMPTS: u32 = 3;
/// Pause between read attempts after a connection error.
const READ_RETRY_PAUSE: Duration = Duration::from_secs(2);
/// Every request is bounded, so a dead endpoint cannot hang a build.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The web service user and its password.
#[derive(Clone)]
pub struct Credentials {
    user: String,
    password: String,
}

impl Credentials {
    /// Credentials for the web service user `user`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            user: user.into(),
            password: password.into(),
        }
    }

    /// The user name (not secret).
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a Robot call failed.
#[derive(Debug, thiserror::Error)]
pub enum RobotError {
    /// The service answered with an error object.
    #[error("{method} {path}: {code} ({status}): {message}{hint}")]
    Api {
        /// HTTP method.
        method: &'static str,
        /// Path (no credentials, no query secrets).
        path: String,
        /// HTTP status.
        status: u16,
        /// The Robot error code, such as `SERVER_NOT_FOUND`.
        code: String,
        /// The service's message.
        message: String,
        /// Extra explanation for codes that need one.
        hint: String,
    },
    /// The service could not be reached or the connection broke.
    #[error("{method} {path}: cannot reach the Robot web service: {reason}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// Path.
        path: String,
        /// What went wrong, without the URL's credentials.
        reason: String,
    },
    /// The answer was not what the Robot API documents.
    #[error("{method} {path}: unexpected answer ({status}): {reason}")]
    Decode {
        /// HTTP method.
        method: &'static str,
        /// Path.
        path: String,
        /// HTTP status.
        status: u16,
        /// What did not fit.
        reason: String,
    },
}

impl RobotError {
    /// The Robot error code, for API errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            RobotError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A dedicated server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Server {
    /// The server number, the id of every other call.
    pub server_number: u64,
    /// The main IPv4 address; null for IPv6-only servers.
    pub server_ip: Option<String>,
    /// The IPv6 network.
    #[serde(default)]
    pub server_ipv6_net: Option<String>,
    /// The name set in Robot.
    #[serde(default)]
    pub server_name: String,
    /// The product, such as `AX41-NVMe`.
    #[serde(default)]
    pub product: String,
    /// The data center, such as `FSN1-DC14`.
    #[serde(default)]
    pub dc: String,
    /// `ready` or `in progress`.
    #[serde(default)]
    pub status: String,
    /// Whether the server is cancelled.
    #[serde(default)]
    pub cancelled: bool,
}

/// One value or a list of them: the rescue endpoint sends lists of choices when inactive and the
/// chosen scalar when active.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// The chosen value.
    One(T),
    /// The choices.
    Many(Vec<T>),
}

/// An OS or architecture value, which the API sends as a string or a number.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// A string such as `linux`.
    Text(String),
    /// A number such as `64`.
    Number(i64),
}

/// The rescue system's state for a server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Rescue {
    /// The server number.
    pub server_number: u64,
    /// Whether the next boot goes into rescue.
    pub active: bool,
    /// `linux` when active; the choices when inactive.
    pub os: OneOrMany<Scalar>,
    /// Deprecated architecture field, scalar or list.
    #[serde(default)]
    pub arch: Option<OneOrMany<Scalar>>,
    /// The root password of an activation (secret: never printed by this crate).
    #[serde(default)]
    pub password: Option<String>,
    /// Keys authorized for the activation.
    #[serde(default)]
    pub authorized_key: Vec<KeyWrapper>,
}

/// A key wrapped as `{"key": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyWrapper {
    /// The key.
    pub key: Key,
}

/// An SSH key stored in Robot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Key {
    /// The name.
    pub name: String,
    /// MD5 fingerprint, lower-case hex with colons.
    pub fingerprint: String,
    /// Key type, such as `ED25519`.
    #[serde(rename = "type", default)]
    pub key_type: String,
    /// Key size in bits.
    #[serde(default)]
    pub size: u32,
    /// The OpenSSH public key line (absent in rescue listings).
    #[serde(default)]
    pub data: Option<String>,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<String>,
}

/// Reset kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetType {
    /// CTRL+ALT+DEL.
    Software,
    /// A hardware reset.
    Hardware,
    /// A technician resets the server by hand.
    Manual,
}

impl ResetType {
    fn as_str(self) -> &'static str {
        match self {
            ResetType::Software => "sw",
            ResetType::Hardware => "hw",
            ResetType::Manual => "man",
        }
    }
}

/// The reset options of a server, or the result of a reset.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reset {
    /// The server number.
    pub server_number: u64,
    /// The kinds available (`["sw","hw","man"]`) or the kind executed (`"hw"`).
    #[serde(rename = "type")]
    pub reset_type: OneOrMany<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    // The documentation names it max_request, the live API sends max_requests.
    #[serde(default, alias = "max_request")]
    max_requests: Option<u64>,
    #[serde(default)]
    interval: Option<u64>,
    #[serde(default)]
    missing: Option<serde_json::Value>,
    #[serde(default)]
    invalid: Option<serde_json::Value>,
}

/// A Robot web service client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RobotClient {
    http: reqwest::Client,
    endpoint: String,
    credentials: Credentials,
}

impl RobotClient {
    /// A client for `endpoint` (use [`DEFAULT_ENDPOINT`] for the real service).
    pub fn new(endpoint: &str, credentials: Credentials) -> Result<RobotClient, RobotError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("caph-image/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| RobotError::Transport {
                method: "GET",
                path: "/".into(),
                reason: error.to_string(),
            })?;
        Ok(RobotClient {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            credentials,
        })
    }

    /// All dedicated servers of the account.
    pub async fn servers(&self) -> Result<Vec<Server>, RobotError> {
        #[derive(Deserialize)]
        struct Item {
            server: Server,
        }
        let items: Vec<Item> = self.get("/server").await?;
        Ok(items.into_iter().map(|item| item.server).collect())
    }

    /// One server.
    pub async fn server(&self, number: u64) -> Result<Server, RobotError> {
        #[derive(Deserialize)]
        struct Wrapped {
            server: Server,
        }
        Ok(self
            .get::<Wrapped>(&format!("/server/{number}"))
            .await?
            .server)
    }

    /// Renames a server.
    pub async fn rename_server(&self, number: u64, name: &str) -> Result<Server, RobotError> {
        #[derive(Deserialize)]
        struct Wrapped {
            server: Server,
        }
        Ok(self
            .post::<Wrapped>(&format!("/server/{number}"), &[("server_name", name)])
            .await?
            .server)
    }

    /// The rescue state.
    pub async fn rescue(&self, number: u64) -> Result<Rescue, RobotError> {
        Ok(self
            .get::<RescueWrapper>(&format!("/boot/{number}/rescue"))
            .await?
            .rescue)
    }

    /// Activates the Linux rescue system for the next boot, authorizing the keys with these MD5 fingerprints.
    pub async fn activate_rescue(
        &self,
        number: u64,
        fingerprints: &[String],
    ) -> Result<Rescue, RobotError> {
        let mut form = vec![("os", "linux")];
        form.extend(
            fingerprints
                .iter()
                .map(|fingerprint| ("authorized_key[]", fingerprint.as_str())),
        );
        Ok(self
            .post::<RescueWrapper>(&format!("/boot/{number}/rescue"), &form)
            .await?
            .rescue)
    }

    /// Removes a pending rescue activation.
    pub async fn deactivate_rescue(&self, number: u64) -> Result<Rescue, RobotError> {
        Ok(self
            .request::<RescueWrapper>(
                reqwest::Method::DELETE,
                &format!("/boot/{number}/rescue"),
                None,
            )
            .await?
            .rescue)
    }

    /// The reset kinds a server offers.
    pub async fn reset_options(&self, number: u64) -> Result<Reset, RobotError> {
        Ok(self
            .get::<ResetWrapper>(&format!("/reset/{number}"))
            .await?
            .reset)
    }

    /// Resets a server.
    pub async fn reset(&self, number: u64, kind: ResetType) -> Result<Reset, RobotError> {
        Ok(self
            .post::<ResetWrapper>(&format!("/reset/{number}"), &[("type", kind.as_str())])
            .await?
            .reset)
    }

    /// The account's SSH keys; the API's `NOT_FOUND` for an account without keys is an empty list.
    pub async fn keys(&self) -> Result<Vec<Key>, RobotError> {
        match self.get::<Vec<KeyWrapper>>("/key").await {
            Ok(keys) => Ok(keys.into_iter().map(|wrapper| wrapper.key).collect()),
            Err(error) if error.code() == Some("NOT_FOUND") => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }

    /// Stores a public key (an OpenSSH line) under `name`.
    pub async fn create_key(&self, name: &str, public_key: &str) -> Result<Key, RobotError> {
        Ok(self
            .post::<KeyWrapper>("/key", &[("name", name), ("data", public_key)])
            .await?
            .key)
    }

    /// Deletes a key by fingerprint.
    pub async fn delete_key(&self, fingerprint: &str) -> Result<(), RobotError> {
        let path = format!("/key/{fingerprint}");
        self.request::<serde_json::Value>(reqwest::Method::DELETE, &path, None)
            .await
            .map(|_| ())
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, RobotError> {
        self.request(reqwest::Method::GET, path, None).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> Result<T, RobotError> {
        self.request(reqwest::Method::POST, path, Some(form)).await
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        form: Option<&[(&str, &str)]>,
    ) -> Result<T, RobotError> {
        let method_name = method_name(&method);
        let mut rate_limited = 0;
        let mut transport_failures = 0;
        loop {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.endpoint))
                .basic_auth(&self.credentials.user, Some(&self.credentials.password))
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(form) = form {
                request = request.form(form);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(error) => {
                    transport_failures += 1;
                    if method == reqwest::Method::GET && transport_failures < READ_ATTEMPTS {
                        tokio::time::sleep(READ_RETRY_PAUSE).await;
                        continue;
                    }
                    // without_url: the error's URL would be harmless, but keep errors short and uniform.
                    return Err(RobotError::Transport {
                        method: method_name,
                        path: path.to_string(),
                        reason: error.without_url().to_string(),
                    });
                }
            };
            let status = response.status().as_u16();
            let body = match response.bytes().await {
                Ok(body) => body,
                Err(error) => {
                    return Err(RobotError::Transport {
                        method: method_name,
                        path: path.to_string(),
                        reason: error.without_url().to_string(),
                    });
                }
            };
            if (200..300).contains(&status) {
                if body.is_empty() {
                    return serde_json::from_str("null")
                        .map_err(|error| decode_error(method_name, path, status, &error));
                }
                return serde_json::from_slice(&body)
                    .map_err(|error| decode_error(method_name, path, status, &error));
            }
            let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(&body) else {
                let snippet: String = String::from_utf8_lossy(&body).chars().take(200).collect();
                return Err(RobotError::Decode {
                    method: method_name,
                    path: path.to_string(),
                    status,
                    reason: format!("not an error object: {snippet}"),
                });
            };
            if error.code == "RATE_LIMIT_EXCEEDED" && rate_limited + 1 < RATE_LIMIT_ATTEMPTS {
                rate_limited += 1;
                tokio::time::sleep(rate_limit_wait(error.max_requests, error.interval)).await;
                continue;
            }
            let hint = hint_for(&error);
            return Err(RobotError::Api {
                method: method_name,
                path: path.to_string(),
                status,
                code: error.code,
                message: error.message,
                hint,
            });
        }
    }
}

#[derive(Deserialize)]
struct RescueWrapper {
    rescue: Rescue,
}

#[derive(Deserialize)]
struct ResetWrapper {
    reset: Reset,
}

fn method_name(method: &reqwest::Method) -> &'static str {
    match *method {
        reqwest::Method::GET => "GET",
        reqwest::Method::POST => "POST",
        reqwest::Method::DELETE => "DELETE",
        reqwest::Method::PUT => "PUT",
        _ => "OTHER",
    }
}

fn decode_error(
    method: &'static str,
    path: &str,
    status: u16,
    error: &serde_json::Error,
) -> RobotError {
    RobotError::Decode {
        method,
        path: path.to_string(),
        status,
        reason: error.to_string(),
    }
}

/// One average request spacing at the limit (`interval / max_requests`), at least a second, capped.
fn rate_limit_wait(max_requests: Option<u64>, interval: Option<u64>) -> Duration {
    let spacing = match (max_requests, interval) {
        (Some(max), Some(interval)) if max > 0 => Duration::from_secs(interval.div_ceil(max)),
        _ => MAX_RATE_LIMIT_WAIT,
    };
    spacing.clamp(Duration::from_secs(1), MAX_RATE_LIMIT_WAIT)
}

fn hint_for(error: &ErrorDetail) -> String {
    match error.code.as_str() {
        "UNAUTHORIZED" => "; check HETZNER_ROBOT_USER and HETZNER_ROBOT_PASSWORD (a web service user, not the Robot login): three failed logins block this IP for 10 minutes".to_string(),
        "RATE_LIMIT_EXCEEDED" => format!(
            "; still limited after {RATE_LIMIT_ATTEMPTS} attempts (at most {} requests per {} s): try again later",
            error.max_requests.map_or("?".to_string(), |n| n.to_string()),
            error.interval.map_or("?".to_string(), |n| n.to_string())
        ),
        "INVALID_INPUT" => format!("; missing: {}, invalid: {}", compact(&error.missing), compact(&error.invalid)),
        "BOOT_ALREADY_ENABLED" => "; delete the pending rescue activation first".to_string(),
        _ => String::new(),
    }
}

fn compact(value: &Option<serde_json::Value>) -> String {
    value
        .as_ref()
        .map_or("none".to_string(), |value| value.to_string())
}

/// The MD5 fingerprint Robot uses for an OpenSSH public key line: lower-case hex pairs joined by colons.
pub fn md5_fingerprint(public_key: &str) -> Option<String> {
    use base64::Engine as _;
    let blob = public_key.split_whitespace().nth(1)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .ok()?;
    let digest = Md5::digest(&bytes);
    Some(
        digest
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_print_the_password() {
        let credentials = Credentials::new("#ws+abc", "hunter2-secret");
        assert!(!format!("{credentials:?}").contains("hunter2"));
    }

    #[test]
    fn rescue_shapes() {
        let inactive: RescueWrapper = serde_json::from_str(r#"{"rescue":{"server_ip":"1.2.3.4","server_ipv6_net":"2a01::","server_number":321,"os":["linux","vkvm"],"arch":[64,32],"active":false,"password":null,"authorized_key":[],"host_key":[],"boot_time":null}}"#).unwrap();
        assert!(!inactive.rescue.active);
        assert_eq!(
            inactive.rescue.os,
            OneOrMany::Many(vec![
                Scalar::Text("linux".into()),
                Scalar::Text("vkvm".into())
            ])
        );
        let active: RescueWrapper = serde_json::from_str(r#"{"rescue":{"server_ip":"1.2.3.4","server_number":321,"os":"linux","arch":64,"active":true,"password":"x","authorized_key":[{"key":{"name":"k","fingerprint":"aa:bb","type":"ED25519","size":256,"created_at":"2026-01-01 00:00:00"}}],"host_key":[],"boot_time":null}}"#).unwrap();
        assert_eq!(
            active.rescue.os,
            OneOrMany::One(Scalar::Text("linux".into()))
        );
        assert_eq!(active.rescue.arch, Some(OneOrMany::One(Scalar::Number(64))));
        assert_eq!(active.rescue.authorized_key[0].key.fingerprint, "aa:bb");
    }

    #[test]
    fn rate_limit_fields_in_both_spellings() {
        let live: ErrorBody = serde_json::from_str(r#"{"error":{"status":403,"code":"RATE_LIMIT_EXCEEDED","max_requests":200,"interval":3600,"message":"m"}}"#).unwrap();
        let documented: ErrorBody = serde_json::from_str(r#"{"error":{"status":403,"code":"RATE_LIMIT_EXCEEDED","max_request":200,"interval":3600,"message":"m"}}"#).unwrap();
        assert_eq!(live.error.max_requests, Some(200));
        assert_eq!(documented.error.max_requests, Some(200));
        assert_eq!(
            rate_limit_wait(Some(200), Some(3600)),
            Duration::from_secs(18)
        );
        assert_eq!(rate_limit_wait(None, None), MAX_RATE_LIMIT_WAIT);
    }

    #[test]
    fn fingerprint_of_a_known_key() {
        // `ssh-keygen -l -E md5` printed MD5:a7:7b:69:... for this key.
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL0XCTX1TINO2SU7MqQURclcnmMen1bEy26fjZC9fskp test";
        assert_eq!(
            md5_fingerprint(key).as_deref(),
            Some("a7:7b:69:5b:53:56:a3:7d:ce:c7:c8:3a:19:18:ec:7f")
        );
        assert_eq!(md5_fingerprint("garbage"), None);
    }
}
