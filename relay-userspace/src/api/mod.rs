//! The allocation API: HTTP + JSON, bearer tokens.
//!
//! | method | path | |
//! |---|---|---|
//! | POST | `/v1/sessions` | allocate (201, or 200 for a repeated idempotency key) |
//! | GET | `/v1/sessions` | the caller's sessions |
//! | GET | `/v1/sessions/{vni}` | one session, with its leg keys and tickets |
//! | DELETE | `/v1/sessions/{vni}` | delete (204) |
//! | GET | `/healthz` | liveness, no token |
//!
//! Every error is `{"error": code, "reason": text}` with the matching status. A token sees only
//! its own sessions; another token's session is "not found", not "forbidden", so VNIs cannot be
//! probed. Each source address gets `api.requests_per_sec_per_source` requests per second
//! (429 `rate_limited` beyond), checked before anything else, token guesses included.

pub mod auth;
pub mod error;
pub mod tls;
pub mod types;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Instant, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, Path, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use relay_common::geneve::VNI_MAX;

use self::{
    auth::TokenStore,
    error::ApiError,
    types::{CreateSession, Endpoints, LegDetails, SessionDetails, SessionList},
};
use crate::{
    control::{
        session::{LEG_NAMES, Session},
        source_limit::SourceLimiter,
        table::{AllocError, AllocationRequest},
        ticket::Ticket,
    },
    daemon::plane::{AllocateError, SharedPlane},
    metrics::ApiMetrics,
};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The control plane.
    pub plane: SharedPlane,
    /// Configured tokens, replaced as a whole when the configuration is reloaded.
    pub tokens: Arc<ArcSwap<TokenStore>>,
    /// Endpoints advertised to clients.
    pub endpoints: Endpoints,
    /// Request counts for the metrics endpoint.
    pub metrics: Arc<ApiMetrics>,
    /// Requests per source address.
    pub requests: Arc<Mutex<SourceLimiter>>,
}

impl ApiState {
    /// The state for `tokens`, allowing `requests_per_sec` requests per second per source
    /// address (with bursts of one second's worth; 0 = unlimited).
    pub fn new(
        plane: SharedPlane,
        tokens: TokenStore,
        endpoints: Endpoints,
        requests_per_sec: u32,
    ) -> ApiState {
        ApiState {
            plane,
            tokens: Arc::new(ArcSwap::from_pointee(tokens)),
            endpoints,
            metrics: Arc::new(ApiMetrics::default()),
            requests: Arc::new(Mutex::new(request_limiter(requests_per_sec))),
        }
    }
}

/// How much of the request rate one source may spend at once: a second's worth, so a client's
/// few quick calls (create, then get) pass.
const REQUEST_BURST_MS: u64 = 1000;

/// The per-source request limiter for `per_sec` requests per second (0 = unlimited).
pub fn request_limiter(per_sec: u32) -> SourceLimiter {
    SourceLimiter::with_burst(per_sec, REQUEST_BURST_MS, Instant::now())
}

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

/// Counts every request by endpoint template, method and status.
async fn count_requests(
    State(metrics): State<Arc<ApiMetrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let endpoint = ApiMetrics::endpoint(request.uri().path());
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    metrics.record(endpoint, &method, response.status().as_u16());
    response
}

/// The API's routes.
pub fn router(state: ApiState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/sessions", get(list).post(create))
        .route("/v1/sessions/{vni}", get(show).delete(delete))
        .route("/healthz", get(health))
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
        .with_state(state)
}

/// The name of the request's token.
fn token(state: &ApiState, headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    state.tokens.load().authenticate(value).map(str::to_string)
}

fn parse_vni(text: &str) -> Result<u32, ApiError> {
    match text.parse::<u32>() {
        Ok(v) if (1..=VNI_MAX).contains(&v) => Ok(v),
        _ => Err(ApiError::invalid(format!(
            "{text:?} is not a session id (1 to {VNI_MAX})"
        ))),
    }
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_millis(unix_ms))
        .to_string()
}

/// The JSON view of a session; with credentials only for single-session responses.
fn details(session: &Session, endpoints: &Endpoints, credentials: bool) -> SessionDetails {
    let legs = session
        .legs
        .iter()
        .enumerate()
        .map(|(i, leg)| LegDetails {
            leg: LEG_NAMES[i].to_string(),
            label: leg.label.clone(),
            bound: leg.bound,
            key: credentials.then(|| STANDARD.encode(leg.key)),
            ticket: credentials.then(|| {
                Ticket {
                    vni: session.vni,
                    leg: i as u8,
                    key: leg.key,
                    relay: endpoints.all(),
                }
                .encode()
            }),
        })
        .collect();
    SessionDetails {
        vni: session.vni,
        token: session.token.clone(),
        state: session.state().name().to_string(),
        created: rfc3339(session.created_unix_ms),
        relay: endpoints.clone(),
        bind_lifetime_s: session.bind_lifetime.as_secs(),
        idle_lifetime_s: session.idle_lifetime.as_secs(),
        legs,
    }
}

async fn create(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<SessionDetails>), ApiError> {
    let token = token(&state, &headers)?;
    let body = body.map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            e.body_text(),
        )
    })?;
    let request: CreateSession = if body.iter().all(u8::is_ascii_whitespace) {
        CreateSession::default()
    } else {
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
        })?
    };
    let header_key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| ApiError::invalid("Idempotency-Key must be visible ASCII"))?;
    let idempotency_key = match (header_key, request.idempotency_key) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::invalid(
                "Idempotency-Key header and idempotency_key field differ",
            ));
        }
        (h, b) => h.or(b),
    };
    let labels = request.labels.unwrap_or_default();
    let allocation = AllocationRequest {
        labels: [labels.a, labels.b],
        idempotency_key,
    };
    let result = state
        .plane
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .allocate(&token, allocation);
    match result {
        Ok((session, created)) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(details(&session, &state.endpoints, true))))
        }
        Err(AllocateError::Refused(e @ AllocError::TokenQuota { .. })) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            e.to_string(),
        )),
        Err(AllocateError::Refused(e @ AllocError::RelayFull { .. })) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "relay_full",
            e.to_string(),
        )),
        Err(AllocateError::Refused(e @ AllocError::Invalid { .. })) => {
            Err(ApiError::invalid(e.to_string()))
        }
        Err(e @ AllocateError::FastPath(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "relay_full",
            e.to_string(),
        )),
    }
}

async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<SessionList>, ApiError> {
    let token = token(&state, &headers)?;
    let plane = state.plane.lock().unwrap_or_else(|p| p.into_inner());
    let mut sessions: Vec<SessionDetails> = plane
        .table()
        .iter()
        .filter(|s| s.token == *token)
        .map(|s| details(s, &state.endpoints, false))
        .collect();
    sessions.sort_by_key(|s| s.vni);
    Ok(Json(SessionList { sessions }))
}

async fn show(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(vni): Path<String>,
) -> Result<Json<SessionDetails>, ApiError> {
    let token = token(&state, &headers)?;
    let vni = parse_vni(&vni)?;
    let plane = state.plane.lock().unwrap_or_else(|p| p.into_inner());
    match plane.table().get(vni) {
        Some(s) if s.token == token => Ok(Json(details(s, &state.endpoints, true))),
        _ => Err(ApiError::not_found(format!("no session {vni}"))),
    }
}

async fn delete(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(vni): Path<String>,
) -> Result<StatusCode, ApiError> {
    let token = token(&state, &headers)?;
    let vni = parse_vni(&vni)?;
    let deleted = state
        .plane
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .delete(&token, vni);
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no session {vni}")))
    }
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
