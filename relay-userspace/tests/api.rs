//! The allocation API through its router, in-process (no sockets, no root): authentication,
//! malformed requests, quotas and limits, idempotence, scoping of sessions to their token.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use common::{JSON, call, error};
use http_body_util::BodyExt;
use relay_userspace::{
    api::{
        self, ApiState,
        auth::TokenStore,
        types::{Endpoints, SessionDetails, SessionList},
    },
    config::TokenConfig,
    control::plane::Plane,
    fronts::geneve::{self, ticket::Ticket},
};
use tower::ServiceExt;

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789ab";

fn app(max_sessions: u32, quota: u32, max_body: usize) -> axum::Router {
    app_limited(max_sessions, quota, max_body, 20)
}

fn app_limited(
    max_sessions: u32,
    quota: u32,
    max_body: usize,
    requests_per_sec: u32,
) -> axum::Router {
    app_with_state(max_sessions, quota, max_body, requests_per_sec).0
}

/// The router and the state its handlers share (for its request metrics).
fn app_with_state(
    max_sessions: u32,
    quota: u32,
    max_body: usize,
    requests_per_sec: u32,
) -> (axum::Router, ApiState) {
    let tokens = [("alice", ALICE), ("bob", BOB)]
        .map(|(name, token)| TokenConfig {
            name: name.into(),
            token: Some(token.into()),
            token_sha256: None,
            max_sessions: quota,
            admin: false,
        })
        .to_vec();
    let quotas = tokens
        .iter()
        .map(|t| (t.name.clone(), t.max_sessions))
        .collect();
    let plane = Plane::in_memory(max_sessions, quotas);
    let state = ApiState::new(
        Arc::new(Mutex::new(plane)),
        TokenStore::new(&tokens),
        requests_per_sec,
    );
    let sessions = geneve::api::routes(
        &state,
        Endpoints {
            v4: Some("198.51.100.1:6081".parse().unwrap()),
            v6: Some("[2001:db8::1]:6081".parse().unwrap()),
        },
    );
    (api::router(&state, [sessions], max_body), state)
}

