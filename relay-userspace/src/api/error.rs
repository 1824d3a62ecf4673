//! API errors: always JSON `{"error": code, "reason": text}` with the matching status (and
//! `"alternates": [URL, …]` when a draining relay refuses).

use axum::{
    Json,
    extract::rejection::JsonRejection,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::control::{plane::AllocateError, table::AllocError};

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable reason.
    pub reason: String,
    /// Where to go instead (a draining relay's 503 names the fleet's other relays' APIs).
    pub alternates: Vec<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    alternates: &'a [String],
}

impl ApiError {
    /// An error with `status`, `code` and `reason`.
    pub fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            reason: reason.into(),
            alternates: Vec::new(),
        }
    }

    /// 401: missing or wrong token.
    pub fn unauthorized(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason)
    }

    /// 404.
    pub fn not_found(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", reason)
    }

    /// 400: a request field is wrong.
    pub fn invalid(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(Body {
            error: self.code,
            reason: &self.reason,
            alternates: &self.alternates,
        });
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"relay\""),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let (status, code) = match &rejection {
            JsonRejection::JsonDataError(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            JsonRejection::BytesRejection(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            _ => (StatusCode::BAD_REQUEST, "invalid_request"),
        };
        // The rejection's body text names the offending field and position.
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<AllocateError> for ApiError {
    /// Why an allocation (a session or a WireGuard pair) was refused, as the API says it.
    fn from(e: AllocateError) -> ApiError {
        match e {
            AllocateError::Refused(e @ AllocError::TokenQuota { .. }) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                e.to_string(),
            ),
            AllocateError::Refused(
                e @ (AllocError::RelayFull { .. } | AllocError::NoPorts { .. }),
            ) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "relay_full", e.to_string()),
            AllocateError::Refused(e @ AllocError::Invalid { .. }) => {
                ApiError::invalid(e.to_string())
            }
            e @ AllocateError::FastPath(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "relay_full", e.to_string())
            }
        }
    }
}
