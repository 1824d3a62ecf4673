//! A TURN client whose every request the test chooses: for the refusals (wrong password,
//! expired credential, a denied peer, a channel out of range, a quota) and for checking state
//! across a daemon restart. Positive interop is tested with clients nobody here wrote
//! ([`crate::turn_clients`]); this one says exactly which error code came back.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use stun_types::{
    attribute::{AttributeWrite, ErrorCode, Nonce, Realm, Software, Username},
    message::{
        IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass,
        MessageIntegrityCredentials, MessageType, MessageWrite, MessageWriteExt, MessageWriteVec,
        Method, TransactionId,
    },
};
use turn_types::{
    attribute::{
        ChannelNumber, Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayedAddress,
    },
    message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND},
};

use crate::nat_lab::{Host, NatLab};

/// SOFTWARE of the probe's first request (long enough for its purpose, see `build`).
const PROBE_SOFTWARE: &str = "relay-lab turn probe: a TURN client for the lab's tests and benchmarks, padding its first request past the size of the challenge";

/// Makes a request's attributes for its transaction ID.
pub type Attributes = dyn Fn(TransactionId) -> Vec<Box<dyn AttributeWrite>>;

/// A TURN client over UDP.
pub struct TurnProbe {
    socket: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
}

/// A response: success or an error code.
#[derive(Clone, Debug)]
pub struct Answer {
    /// 0 for a success, else the error code.
    pub code: u16,
    /// The whole response.
    pub bytes: Vec<u8>,
}

