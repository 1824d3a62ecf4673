//! The allocation API's JSON handling: `POST /v1/sessions` through the real axum router,
//! in-process (no sockets, no kernel), with the fuzz input as an `application/json` body and a
//! valid token; and `serde_json` into `CreateSession` directly.
//!
//! Invariants:
//! * The status is one the API documents for this endpoint: 2xx, 400, 413, 415, 429 or 503 —
//!   and of those, with a valid token, a JSON content type, an empty relay and no peer address
//!   to rate-limit, only 2xx, 400 (the body) and 413 (its size) may happen.
//! * Every error is an `ErrorDocument` with a code and a non-empty reason; every success is a
//!   `SessionDetails`.
//! * The router agrees with `serde_json`: a body that does not deserialise into `CreateSession`
//!   is a 400 (unless it is blank, which means "no options"), one that does is allocated unless
//!   the request's fields are invalid.
//! * `CreateSession` survives a JSON round trip unchanged.
//!
//! Every allocated session is deleted again, so the table never fills and every input sees the
//! same empty relay.
#![no_main]

use std::sync::{Arc, LazyLock, Mutex};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode, header},
};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use relay_userspace::{
    api::{
        self, ApiState,
        auth::TokenStore,
        types::{CreateSession, Endpoints, ErrorDocument, SessionDetails},
    },
    config::TokenConfig,
    control::plane::Plane,
    fronts::geneve,
};
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token-0123456789";
/// Small, so that libFuzzer's default 4 KiB inputs also reach the 413 path.
const MAX_BODY_BYTES: usize = 1024;
/// Sessions are deleted after each input, so a handful would do; headroom for a regression.
const MAX_SESSIONS: u32 = 1024;

/// One runtime and one router for the whole process: building them per input would cost more
/// than the request.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
});
static ROUTER: LazyLock<Router> = LazyLock::new(router);

/// The API as the daemon builds it, minus the kernel. Kept in one place: when `ApiState` or
/// `Plane` gain fields, this is the function to update.
fn router() -> Router {
    let tokens = vec![TokenConfig {
        name: "fuzz".into(),
        token: Some(TOKEN.into()),
        token_sha256: None,
        max_sessions: MAX_SESSIONS,
        // Not an operator's: draining is refused (403), so sessions stay reachable.
        admin: false,
    }];
    let plane = Plane::in_memory(MAX_SESSIONS, [("fuzz".to_string(), MAX_SESSIONS)].into());
    let endpoints = Endpoints {
        v4: Some("198.51.100.1:6081".parse().unwrap()),
        v6: Some("[2001:db8::1]:6081".parse().unwrap()),
    };
    let state = ApiState::new(Arc::new(Mutex::new(plane)), TokenStore::new(&tokens), 0);
    let sessions = geneve::api::routes(&state, endpoints);
    api::router(&state, [sessions], MAX_BODY_BYTES)
}

/// Sends a request and returns the status and body.
async fn call(request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let response = ROUTER
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("an in-memory body")
        .to_bytes();
    (status, body.to_vec())
}

fn request(method: &str, path: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("a valid request")
}

fuzz_target!(|data: &[u8]| {
    let parsed = serde_json::from_slice::<CreateSession>(data);
    if let Ok(create) = &parsed {
        let json = serde_json::to_vec(create).expect("serialises");
        let back: CreateSession = serde_json::from_slice(&json).expect("its own JSON parses");
        assert_eq!(&back, create);
    }

    RUNTIME.block_on(async {
        let post = request("POST", "/v1/sessions", Body::from(data.to_vec()));
        let (status, body) = call(post).await;
        let shown = String::from_utf8_lossy(&body);
        if status.is_success() {
            let session: SessionDetails = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{status} but not a session ({e}): {shown}"));
            assert!(
                data.len() <= MAX_BODY_BYTES,
                "{status} for a body over the limit"
            );
            let blank = data.iter().all(u8::is_ascii_whitespace);
            assert!(blank || parsed.is_ok(), "{status} for a body serde refuses");
            let delete = request(
                "DELETE",
                &format!("/v1/sessions/{}", session.vni),
                Body::empty(),
            );
            let (deleted, text) = call(delete).await;
            assert_eq!(
                deleted,
                StatusCode::NO_CONTENT,
                "{}",
                String::from_utf8_lossy(&text)
            );
            return;
        }
        assert!(
            matches!(status.as_u16(), 400 | 413 | 415 | 429 | 503),
            "undocumented status {status}: {shown}"
        );
        let error: ErrorDocument = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{status} without an error document ({e}): {shown}"));
        assert!(
            !error.error.is_empty() && !error.reason.trim().is_empty(),
            "{error:?}"
        );
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => assert!(data.len() > MAX_BODY_BYTES),
            StatusCode::BAD_REQUEST if parsed.is_err() => {
                assert!(matches!(
                    error.error.as_str(),
                    "invalid_json" | "invalid_request"
                ));
            }
            StatusCode::BAD_REQUEST => assert_eq!(error.error, "invalid_request"),
            _ => panic!("{status} for a {} byte body: {shown}", data.len()),
        }
    });
});
