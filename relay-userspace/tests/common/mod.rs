//! What the in-process API tests share.

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use http_body_util::BodyExt;
use relay_userspace::api::types::ErrorDocument;
use tower::ServiceExt;

pub const JSON: &str = "application/json";

/// Sends `method path` to `app` with `token` (as a bearer token) and `body` (content type,
/// text); returns the status and the body.
pub async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &str)>,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some((content_type, text)) => req
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(text.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// `body` as the API's JSON error document.
pub fn error(body: &str) -> ErrorDocument {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an error document ({e}): {body}"))
}
