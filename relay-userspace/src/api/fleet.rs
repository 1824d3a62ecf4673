//! What a fleet asks of one relay over the API: readiness (no token; load balancers, DNS health
//! checks and Kubernetes probe it) and draining (an admin token's).
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/readyz` | 200 when ready, 503 with the reasons when not; how full it is either way |
//! | GET | `/v1/drain` | draining or not, and what is left on this relay |
//! | PUT | `/v1/drain` | start draining (admin token) |
//! | DELETE | `/v1/drain` | stop draining (admin token) |
//!
//! Ready means: the fast path is attached to every interface (or `xdp.mode: off` was chosen),
//! every front listens, and the relay is not draining.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::get,
};
use serde::{Deserialize, Serialize};

use super::{ApiState, error::ApiError};
use crate::{
    control::session::SessionKind, dataplane::attachment::pinned_interfaces, fronts::Front,
};

/// What readiness looks at, known once the daemon has started its fronts.
pub struct ReadinessSource {
    /// `xdp.mode: off`: no fast path is expected.
    pub xdp_off: bool,
    /// The interfaces the fast path must be attached to.
    pub interfaces: Vec<String>,
    /// Where its links are pinned (None with `xdp.mode: off`).
    pub pin_dir: Option<PathBuf>,
    /// `sessions.max_sessions` (pairs count against it too).
    pub max_sessions: u32,
    /// The running fronts.
    pub fronts: Vec<Arc<dyn Front>>,
}

/// How full one kind of state is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Occupancy {
    /// Held now.
    pub used: u64,
    /// The most this relay holds.
    pub max: u64,
}

/// The `/readyz` document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// Whether new sessions, pairs and allocations are welcome here.
    pub ready: bool,
    /// Why not (empty when ready).
    pub reasons: Vec<String>,
    /// Draining (what runs keeps running; nothing new).
    pub draining: bool,
    /// Sessions of the session protocol.
    pub sessions: Occupancy,
    /// WireGuard pairs (they count against the sessions' maximum too).
    pub pairs: Occupancy,
    /// TURN allocations (absent without TURN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocations: Option<Occupancy>,
}

impl Readiness {
    /// Sessions, pairs and allocations still held: what a drain waits for.
    pub fn remaining(&self) -> u64 {
        self.sessions.used + self.pairs.used + self.allocations.as_ref().map_or(0, |a| a.used)
    }
}

/// `/v1/drain`'s document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainState {
    /// Draining now.
    pub draining: bool,
    /// Since when (RFC 3339), when draining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Sessions, pairs and allocations still on this relay.
    pub remaining: u64,
    /// The same, by kind.
    pub readiness: Readiness,
}

/// The readiness and drain routes.
pub fn routes(state: &ApiState) -> Router {
    Router::new()
        .route("/readyz", get(readyz))
        .route("/v1/drain", get(drain_state).put(drain).delete(undrain))
        .with_state(state.clone())
}

/// Readiness now, from `source` (None: the daemon is still starting).
pub fn readiness(state: &ApiState, source: Option<&ReadinessSource>) -> Readiness {
    let mut r = Readiness {
        draining: state.fleet.draining(),
        ..Readiness::default()
    };
    let Some(source) = source else {
        r.reasons.push("starting".into());
        return r;
    };
    {
        let plane = state.plane.lock().unwrap_or_else(|p| p.into_inner());
        let pairs = plane
            .table()
            .iter()
            .filter(|s| matches!(s.kind, SessionKind::WireGuard(_)))
            .count() as u64;
        let all = plane.table().len() as u64;
        let max = u64::from(source.max_sessions);
        r.sessions = Occupancy {
            used: all - pairs,
            max,
        };
        r.pairs = Occupancy { used: pairs, max };
    }
    for front in &source.fronts {
        if front.local_addrs().is_empty() {
            r.reasons
                .push(format!("the {} front listens on nothing", front.name()));
        }
        if let Some((used, max)) = front.allocations() {
            r.allocations = Some(Occupancy { used, max });
        }
    }
    if !source.xdp_off {
        let attached = source
            .pin_dir
            .as_deref()
            .map(pinned_interfaces)
            .unwrap_or_default();
        for interface in &source.interfaces {
            if !attached.contains(interface) {
                r.reasons
                    .push(format!("the fast path is not attached to {interface}"));
            }
        }
    }
    if r.draining {
        r.reasons.push("draining".into());
    }
    if r.sessions.used + r.pairs.used >= r.sessions.max {
        r.reasons.push("sessions full".into());
    }
    if let Some(a) = &r.allocations
        && a.used >= a.max
    {
        r.reasons.push("TURN allocations full".into());
    }
    r.ready = r.reasons.is_empty();
    r
}

async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<Readiness>) {
    let r = readiness(&state, state.readiness.get());
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r))
}

fn drain_document(state: &ApiState) -> DrainState {
    let readiness = readiness(state, state.readiness.get());
    DrainState {
        draining: state.fleet.draining(),
        since: state
            .fleet
            .draining_since()
            .map(|s| super::rfc3339(s.saturating_mul(1000))),
        remaining: readiness.remaining(),
        readiness,
    }
}

/// The caller's token, which must be an admin's.
fn admin(state: &ApiState, headers: &HeaderMap) -> Result<String, ApiError> {
    let name = state.token(headers)?;
    if !state.tokens.load().is_admin(&name) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token {name:?} may not drain this relay (admin: true in api.tokens)"),
        ));
    }
    Ok(name)
}

async fn drain_state(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<DrainState>, ApiError> {
    state.token(&headers)?;
    Ok(Json(drain_document(&state)))
}

async fn drain(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<DrainState>, ApiError> {
    set(&state, &headers, true)
}

async fn undrain(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<DrainState>, ApiError> {
    set(&state, &headers, false)
}

fn set(state: &ApiState, headers: &HeaderMap, on: bool) -> Result<Json<DrainState>, ApiError> {
    let name = admin(state, headers)?;
    let changed = state.fleet.set_draining(on).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "drain_not_pinned",
            format!("{e:#}"),
        )
    })?;
    if changed {
        tracing::info!(target: "audit", token = %name, draining = on, "drain changed over the API");
    }
    Ok(Json(drain_document(state)))
}

static DRAINING: crate::logging::Throttle =
    crate::logging::Throttle::new(crate::logging::THROTTLE_EVERY);

/// 503 for a new session or pair while draining, naming where to go instead (counted by the
/// API's metrics under its status, logged once per throttle period).
pub fn refuse_while_draining(state: &ApiState, what: &str) -> Result<(), ApiError> {
    if !state.fleet.draining() {
        return Ok(());
    }
    let alternates = state.fleet.alternates().api.clone();
    if let Some(held) = DRAINING.allow(std::time::Instant::now()) {
        tracing::info!(
            what,
            held,
            "draining: a new allocation was refused with 503 naming fleet.alternates; \
             `relay undrain` takes new work again"
        );
    }
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "draining",
        format!(
            "this relay is draining: it takes no new {what}; {}",
            if alternates.is_empty() {
                "ask another relay of the fleet".to_string()
            } else {
                format!("ask {}", alternates.join(" or "))
            }
        ),
    );
    e.alternates = alternates;
    Err(e)
}

/// Late-bound: the daemon fills it once its fronts run.
pub type ReadinessCell = Arc<OnceLock<ReadinessSource>>;
