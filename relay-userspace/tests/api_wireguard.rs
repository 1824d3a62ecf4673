//! The WireGuard pairs' API through the running front, in-process (no root: the pair's ports are
//! bound on 127.0.0.1): snippets, key validation, idempotency, quotas and the port range, scoping
//! to the token and to the kind, and that a pair's ports are bound for as long as it lives.

mod common;

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{Arc, Mutex},
};

use axum::http::StatusCode;
use common::{JSON, error};
use relay_userspace::{
    api::{
        self, ApiState,
        auth::TokenStore,
        types::{PairDetails, PairList},
    },
    config::Config,
    control::plane::Plane,
    forwarder::{counters::UserCounters, table::ForwardTable},
    fronts::{Front, FrontContext, wireguard::WireGuardFront},
};

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789ab";
/// Keys as `wg pubkey` prints them.
const KEY_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const KEY_B: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";

/// A front on three port pairs (`first`..`first + 5`); alice may hold 5 pairs, bob 1.
async fn front(first: u16) -> (axum::Router, WireGuardFront) {
    let yaml = format!(
        "xdp:\n  mode: off\nrelay:\n  listen: [127.0.0.1]\napi:\n  listen: 127.0.0.1:8080\n  tokens:\n    - name: alice\n      \
         token: {ALICE}\n      max_sessions: 5\n    - name: bob\n      token: {BOB}\n      \
         max_sessions: 1\nwireguard:\n  relay_ports: {first}-{}\n",
        first + 5
    );
    let config = Config::parse(&yaml, "test").unwrap();
    let quotas = config
        .api
        .tokens
        .iter()
        .map(|t| (t.name.clone(), t.max_sessions))
        .collect();
    let plane = Arc::new(Mutex::new(Plane::in_memory(16, quotas)));
    let state = ApiState::new(plane.clone(), TokenStore::new(&config.api.tokens), 0);
    let listen: [IpAddr; 1] = ["127.0.0.1".parse().unwrap()];
    let context = FrontContext {
        config: &config,
        listen: &listen,
        plane: &plane,
        forward: &Arc::new(ForwardTable::new()),
        counters: &Arc::new(UserCounters::new(16)),
        api: &state,
        pin_dir: None,
    };
    let front = WireGuardFront::start(&context, config.wireguard.as_ref().unwrap()).unwrap();
    let router = api::router(&state, [front.api_routes()], 4096);
    (router, front)
}

/// A JSON request with `token`.
async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: &str,
    json: Option<&str>,
) -> (StatusCode, String) {
    common::call(
        app,
        method,
        path,
        Some(token),
        json.map(|text| (JSON, text)),
    )
    .await
}

