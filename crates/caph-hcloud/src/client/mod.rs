//! A typed client for the parts of the Hetzner Cloud API that image builds use.
//!
//! [`Client`] sends every call through one loop that paces requests by a rate-limit budget shared
//! by all clones ([`RateBudget`]), retries what is safe to retry ([`RetryPolicy`]), and turns
//! error answers into [`Error`]s with their context. Lists follow pagination to the end. The
//! action waiter ([`Client::wait_for_actions`]) polls many actions in one request with a schedule
//! that starts fast and backs off ([`PollSchedule`]).
//!
//! The API token lives in a [`Token`], which cannot be printed: its `Debug` is redacted and it
//! has no `Display`; the header made from it is marked sensitive.

mod actions;
mod catalog;
mod error;
mod images;
pub mod labels;
mod ratelimit;
mod retry;
mod servers;
mod ssh_keys;
mod types;
mod wait;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use actions::MAX_ACTIONS_PER_REQUEST;
pub use error::{ApiError, Error, TransportKind};
pub use images::{ListImagesParams, UpdateImageRequest};
pub use labels::{LabelError, LabelSelector};
pub use ratelimit::{BudgetEstimate, RateBudget, RateLimitHeaders};
pub use retry::{
    DEFAULT_BASE_DELAY, DEFAULT_LOCKED_ATTEMPTS, DEFAULT_LOCKED_DELAY, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_DELAY, RetryPolicy,
};
pub use servers::{
    CreateImageRequest, CreateImageResponse, CreateServerRequest, CreateServerResponse,
    EnableRescueResponse, ListServersParams, MAX_USER_DATA_BYTES, PublicNetRequest,
};
pub use ssh_keys::{CreateSshKeyRequest, ListSshKeysParams};
pub use types::*;
pub use wait::{
    ActionProgress, DEFAULT_FIRST_POLL_DELAY, DEFAULT_MAX_POLL_DELAY, DEFAULT_POLL_GROWTH,
    DEFAULT_WAIT_TIMEOUT, PollSchedule, WaitOptions,
};

use retry::{Failure, Replay};

/// The real API.
pub const DEFAULT_ENDPOINT: &str = "https://api.hetzner.cloud/v1";

/// The environment variable for the endpoint, shared with the official CLI and Packer.
pub const ENDPOINT_ENV: &str = "HCLOUD_ENDPOINT";

/// The environment variable for the token, shared with the official CLI and Packer.
pub const TOKEN_ENV: &str = "HCLOUD_TOKEN";

/// Entries per page when listing: the API's maximum, so lists take the fewest requests.
pub const PER_PAGE: u32 = 50;

/// The most pages a list follows (50 000 entries): far beyond any project, so reaching it means
/// the API (or a proxy) keeps answering with a `next_page`, and the client stops instead of
/// looping.
const MAX_PAGES: u32 = 1000;

/// The longest one HTTP exchange may take. The API answers in well under a second; creating a
/// server can take a few seconds. A minute is a hung connection.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest connecting (TCP and TLS) may take before it counts as a connection error.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of a body that is not an API error goes into an error message.
const BODY_EXCERPT_CHARS: usize = 300;

