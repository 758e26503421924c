//! API errors as the service renders them: `{"error":{"code","message","details"}}` with the usual status.

use serde_json::{Value, json};

/// An error answer of the simulated API.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) details: Value,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_owned(),
            message: message.into(),
            details: Value::Null,
        }
    }

    /// `invalid_input` naming one field, as the service does for a bad field.
    pub(crate) fn invalid_field(field: &str, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError {
            status: 400,
            code: "invalid_input".into(),
            message: format!("invalid input in field '{field}'"),
            details: json!({"fields": [{"name": field, "messages": [message]}]}),
        }
    }

    /// `invalid_input` with a message of its own (the service's live wording), naming one field.
    pub(crate) fn invalid_with_message(field: &str, message: &str) -> ApiError {
        ApiError {
            status: 400,
            code: "invalid_input".into(),
            message: message.to_owned(),
            details: json!({"fields": [{"name": field, "messages": [message]}]}),
        }
    }

    pub(crate) fn uniqueness(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 409,
            code: "uniqueness_error".into(),
            message: message.into(),
            details: json!({"fields": [{"name": field}]}),
        }
    }

    pub(crate) fn not_found(what: &str) -> ApiError {
        ApiError::new(404, "not_found", format!("{what} not found"))
    }

    pub(crate) fn locked() -> ApiError {
        ApiError::new(423, "locked", "server is locked by another action")
    }

    pub(crate) fn json_error(why: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            400,
            "json_error",
            format!("invalid JSON in request body: {why}"),
        )
    }

    pub(crate) fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message, "details": self.details}})
    }
}
