//! One TURN client of the load harness, as a browser's ICE agent behaves: an Allocate without
//! credentials (retransmitted over UDP as RFC 8489 says: 500 ms, doubling), the Allocate with
//! REST credentials after the 401, a CreatePermission and a ChannelBind for its peer, then
//! ChannelData to the echo peer and back — over UDP, TCP or TLS — timing the first relayed byte
//! from its first Allocate. It holds its allocation until told to let go, so the harness can
//! measure a server holding all of them at once, then deletes it (Refresh, LIFETIME 0).
//!
//! Written here rather than driving `turnutils_uclient` because the harness needs each
//! client's own timings and outcome; the tests of the relay against clients nobody here wrote
//! use coturn's client, aioice and Chromium.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use relay_userspace::fronts::turn::stream::frame_len;
use stun_types::{
    attribute::{ErrorCode, Nonce, Realm, Software, Username},
    message::{
        IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass,
        MessageIntegrityCredentials, MessageType, MessageWrite, MessageWriteExt, MessageWriteVec,
        Method, TransactionId,
    },
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::{mpsc, watch},
};
use turn_types::{
    attribute::{ChannelNumber, Lifetime, RequestedTransport, XorPeerAddress, XorRelayedAddress},
    message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH},
};

/// RFC 8489 §6.2.1: the first retransmission after 500 ms, doubling, 7 requests in all.
const RTO: Duration = Duration::from_millis(500);
const REQUESTS: u32 = 7;
/// How long a stream client waits for an answer (nothing is retransmitted on a stream).
const STREAM_ANSWER: Duration = Duration::from_secs(39);
/// How long the client waits for its last echo.
const ECHO_WAIT: Duration = Duration::from_secs(5);
/// Pause between a client's messages.
const MESSAGE_GAP: Duration = Duration::from_millis(20);
/// The channel every client binds (each client has its own allocation).
pub const CHANNEL: u16 = 0x4000;
/// SOFTWARE of a padded first request ([`Job::pad_first`]).
const PADDING: &str =
    "relay-lab load client, its first request padded past the size of the challenge it draws";

/// How a client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// UDP to the TURN port.
    Udp,
    /// TCP to the TURN port.
    Tcp,
    /// TLS to the TURNS port.
    Tls,
}

impl Transport {
    /// Every transport, in the order a mixed crowd cycles through them.
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    /// For reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// The server under load.
#[derive(Clone)]
pub struct Server {
    /// The TURN port (UDP and TCP).
    pub turn: SocketAddr,
    /// The TURNS port.
    pub turns: SocketAddr,
    /// TLS client settings trusting the server's certificate.
    pub tls: Arc<rustls::ClientConfig>,
}

/// One client's job.
#[derive(Clone, Debug)]
pub struct Job {
    /// How it reaches the server.
    pub transport: Transport,
    /// REST username and password.
    pub username: String,
    /// Its password.
    pub password: String,
    /// The echo peer.
    pub peer: SocketAddr,
    /// Messages it relays (each echoed back); 0: it only allocates.
    pub messages: u32,
    /// Bytes per message.
    pub size: usize,
    /// A number carried in its messages.
    pub id: u32,
    /// Refresh the allocation once before deleting it (churn).
    pub refresh: bool,
    /// Pad the first request past the size of the challenge it draws, so a relay that limits
    /// amplification answers it from its own credit (the maxima: state, not first-request
    /// behaviour, is measured there).
    pub pad_first: bool,
    /// Send its messages without reading a single echo, then hold: a client that stopped
    /// reading (the relay's buffers for it fill).
    pub stall: bool,
}

/// What happened to one client.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Outcome {
    /// Its transport.
    pub transport: Option<Transport>,
    /// Whether it got an allocation.
    pub allocated: bool,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// From its first Allocate to its first echoed byte.
    pub first_byte: Option<Duration>,
    /// Messages sent to the peer.
    pub sent: u32,
    /// Messages echoed back, byte for byte.
    pub echoed: u32,
    /// Requests sent, retransmissions included.
    pub requests: u32,
}