/// An API token. It cannot be printed: `Debug` shows `Token(<redacted>)` and there is no
/// `Display`, so it cannot reach a log line or an error message by accident.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Token(Arc::from(token.into()))
    }

    /// Reads the token from `HCLOUD_TOKEN`; `None` when unset or empty.
    pub fn from_env() -> Option<Self> {
        let token = std::env::var(TOKEN_ENV).ok()?;
        if token.trim().is_empty() {
            None
        } else {
            Some(Token::new(token.trim()))
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A secret the API hands out (a root password) or that a request carries (user data with a
/// host key): its `Debug` is redacted and it has no `Display`.
#[derive(Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        SecretString(secret.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

/// One HTTP exchange, as reported to a [`RequestHook`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path below the endpoint, without the query.
    pub path: String,
    /// Which attempt of the call this was (from 1).
    pub attempt: u32,
    /// The answer's status; `None` when no answer came.
    pub status: Option<u16>,
}

/// A callback told about every HTTP exchange (for verbose logs and request counting).
pub type RequestHook = Arc<dyn Fn(&RequestRecord) + Send + Sync>;

/// How to build a [`Client`].
#[derive(Clone)]
pub struct ClientConfig {
    /// The API's base URL, e.g. [`DEFAULT_ENDPOINT`] or a simulator's `http://127.0.0.1:PORT/v1`.
    pub endpoint: String,
    /// The API token.
    pub token: Token,
    /// Retry behaviour.
    pub retry: RetryPolicy,
    /// The longest one HTTP exchange may take.
    pub request_timeout: Duration,
    /// The longest connecting may take.
    pub connect_timeout: Duration,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// A budget to share with other clients of the same project; a fresh one when `None`.
    /// (Clones of one client always share theirs.)
    pub budget: Option<RateBudget>,
    /// Told about every HTTP exchange.
    pub on_request: Option<RequestHook>,
}

impl ClientConfig {
    /// A configuration with the documented defaults.
    pub fn new(endpoint: impl Into<String>, token: Token) -> Self {
        ClientConfig {
            endpoint: endpoint.into(),
            token,
            retry: RetryPolicy::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            user_agent: format!("caph-image/{}", env!("CARGO_PKG_VERSION")),
            budget: None,
            on_request: None,
        }
    }
}

impl ClientConfig {
    /// A configuration from the environment, as the official CLI reads it: the token from
    /// `HCLOUD_TOKEN` (required) and the endpoint from `HCLOUD_ENDPOINT` (default: the real API).
    pub fn from_env() -> Result<Self, Error> {
        let token = Token::from_env().ok_or_else(|| {
            Error::Config(format!(
                "{TOKEN_ENV} is not set; create an API token in the Hetzner Cloud console"
            ))
        })?;
        let endpoint = std::env::var(ENDPOINT_ENV)
            .ok()
            .filter(|endpoint| !endpoint.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Ok(ClientConfig::new(endpoint.trim(), token))
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token)
            .field("retry", &self.retry)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("user_agent", &self.user_agent)
            .field("budget", &self.budget)
            .field("on_request", &self.on_request.as_ref().map(|_| "<hook>"))
            .finish()
    }
}

/// A Hetzner Cloud API client. Cheap to clone; clones share the connection pool, the rate-limit
/// budget and the request counter.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    authorization: HeaderValue,
    retry: RetryPolicy,
    budget: RateBudget,
    requests_sent: AtomicU64,
    on_request: Option<RequestHook>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.base)
            .field("retry", &self.inner.retry)
            .field("budget", &self.inner.budget)
            .field("requests_sent", &self.requests_sent())
            .finish_non_exhaustive()
    }
}

/// A successful answer.
struct Answer {
    status: u16,
    body: bytes::Bytes,
    correlation_id: Option<String>,
}

/// The outcome of a call and whether an earlier attempt may have acted.
struct CallOutcome {
    result: Result<Answer, Error>,
    ambiguous_before: bool,
}

