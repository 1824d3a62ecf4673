//! The API server: HTTP or HTTPS (rustls) on `api.listen`, the shared routes and every front's,
//! drained on stop; tokens, request rate and certificate replaced in place on reload.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use tokio::{sync::watch, task::JoinHandle};
use tracing::warn;

use crate::{
    api::{self, ApiState, auth::TokenStore},
    config::Config,
    control::source_limit::SourceLimiter,
    fronts::Front,
};

/// How long a stopping daemon lets API requests in flight finish.
const API_DRAIN: Duration = Duration::from_secs(5);

/// How long an API connection may take to send its first request (after the TLS handshake,
/// which has its own 10 s limit): idle connections must not pile up.
const API_FIRST_REQUEST: Duration = Duration::from_secs(10);

/// The running server.
pub struct ApiServer {
    /// Its address.
    pub addr: SocketAddr,
    tokens: Arc<ArcSwap<TokenStore>>,
    requests: Arc<Mutex<SourceLimiter>>,
    fleet: Arc<crate::fleet::Fleet>,
    tls: Option<RustlsConfig>,
    task: JoinHandle<()>,
}

impl ApiServer {
    /// Binds `api.listen` and serves `state`'s shared routes and the fronts' until `stopped`
    /// turns true.
    pub fn start(
        config: &Config,
        state: &ApiState,
        fronts: &[Arc<dyn Front>],
        stopped: watch::Receiver<bool>,
    ) -> Result<ApiServer> {
        let tls = match &config.api.tls {
            Some(t) => Some(RustlsConfig::from_config(api::tls::server_config(t)?)),
            None => None,
        };
        let listener = std::net::TcpListener::bind(config.api.listen)
            .with_context(|| format!("binding the API to {}", config.api.listen))?;
        let addr = listener.local_addr()?;
        let router = api::router(
            state,
            fronts.iter().map(|f| f.api_routes()),
            config.api.max_body_bytes,
        );
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp(listener)?
            .handle(handle.clone())
            .first_request_timeout(API_FIRST_REQUEST);
        // The peer address feeds the per-source request limit.
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        let acceptor = tls.clone().map(RustlsAcceptor::new);
        let mut api_stopped = stopped;
        tokio::spawn(async move {
            let _ = api_stopped.wait_for(|s| *s).await;
            handle.graceful_shutdown(Some(API_DRAIN));
        });
        let task = tokio::spawn(async move {
            let served = match acceptor {
                Some(acceptor) => server.acceptor(acceptor).serve(app).await,
                None => server.serve(app).await,
            };
            if let Err(e) = served {
                warn!(error = %e, "API server failed");
            }
        });
        Ok(ApiServer {
            addr,
            tokens: state.tokens.clone(),
            requests: state.requests.clone(),
            fleet: state.fleet.clone(),
            tls,
            task,
        })
    }

    /// Whether it speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Checks that `new`'s certificate files load (when HTTPS is on): nothing may change if
    /// they do not. Returns the loaded certificate to [`ApiServer::apply`].
    pub fn prepare(&self, new: &Config) -> Result<Option<Arc<rustls::ServerConfig>>> {
        match (&self.tls, &new.api.tls) {
            (Some(_), Some(files)) => Ok(Some(api::tls::server_config(files)?)),
            _ => Ok(None),
        }
    }

    /// Puts `new`'s tokens, request rate (if it changed from `old`'s) and the prepared
    /// certificate in force; requests in flight finish with the old ones.
    pub fn apply(
        &self,
        old: &Config,
        new: &Config,
        certificate: Option<Arc<rustls::ServerConfig>>,
    ) {
        self.tokens
            .store(Arc::new(TokenStore::new(&new.api.tokens)));
        let rate = new.api.requests_per_sec_per_source;
        if rate != old.api.requests_per_sec_per_source {
            *self.requests.lock().unwrap_or_else(|p| p.into_inner()) = api::request_limiter(rate);
        }
        if let (Some(tls), Some(config)) = (&self.tls, certificate) {
            tls.reload_from_config(config);
        }
        self.fleet
            .set_alternates(crate::fleet::Alternates::from_config(new.fleet.as_ref()));
    }

    /// Waits for the server to finish draining (after `stopped` turned true).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}