fn create_body(a: &str, b: &str) -> String {
    format!(r#"{{"public_keys": {{"a": "{a}", "b": "{b}"}}, "labels": {{"a": "alice-phone"}}}}"#)
}

/// Asks `token`'s relay for a pair of the test keys.
async fn create(app: &axum::Router, token: &str) -> (StatusCode, String) {
    call(
        app,
        "POST",
        "/v1/wireguard",
        token,
        Some(&create_body(KEY_A, KEY_B)),
    )
    .await
}

fn port_is_taken(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_err()
}

#[tokio::test]
async fn a_pair_gets_two_bound_ports_and_a_snippet_for_each_peer() {
    let (app, front) = front(47_100).await;
    let (status, body) = create(&app, ALICE).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let pair: PairDetails = serde_json::from_str(&body).unwrap();
    assert_eq!(pair.state, "allocated");
    assert_eq!(pair.keepalive_s, 25);
    let ports: Vec<u16> = pair
        .peers
        .iter()
        .map(|p| p.relay.v4.unwrap().port())
        .collect();
    assert_eq!(ports[1], ports[0] + 1);
    assert!(
        (47_100..=47_105).contains(&ports[0]) && ports[0].is_multiple_of(2),
        "{ports:?}"
    );
    assert_eq!(pair.peers[0].public_key, KEY_A);
    assert_eq!(pair.peers[0].label.as_deref(), Some("alice-phone"));
    // Peer a's section names b's key and a's own relay port, and the other way round.
    for (i, other) in [(0, KEY_B), (1, KEY_A)] {
        let endpoint = SocketAddr::from(([127, 0, 0, 1], ports[i]));
        let snippet = pair.peers[i].snippet.as_deref().unwrap();
        assert!(
            snippet.contains(&format!(
                "[Peer]\nPublicKey = {other}\nEndpoint = {endpoint}\nPersistentKeepalive = 25\n"
            )),
            "{snippet}"
        );
    }
    assert!(
        ports.iter().all(|p| port_is_taken(*p)),
        "the pair's ports are not bound"
    );
    assert_eq!(front.running(), 1);

    // Listed with the token's pairs, not with its sessions; another token does not see it.
    let (_, list) = call(&app, "GET", "/v1/wireguard", ALICE, None).await;
    let list: PairList = serde_json::from_str(&list).unwrap();
    assert_eq!(list.pairs.len(), 1);
    assert!(
        list.pairs[0].peers[0].snippet.is_none(),
        "lists carry no snippets"
    );
    let path = format!("/v1/wireguard/{}", pair.id);
    let (status, _) = call(&app, "GET", &path, BOB, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, "DELETE", &path, BOB, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(
        &app,
        "GET",
        &format!("/v1/sessions/{}", pair.id),
        ALICE,
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the sessions routes are not mounted here"
    );

    // Deleted: its ports are free again.
    let (status, body) = call(&app, "DELETE", &path, ALICE, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(
        ports.iter().all(|p| !port_is_taken(*p)),
        "the ports stay bound"
    );
    assert_eq!(front.running(), 0);
    front.stop();
}

#[tokio::test]
async fn bad_keys_are_400_naming_the_field() {
    let (app, front) = front(47_110).await;
    for (body, field) in [
        (create_body("not-a-key", KEY_B), "public_keys.a"),
        (create_body(KEY_A, "AAAA"), "public_keys.b"),
        (
            create_body(KEY_A, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            "public_keys.b",
        ),
        (create_body(KEY_A, KEY_A), "public_keys.b"),
        (r#"{"labels": {"a": "x"}}"#.to_string(), "public_keys"),
    ] {
        let (status, text) = call(&app, "POST", "/v1/wireguard", ALICE, Some(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        let e = error(&text);
        assert_eq!(e.error, "invalid_request");
        assert!(e.reason.starts_with(field), "{body}: {}", e.reason);
    }
    let (status, text) = call(
        &app,
        "POST",
        "/v1/wireguard",
        ALICE,
        Some(r#"{"public_keys": 5}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert_eq!(front.running(), 0, "refused requests allocate nothing");
    front.stop();
}

#[tokio::test]
async fn idempotency_quotas_and_the_port_range_limit_pairs() {
    let (app, front) = front(47_120).await;
    let keyed = r#"{"public_keys": {"a": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", "b": "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="}, "idempotency_key": "k1"}"#;
    let (status, first) = call(&app, "POST", "/v1/wireguard", ALICE, Some(keyed)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, again) = call(&app, "POST", "/v1/wireguard", ALICE, Some(keyed)).await;
    assert_eq!(status, StatusCode::OK);
    let id = |text: &str| serde_json::from_str::<PairDetails>(text).unwrap().id;
    assert_eq!(id(&first), id(&again));
    // Bob's quota is one pair (pairs count as sessions).
    let (status, _) = create(&app, BOB).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, text) = create(&app, BOB).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    assert_eq!(error(&text).error, "quota_exceeded");
    // Three port pairs in the range: one more fits, the fourth is refused with 503.
    let (status, _) = create(&app, ALICE).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, text) = create(&app, ALICE).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    let e = error(&text);
    assert_eq!(e.error, "relay_full");
    assert!(e.reason.contains("wireguard.relay_ports"), "{}", e.reason);
    assert_eq!(front.running(), 3);
    front.stop();
}
