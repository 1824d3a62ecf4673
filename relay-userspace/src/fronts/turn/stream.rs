//! TURN over TCP and TLS (RFC 8656 §3.1): a client's messages and ChannelData come framed on
//! one connection, which is the client's 5-tuple; the relayed leg is UDP as always.
//!
//! Framing is done here rather than with `turn_types::tcp`, which ignores the padding
//! ChannelData carries over TCP (RFC 8656 §12.5) and so misreads every frame after an
//! unpadded-length one.

use std::{sync::Arc, time::Duration};

use relay_common::{
    ratelimit,
    turn::{CHANNEL_DATA_HLEN, STUN_HLEN, padded},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::watch,
    time::Instant,
};
use tracing::{debug, info};

use super::{
    TurnCore,
    connections::Admitted,
    outbox::{CLIENT_BUFFER_BYTES, Outbox, Push, WRITE_CHUNK},
    return_path::ReturnPath,
    server::FiveTuple,
};
use crate::{
    config::TURN_REQUEST_BURST,
    forwarder::counters::LocalVerdicts,
    logging::{THROTTLE_EVERY, Throttle},
};

/// Largest frame accepted (a STUN message or ChannelData: 16-bit lengths).
const MAX_FRAME: usize = 4 + 65_535 + 3;
/// Bytes asked of the socket per read; the buffer grows beyond only for a frame that needs it.
const READ_CHUNK: usize = 4096;
/// A buffer grown for a large frame is given back once it is empty again, so an idle
/// connection holds little.
const KEEP_CAPACITY: usize = 16 * 1024;

static PACED: Throttle = Throttle::new(THROTTLE_EVERY);

/// A stream that is neither STUN nor ChannelData: the connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("neither a STUN message nor ChannelData")]
pub struct NotTurn;

/// The length of the frame at the start of `buf`: `Ok(None)` when more bytes are needed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, NotTurn> {
    if buf.len() < CHANNEL_DATA_HLEN {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    match buf[0] >> 6 {
        0 => {
            if !len.is_multiple_of(4) {
                return Err(NotTurn);
            }
            Ok((buf.len() >= STUN_HLEN + len).then_some(STUN_HLEN + len))
        }
        1 => {
            let total = padded(CHANNEL_DATA_HLEN + len);
            Ok((buf.len() >= total).then_some(total))
        }
        _ => Err(NotTurn),
    }
}

/// A connection's STUN requests, `turn.requests_per_sec_per_connection`: over the rate they
/// wait (the connection is read no faster, and TCP's flow control slows the client) — a
/// request on a stream is never dropped, since nothing would retransmit it.
struct RequestPacer {
    rate: u32,
    start: Instant,
    /// Bucket debt ([`ratelimit`]'s scaled form) and when it was last updated, in ms.
    debt: u64,
    last_ms: u64,
}

impl RequestPacer {
    fn new(rate: u32) -> RequestPacer {
        RequestPacer {
            rate,
            start: Instant::now(),
            debt: 0,
            last_ms: 0,
        }
    }

    /// Takes one request's token, waiting for it if the bucket is empty; whether it waited.
    async fn take(&mut self) -> bool {
        if self.rate == 0 {
            return false;
        }
        let mut waited = false;
        loop {
            let ms = self.start.elapsed().as_millis() as u64 + 1;
            let elapsed = ms.saturating_sub(self.last_ms);
            let burst = TURN_REQUEST_BURST.as_millis() as u64;
            if let Some(debt) =
                ratelimit::take_with_burst(self.debt, elapsed, 1000, self.rate.into(), 1, burst)
            {
                (self.debt, self.last_ms) = (debt, ms);
                return waited;
            }
            waited = true;
            tokio::time::sleep(Duration::from_millis((1000 / u64::from(self.rate)).max(1))).await;
        }
    }
}

