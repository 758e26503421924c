//! Errors of the Hetzner Cloud client, with the context needed to act on them.
//!
//! Every error that comes from a call names the method and path, and where the API answered, the
//! HTTP status, the API's `error.code`, message, details and the `X-Correlation-Id` Hetzner support
//! asks for. None of them can hold the token: requests are built from a [`super::Token`] that has
//! no `Display` and a redacted `Debug`, and URLs never carry it.

use std::fmt;
use std::time::Duration;

use super::labels::LabelError;
use super::types::{ActionId, ErrorCode, ServerId};

/// What the API said when it refused a call.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP method of the call.
    pub method: String,
    /// Path of the call below the endpoint, without the query.
    pub path: String,
    /// HTTP status.
    pub status: u16,
    /// The API's `error.code`; `None` when the body was not an API error (e.g. a bare 502 from a
    /// proxy).
    pub code: Option<ErrorCode>,
    /// The API's `error.message`, or the start of the body when it was not an API error.
    pub message: String,
    /// The API's `error.details` (e.g. the invalid fields), if any.
    pub details: Option<serde_json::Value>,
    /// The `X-Correlation-Id` header, if any.
    pub correlation_id: Option<String>,
    /// How many times the call was sent.
    pub attempts: u32,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: HTTP {}", self.method, self.path, self.status)?;
        match &self.code {
            Some(code) => write!(f, " {code}: {}", self.message)?,
            None if self.message.is_empty() => {}
            None => write!(f, ": {}", self.message)?,
        }
        if let Some(fields) = self.detail_summary() {
            write!(f, " ({fields})")?;
        }
        if let Some(id) = &self.correlation_id {
            write!(f, " [X-Correlation-Id {id}]")?;
        }
        if self.attempts > 1 {
            write!(f, " after {} attempts", self.attempts)?;
        }
        Ok(())
    }
}

impl ApiError {
    /// The names (and messages) of the fields the details mention: `invalid_input` and
    /// `uniqueness_error` list fields, `resource_limit_exceeded` lists limits.
    fn detail_summary(&self) -> Option<String> {
        let details = self.details.as_ref()?;
        let mut parts = Vec::new();
        for list in ["fields", "limits"] {
            for entry in details
                .get(list)
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                let Some(name) = entry.get("name").and_then(|v| v.as_str()) else {
                    continue;
                };
                let messages: Vec<&str> = entry
                    .get("messages")
                    .and_then(|v| v.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.as_str())
                    .collect();
                if messages.is_empty() {
                    parts.push(format!("{list}: {name}"));
                } else {
                    parts.push(format!("{name}: {}", messages.join("; ")));
                }
            }
        }
        if parts.is_empty() {
            None
        } else {
            Some(parts.join(", "))
        }
    }
}

/// An error of the Hetzner Cloud client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an error (after any retries).
    #[error("{0}")]
    Api(Box<ApiError>),
    /// No answer: connecting, sending or receiving failed (after any retries).
    #[error("{method} {path}: {kind} after {attempts} attempt(s): {source}")]
    Transport {
        /// HTTP method of the call.
        method: String,
        /// Path of the call.
        path: String,
        /// Whether the request may have reached the API.
        kind: TransportKind,
        /// How many times the call was sent.
        attempts: u32,
        /// The underlying error (it holds the URL, never the token).
        #[source]
        source: reqwest::Error,
    },
    /// The API answered with success but a body this client cannot decode.
    #[error("{method} {path}: HTTP {status}: cannot decode the answer: {reason}{}", correlation_suffix(.correlation_id))]
    Decode {
        /// HTTP method of the call.
        method: String,
        /// Path of the call.
        path: String,
        /// HTTP status.
        status: u16,
        /// What did not decode.
        reason: String,
        /// The `X-Correlation-Id` header, if any.
        correlation_id: Option<String>,
    },
    /// A label or label selector breaks the label rules; nothing was sent.
    #[error(transparent)]
    Label(#[from] LabelError),
    /// A request field is invalid; nothing was sent.
    #[error("invalid {field}: {reason}")]
    InvalidRequest {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The client configuration is invalid.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// An action ended in `error`.
    #[error("action {id} ({command}) failed: {code}: {message}")]
    ActionFailed {
        /// The action's id.
        id: ActionId,
        /// The action's command, e.g. `create_image`.
        command: String,
        /// The action's `error.code`.
        code: String,
        /// The action's `error.message`.
        message: String,
    },
    /// Actions did not finish before the waiter's deadline.
    #[error("gave up after {waited:?} waiting for {}", describe_pending(.pending))]
    WaitTimeout {
        /// How long the waiter waited.
        waited: Duration,
        /// The actions still running: id, command, progress.
        pending: Vec<(ActionId, String, u8)>,
    },
    /// A server did not reach a status before the waiter's deadline.
    #[error("gave up after {waited:?} waiting for server {id} to be {wanted} (it is {last})")]
    ServerStatusTimeout {
        /// The server's id.
        id: ServerId,
        /// The status waited for.
        wanted: String,
        /// The status last seen.
        last: String,
        /// How long the waiter waited.
        waited: Duration,
    },
    /// `GET /actions` did not return an action that was asked for.
    #[error("GET /actions did not return action {id}")]
    ActionMissing {
        /// The missing action's id.
        id: ActionId,
    },
    /// Pagination did not end within the page limit (or went backwards).
    #[error("GET {path}: pagination did not end: {reason}")]
    Pagination {
        /// Path of the list call.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

fn correlation_suffix(id: &Option<String>) -> String {
    match id {
        Some(id) => format!(" [X-Correlation-Id {id}]"),
        None => String::new(),
    }
}

fn describe_pending(pending: &[(ActionId, String, u8)]) -> String {
    let list: Vec<String> = pending
        .iter()
        .map(|(id, command, progress)| format!("action {id} ({command}, {progress}%)"))
        .collect();
    list.join(", ")
}

/// Whether a transport failure may have let the request reach the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Connecting failed: the request was certainly not processed.
    Connect,
    /// The connection failed or timed out after the request may have been sent.
    MaybeSent,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Connect => "cannot connect",
            TransportKind::MaybeSent => "no answer (the request may have been processed)",
        })
    }
}

impl Error {
    /// The API's error code, when the API answered with one.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Error::Api(api) => api.code.as_ref(),
            _ => None,
        }
    }

    /// Whether the API said the resource does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(&ErrorCode::NotFound)
    }

    /// The `X-Correlation-Id` of the answer, if any.
    pub fn correlation_id(&self) -> Option<&str> {
        match self {
            Error::Api(api) => api.correlation_id.as_deref(),
            Error::Decode { correlation_id, .. } => correlation_id.as_deref(),
            _ => None,
        }
    }

    /// Whether a create call may have taken effect although it failed: the answer was lost or
    /// came from a gateway. The caller should look for the resource (by name or label) before
    /// creating it again.
    pub fn may_have_been_processed(&self) -> bool {
        match self {
            Error::Transport { kind, .. } => *kind == TransportKind::MaybeSent,
            Error::Api(api) => {
                matches!(api.code, Some(ErrorCode::BadGateway | ErrorCode::Timeout))
                    || (api.code.is_none() && matches!(api.status, 502 | 504))
            }
            _ => false,
        }
    }
}