#[tokio::test]
async fn create_returns_random_vni_endpoints_credentials_and_labels() {
    let app = app(100, 10, 4096);
    let body = r#"{"labels": {"a": "alice-laptop", "b": "office-nas"}}"#;
    let (status, text) = call(
        &app,
        "POST",
        "/v1/sessions",
        Some(ALICE),
        Some((JSON, body)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let s: SessionDetails = serde_json::from_str(&text).unwrap();
    assert_eq!(s.state, "allocated");
    assert_eq!(s.token, "alice");
    assert_eq!(s.relay.v4.unwrap().to_string(), "198.51.100.1:6081");
    assert_eq!((s.bind_lifetime_s, s.idle_lifetime_s), (30, 300));
    assert_eq!(s.legs[0].label.as_deref(), Some("alice-laptop"));
    assert_eq!(s.legs[1].label.as_deref(), Some("office-nas"));
    let ticket = Ticket::decode(s.legs[1].ticket.as_deref().unwrap()).unwrap();
    assert_eq!((ticket.vni, ticket.leg, ticket.relay.len()), (s.vni, 1, 2));
    assert_ne!(s.legs[0].key, s.legs[1].key);
    // An empty body is a session without labels.
    let (status, text) = call(&app, "POST", "/v1/sessions", Some(ALICE), None).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let t: SessionDetails = serde_json::from_str(&text).unwrap();
    assert_ne!(t.vni, s.vni);
    assert!(t.vni != s.vni + 1 && t.vni + 1 != s.vni, "sequential VNIs");
}

#[tokio::test]
async fn authentication_failures_are_401_with_a_reason() {
    let app = app(10, 10, 4096);
    for (token, reason) in [
        (None, "missing Authorization"),
        (Some("wrong-token-0123456789"), "unknown token"),
        (Some(""), "unknown token"),
    ] {
        let (status, text) = call(&app, "POST", "/v1/sessions", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let e = error(&text);
        assert_eq!(e.error, "unauthorized");
        assert!(e.reason.contains(reason), "{e:?}");
    }
    let req = Request::builder()
        .method("GET")
        .uri("/v1/sessions")
        .header(header::AUTHORIZATION, format!("Basic {ALICE}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key(header::WWW_AUTHENTICATE));
}

#[tokio::test]
async fn malformed_requests_are_400_415_413_with_a_reason() {
    let app = app(10, 10, 256);
    let cases = [
        ((JSON, "{not json"), StatusCode::BAD_REQUEST, "invalid_json"),
        (
            (JSON, r#"{"labels": 5}"#),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            (JSON, r#"{"colour": "blue"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            (JSON, r#"{"labels": {"a": ""}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            ("text/plain", r#"{}"#),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ];
    for ((ct, body), status, code) in cases {
        let (got, text) = call(&app, "POST", "/v1/sessions", Some(ALICE), Some((ct, body))).await;
        assert_eq!(got, status, "{body}: {text}");
        let e = error(&text);
        assert_eq!(e.error, code, "{body}");
        assert!(!e.reason.is_empty());
    }
    let big = format!(r#"{{"labels": {{"a": "{}"}}}}"#, "x".repeat(1000));
    let (got, text) = call(
        &app,
        "POST",
        "/v1/sessions",
        Some(ALICE),
        Some((JSON, &big)),
    )
    .await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert_eq!(error(&text).error, "body_too_large");
    let (got, text) = call(&app, "GET", "/v1/sessions/abc", Some(ALICE), None).await;
    assert_eq!(got, StatusCode::BAD_REQUEST);
    assert!(error(&text).reason.contains("not a session id"));
    let (got, text) = call(&app, "GET", "/v1/sessions/16777216", Some(ALICE), None).await;
    assert_eq!(got, StatusCode::BAD_REQUEST, "{text}");
    let (got, text) = call(&app, "GET", "/nowhere", Some(ALICE), None).await;
    assert_eq!(
        (got, error(&text).error.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (got, text) = call(&app, "PUT", "/v1/sessions", Some(ALICE), None).await;
    assert_eq!(got, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error(&text).error, "method_not_allowed");
    // Nothing above allocated anything.
    let (_, text) = call(&app, "GET", "/v1/sessions", Some(ALICE), None).await;
    assert!(
        serde_json::from_str::<SessionList>(&text)
            .unwrap()
            .sessions
            .is_empty()
    );
}

#[tokio::test]
async fn token_quota_is_429_and_total_limit_is_503() {
    let app = app(3, 2, 4096);
    for _ in 0..2 {
        assert_eq!(
            call(&app, "POST", "/v1/sessions", Some(ALICE), None)
                .await
                .0,
            StatusCode::CREATED
        );
    }
    let (status, text) = call(&app, "POST", "/v1/sessions", Some(ALICE), None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error(&text).error, "quota_exceeded");
    assert!(error(&text).reason.contains("quota of 2"));
    assert_eq!(
        call(&app, "POST", "/v1/sessions", Some(BOB), None).await.0,
        StatusCode::CREATED
    );
    let (status, text) = call(&app, "POST", "/v1/sessions", Some(BOB), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error(&text).error, "relay_full");
}

#[tokio::test]
async fn idempotency_key_header_or_field_returns_the_same_session() {
    let app = app(10, 10, 4096);
    let req = |key: &str| {
        Request::builder()
            .method("POST")
            .uri("/v1/sessions")
            .header(header::AUTHORIZATION, format!("Bearer {ALICE}"))
            .header("Idempotency-Key", key)
            .body(Body::empty())
            .unwrap()
    };
    let first = app.clone().oneshot(req("k-1")).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: SessionDetails =
        serde_json::from_slice(&first.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let again = app.clone().oneshot(req("k-1")).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: SessionDetails =
        serde_json::from_slice(&again.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(again, first);
    let (status, text) = call(
        &app,
        "POST",
        "/v1/sessions",
        Some(ALICE),
        Some((JSON, r#"{"idempotency_key": "k-1"}"#)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<SessionDetails>(&text).unwrap().vni,
        first.vni
    );
}

#[tokio::test]
async fn sessions_are_scoped_to_their_token() {
    let app = app(10, 10, 4096);
    let (_, text) = call(&app, "POST", "/v1/sessions", Some(ALICE), None).await;
    let s: SessionDetails = serde_json::from_str(&text).unwrap();
    let path = format!("/v1/sessions/{}", s.vni);
    let (status, text) = call(&app, "GET", &path, Some(BOB), None).await;
    assert_eq!(
        (status, error(&text).error.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    assert_eq!(
        call(&app, "DELETE", &path, Some(BOB), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, text) = call(&app, "GET", "/v1/sessions", Some(BOB), None).await;
    assert!(
        serde_json::from_str::<SessionList>(&text)
            .unwrap()
            .sessions
            .is_empty()
    );
    let (status, text) = call(&app, "GET", &path, Some(ALICE), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        serde_json::from_str::<SessionDetails>(&text).unwrap().legs[0]
            .ticket
            .is_some()
    );
    let (_, text) = call(&app, "GET", "/v1/sessions", Some(ALICE), None).await;
    let list: SessionList = serde_json::from_str(&text).unwrap();
    assert_eq!(list.sessions.len(), 1);
    assert!(
        list.sessions[0].legs[0].key.is_none(),
        "lists carry no credentials"
    );
    assert_eq!(
        call(&app, "DELETE", &path, Some(ALICE), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&app, "GET", &path, Some(ALICE), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, text) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains(r#""sessions":0"#));
}

/// A GET of the session list from `peer` (as the server's connect-info layer would tag it).
async fn list_from(
    app: &axum::Router,
    peer: &str,
    token: Option<&str>,
) -> axum::response::Response {
    let mut req = Request::builder().uri("/v1/sessions");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let mut req = req.body(Body::empty()).unwrap();
    let peer: std::net::SocketAddr = peer.parse().unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    app.clone().oneshot(req).await.unwrap()
}

#[tokio::test]
async fn requests_over_a_sources_rate_are_429_before_the_token_is_checked() {
    let app = app_limited(100, 10, 4096, 5);
    // A burst of one second's worth passes (whatever the outcome: 200 or 401)...
    for i in 0..5 {
        let token = (i % 2 == 0).then_some(ALICE);
        let resp = list_from(&app, "198.51.100.9:40000", token).await;
        assert_ne!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "request {i}");
    }
    // ...the next, with or without a valid token, is refused with a reason.
    for token in [Some(ALICE), Some("a-guess-at-a-token-123"), None] {
        let resp = list_from(&app, "198.51.100.9:40001", token).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let e = error(std::str::from_utf8(&body).unwrap());
        assert_eq!(e.error, "rate_limited");
        assert!(
            e.reason.contains("5 requests per second from 198.51.100.9"),
            "{}",
            e.reason
        );
    }
    // The IPv4-mapped spelling of the same address shares its bucket; other sources do not.
    let resp = list_from(&app, "[::ffff:198.51.100.9]:40002", Some(ALICE)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let resp = list_from(&app, "203.0.113.4:40000", Some(ALICE)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The bucket refills at the configured rate.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let resp = list_from(&app, "198.51.100.9:40003", Some(ALICE)).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // 0 = unlimited.
    let app = app_limited(100, 10, 4096, 0);
    for _ in 0..200 {
        let resp = list_from(&app, "198.51.100.9:40000", Some(ALICE)).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn requests_are_counted_by_route_template_with_a_bounded_other() {
    let (app, state) = app_with_state(10, 10, 4096, 0);
    call(&app, "GET", "/v1/sessions", Some(ALICE), None).await;
    call(&app, "GET", "/v1/sessions/123", Some(ALICE), None).await;
    call(&app, "DELETE", "/v1/sessions/456", Some(ALICE), None).await;
    call(&app, "GET", "/v1/sessions/1/x", Some(ALICE), None).await;
    call(&app, "GET", "/random/abc", None, None).await;
    call(&app, "PUT", "/healthz", None, None).await;
    let counted: Vec<(String, String, u16, u64)> = state
        .metrics
        .snapshot()
        .into_iter()
        .map(|((endpoint, method, status), n)| (endpoint, method, status, n))
        .collect();
    let row = |e: &str, m: &str, s: u16, n: u64| (e.to_string(), m.to_string(), s, n);
    assert_eq!(
        counted,
        [
            row("/healthz", "other", 405, 1),
            row("/v1/sessions", "GET", 200, 1),
            row("/v1/sessions/{vni}", "DELETE", 404, 1),
            row("/v1/sessions/{vni}", "GET", 404, 1),
            row("other", "GET", 404, 2),
        ]
    );
}
