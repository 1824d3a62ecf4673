//! The session protocol (Geneve with a bind handshake): the front `relay client` sidecars speak.
//! The wire format is `relay_common::geneve`; the kernel's part is `relay-ebpf`'s `geneve`
//! module. Here: the relay's side of the bind handshake ([`bind`], sans-IO, with its cookies
//! and MACs), the userspace forwarding decision ([`decide`](mod@decide), the XDP program's rule), tickets,
//! the `/v1/sessions` API routes, and the wiring that runs them on the relay port.

pub mod api;
pub mod bind;
pub mod bind_service;
pub mod cookie_jar;
pub mod crypto;
pub mod decide;
pub mod ticket;

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context, Result};
use prometheus_client::encoding::DescriptorEncoder;
use relay_common::{geneve::control::CONTROL_LEN, verdict::Reason};

use self::{
    bind_service::{BindService, RateLimited},
    decide::{Decision, decide},
};
use super::{Front, FrontContext};
use crate::{
    api::types::Endpoints,
    control::plane::SharedPlane,
    forwarder::{
        Action, DatagramHandler, Forwarder,
        counters::{LocalVerdicts, UserCounters},
        table::ForwardTable,
    },
    metrics::{self, FrontMetrics, Labels},
};

/// The bind handshake's service and the plane it binds legs in. Locks: the service first, then
/// the plane (nothing takes them the other way round).
pub struct SessionControl {
    binds: Mutex<BindService>,
    plane: SharedPlane,
}

impl SessionControl {
    /// Control over `plane`'s sessions with `binds`.
    pub fn new(binds: BindService, plane: SharedPlane) -> SessionControl {
        SessionControl {
            binds: Mutex::new(binds),
            plane,
        }
    }

    /// Handles a bind-handshake datagram from `src`; returns the reply, if any, or that the
    /// source is over its rate.
    pub fn handle(
        &self,
        datagram: &[u8],
        src: SocketAddr,
        now: Instant,
    ) -> Result<Option<[u8; CONTROL_LEN]>, RateLimited> {
        let mut binds = self.binds.lock().unwrap_or_else(|p| p.into_inner());
        let mut plane = self.plane.lock().unwrap_or_else(|p| p.into_inner());
        binds.handle(&mut plane, datagram, src, now)
    }

    /// Bind-handshake messages so far, by result.
    pub fn bind_results(&self) -> Vec<(&'static str, u64)> {
        let binds = self.binds.lock().unwrap_or_else(|p| p.into_inner());
        let mut results: Vec<_> = binds.stats.iter().map(|(k, v)| (*k, *v)).collect();
        results.sort();
        results
    }
}

impl FrontMetrics for SessionControl {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let binds: Vec<(Labels, u64)> = self
            .bind_results()
            .into_iter()
            .map(|(k, v)| (vec![("result", k.to_string())], v))
            .collect();
        metrics::counters(
            encoder,
            "relay_bind_handshakes",
            "Bind-handshake messages by result.",
            &binds,
        )
    }
}

/// The relay port in userspace: the same decision as the XDP program for data, the bind
/// handshake for control messages.
struct SessionPort {
    table: Arc<ForwardTable>,
    counters: Arc<UserCounters>,
    control: Arc<SessionControl>,
}

impl DatagramHandler for SessionPort {
    fn handle(
        &self,
        payload: &[u8],
        src: SocketAddr,
        now: Instant,
        verdicts: &mut LocalVerdicts,
    ) -> Action {
        match decide(payload, src, |vni| self.table.get(vni)) {
            Decision::Forward {
                to,
                from_leg,
                slot,
                limits,
                reason,
            } => {
                if !self
                    .counters
                    .admit(slot, from_leg, &limits, payload.len(), now)
                {
                    verdicts.add(Reason::DroppedRateLimited, payload.len());
                    return Action::Drop;
                }
                self.counters.forwarded(slot, from_leg, payload.len(), now);
                verdicts.add(reason, payload.len());
                Action::Forward { to }
            }
            Decision::Control => match self.control.handle(payload, src, now) {
                Ok(reply) => {
                    verdicts.add(Reason::PassedControl, payload.len());
                    reply.map_or(Action::Drop, |r| Action::Reply(r.to_vec()))
                }
                Err(RateLimited) => {
                    verdicts.add(Reason::DroppedBindRate, payload.len());
                    Action::Drop
                }
            },
            Decision::Drop(reason) => {
                verdicts.add(reason, payload.len());
                Action::Drop
            }
        }
    }
}

/// The running session front: the relay port's sockets and the session routes.
pub struct SessionFront {
    control: Arc<SessionControl>,
    forwarder: Mutex<Option<Forwarder>>,
    local: Vec<SocketAddr>,
    endpoints: Endpoints,
    api: crate::api::ApiState,
}

impl SessionFront {
    /// Opens the relay port (`relay.port` on each listen address) with `relay.workers` threads
    /// per family.
    pub fn start(context: &FrontContext) -> Result<SessionFront> {
        let config = context.config;
        let port = config.relay.port;
        let endpoints = endpoints(config, context.listen);
        let control = Arc::new(SessionControl::new(
            BindService::new(
                config.sessions.cookie_rotation,
                config.sessions.binds_per_sec_per_source,
            ),
            context.plane.clone(),
        ));
        let handler = Arc::new(SessionPort {
            table: context.forward.clone(),
            counters: context.counters.clone(),
            control: control.clone(),
        });
        let sockets: Vec<SocketAddr> = context
            .listen
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        let workers = match config.relay.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let forwarder = Forwarder::start(&sockets, workers, handler, context.counters.clone())
            .with_context(|| format!("opening the relay sockets {sockets:?}"))?;
        Ok(SessionFront {
            control,
            local: forwarder.local_addrs().to_vec(),
            forwarder: Mutex::new(Some(forwarder)),
            endpoints,
            api: context.api.clone(),
        })
    }

    /// The bind handshake's service (tests and benchmarks drive it directly).
    pub fn control(&self) -> &Arc<SessionControl> {
        &self.control
    }

    /// The endpoints tickets name.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }
}

/// The endpoints advertised to clients: `relay.advertise` (a 1:1 NAT's public addresses), else
/// the listen addresses, at `relay.port`.
pub fn endpoints(config: &crate::config::Config, listen: &[std::net::IpAddr]) -> Endpoints {
    let port = config.relay.port;
    let local = |v6: bool| {
        listen
            .iter()
            .find(|ip| ip.is_ipv6() == v6)
            .map(|ip| SocketAddr::new(*ip, port))
    };
    Endpoints {
        v4: config.relay.advertise.v4.or(local(false)),
        v6: config.relay.advertise.v6.or(local(true)),
    }
}

impl Front for SessionFront {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local.clone()
    }

    fn api_routes(&self) -> axum::Router {
        api::routes(&self.api, self.endpoints.clone())
    }

    fn metrics(&self) -> Option<Arc<dyn FrontMetrics>> {
        Some(self.control.clone())
    }

    fn stop(&self) {
        let forwarder = self
            .forwarder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(forwarder) = forwarder {
            forwarder.stop();
        }
    }
}
