//! Readiness and draining through the API's router, in-process: `/readyz` without a token, a
//! drain that only an admin token may start, new sessions refused with the alternates while
//! draining, what exists kept, and an undrain.

mod common;

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use common::{JSON, call, error};
use relay_userspace::{
    api::{
        self, ApiState,
        auth::TokenStore,
        fleet::{DrainState, Readiness, ReadinessSource},
        types::{Endpoints, SessionDetails},
    },
    config::TokenConfig,
    control::plane::Plane,
    fleet::{Alternates, Fleet},
    fronts::geneve,
};

const APP: &str = "app-token-0123456789ab";
const OPERATOR: &str = "operator-token-0123456789";

fn app(max_sessions: u32) -> axum::Router {
    let tokens = [("app", APP, false), ("operator", OPERATOR, true)]
        .map(|(name, token, admin)| TokenConfig {
            name: name.into(),
            token: Some(token.into()),
            token_sha256: None,
            max_sessions: 100,
            admin,
        })
        .to_vec();
    let quotas = tokens.iter().map(|t| (t.name.clone(), 100)).collect();
    let plane = Plane::in_memory(max_sessions, quotas);
    let alternates = Alternates {
        api: vec!["https://relay2.example:8443".into()],
        ..Alternates::default()
    };
    let state = ApiState::new(Arc::new(Mutex::new(plane)), TokenStore::new(&tokens), 0)
        .with_fleet(Fleet::unpinned(alternates));
    let _ = state.readiness.set(ReadinessSource {
        xdp_off: true,
        interfaces: vec![],
        pin_dir: None,
        max_sessions,
        fronts: vec![],
    });
    let sessions = geneve::api::routes(
        &state,
        Endpoints {
            v4: Some("198.51.100.1:6081".parse().unwrap()),
            v6: None,
        },
    );
    api::router(&state, [sessions], 4096)
}

async fn readiness(app: &axum::Router) -> (StatusCode, Readiness) {
    let (status, text) = call(app, "GET", "/readyz", None, None).await;
    (status, serde_json::from_str(&text).unwrap())
}

#[tokio::test]
async fn readyz_says_ready_and_how_full_without_a_token() {
    let app = app(2);
    let (status, r) = readiness(&app).await;
    assert_eq!(status, StatusCode::OK);
    assert!(r.ready && r.reasons.is_empty() && !r.draining, "{r:?}");
    assert_eq!((r.sessions.used, r.sessions.max), (0, 2));
    for _ in 0..2 {
        let (status, _) = call(&app, "POST", "/v1/sessions", Some(APP), None).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    // Full is not ready: nothing new would fit.
    let (status, r) = readiness(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.reasons, ["sessions full"]);
    assert_eq!(r.sessions.used, 2);
}

#[tokio::test]
async fn a_drain_refuses_new_sessions_with_the_alternates_and_keeps_the_rest() {
    let app = app(10);
    let body = Some((JSON, r#"{"labels": {"a": "before-the-drain"}}"#));
    let (_, text) = call(&app, "POST", "/v1/sessions", Some(APP), body).await;
    let existing: SessionDetails = serde_json::from_str(&text).unwrap();

    // Only an admin token drains.
    let (status, text) = call(&app, "PUT", "/v1/drain", Some(APP), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(error(&text).reason.contains("admin: true"), "{text}");
    let (status, _) = call(&app, "PUT", "/v1/drain", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, text) = call(&app, "PUT", "/v1/drain", Some(OPERATOR), None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let d: DrainState = serde_json::from_str(&text).unwrap();
    assert!(d.draining && d.since.is_some());
    assert_eq!(d.remaining, 1, "the session that exists");

    // Not ready, and why.
    let (status, r) = readiness(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (r.reasons.as_slice(), r.draining),
        (&["draining".to_string()][..], true)
    );

    // A new session: 503 naming where to go.
    let (status, text) = call(&app, "POST", "/v1/sessions", Some(APP), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"], "draining");
    assert_eq!(body["alternates"][0], "https://relay2.example:8443");
    assert!(body["reason"].as_str().unwrap().contains("relay2.example"));

    // The existing session is untouched: readable, deletable.
    let path = format!("/v1/sessions/{}", existing.vni);
    let (status, _) = call(&app, "GET", &path, Some(APP), None).await;
    assert_eq!(status, StatusCode::OK);
    // Any token reads the drain state; the count falls as sessions go.
    let (status, _) = call(&app, "DELETE", &path, Some(APP), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, text) = call(&app, "GET", "/v1/drain", Some(APP), None).await;
    let d: DrainState = serde_json::from_str(&text).unwrap();
    assert_eq!((d.draining, d.remaining), (true, 0));

    // Undrained: sessions again, ready again.
    let (status, text) = call(&app, "DELETE", "/v1/drain", Some(OPERATOR), None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, _) = call(&app, "POST", "/v1/sessions", Some(APP), None).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(readiness(&app).await.1.ready);
}