impl Client {
    /// Builds a client. Fails when the endpoint is not an http(s) URL or the token cannot be an
    /// HTTP header value (the message never includes the token).
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let endpoint = config.endpoint.trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&endpoint).map_err(|error| {
            Error::Config(format!("endpoint {endpoint:?} is not a URL: {error}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::Config(format!(
                "endpoint {endpoint:?} is not an http(s) URL"
            )));
        }
        if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(Error::Config(
                "the endpoint must not carry a query or credentials".to_string(),
            ));
        }
        if config.token.0.trim().is_empty() {
            return Err(Error::Config("the API token is empty".to_string()));
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", config.token.0))
            .map_err(|_| {
                Error::Config(
                    "the API token holds characters that cannot go into an HTTP header".to_string(),
                )
            })?;
        authorization.set_sensitive(true);
        if config.retry.max_attempts == 0 || config.retry.locked_attempts == 0 {
            return Err(Error::Config(
                "retry attempts must be at least 1".to_string(),
            ));
        }
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            // The API never redirects; following one could carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| Error::Config(format!("cannot build the HTTP client: {error}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base: endpoint,
                authorization,
                retry: config.retry,
                budget: config.budget.unwrap_or_default(),
                requests_sent: AtomicU64::new(0),
                on_request: config.on_request,
            }),
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.inner.base
    }

    /// HTTP requests sent so far by this client and its clones, retries included.
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests_sent.load(Ordering::Relaxed)
    }

    /// The rate-limit budget this client paces by (shared by its clones).
    pub fn budget(&self) -> &RateBudget {
        &self.inner.budget
    }

    /// Sends a call with retries; see [`retry`] for what is retried.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        replay: Replay,
    ) -> CallOutcome {
        let policy = &self.inner.retry;
        let mut attempt = 0u32;
        let mut retryable_failures = 0u32;
        let mut locked_failures = 0u32;
        let mut ambiguous_before = false;
        loop {
            attempt += 1;
            let pacing = self.inner.budget.reserve(Instant::now());
            if !pacing.is_zero() {
                tokio::time::sleep(pacing).await;
            }
            let mut request = self
                .inner
                .http
                .request(method.clone(), format!("{}{}", self.inner.base, path))
                .header(
                    reqwest::header::AUTHORIZATION,
                    self.inner.authorization.clone(),
                );
            if !query.is_empty() {
                request = request.query(query);
            }
            if let Some(body) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            self.inner.requests_sent.fetch_add(1, Ordering::Relaxed);
            let sent = request.send().await;
            let received = match sent {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    self.observe_rate_limit(&headers);
                    match response.bytes().await {
                        Ok(body) => Ok((status, headers, body)),
                        Err(error) => Err(error),
                    }
                }
                Err(error) => Err(error),
            };
            let (status, headers, body) = match received {
                Ok(parts) => parts,
                Err(source) => {
                    self.report(&method, path, attempt, None);
                    // Only a failed connect proves the request never reached the API.
                    let kind = if source.is_connect() {
                        TransportKind::Connect
                    } else {
                        TransportKind::MaybeSent
                    };
                    let failure = match kind {
                        TransportKind::Connect => Failure::NotProcessed,
                        TransportKind::MaybeSent => Failure::Ambiguous,
                    };
                    if retry::is_retried(failure, replay) {
                        retryable_failures += 1;
                        if retryable_failures < policy.max_attempts {
                            ambiguous_before |= failure == Failure::Ambiguous;
                            tokio::time::sleep(
                                policy.backoff(retryable_failures - 1, unit_random()),
                            )
                            .await;
                            continue;
                        }
                    }
                    let error = Error::Transport {
                        method: method.to_string(),
                        path: path.to_string(),
                        kind,
                        attempts: attempt,
                        source,
                    };
                    return CallOutcome {
                        result: Err(error),
                        ambiguous_before,
                    };
                }
            };
            self.report(&method, path, attempt, Some(status.as_u16()));
            let correlation_id = headers
                .get("x-correlation-id")
                .and_then(|value| value.to_str().ok())
                .map(str::to_string);
            if status.is_success() {
                let answer = Answer {
                    status: status.as_u16(),
                    body,
                    correlation_id,
                };
                return CallOutcome {
                    result: Ok(answer),
                    ambiguous_before,
                };
            }
            let api_error = parse_error_body(&method, path, status, &body, correlation_id, attempt);
            let failure = retry::classify_answer(api_error.status, api_error.code.as_ref());
            match failure {
                Failure::Locked => {
                    locked_failures += 1;
                    if locked_failures < policy.locked_attempts {
                        tokio::time::sleep(
                            policy.locked_backoff(locked_failures - 1, unit_random()),
                        )
                        .await;
                        continue;
                    }
                }
                _ if retry::is_retried(failure, replay) => {
                    retryable_failures += 1;
                    if retryable_failures < policy.max_attempts {
                        ambiguous_before |= failure == Failure::Ambiguous;
                        if failure == Failure::RateLimited && !has_rate_limit_headers(&headers) {
                            self.inner.budget.observe_exhausted(Instant::now());
                        }
                        // After a 429 the budget has taken in the empty bucket from the headers,
                        // so the pacing wait at the top of the loop lasts until it has refilled
                        // (not until `RateLimit-Reset`, when it is full: up to an hour away).
                        // The backoff comes first in any case, for answers whose headers do not
                        // show the bucket empty.
                        tokio::time::sleep(policy.backoff(retryable_failures - 1, unit_random()))
                            .await;
                        continue;
                    }
                }
                _ => {}
            }
            return CallOutcome {
                result: Err(Error::Api(Box::new(api_error))),
                ambiguous_before,
            };
        }
    }

    fn report(&self, method: &Method, path: &str, attempt: u32, status: Option<u16>) {
        if let Some(hook) = &self.inner.on_request {
            hook(&RequestRecord {
                method: method.to_string(),
                path: path.to_string(),
                attempt,
                status,
            });
        }
    }

    fn observe_rate_limit(&self, headers: &HeaderMap) {
        let number =
            |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
        let (Some(limit), Some(remaining), Some(reset)) = (
            number("ratelimit-limit"),
            number("ratelimit-remaining"),
            number("ratelimit-reset"),
        ) else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.inner.budget.observe(
            RateLimitHeaders {
                limit,
                remaining,
                reset,
                now,
            },
            Instant::now(),
        );
    }

    /// GET a single resource wrapped in an envelope.
    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, Error> {
        let answer = self
            .call(Method::GET, path, query, None, Replay::Idempotent)
            .await
            .result?;
        decode(&Method::GET, path, &answer)
    }

    /// Sends a JSON body and decodes the answer.
    async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &impl Serialize,
        replay: Replay,
    ) -> Result<T, Error> {
        let body = encode(&method, path, body)?;
        let answer = self
            .call(method.clone(), path, &[], Some(body), replay)
            .await
            .result?;
        decode(&method, path, &answer)
    }

    /// POST without a body (server actions) and decodes the answer.
    async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let answer = self
            .call(Method::POST, path, &[], None, Replay::OnlyIfUnprocessed)
            .await
            .result?;
        decode(&Method::POST, path, &answer)
    }

    /// DELETE; the answer body (if any) is returned undecoded.
    async fn delete_raw(&self, path: &str) -> Result<Answer, Error> {
        self.call(Method::DELETE, path, &[], None, Replay::Idempotent)
            .await
            .result
    }

    /// GET every page of a list; `key` is the plural key holding the entries.
    async fn list_all<T: DeserializeOwned>(
        &self,
        path: &str,
        key: &str,
        filters: &[(&str, String)],
    ) -> Result<Vec<T>, Error> {
        let mut entries = Vec::new();
        let mut page = 1u32;
        for _ in 0..MAX_PAGES {
            let mut query = filters.to_vec();
            query.push(("page", page.to_string()));
            query.push(("per_page", PER_PAGE.to_string()));
            let answer = self
                .call(Method::GET, path, &query, None, Replay::Idempotent)
                .await
                .result?;
            let mut value: serde_json::Value = decode(&Method::GET, path, &answer)?;
            let list = value
                .get_mut(key)
                .map(serde_json::Value::take)
                .ok_or_else(|| Error::Decode {
                    method: "GET".to_string(),
                    path: path.to_string(),
                    status: answer.status,
                    reason: format!("no {key:?} in the answer"),
                    correlation_id: answer.correlation_id.clone(),
                })?;
            let list: Vec<T> = serde_json::from_value(list).map_err(|error| Error::Decode {
                method: "GET".to_string(),
                path: path.to_string(),
                status: answer.status,
                reason: format!("{key}: {error}"),
                correlation_id: answer.correlation_id.clone(),
            })?;
            entries.extend(list);
            let meta: Meta = match value.get_mut("meta").map(serde_json::Value::take) {
                Some(meta) => serde_json::from_value(meta).unwrap_or_default(),
                None => Meta::default(),
            };
            match meta.pagination.and_then(|p| p.next_page) {
                None => return Ok(entries),
                Some(next) if next <= page => {
                    return Err(Error::Pagination {
                        path: path.to_string(),
                        reason: format!("page {page} says the next page is {next}"),
                    });
                }
                Some(next) => page = next,
            }
        }
        Err(Error::Pagination {
            path: path.to_string(),
            reason: format!("more than {MAX_PAGES} pages"),
        })
    }
}

