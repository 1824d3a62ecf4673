//! TURN over TCP and TLS: the listeners, and the connections they accept — admitted under the
//! caps of [`super::connections`], given nothing (no buffer, no TLS state) until their first
//! bytes arrive, and closed if they have not created an allocation in time; then served by
//! [`super::stream`].

use std::{io, net::IpAddr, sync::Arc, time::Duration};

use relay_common::verdict::Reason;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    time::Instant,
};
use tracing::{info, warn};

use super::{
    connections::{ALLOCATION_DEADLINE, Admitted, Refused},
    core::TurnCore,
    server::{FiveTuple, Transport},
    stream,
};
use crate::{
    descriptors,
    forwarder::counters::LocalVerdicts,
    logging::{THROTTLE_EVERY, Throttle},
};

/// A failed `accept()` (out of descriptors, most likely) is retried after this pause: the
/// listener stays readable meanwhile, and retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

static ACCEPT_FAILED: Throttle = Throttle::new(THROTTLE_EVERY);
static REFUSED_PER_SOURCE: Throttle = Throttle::new(THROTTLE_EVERY);
static REFUSED_TOTAL: Throttle = Throttle::new(THROTTLE_EVERY);
static MADE_ROOM: Throttle = Throttle::new(THROTTLE_EVERY);

/// Accepts TCP (or TLS) clients until the front stops.
pub(super) async fn accept(
    core: Arc<TurnCore>,
    listener: TcpListener,
    transport: Transport,
    stopped: watch::Receiver<bool>,
) {
    let mut stop = stopped.clone();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                accept_failed(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let five_tuple = FiveTuple {
            client: peer,
            server: local,
            transport,
        };
        let admitted = match core.connections.admit(five_tuple) {
            Ok(admitted) => admitted,
            Err(refused) => {
                refuse(&core, refused, peer.ip());
                // A reset rather than a close: a flood leaves no TIME_WAIT behind.
                let _ = stream.set_zero_linger();
                continue;
            }
        };
        // Answers and frames are written whole: Nagle's algorithm would hold each small one
        // back until the client's delayed ACK (40 ms) — measured as TLS clients waiting 47 ms
        // for their first relayed byte where coturn's waited 3.
        let _ = stream.set_nodelay(true);
        if admitted.made_room > 0 {
            core.count_by("connections_evicted", u64::from(admitted.made_room));
            if let Some(held) = MADE_ROOM.allow(std::time::Instant::now()) {
                info!(
                    limit = core.connections.limits().total,
                    held,
                    "TURN server holds turn.max_connections: closed the oldest connection \
                     without an allocation to make room"
                );
            }
        }
        tokio::spawn(serve(
            core.clone(),
            stream,
            five_tuple,
            admitted,
            stopped.clone(),
        ));
    }
}

fn accept_failed(error: &io::Error) {
    let Some(held) = ACCEPT_FAILED.allow(std::time::Instant::now()) else {
        return;
    };
    if crate::fronts::is_out_of_descriptors(error) {
        warn!(
            error = %error,
            limit = %descriptors::Limit::current(),
            held,
            "accepting a TURN TCP/TLS connection failed: out of file descriptors; raise \
             LimitNOFILE in the unit (`relay check` computes what the configuration needs)"
        );
    } else {
        warn!(error = %error, held, "accepting a TURN TCP/TLS connection failed");
    }
}

/// Counts and logs (throttled) a connection refused by the caps.
fn refuse(core: &TurnCore, refused: Refused, source: IpAddr) {
    let limits = core.connections.limits();
    let mut verdicts = LocalVerdicts::default();
    let now = std::time::Instant::now();
    match refused {
        Refused::PerSource => {
            verdicts.add(Reason::DroppedTurnConnectionsPerSource, 0);
            if let Some(held) = REFUSED_PER_SOURCE.allow(now) {
                warn!(
                    source = %source,
                    limit = limits.per_source,
                    held,
                    "TURN TCP/TLS connection refused: its address holds \
                     turn.max_connections_per_source"
                );
            }
        }
        Refused::Total => {
            verdicts.add(Reason::DroppedTurnConnectionsTotal, 0);
            if let Some(held) = REFUSED_TOTAL.allow(now) {
                warn!(
                    source = %source,
                    limit = limits.total,
                    held,
                    "TURN TCP/TLS connection refused: the server holds turn.max_connections, \
                     all with allocations"
                );
            }
        }
    }
    core.verdicts.publish(&mut verdicts);
}

/// One admitted connection: nothing is set up until its first bytes arrive; it must create
/// an allocation before [`ALLOCATION_DEADLINE`], and it is closed early if a newer connection
/// takes its place (the server was full).
async fn serve(
    core: Arc<TurnCore>,
    stream: TcpStream,
    five_tuple: FiveTuple,
    admitted: Admitted,
    stopped: watch::Receiver<bool>,
) {
    let deadline = Instant::now() + ALLOCATION_DEADLINE;
    let evicted = admitted.evicted.clone();
    // Bytes, not readiness: `readable()` reports a fresh socket ready before anything came
    // (tokio's readiness is a hint), and every idle connection then got its buffers, its
    // writer task and, for TLS, a handshake's state — 10 KiB each in the load harness's flood;
    // waiting for a byte to peek at leaves an idle connection at about 3 KiB.
    let first_bytes = async {
        let mut byte = [0u8; 1];
        tokio::select! {
            r = stream.peek(&mut byte) => matches!(r, Ok(n) if n > 0),
            _ = tokio::time::sleep_until(deadline) => false,
            _ = evicted.notified() => false,
        }
    };
    if !first_bytes.await {
        return;
    }
    // What follows is boxed: the task of a connection that never sends holds only the wait
    // above (1.7 KB), not room for the TLS handshake's and the stream's state.
    match five_tuple.transport {
        Transport::Tls => {
            let Some(tls) = &core.tls else { return };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
            let accept = Box::pin(tokio::time::timeout_at(deadline, acceptor.accept(stream)));
            let handshake = tokio::select! {
                r = accept => r,
                _ = evicted.notified() => return,
            };
            if let Ok(Ok(stream)) = handshake {
                Box::pin(stream::serve(
                    core, stream, five_tuple, admitted, deadline, stopped,
                ))
                .await;
            }
        }
        _ => {
            Box::pin(stream::serve(
                core, stream, five_tuple, admitted, deadline, stopped,
            ))
            .await
        }
    }
}