/// A connection to the server, datagrams or a stream of frames.
enum Conn {
    Udp(UdpSocket, SocketAddr),
    Stream { io: Box<dyn Stream>, buf: Vec<u8> },
}

/// A TCP or TLS connection to the server.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Conn {
    async fn open(server: &Server, transport: Transport) -> Result<Conn> {
        Ok(match transport {
            Transport::Udp => {
                let any: SocketAddr = if server.turn.is_ipv6() {
                    "[::]:0".parse()?
                } else {
                    "0.0.0.0:0".parse()?
                };
                Conn::Udp(UdpSocket::bind(any).await?, server.turn)
            }
            Transport::Tcp => {
                let s = TcpStream::connect(server.turn).await?;
                s.set_nodelay(true)?;
                Conn::Stream {
                    io: Box::new(s),
                    buf: Vec::new(),
                }
            }
            Transport::Tls => {
                let s = TcpStream::connect(server.turns).await?;
                s.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::from(server.turns.ip());
                let tls = tokio_rustls::TlsConnector::from(server.tls.clone())
                    .connect(name, s)
                    .await
                    .context("TLS handshake")?;
                Conn::Stream {
                    io: Box::new(tls),
                    buf: Vec::new(),
                }
            }
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        match self {
            Conn::Udp(s, to) => {
                s.send_to(bytes, *to).await?;
            }
            Conn::Stream { io, .. } => io.write_all(bytes).await?,
        }
        Ok(())
    }

    /// The next datagram or frame, or None after `limit`.
    async fn recv(&mut self, limit: Duration) -> Result<Option<Vec<u8>>> {
        let until = tokio::time::Instant::now() + limit;
        match self {
            Conn::Udp(s, _) => {
                let mut buf = vec![0u8; 2048];
                match tokio::time::timeout_at(until, s.recv(&mut buf)).await {
                    Ok(n) => Ok(Some(buf[..n?].to_vec())),
                    Err(_) => Ok(None),
                }
            }
            Conn::Stream { io, buf } => loop {
                if let Some(len) = frame_len(buf).map_err(|e| anyhow::anyhow!("{e}"))? {
                    return Ok(Some(buf.drain(..len).collect()));
                }
                buf.reserve(4096);
                match tokio::time::timeout_at(until, io.read_buf(buf)).await {
                    Ok(Ok(0)) => bail!("the server closed the connection"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => return Ok(None),
                }
            },
        }
    }

    fn is_stream(&self) -> bool {
        matches!(self, Conn::Stream { .. })
    }
}

/// The client's protocol state.
struct Client {
    conn: Conn,
    job: Job,
    realm: Option<String>,
    nonce: Option<String>,
    requests: u32,
}

impl Client {
    fn build(&self, method: Method, attrs: &dyn Fn(TransactionId, &mut Builder)) -> Vec<u8> {
        let kind = MessageType::from_class_method(MessageClass::Request, method);
        let transaction = TransactionId::generate();
        let mut m = Message::builder(kind, transaction, MessageWriteVec::new());
        attrs(transaction, &mut m);
        if self.nonce.is_none() && self.job.pad_first {
            let _ = m.add_attribute(&Software::new(PADDING).expect("a short name"));
        }
        if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
            let _ = m.add_attribute(&Username::new(&self.job.username).expect("short"));
            let _ = m.add_attribute(&Realm::new(realm).expect("the server's realm"));
            let _ = m.add_attribute(&Nonce::new(nonce).expect("the server's nonce"));
            let credentials: MessageIntegrityCredentials = LongTermKeyCredentials::new(
                self.job.username.clone(),
                self.job.password.clone(),
                realm.clone(),
            )
            .into();
            let _ = m.add_message_integrity(&credentials, IntegrityAlgorithm::Sha1);
        }
        m.finish()
    }

    /// Sends a request until its answer comes; returns the answer's error code (0: success)
    /// and bytes.
    async fn exchange(&mut self, bytes: &[u8]) -> Result<(u16, Vec<u8>)> {
        let transaction = Message::from_bytes(bytes)?.transaction_id();
        let (tries, mut wait) = if self.conn.is_stream() {
            (1, STREAM_ANSWER)
        } else {
            (REQUESTS, RTO)
        };
        for _ in 0..tries {
            self.requests += 1;
            self.conn.send(bytes).await?;
            let until = Instant::now() + wait;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                let Some(got) = self.conn.recv(left).await? else {
                    break;
                };
                let Ok(m) = Message::from_bytes(&got) else {
                    continue;
                };
                if m.transaction_id() != transaction {
                    continue;
                }
                let code = if m.has_class(MessageClass::Success) {
                    0
                } else {
                    m.attribute::<ErrorCode>().map_or(0, |e| e.code())
                };
                return Ok((code, got));
            }
            wait *= 2;
        }
        bail!("no answer after {tries} tries")
    }

    /// A request with credentials, learning the realm and nonce from a 401 or 438 first.
    async fn request(
        &mut self,
        method: Method,
        attrs: &(dyn Fn(TransactionId, &mut Builder) + Sync),
    ) -> Result<Vec<u8>> {
        for _ in 0..3 {
            let (code, answer) = self.exchange(&self.build(method, attrs)).await?;
            match code {
                0 => return Ok(answer),
                401 | 438 => {
                    let m = Message::from_bytes(&answer)?;
                    let first = self.nonce.is_none();
                    self.realm = Some(m.attribute::<Realm>()?.realm().to_string());
                    self.nonce = Some(m.attribute::<Nonce>()?.nonce().to_string());
                    if code == 401 && !first {
                        bail!("credentials refused (401)");
                    }
                }
                code => bail!("error {code}"),
            }
        }
        bail!("no success after the challenges")
    }

    fn channel_data(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + data.len() + 3);
        out.extend_from_slice(&CHANNEL.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        if self.conn.is_stream() {
            // Over streams ChannelData is padded to 4 bytes (RFC 8656 §12.5).
            out.resize(out.len().next_multiple_of(4), 0);
        }
        out
    }
}