impl TurnProbe {
    /// A client on `host` for `server` with these credentials.
    pub fn new(
        lab: &NatLab,
        host: Host,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> Result<TurnProbe> {
        let any: SocketAddr = if server.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        TurnProbe::bound(lab, host, any, server, username, password)
    }

    /// A client on `host` sending from `local` (an address of that host) to `server`.
    pub fn bound(
        lab: &NatLab,
        host: Host,
        local: SocketAddr,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> Result<TurnProbe> {
        let socket = lab
            .in_host(host, || UdpSocket::bind(local))?
            .with_context(|| format!("binding {local}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(300)))?;
        Ok(TurnProbe {
            socket,
            server,
            username: username.to_string(),
            password: password.to_string(),
            realm: None,
            nonce: None,
        })
    }

    /// Its local address (what the relay sees, behind a NAT, differs).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn build(&self, method: Method, attrs: &Attributes, signed: bool) -> Vec<u8> {
        let kind = MessageType::from_class_method(MessageClass::Request, method);
        let transaction = TransactionId::generate();
        let mut m = Message::builder(kind, transaction, MessageWriteVec::new());
        for a in attrs(transaction) {
            let _ = m.add_attribute(a.as_ref());
        }
        if self.nonce.is_none() {
            // The first request, before the challenge, is padded to more than the 401 it
            // draws: a relay that limits amplification per source (ours) answers it at once
            // instead of after a retransmission — one round trip per allocation, not seconds.
            let _ = m.add_attribute(&Software::new(PROBE_SOFTWARE).expect("a short name"));
        }
        if signed && let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
            let _ = m.add_attribute(&Username::new(&self.username).expect("a short username"));
            let _ = m.add_attribute(&Realm::new(realm).expect("the server's realm"));
            let _ = m.add_attribute(&Nonce::new(nonce).expect("the server's nonce"));
            let credentials: MessageIntegrityCredentials = LongTermKeyCredentials::new(
                self.username.clone(),
                self.password.clone(),
                realm.clone(),
            )
            .into();
            let _ = m.add_message_integrity(&credentials, IntegrityAlgorithm::Sha1);
        }
        let _ = m.add_fingerprint();
        m.finish()
    }

    /// Sends `bytes` until a response to it arrives (retransmitting as STUN clients do; at most
    /// 8 times).
    fn exchange(&self, bytes: &[u8]) -> Result<Answer> {
        let transaction = Message::from_bytes(bytes)?.transaction_id();
        let mut buf = [0u8; 2048];
        for _ in 0..8 {
            self.socket.send_to(bytes, self.server)?;
            while let Ok((n, _)) = self.socket.recv_from(&mut buf) {
                let Ok(m) = Message::from_bytes(&buf[..n]) else {
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
                return Ok(Answer {
                    code,
                    bytes: buf[..n].to_vec(),
                });
            }
        }
        bail!("no answer from {}", self.server)
    }

    /// A request with credentials, learning the realm and nonce from a 401 or 438 first;
    /// `attrs` makes its attributes for its transaction (XOR addresses depend on it).
    pub fn request(&mut self, method: Method, attrs: &Attributes) -> Result<Answer> {
        for _ in 0..3 {
            let answer = self.exchange(&self.build(method, attrs, true))?;
            let learn =
                matches!(answer.code, 401 | 438) && (self.nonce.is_none() || answer.code == 438);
            if !learn {
                return Ok(answer);
            }
            let m = Message::from_bytes(&answer.bytes)?;
            self.realm = Some(m.attribute::<Realm>()?.realm().to_string());
            self.nonce = Some(m.attribute::<Nonce>()?.nonce().to_string());
        }
        bail!("the server kept challenging")
    }

    /// Allocates: the relayed address, or the error code.
    pub fn allocate(&mut self) -> Result<Result<SocketAddr, u16>> {
        let answer = self.request(ALLOCATE, &|_| {
            vec![Box::new(RequestedTransport::new(RequestedTransport::UDP))]
        })?;
        if answer.code != 0 {
            return Ok(Err(answer.code));
        }
        let m = Message::from_bytes(&answer.bytes)?;
        Ok(Ok(m
            .attribute::<XorRelayedAddress>()
            .context("no XOR-RELAYED-ADDRESS")?
            .addr(m.transaction_id())))
    }

    /// Refreshes with `lifetime` seconds: the error code (0: success).
    pub fn refresh(&mut self, lifetime: u32) -> Result<u16> {
        Ok(self
            .request(REFRESH, &move |_| vec![Box::new(Lifetime::new(lifetime))])?
            .code)
    }

    /// CreatePermission for `peer`: the error code (0: success).
    pub fn create_permission(&mut self, peer: SocketAddr) -> Result<u16> {
        Ok(self
            .request(CREATE_PERMISSION, &move |t| {
                vec![Box::new(XorPeerAddress::new(peer, t))]
            })?
            .code)
    }

    /// ChannelBind `channel` to `peer`: the error code (0: success).
    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<u16> {
        Ok(self
            .request(CHANNEL_BIND, &move |t| {
                vec![
                    Box::new(ChannelNumber::new(channel)),
                    Box::new(XorPeerAddress::new(peer, t)),
                ]
            })?
            .code)
    }

    /// Sends `data` as ChannelData on `channel`.
    pub fn send_channel(&self, channel: u16, data: &[u8]) -> Result<()> {
        let mut frame = relay_common::turn::ChannelDataHdr::new(channel, data.len() as u16)
            .to_bytes()
            .to_vec();
        frame.extend_from_slice(data);
        self.socket.send_to(&frame, self.server)?;
        Ok(())
    }

    /// Sends `data` to `peer` in a Send indication.
    pub fn send_indication(&self, peer: SocketAddr, data: &[u8]) -> Result<()> {
        let mut m = Message::builder_indication(SEND, MessageWriteVec::new());
        let transaction = m.transaction_id();
        let _ = m.add_attribute(&XorPeerAddress::new(peer, transaction));
        let _ = m.add_attribute(&Data::new(data));
        self.socket.send_to(&m.finish(), self.server)?;
        Ok(())
    }

    /// The application data of the next ChannelData or Data indication, within `limit`.
    pub fn receive(&self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = std::time::Instant::now() + limit;
        let mut buf = [0u8; 2048];
        while std::time::Instant::now() < deadline {
            let Ok((n, _)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let datagram = &buf[..n];
            if datagram[0] >> 6 == 1 && n >= 4 {
                let len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
                return datagram.get(4..4 + len).map(<[u8]>::to_vec);
            }
            if let Ok(m) = Message::from_bytes(datagram)
                && let Ok(data) = m.attribute::<Data>()
            {
                return Some(data.data().to_vec());
            }
        }
        None
    }
}
