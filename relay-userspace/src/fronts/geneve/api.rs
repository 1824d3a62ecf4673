//! The session protocol's API routes: allocate, list, show and delete sessions, with the
//! tickets clients join them by.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    routing::get,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use relay_common::geneve::VNI_MAX;

use super::ticket::Ticket;
use crate::{
    api::{
        ApiState,
        error::ApiError,
        idempotency_key, json_body, rfc3339,
        types::{CreateSession, Endpoints, LegDetails, SessionDetails, SessionList},
    },
    control::{
        session::{LEG_NAMES, Session},
        table::AllocationRequest,
    },
};

/// What the session routes need: the shared API state and the endpoints tickets name.
#[derive(Clone)]
pub struct SessionsApi {
    /// Tokens, the plane, limits.
    pub shared: ApiState,
    /// The relay's session-protocol endpoints, advertised in tickets.
    pub endpoints: Endpoints,
}

/// The `/v1/sessions` routes.
pub fn routes(shared: &ApiState, endpoints: Endpoints) -> Router {
    Router::new()
        .route("/v1/sessions", get(list).post(create))
        .route("/v1/sessions/{vni}", get(show).delete(delete))
        .with_state(SessionsApi {
            shared: shared.clone(),
            endpoints,
        })
}

fn parse_vni(text: &str) -> Result<u32, ApiError> {
    match text.parse::<u32>() {
        Ok(v) if (1..=VNI_MAX).contains(&v) => Ok(v),
        _ => Err(ApiError::invalid(format!(
            "{text:?} is not a session id (1 to {VNI_MAX})"
        ))),
    }
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
    State(state): State<SessionsApi>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<SessionDetails>), ApiError> {
    let token = state.shared.token(&headers)?;
    crate::api::fleet::refuse_while_draining(&state.shared, "sessions")?;
    let request: CreateSession = json_body(&headers, body)?;
    let idempotency_key = idempotency_key(&headers, request.idempotency_key)?;
    let labels = request.labels.unwrap_or_default();
    let allocation = AllocationRequest {
        labels: [labels.a, labels.b],
        idempotency_key,
        wireguard: None,
    };
    let result = state
        .shared
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
        Err(e) => Err(e.into()),
    }
}

async fn list(
    State(state): State<SessionsApi>,
    headers: HeaderMap,
) -> Result<Json<SessionList>, ApiError> {
    let token = state.shared.token(&headers)?;
    let plane = state.shared.plane.lock().unwrap_or_else(|p| p.into_inner());
    let sessions = plane
        .all_owned(&token, false)
        .into_iter()
        .map(|s| details(s, &state.endpoints, false))
        .collect();
    Ok(Json(SessionList { sessions }))
}

async fn show(
    State(state): State<SessionsApi>,
    headers: HeaderMap,
    Path(vni): Path<String>,
) -> Result<Json<SessionDetails>, ApiError> {
    let token = state.shared.token(&headers)?;
    let vni = parse_vni(&vni)?;
    let plane = state.shared.plane.lock().unwrap_or_else(|p| p.into_inner());
    match plane.owned(&token, vni, false) {
        Some(s) => Ok(Json(details(s, &state.endpoints, true))),
        None => Err(ApiError::not_found(format!("no session {vni}"))),
    }
}

async fn delete(
    State(state): State<SessionsApi>,
    headers: HeaderMap,
    Path(vni): Path<String>,
) -> Result<StatusCode, ApiError> {
    let token = state.shared.token(&headers)?;
    let vni = parse_vni(&vni)?;
    let deleted = state
        .shared
        .plane
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .delete(&token, vni, false);
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no session {vni}")))
    }
}
