//! The Prometheus endpoint (`metrics.listen`): every scrape computes the series afresh from the
//! pinned maps, the userspace counters, the plane and the fronts ([`crate::metrics`]).

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use tokio::{net::TcpListener, sync::watch};
use tracing::{info, warn};

use crate::{
    config::MetricsConfig,
    control::plane::SharedPlane,
    forwarder::counters::UserCounters,
    metrics::{self, ApiMetrics, FrontMetrics, RelayCollector},
};

/// What each scrape reads.
#[derive(Clone)]
pub struct MetricsSource {
    /// The session plane.
    pub plane: SharedPlane,
    /// Where the maps are pinned (None: no kernel side).
    pub pin_dir: Option<std::path::PathBuf>,
    /// The userspace forwarder's counters.
    pub counters: Arc<UserCounters>,
    /// API request counts.
    pub api: Arc<ApiMetrics>,
    /// Interfaces XDP should run on.
    pub interfaces: Vec<String>,
    /// The fronts' own series.
    pub fronts: Vec<Arc<dyn FrontMetrics>>,
    /// Draining or not.
    pub fleet: Arc<crate::fleet::Fleet>,
}

impl MetricsSource {
    fn scrape(&self, top_sessions: usize) -> axum::response::Response {
        use axum::response::IntoResponse;
        let collector = RelayCollector {
            plane: self.plane.clone(),
            pin_dir: self.pin_dir.clone(),
            counters: self.counters.clone(),
            api: self.api.clone(),
            interfaces: self.interfaces.clone(),
            top_sessions,
            fronts: self.fronts.clone(),
            fleet: self.fleet.clone(),
        };
        match metrics::render(collector) {
            Ok(text) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                text,
            )
                .into_response(),
            Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
}

/// Serves `/metrics` on `config.listen` until `stopped` turns true; returns the bound address.
pub async fn start(
    config: &MetricsConfig,
    source: MetricsSource,
    mut stopped: watch::Receiver<bool>,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the metrics endpoint to {}", config.listen))?;
    let addr = listener.local_addr()?;
    let top_sessions = config.top_sessions;
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let source = source.clone();
                async move { source.scrape(top_sessions) }
            }),
        );
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            warn!(error = %e, "metrics server failed");
        }
    });
    info!(%addr, "metrics endpoint");
    Ok(addr)
}