/// Serves one admitted connection until it closes, the daemon stops, or — while it has no
/// allocation — its `deadline` passes or a newer connection takes its place.
pub async fn serve<S>(
    core: Arc<TurnCore>,
    stream: S,
    five_tuple: FiveTuple,
    admitted: Admitted,
    deadline: Instant,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let outbox = Outbox::new(CLIENT_BUFFER_BYTES, core.stream_budget.clone());
    core.streams.insert(five_tuple, outbox.clone());
    let writing = {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            'writing: while outbox.take(&mut out).await {
                for chunk in out.chunks(WRITE_CHUNK) {
                    if writer.write_all(chunk).await.is_err() {
                        // Nothing more can be written: refuse further frames at once.
                        outbox.close();
                        break 'writing;
                    }
                    outbox.written(chunk.len());
                }
                // TLS: what the last write left in the session's buffer goes out now, not with
                // the next burst.
                if writer.flush().await.is_err() {
                    outbox.close();
                    break;
                }
            }
            let _ = writer.shutdown().await;
        })
    };
    let mut pacer = RequestPacer::new(core.requests_per_connection);
    let mut verdicts = LocalVerdicts::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut allocated = false;
    let mut return_path = ReturnPath::default();
    'connection: loop {
        if return_path.wait(&outbox).await {
            core.count("stream_return_path_waits");
        }
        buf.reserve(READ_CHUNK);
        let read = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = admitted.evicted.notified(), if !allocated => {
                debug!(client = %five_tuple.client, "server full: closing a connection without an allocation");
                break;
            }
            _ = tokio::time::sleep_until(deadline), if !allocated => {
                allocated = core.has_allocation(&five_tuple);
                if allocated {
                    continue;
                }
                debug!(client = %five_tuple.client, "no allocation in time: closing");
                break;
            }
            r = reader.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut start = 0;
        loop {
            let pending = &buf[start..];
            let len = match frame_len(pending) {
                Ok(Some(len)) if len <= MAX_FRAME => len,
                Ok(None) if pending.len() <= MAX_FRAME => break,
                _ => break 'connection,
            };
            // STUN (the two top bits 0) is a request for the server; ChannelData is data.
            if pending[0] >> 6 == 0 && pacer.take().await {
                core.count("stream_paced");
                if let Some(held) = PACED.allow(std::time::Instant::now()) {
                    info!(
                        client = %five_tuple.client,
                        rate = core.requests_per_connection,
                        held,
                        "TURN requests on a TCP/TLS connection beyond \
                         turn.requests_per_sec_per_connection: read more slowly"
                    );
                }
            }
            let frame = &buf[start..start + len];
            // A reply that does not fit: the client sends requests but does not read.
            if let Some(reply) =
                core.on_stream_frame(frame, &five_tuple, &mut verdicts, &mut return_path)
                && outbox.push(&reply) != Push::Queued
            {
                break 'connection;
            }
            start += len;
        }
        core.verdicts.publish(&mut verdicts);
        buf.drain(..start);
        if buf.is_empty() && buf.capacity() > KEEP_CAPACITY {
            buf = Vec::new();
        }
    }
    core.verdicts.publish(&mut verdicts);
    outbox.close();
    core.streams.remove(&five_tuple);
    core.client_gone(&five_tuple);
    drop(admitted);
    let _ = writing.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_at_stun_lengths_and_padded_channel_data() {
        let mut stun = vec![0u8; 28];
        stun[3] = 8;
        assert_eq!(frame_len(&stun[..3]), Ok(None));
        assert_eq!(frame_len(&stun[..27]), Ok(None));
        assert_eq!(frame_len(&stun), Ok(Some(28)));
        // ChannelData of 5 bytes takes 12 on a stream (4 + 5, padded).
        let mut cd = vec![0x40, 0x01, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0, 0x40];
        assert_eq!(frame_len(&cd[..11]), Ok(None));
        assert_eq!(frame_len(&cd), Ok(Some(12)));
        cd[0] = 0x80;
        assert_eq!(frame_len(&cd), Err(NotTurn));
        // A STUN length that is no multiple of 4 is not STUN.
        stun[3] = 7;
        assert_eq!(frame_len(&stun), Err(NotTurn));
    }
}