type Builder = stun_types::message::MessageWriteVec;

fn message(job: &Job, seq: u32) -> Vec<u8> {
    let mut data = vec![0u8; job.size.max(8)];
    data[..4].copy_from_slice(&job.id.to_be_bytes());
    data[4..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in data.iter_mut().enumerate().skip(8) {
        *b = (i as u32 ^ job.id ^ seq) as u8;
    }
    data
}

/// Runs one client: allocate, relay, tell `ready` (also when it failed), hold until `hold`
/// says so, delete.
pub async fn run(
    server: Server,
    job: Job,
    ready: mpsc::Sender<()>,
    mut hold: watch::Receiver<bool>,
) -> Outcome {
    let mut outcome = Outcome {
        transport: Some(job.transport),
        ..Outcome::default()
    };
    let started = Instant::now();
    let mut client = match Conn::open(&server, job.transport).await {
        Ok(conn) => Client {
            conn,
            job: job.clone(),
            realm: None,
            nonce: None,
            requests: 0,
        },
        Err(e) => {
            outcome.error = Some(format!("connect: {e:#}"));
            let _ = ready.send(()).await;
            return outcome;
        }
    };
    let result = relay(&mut client, &job, started, &mut outcome).await;
    outcome.requests = client.requests;
    let _ = ready.send(()).await;
    if let Err(e) = result {
        outcome.error = Some(format!("{e:#}"));
        return outcome;
    }
    // Hold the allocation until the harness has looked at the server.
    let _ = hold.wait_for(|released| *released).await;
    if job.refresh {
        let _ = client
            .request(REFRESH, &|_, m| {
                let _ = m.add_attribute(&Lifetime::new(600));
            })
            .await;
    }
    let _ = client
        .request(REFRESH, &|_, m| {
            let _ = m.add_attribute(&Lifetime::new(0));
        })
        .await;
    outcome.requests = client.requests;
    outcome
}

async fn relay(
    client: &mut Client,
    job: &Job,
    started: Instant,
    outcome: &mut Outcome,
) -> Result<()> {
    let transport = |_: TransactionId, m: &mut Builder| {
        let _ = m.add_attribute(&RequestedTransport::new(RequestedTransport::UDP));
    };
    let answer = client
        .request(ALLOCATE, &transport)
        .await
        .with_context(|| {
            format!(
                "Allocate ({})",
                if client.nonce.is_some() {
                    "after the challenge"
                } else {
                    "no challenge"
                }
            )
        })?;
    let m = Message::from_bytes(&answer)?;
    m.attribute::<XorRelayedAddress>()
        .context("no XOR-RELAYED-ADDRESS")?;
    outcome.allocated = true;
    if job.messages == 0 {
        // An allocation held, nothing relayed (the maxima).
        return Ok(());
    }
    bind_channel(client, job.peer).await?;
    let expected: Vec<Vec<u8>> = (0..job.messages).map(|seq| message(job, seq)).collect();
    if job.stall {
        for data in &expected {
            client.conn.send(&client.channel_data(data)).await?;
            outcome.sent += 1;
        }
        return Ok(());
    }
    let mut echoed = vec![false; expected.len()];
    for (seq, data) in expected.iter().enumerate() {
        let frame = client.channel_data(data);
        client.conn.send(&frame).await?;
        outcome.sent += 1;
        // Read what has come back while pacing the next message.
        let until = Instant::now()
            + if seq + 1 == expected.len() {
                ECHO_WAIT
            } else {
                MESSAGE_GAP
            };
        collect(client, &expected, &mut echoed, until, started, outcome).await?;
    }
    if outcome.echoed < job.messages {
        bail!("{} of {} messages echoed", outcome.echoed, job.messages);
    }
    Ok(())
}

/// A permission and [`CHANNEL`] for `peer`.
async fn bind_channel(client: &mut Client, peer: SocketAddr) -> Result<()> {
    client
        .request(CREATE_PERMISSION, &|t, m| {
            let _ = m.add_attribute(&XorPeerAddress::new(peer, t));
        })
        .await
        .context("CreatePermission")?;
    client
        .request(CHANNEL_BIND, &|t, m| {
            let _ = m.add_attribute(&ChannelNumber::new(CHANNEL));
            let _ = m.add_attribute(&XorPeerAddress::new(peer, t));
        })
        .await
        .context("ChannelBind")?;
    Ok(())
}

/// A TCP or TLS client (`job.transport`) with an allocation and [`CHANNEL`] bound to
/// `job.peer`, handed over as its connection and the bytes already read from it — for a
/// harness that relays on its own terms (the stream benchmark).
pub async fn open_channel(server: &Server, job: &Job) -> Result<(Box<dyn Stream>, Vec<u8>)> {
    let mut client = Client {
        conn: Conn::open(server, job.transport).await?,
        job: job.clone(),
        realm: None,
        nonce: None,
        requests: 0,
    };
    client
        .request(ALLOCATE, &|_, m| {
            let _ = m.add_attribute(&RequestedTransport::new(RequestedTransport::UDP));
        })
        .await
        .context("Allocate")?;
    bind_channel(&mut client, job.peer).await?;
    match client.conn {
        Conn::Stream { io, buf } => Ok((io, buf)),
        Conn::Udp(..) => bail!("a stream transport is needed"),
    }
}

/// Reads echoes until `until` (or until all came back).
async fn collect(
    client: &mut Client,
    expected: &[Vec<u8>],
    echoed: &mut [bool],
    until: Instant,
    started: Instant,
    outcome: &mut Outcome,
) -> Result<()> {
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if echoed.iter().all(|e| *e) {
            return Ok(());
        }
        let Some(got) = client.conn.recv(left).await? else {
            return Ok(());
        };
        // ChannelData on our channel: the length field says how much is data.
        if got.len() < 4 || u16::from_be_bytes([got[0], got[1]]) != CHANNEL {
            continue;
        }
        let len = usize::from(u16::from_be_bytes([got[2], got[3]]));
        let Some(data) = got.get(4..4 + len) else {
            continue;
        };
        if let Some(i) = expected.iter().position(|e| e.as_slice() == data)
            && !echoed[i]
        {
            echoed[i] = true;
            outcome.echoed += 1;
            outcome.first_byte.get_or_insert(started.elapsed());
        }
    }
    Ok(())
}
