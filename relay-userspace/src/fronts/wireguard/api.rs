//! The WireGuard pairs' API routes: allocate (with the `[Peer]` sections each side pastes), list,
//! show and delete. Same tokens, quotas, idempotency and JSON errors as sessions: a pair is a
//! session of another kind, and each kind's routes see only their own.
//!
//! | method | path | |
//! |---|---|---|
//! | POST | `/v1/wireguard` | allocate (201, or 200 for a repeated idempotency key) |
//! | GET | `/v1/wireguard` | the caller's pairs |
//! | GET | `/v1/wireguard/{id}` | one pair, with its snippets |
//! | DELETE | `/v1/wireguard/{id}` | delete (204) |

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    routing::get,
};
use relay_common::geneve::VNI_MAX;
use tracing::warn;

use super::{PairsCore, snippet};
use crate::{
    api::{
        ApiState,
        error::ApiError,
        idempotency_key, json_body, rfc3339,
        types::{CreatePair, PairDetails, PairList, PeerDetails},
    },
    control::{
        plane::PairAsk,
        session::{LEG_NAMES, Session},
        table::AllocationRequest,
    },
};

/// What the routes need.
#[derive(Clone)]
struct PairsApi {
    shared: ApiState,
    core: Arc<PairsCore>,
}

/// The `/v1/wireguard` routes.
pub fn routes(shared: &ApiState, core: &Arc<PairsCore>) -> Router {
    Router::new()
        .route("/v1/wireguard", get(list).post(create))
        .route("/v1/wireguard/{id}", get(show).delete(delete))
        .with_state(PairsApi {
            shared: shared.clone(),
            core: core.clone(),
        })
}

fn parse_id(text: &str) -> Result<u32, ApiError> {
    match text.parse::<u32>() {
        Ok(v) if (1..=VNI_MAX).contains(&v) => Ok(v),
        _ => Err(ApiError::invalid(format!(
            "{text:?} is not a pair id (1 to {VNI_MAX})"
        ))),
    }
}

/// The JSON view of a pair; with the snippets only for single-pair responses.
fn details(session: &Session, core: &PairsCore, snippets: bool) -> PairDetails {
    let w = session.wireguard().expect("a WireGuard pair");
    let peers = (0..2)
        .map(|i| {
            let leg = &session.legs[i];
            let relay = core.endpoints_of(w.ports[i]);
            // The v4 endpoint when the relay has one: every WireGuard peer can send to it.
            let snippet = relay.v4.or(relay.v6).filter(|_| snippets).map(|endpoint| {
                snippet::peer_section(
                    &session.legs[1 - i].key,
                    endpoint,
                    core.keepalive(),
                    session.legs[1 - i].label.as_deref(),
                )
            });
            PeerDetails {
                peer: LEG_NAMES[i].to_string(),
                label: leg.label.clone(),
                public_key: snippet::format_key(&leg.key),
                relay,
                bound: leg.bound,
                snippet,
            }
        })
        .collect();
    PairDetails {
        id: session.vni,
        token: session.token.clone(),
        state: session.state().name().to_string(),
        created: rfc3339(session.created_unix_ms),
        keepalive_s: core.keepalive(),
        idle_lifetime_s: session.idle_lifetime.as_secs(),
        peers,
    }
}

async fn create(
    State(state): State<PairsApi>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PairDetails>), ApiError> {
    let token = state.shared.token(&headers)?;
    crate::api::fleet::refuse_while_draining(&state.shared, "WireGuard pairs")?;
    let request: CreatePair = json_body(&headers, body)?;
    let idempotency_key = idempotency_key(&headers, request.idempotency_key)?;
    let keys = request.public_keys.ok_or_else(|| {
        ApiError::invalid("public_keys: give both peers' keys, {\"a\": …, \"b\": …}")
    })?;
    let public_keys = snippet::parse_pair(&keys.a, &keys.b)
        .map_err(|(i, e)| ApiError::invalid(format!("public_keys.{}: {e}", LEG_NAMES[i])))?;
    let labels = request.labels.unwrap_or_default();
    let allocation = AllocationRequest {
        labels: [labels.a, labels.b],
        idempotency_key,
        wireguard: None,
    };
    let ask = PairAsk {
        public_keys,
        shared_address: request.shared_address,
    };
    let (session, created) = state
        .shared
        .plane
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .allocate_pair(&token, allocation, ask)?;
    if let Err(e) = state.core.start_allocated(&session) {
        // Another process holds one of the ports, or the descriptors ran out: give the pair
        // back rather than hand out an endpoint nobody serves.
        if crate::fronts::is_out_of_descriptors(&e) {
            warn!(
                id = session.vni,
                error = %e,
                limit = %crate::descriptors::Limit::current(),
                "a WireGuard pair's ports cannot be opened: out of file descriptors; raise \
                 LimitNOFILE in the unit (`relay check` computes what the configuration needs)"
            );
        } else {
            warn!(id = session.vni, error = %e, "a WireGuard pair's ports cannot be opened");
        }
        state
            .shared
            .plane
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .delete(&token, session.vni, true);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "relay_full",
            format!(
                "relay ports {:?} cannot be opened: {e}",
                session.wireguard().map(|w| w.ports)
            ),
        ));
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(details(&session, &state.core, true))))
}

async fn list(
    State(state): State<PairsApi>,
    headers: HeaderMap,
) -> Result<Json<PairList>, ApiError> {
    let token = state.shared.token(&headers)?;
    let plane = state.shared.plane.lock().unwrap_or_else(|p| p.into_inner());
    let pairs = plane
        .all_owned(&token, true)
        .into_iter()
        .map(|s| details(s, &state.core, false))
        .collect();
    Ok(Json(PairList { pairs }))
}

async fn show(
    State(state): State<PairsApi>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<PairDetails>, ApiError> {
    let token = state.shared.token(&headers)?;
    let id = parse_id(&id)?;
    let plane = state.shared.plane.lock().unwrap_or_else(|p| p.into_inner());
    match plane.owned(&token, id, true) {
        Some(s) => Ok(Json(details(s, &state.core, true))),
        None => Err(ApiError::not_found(format!("no WireGuard pair {id}"))),
    }
}

async fn delete(
    State(state): State<PairsApi>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let token = state.shared.token(&headers)?;
    let id = parse_id(&id)?;
    let deleted = state
        .shared
        .plane
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .delete(&token, id, true);
    if !deleted {
        return Err(ApiError::not_found(format!("no WireGuard pair {id}")));
    }
    state.core.stop_pair(id).await;
    Ok(StatusCode::NO_CONTENT)
}
