//! The API server's shared part: bearer tokens, the per-source request limit, request metrics,
//! JSON errors and `/healthz`. Each front adds its own routes ([`crate::fronts::Front`]): the
//! session protocol's, and the WireGuard pairs' (`/v1/wireguard`, `fronts::wireguard::api`,
//! same rules):
//!
//! | method | path | |
//! |---|---|---|
//! | POST | `/v1/sessions` | allocate (201, or 200 for a repeated idempotency key) |
//! | GET | `/v1/sessions` | the caller's sessions |
//! | GET | `/v1/sessions/{vni}` | one session, with its leg keys and tickets |
//! | DELETE | `/v1/sessions/{vni}` | delete (204) |
//! | GET | `/healthz` | liveness, no token |
//! | GET | `/readyz` | readiness and occupancy, no token ([`fleet`]) |
//! | GET, PUT, DELETE | `/v1/drain` | drain state; drain and undrain with an admin token |
//!
//! Every error is `{"error": code, "reason": text}` with the matching status. A token sees only
//! its own sessions; another token's session is "not found", not "forbidden", so VNIs cannot be
//! probed. Each source address gets `api.requests_per_sec_per_source` requests per second
//! (429 `rate_limited` beyond), checked before anything else, token guesses included.

pub mod auth;
pub mod error;
pub mod fleet;
pub mod tls;
pub mod types;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use arc_swap::ArcSwap;
use axum::{
    Json, Router,
    extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use self::{auth::TokenStore, error::ApiError};
use crate::{
    control::{plane::SharedPlane, source_limit::SourceLimiter},
    metrics::ApiMetrics,
};

/// A request's JSON body: an empty body is the document's default; anything else must be
/// `Content-Type: application/json` and parse (errors name what is wrong).
pub fn json_body<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            e.body_text(),
        )
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        let code = if e.is_data() {
            "invalid_request"
        } else {
            "invalid_json"
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    })
}

/// The idempotency key of a request: the `Idempotency-Key` header or the body's field (which
/// must agree when both are given).
pub fn idempotency_key(
    headers: &HeaderMap,
    field: Option<String>,
) -> Result<Option<String>, ApiError> {
    let header_key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| ApiError::invalid("Idempotency-Key must be visible ASCII"))?;
    match (header_key, field) {
        (Some(h), Some(b)) if h != b => Err(ApiError::invalid(
            "Idempotency-Key header and idempotency_key field differ",
        )),
        (h, b) => Ok(h.or(b)),
    }
}

/// A wall-clock time (ms since the Unix epoch) as RFC 3339, for documents.
pub fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms),
    )
    .to_string()
}

/// What every front's handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The session control plane.
    pub plane: SharedPlane,
    /// Configured tokens, replaced as a whole when the configuration is reloaded.
    pub tokens: Arc<ArcSwap<TokenStore>>,
    /// Request counts for the metrics endpoint.
    pub metrics: Arc<ApiMetrics>,
    /// Requests per source address.
    pub requests: Arc<Mutex<SourceLimiter>>,
    /// Draining, and the fleet's other relays.
    pub fleet: Arc<crate::fleet::Fleet>,
    /// What `/readyz` looks at, once the daemon's fronts run.
    pub readiness: fleet::ReadinessCell,
}

impl ApiState {
    /// The state for `tokens`, allowing `requests_per_sec` requests per second per source
    /// address (with bursts of one second's worth; 0 = unlimited).
    pub fn new(plane: SharedPlane, tokens: TokenStore, requests_per_sec: u32) -> ApiState {
        ApiState {
            plane,
            tokens: Arc::new(ArcSwap::from_pointee(tokens)),
            metrics: Arc::new(ApiMetrics::default()),
            requests: Arc::new(Mutex::new(request_limiter(requests_per_sec))),
            fleet: Arc::new(crate::fleet::Fleet::unpinned(Default::default())),
            readiness: Default::default(),
        }
    }

    /// The same state with `fleet` (the daemon's, pinned) in place of an unpinned one.
    pub fn with_fleet(mut self, fleet: crate::fleet::Fleet) -> ApiState {
        self.fleet = Arc::new(fleet);
        self
    }

    /// The name of the request's token (401 without a valid one).
    pub fn token(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        self.tokens.load().authenticate(value).map(str::to_string)
    }
}

/// How much of the request rate one source may spend at once: a second's worth, so a client's
/// few quick calls (create, then get) pass.
const REQUEST_BURST_MS: u64 = 1000;

/// The per-source request limiter for `per_sec` requests per second (0 = unlimited).
pub fn request_limiter(per_sec: u32) -> SourceLimiter {
    SourceLimiter::with_burst(per_sec, REQUEST_BURST_MS, Instant::now())
}

static API_RATE: crate::logging::Throttle =
    crate::logging::Throttle::new(crate::logging::THROTTLE_EVERY);

/// Refuses a request over its source's rate with 429 before any other work. Requests without a
/// peer address (in-process callers, not the server) are not limited.
async fn limit_requests(
    State(requests): State<Arc<Mutex<SourceLimiter>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        let mut limiter = requests.lock().unwrap_or_else(|p| p.into_inner());
        if !limiter.allow(peer.ip(), Instant::now()) {
            let reason = format!(
                "more than {} requests per second from {}; retry in a second",
                limiter.rate(),
                peer.ip()
            );
            drop(limiter);
            if let Some(held) = API_RATE.allow(Instant::now()) {
                tracing::warn!(
                    source = %peer.ip(),
                    held,
                    "API requests beyond api.requests_per_sec_per_source refused with 429"
                );
            }
            let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", reason)
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
    }
    next.run(request).await
}

/// Counts every request by route template (bounded: a path no route matches is "other"),
/// method and status.
async fn count_requests(
    State(metrics): State<Arc<ApiMetrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |m| m.as_str().to_string());
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    metrics.record(&endpoint, &method, response.status().as_u16());
    response
}

/// The API: `/healthz` and every front's routes, behind the shared limits and metrics.
pub fn router(
    state: &ApiState,
    fronts: impl IntoIterator<Item = Router>,
    max_body_bytes: usize,
) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(health))
        .with_state(state.clone())
        .merge(fleet::routes(state));
    for routes in fronts {
        router = router.merge(routes);
    }
    router
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.requests.clone(),
            limit_requests,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            count_requests,
        ))
}

async fn health(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let sessions = state
        .plane
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .table()
        .len();
    Json(serde_json::json!({ "status": "ok", "sessions": sessions }))
}
