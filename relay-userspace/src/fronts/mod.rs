//! Protocol fronts: the ways clients use the relay. A front owns its ports and everything that
//! arrives on them: its part of the XDP program (a module of `relay-ebpf`, dispatched by
//! destination port), its userspace path (a [`DatagramHandler`] on the shared forwarder), its
//! control protocol, its API routes and its metric series. The shared services it builds on —
//! the session table and plane, policy, quotas, expiry, the forwarder's I/O and counters, the
//! API server — are in [`crate::control`], [`crate::forwarder`] and [`crate::api`].
//!
//! The daemon starts every front in [`start_all`]: adding a front is a module here and one line
//! there: [`geneve`], the session protocol of `relay client`, [`turn`], the TURN server, and
//! [`wireguard`], stock WireGuard pairs.
//!
//! [`DatagramHandler`]: crate::forwarder::DatagramHandler

pub mod geneve;
mod sockets;
pub mod turn;
pub mod wireguard;

pub use sockets::{BindFailure, is_out_of_descriptors};
pub(crate) use sockets::{bind_udp, family_index, read_datagrams, send_nonblocking};

use std::{any::Any, net::IpAddr, net::SocketAddr, path::Path, sync::Arc};

use anyhow::Result;
use axum::Router;

use crate::{
    api::ApiState,
    config::Config,
    control::plane::SharedPlane,
    forwarder::{counters::UserCounters, table::ForwardTable},
    metrics::FrontMetrics,
};

/// What a front starts from: the configuration and the shared services.
pub struct FrontContext<'a> {
    /// The whole configuration (each front reads its own section).
    pub config: &'a Config,
    /// The relay's own addresses, one per family, that fronts' sockets listen on.
    pub listen: &'a [IpAddr],
    /// The session control plane.
    pub plane: &'a SharedPlane,
    /// Sessions as the userspace forwarder reads them.
    pub forward: &'a Arc<ForwardTable>,
    /// The userspace forwarder's counters.
    pub counters: &'a Arc<UserCounters>,
    /// The API's shared state (tokens, plane, limits), for the front's routes.
    pub api: &'a ApiState,
    /// Where the maps are pinned, when the fast path's maps are in use.
    pub pin_dir: Option<&'a Path>,
}

/// A running protocol front.
pub trait Front: Any + Send + Sync {
    /// Its name, for logs.
    fn name(&self) -> &'static str;
    /// The addresses its sockets listen on.
    fn local_addrs(&self) -> Vec<SocketAddr>;
    /// The routes it adds to the API.
    fn api_routes(&self) -> Router;
    /// The series it adds to the metrics.
    fn metrics(&self) -> Option<Arc<dyn FrontMetrics>>;
    /// Checks what a reloaded configuration would change in this front (files that must load,
    /// say), changing nothing: [`Front::apply_reload`] follows only when every part of the
    /// daemon accepted the new configuration.
    fn check_reload(&self, _config: &Config) -> Result<()> {
        Ok(())
    }
    /// Puts a reloaded configuration's credentials and certificates in force.
    fn apply_reload(&self, _config: &Config) {}
    /// Stops its sockets and threads (the daemon is stopping).
    fn stop(&self);
    /// Its allocations held and the most it holds, for a front that has its own (TURN).
    fn allocations(&self) -> Option<(u64, u64)> {
        None
    }
}

/// Starts every front: the session protocol always, TURN and WireGuard pairs when configured.
pub fn start_all(context: &FrontContext) -> Result<Vec<Arc<dyn Front>>> {
    let mut fronts: Vec<Arc<dyn Front>> = vec![Arc::new(geneve::SessionFront::start(context)?)];
    match (&context.config.turn, context.pin_dir) {
        (Some(turn), _) => fronts.push(Arc::new(turn::TurnFront::start(context, turn)?)),
        (None, Some(dir)) => turn::adoption::forget_pinned(dir)?,
        (None, None) => {}
    }
    match (&context.config.wireguard, context.pin_dir) {
        (Some(w), _) => fronts.push(Arc::new(wireguard::WireGuardFront::start(context, w)?)),
        (None, Some(dir)) => wireguard::forget_pinned(dir)?,
        (None, None) => {}
    }
    Ok(fronts)
}
