//! TURN over TCP and TLS (RFC 8656 §3.1): a client's messages and ChannelData come framed on
//! one connection, which is the client's 5-tuple; the relayed leg is UDP as always.
//!
//! Framing is done here rather than with `turn_types::tcp`, which ignores the padding
//! ChannelData carries over TCP (RFC 8656 §12.5) and so misreads every frame after an
//! unpadded-length one.

use std::{sync::Arc, time::Duration};

use relay_common::turn::{CHANNEL_DATA_HLEN, STUN_HLEN, padded};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{mpsc, watch},
};
use tracing::debug;

use super::{TurnCore, server::FiveTuple};

/// Largest frame accepted (a STUN message or ChannelData: 16-bit lengths).
const MAX_FRAME: usize = 4 + 65_535 + 3;
/// Frames queued towards one client before more are dropped (a slow reader must not hold
/// memory without bound).
const CLIENT_QUEUE: usize = 256;
/// A connection that has not completed its first request within this time is closed.
const FIRST_REQUEST: Duration = Duration::from_secs(10);

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

/// Serves one connection until it closes or the daemon stops.
pub async fn serve<S>(
    core: Arc<TurnCore>,
    stream: S,
    five_tuple: FiveTuple,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CLIENT_QUEUE);
    core.streams.insert(five_tuple, tx.clone());
    let writing = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 65_536];
    let mut answered = false;
    let deadline = tokio::time::sleep(FIRST_REQUEST);
    tokio::pin!(deadline);
    'connection: loop {
        let n = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = &mut deadline, if !answered => {
                debug!(client = %five_tuple.client, "no request in time: closing");
                break;
            }
            r = reader.read(&mut chunk) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let len = match frame_len(&buf) {
                Ok(Some(len)) if len <= MAX_FRAME => len,
                Ok(None) if buf.len() <= MAX_FRAME => break,
                _ => break 'connection,
            };
            if let Some(reply) = core.on_stream_frame(&buf[..len], &five_tuple) {
                answered = true;
                if tx.try_send(reply).is_err() {
                    break 'connection;
                }
            }
            buf.drain(..len);
        }
    }
    drop(tx);
    core.streams.remove(&five_tuple);
    core.client_gone(&five_tuple);
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
