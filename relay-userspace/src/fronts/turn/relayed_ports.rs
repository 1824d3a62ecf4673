//! Relayed ports: one socket per port and family, bound for as long as its allocation lives (so
//! no other process can take the port), each read by a task that frames what peers send for
//! the allocation's client.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::Arc,
    time::Instant,
};

use dashmap::DashMap;
use relay_common::{turn::TO_CLIENT, verdict::Reason};

use super::{
    core::TurnCore,
    relaying::{self, FromPeer, channel_data, data_indication},
    server::{BindFailure, Families, PortBinder, Transport},
};
use crate::forwarder::counters::LocalVerdicts;

/// Receive buffer of a relayed port's socket: bursts of a video call fit.
const RELAYED_RECV_BUFFER: usize = 1 << 20;

/// The sockets of one relayed port.
#[derive(Clone, Default)]
pub(super) struct PortSockets {
    /// IPv4 and IPv6 sockets (as the allocation's families need).
    pub(super) families: [Option<Arc<UdpSocket>>; 2],
}

/// Binds relayed ports for the server (and keeps the sockets the data path sends from).
pub(super) struct RelaySockets {
    pub(super) local: [Option<IpAddr>; 2],
    pub(super) ports: Arc<DashMap<u16, PortSockets>>,
}

impl PortBinder for RelaySockets {
    fn bind(&mut self, port: u16, families: Families) -> Result<(), BindFailure> {
        let mut sockets = PortSockets::default();
        for (i, wanted) in [families.v4, families.v6].into_iter().enumerate() {
            if !wanted {
                continue;
            }
            let ip = self.local[i].ok_or(BindFailure::Other)?;
            let socket = crate::fronts::bind_udp(ip, port, RELAYED_RECV_BUFFER)
                .map_err(|e| BindFailure::of(&e))?;
            sockets.families[i] = Some(Arc::new(socket));
        }
        self.ports.insert(port, sockets);
        Ok(())
    }

    fn release(&mut self, port: u16) {
        self.ports.remove(&port);
    }
}

/// Reads one relayed port (one family) and frames what peers send for the client.
async fn relay_port(core: Arc<TurnCore>, slot: u32, socket: Arc<UdpSocket>) {
    // The frame grows to the largest one once data flows; an idle allocation holds none.
    let read = crate::fronts::read_datagrams(
        socket,
        (Vec::new(), LocalVerdicts::default()),
        |(frame, verdicts), data, peer| {
            let reason = deliver(&core, slot, peer, data, frame);
            verdicts.add(reason, data.len());
        },
        |(_, verdicts)| core.verdicts.publish(verdicts),
    );
    if let Err(e) = read.await {
        tracing::warn!(slot, error = %e, "reading a relayed port failed");
    }
}

/// One peer datagram to `slot`'s client; returns the verdict.
fn deliver(
    core: &TurnCore,
    slot: u32,
    peer: SocketAddr,
    data: &[u8],
    frame: &mut Vec<u8>,
) -> Reason {
    let Some(route) = core.tables.route(slot) else {
        return Reason::DroppedTurnNoAllocation;
    };
    let stream = route.five_tuple.transport != Transport::Udp;
    let framed: &[u8] = match relaying::from_peer(slot, peer, &core.tables) {
        FromPeer::Drop(reason) => return reason,
        FromPeer::Channel(channel) => {
            channel_data(channel, data, stream, frame);
            frame
        }
        FromPeer::Indication => {
            *frame = data_indication(peer, data);
            frame
        }
    };
    let now = Instant::now();
    if !core
        .counters
        .admit(slot, TO_CLIENT, &route.limits, data.len(), now)
    {
        return Reason::DroppedRateLimited;
    }
    if let Err(reason) = core.to_client(&route.five_tuple, framed) {
        return reason;
    }
    core.counters.forwarded(slot, TO_CLIENT, data.len(), now);
    Reason::ForwardedTurnToClient
}

impl TurnCore {
    pub(super) fn start_port_tasks(self: &TurnCore, slot: u32, port: u16) {
        let Some(sockets) = self.ports.get(&port).map(|s| s.clone()) else {
            return;
        };
        let Some(core) = self.me.upgrade() else {
            return;
        };
        let mut tasks = Vec::new();
        for socket in sockets.families.iter().flatten() {
            let _guard = self.runtime.enter();
            tasks.push(
                self.runtime
                    .spawn(relay_port(core.clone(), slot, socket.clone())),
            );
        }
        self.port_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(port, tasks);
    }

    /// The relayed port's socket to send to `peer` from.
    pub(super) fn relay_socket(&self, port: u16, peer: IpAddr) -> Option<Arc<UdpSocket>> {
        self.ports
            .get(&port)
            .and_then(|s| s.families[crate::fronts::family_index(peer)].clone())
    }
}
