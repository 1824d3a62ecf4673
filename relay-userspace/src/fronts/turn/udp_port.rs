//! The TURN port over UDP: the shared batched forwarder reads it, and [`TurnPort`] decides each
//! datagram (STUN to the server, ChannelData and Send indications to peers).

use std::{net::SocketAddr, sync::Arc, time::Instant};

use relay_common::verdict::Reason;

use super::{
    core::TurnCore,
    server::{FiveTuple, Transport},
};
use crate::forwarder::{Action, DatagramHandler, counters::LocalVerdicts};

/// The TURN port over UDP, in the shared forwarder.
pub(super) struct TurnPort {
    pub(super) core: Arc<TurnCore>,
}

impl DatagramHandler for TurnPort {
    fn handle(
        &self,
        payload: &[u8],
        src: SocketAddr,
        _now: Instant,
        verdicts: &mut LocalVerdicts,
    ) -> Action {
        let Some(server) = self.core.listen[crate::fronts::family_index(src.ip())] else {
            verdicts.add(Reason::DroppedTurnMalformed, payload.len());
            return Action::Drop;
        };
        let five_tuple = FiveTuple {
            client: src,
            server,
            transport: Transport::Udp,
        };
        self.core.on_client_datagram(payload, five_tuple, verdicts)
    }
}