fn unit_random() -> f64 {
    use rand::Rng;
    rand::rng().random_range(0.0..1.0)
}

fn has_rate_limit_headers(headers: &HeaderMap) -> bool {
    headers.contains_key("ratelimit-remaining") && headers.contains_key("ratelimit-reset")
}

fn encode(method: &Method, path: &str, body: &impl Serialize) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(body).map_err(|error| Error::InvalidRequest {
        field: "body",
        reason: format!("{method} {path}: cannot encode: {error}"),
    })
}

fn decode<T: DeserializeOwned>(method: &Method, path: &str, answer: &Answer) -> Result<T, Error> {
    serde_json::from_slice(&answer.body).map_err(|error| Error::Decode {
        method: method.to_string(),
        path: path.to_string(),
        status: answer.status,
        reason: error.to_string(),
        correlation_id: answer.correlation_id.clone(),
    })
}

fn parse_error_body(
    method: &Method,
    path: &str,
    status: StatusCode,
    body: &[u8],
    correlation_id: Option<String>,
    attempts: u32,
) -> ApiError {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Body,
    }
    #[derive(serde::Deserialize)]
    struct Body {
        code: ErrorCode,
        #[serde(default)]
        message: String,
        #[serde(default)]
        details: Option<serde_json::Value>,
    }
    let (code, message, details) = match serde_json::from_slice::<Envelope>(body) {
        Ok(envelope) => (
            Some(envelope.error.code),
            envelope.error.message,
            envelope.error.details,
        ),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let excerpt: String = text.trim().chars().take(BODY_EXCERPT_CHARS).collect();
            (None, excerpt, None)
        }
    };
    ApiError {
        method: method.to_string(),
        path: path.to_string(),
        status: status.as_u16(),
        code,
        message,
        details: details.filter(|d| !d.is_null()),
        correlation_id,
        attempts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_redacted_everywhere() {
        let token = Token::new("s3cr3t-t0ken");
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        let config = ClientConfig::new("http://127.0.0.1:9/v1", token.clone());
        assert!(!format!("{config:?}").contains("s3cr3t"));
        let client = Client::new(config).unwrap();
        assert!(!format!("{client:?}").contains("s3cr3t"));
        let secret = SecretString::new("root-password");
        assert!(!format!("{secret:?}").contains("root-password"));
    }

    #[test]
    fn rejects_bad_endpoints_and_tokens_without_echoing_the_token() {
        let token = Token::new("zqx\nzqx");
        let error = Client::new(ClientConfig::new("http://127.0.0.1/v1", token)).unwrap_err();
        assert!(!error.to_string().contains("zqx"), "{error}");
        assert!(!format!("{error:?}").contains("zqx"), "{error:?}");
        for endpoint in [
            "ftp://x/v1",
            "not a url",
            "http://user:pw@host/v1",
            "http://host/v1?x=1",
        ] {
            let result = Client::new(ClientConfig::new(endpoint, Token::new("t")));
            assert!(matches!(result, Err(Error::Config(_))), "{endpoint}");
        }
        assert!(Client::new(ClientConfig::new("http://h/v1", Token::new("  "))).is_err());
        let client = Client::new(ClientConfig::new(
            "https://api.example/v1/",
            Token::new("t"),
        ))
        .unwrap();
        assert_eq!(client.endpoint(), "https://api.example/v1");
    }

    #[test]
    fn error_bodies_and_bare_answers() {
        let body = br#"{"error":{"code":"invalid_input","message":"invalid input in field 'name'",
            "details":{"fields":[{"name":"name","messages":["is too long"]}]}}}"#;
        let error = parse_error_body(
            &Method::POST,
            "/servers",
            StatusCode::BAD_REQUEST,
            body,
            Some("abc123".into()),
            1,
        );
        assert_eq!(error.code, Some(ErrorCode::InvalidInput));
        assert_eq!(
            error.to_string(),
            "POST /servers: HTTP 400 invalid_input: invalid input in field 'name' (name: is too long) \
             [X-Correlation-Id abc123]"
        );
        let bare = parse_error_body(
            &Method::GET,
            "/servers/1",
            StatusCode::BAD_GATEWAY,
            b"<html>502</html>",
            None,
            5,
        );
        assert_eq!(bare.code, None);
        assert_eq!(
            bare.to_string(),
            "GET /servers/1: HTTP 502: <html>502</html> after 5 attempts"
        );
        let new_code = parse_error_body(
            &Method::GET,
            "/x",
            StatusCode::IM_A_TEAPOT,
            br#"{"error":{"code":"brand_new","message":"m","details":null}}"#,
            None,
            1,
        );
        assert_eq!(new_code.code, Some(ErrorCode::Unknown("brand_new".into())));
        assert_eq!(new_code.details, None);
    }
}
