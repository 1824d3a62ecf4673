//! TURN over TCP and TLS: the listeners, and the connections they accept (each served by
//! [`super::stream`]).

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};

use super::{
    core::TurnCore,
    server::{FiveTuple, Transport},
    stream,
};

/// Accepts TCP (or TLS) clients.
pub(super) async fn accept(
    core: Arc<TurnCore>,
    listener: TcpListener,
    transport: Transport,
    stopped: watch::Receiver<bool>,
) {
    let mut stop = stopped.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let five_tuple = FiveTuple {
            client: peer,
            server: local,
            transport,
        };
        let core = core.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            match transport {
                Transport::Tls => {
                    let Some(tls) = &core.tls else { return };
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    if let Ok(Ok(stream)) = handshake.await {
                        stream::serve(core, stream, five_tuple, stopped).await;
                    }
                }
                _ => stream::serve(core, stream, five_tuple, stopped).await,
            }
        });
    }
}
