//! TURN clients nobody here wrote, driven in the lab: coturn's `turnutils_uclient` (with its echo
//! peer `turnutils_peer`) and aioice (Python). Each function fails when its client is missing.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{
    nat_lab::{Host, NatLab, addr, require_tool},
    scenario::{TURN_REALM, TURN_SECRET},
};

/// The echo peer's UDP port (turnutils_peer's default).
pub const PEER_PORT: u16 = 3480;

/// Starts `turnutils_peer` on the peer host, listening on its IPv4 and IPv6 addresses.
pub fn start_peer(lab: &mut NatLab) -> Result<()> {
    require_tool("turnutils_peer")?;
    let program = Path::new("/usr/bin/turnutils_peer");
    let port = PEER_PORT.to_string();
    for (name, address) in [
        ("turn-peer-v4", addr::PEER_V4),
        ("turn-peer-v6", addr::PEER_V6),
    ] {
        lab.spawn(Host::Peer, name, program, &["-L", address, "-p", &port])?;
    }
    // It binds at once; give it a moment to do so.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// An echo peer of the harness's own: a UDP socket on the peer host sending every datagram
/// back where it came from, with a receive buffer (4 MiB asked) large enough that bursts of
/// many clients at once never overflow it — where the peer is not what a test or benchmark
/// measures. (`turnutils_peer`, with the default 208 KiB, dropped 3 314 of 240 000 datagrams
/// in one benchmark run, and under twenty bursting clients looks like the relay losing them.)
pub struct EchoPeer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl EchoPeer {
    /// Starts echoing at `at` on the peer host, its thread pinned to `core` if given.
    pub fn start(lab: &NatLab, at: std::net::SocketAddr, core: Option<usize>) -> Result<EchoPeer> {
        // Bound inside the peer's namespace; it stays there wherever it is used from.
        let socket = lab.in_host(Host::Peer, || -> Result<std::net::UdpSocket> {
            let s = std::net::UdpSocket::bind(at)?;
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBuf, &(4 << 20))?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(s)
        })??;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            if let Some(core) = core {
                let _ = crate::throughput::cpu::pin(0, core);
            }
            let mut buf = vec![0u8; 65_536];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        Ok(EchoPeer { stop, thread })
    }

    /// Stops echoing (the socket closes).
    pub fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// What `turnutils_uclient` reported.
#[derive(Clone, Debug, PartialEq)]
pub struct UclientReport {
    /// Messages sent by all its clients.
    pub sent: u64,
    /// Messages received back (echoed by the peer through the relay).
    pub received: u64,
    /// Lost packets, as it counts them.
    pub lost: u64,
    /// Its whole output.
    pub output: String,
}

/// Parses the summary lines of `turnutils_uclient` (its exit status does not reflect loss).
pub fn parse_uclient(output: &str) -> Result<UclientReport> {
    let number_after = |key: &str| -> Option<u64> {
        let at = output.rfind(key)? + key.len();
        output[at..]
            .trim_start_matches([' ', '=', ':'])
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let (Some(sent), Some(received), Some(lost)) = (
        number_after("tot_send_msgs"),
        number_after("tot_recv_msgs"),
        number_after("Total lost packets"),
    ) else {
        bail!("turnutils_uclient printed no summary:\n{output}");
    };
    Ok(UclientReport {
        sent,
        received,
        lost,
        output: output.to_string(),
    })
}

/// `turnutils_uclient`'s arguments: the lab's REST secret, the echo peer, `args` (its flags:
/// `-D`, `-s`, `-t`, `-x`, `-m N`, …), the relay.
fn uclient_args<'a>(args: &[&'a str], v6_server: bool, port: &'a str) -> Vec<&'a str> {
    let peer = if args.contains(&"-x") {
        addr::PEER_V6
    } else {
        addr::PEER_V4
    };
    let server = if v6_server {
        addr::RELAY_V6
    } else {
        addr::RELAY_V4
    };
    let mut argv = vec!["-W", TURN_SECRET, "-e", peer, "-r", port];
    argv.extend_from_slice(args);
    argv.push(server);
    argv
}

/// Runs `turnutils_uclient` on `host` against the relay with the lab's REST secret and `args`
/// (its flags: `-D`, `-s`, `-t`, `-x`, `-m N`, …), the echo peer as its peer.
pub fn uclient(lab: &NatLab, host: Host, args: &[&str], v6_server: bool) -> Result<UclientReport> {
    run_uclient(lab, host, args, v6_server, Duration::from_secs(20))
}

/// [`uclient`] to the relay's IPv4 address, given up to `limit` (many clients take longer).
pub fn uclient_for(
    lab: &NatLab,
    host: Host,
    args: &[&str],
    limit: Duration,
) -> Result<UclientReport> {
    run_uclient(lab, host, args, false, limit)
}

fn run_uclient(
    lab: &NatLab,
    host: Host,
    args: &[&str],
    v6_server: bool,
    limit: Duration,
) -> Result<UclientReport> {
    require_tool("turnutils_uclient")?;
    let port = PEER_PORT.to_string();
    let argv = uclient_args(args, v6_server, &port);
    let out = lab
        .exec_output(host, "turnutils_uclient", &argv, limit)
        .context("running turnutils_uclient")?;
    parse_uclient(&out)
}

/// Starts `turnutils_uclient` on `host` in the background as process `name` (see [`uclient`]);
/// [`finish_uclient`] waits for its report.
pub fn spawn_uclient(lab: &mut NatLab, host: Host, name: &str, args: &[&str]) -> Result<()> {
    require_tool("turnutils_uclient")?;
    let port = PEER_PORT.to_string();
    let argv = uclient_args(args, false, &port);
    lab.spawn(host, name, Path::new("/usr/bin/turnutils_uclient"), &argv)
}

/// Waits (at most `limit`) for the background client `name` to end and reads its report.
pub fn finish_uclient(lab: &mut NatLab, name: &str, limit: Duration) -> Result<UclientReport> {
    parse_uclient(&finished_log(lab, name, limit)?)
}

/// Waits (at most `limit`) for the background process `name` to end; its output.
fn finished_log(lab: &mut NatLab, name: &str, limit: Duration) -> Result<String> {
    if !NatLab::wait_until(limit, || !lab.running(name)) {
        bail!("{name} still running after {limit:?}:\n{}", lab.log(name));
    }
    Ok(lab.log(name))
}

/// What the aioice script reported.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct AioiceReport {
    /// The relayed address the server gave it.
    pub relayed: Option<(String, u16)>,
    /// Datagrams sent to the peer.
    pub sent: u64,
    /// Echoes received back.
    pub received: u64,
    /// Whether every echo came back byte for byte.
    pub exact: bool,
}

/// The lab's Python (`cargo xtask setup` creates the venv).
pub fn lab_python() -> Result<std::path::PathBuf> {
    let python = crate::workspace_root().join("target/lab-venv/bin/python");
    if !python.exists() {
        bail!("{} is missing: run `cargo xtask setup`", python.display());
    }
    Ok(python)
}

/// One aioice run: what it sends and how.
#[derive(Clone, Copy, Debug)]
pub struct AioiceRun<'a> {
    /// `udp`, `tcp` or `tls` (to the TURNS port, trusting the lab's certificate).
    pub transport: &'a str,
    /// Datagrams sent to the echo peer.
    pub count: u32,
    /// Each message padded to this many bytes (0: only its text).
    pub size: usize,
    /// Milliseconds between messages; 0 sends them all at once once the channel is bound.
    pub gap_ms: u32,
    /// Username and password (the lab's static user, or a REST credential).
    pub credentials: (&'a str, &'a str),
}

impl AioiceRun<'_> {
    /// `count` short messages over `transport`, 20 ms apart.
    pub fn paced(transport: &str, count: u32) -> AioiceRun<'_> {
        AioiceRun {
            transport,
            count,
            size: 0,
            gap_ms: 20,
            credentials: crate::scenario::TURN_USER,
        }
    }

    /// The script's arguments against the lab's relay.
    fn argv(&self, lab: &NatLab) -> Result<Vec<String>> {
        let script = crate::workspace_root().join("relay-lab/scripts/aioice_turn.py");
        let port = if self.transport == "tls" {
            crate::scenario::TURNS_PORT
        } else {
            crate::scenario::TURN_PORT
        };
        Ok([
            script.to_str().context("path")?,
            addr::RELAY_V4,
            &port.to_string(),
            self.credentials.0,
            self.credentials.1,
            self.transport,
            addr::PEER_V4,
            &PEER_PORT.to_string(),
            &self.count.to_string(),
            &self.size.to_string(),
            &self.gap_ms.to_string(),
            lab.dir.join("turn.crt").to_str().context("path")?,
        ]
        .map(String::from)
        .to_vec())
    }
}

fn parse_aioice(out: &str) -> Result<AioiceReport> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("aioice printed no result:\n{out}"))?;
    serde_json::from_str(line).with_context(|| format!("aioice's result: {line}\n{out}"))
}

/// Relays `run`'s datagrams from `host` to the echo peer through the relay with aioice.
pub fn aioice(lab: &NatLab, host: Host, run: AioiceRun) -> Result<AioiceReport> {
    let python = lab_python()?;
    let argv = run.argv(lab)?;
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = lab.exec_output(
        host,
        python.to_str().context("path")?,
        &argv,
        Duration::from_secs(30),
    )?;
    parse_aioice(&out)
}

/// Starts aioice on `host` in the background as process `name` (see [`aioice`]);
/// [`finish_aioice`] waits for its report.
pub fn spawn_aioice(lab: &mut NatLab, host: Host, name: &str, run: AioiceRun) -> Result<()> {
    let python = lab_python()?;
    let argv = run.argv(lab)?;
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    lab.spawn(host, name, &python, &argv)
}

/// Waits (at most `limit`) for the background aioice `name` to end and reads its report.
pub fn finish_aioice(lab: &mut NatLab, name: &str, limit: Duration) -> Result<AioiceReport> {
    parse_aioice(&finished_log(lab, name, limit)?)
}

/// The candidate pair a page's getStats() selected.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct CandidatePair {
    /// Local candidate type (`relay` through TURN).
    pub local: String,
    /// Remote candidate type.
    pub remote: String,
    /// Local candidate's address.
    pub local_address: String,
    /// Remote candidate's address.
    pub remote_address: String,
    /// How the local relay candidate reaches its TURN server (`udp`, `tcp`, `tls`).
    pub relay_protocol: Option<String>,
}

/// What the two Chromium pages reported.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct WebRtcReport {
    /// Whether the DataChannel opened on both pages.
    pub open: bool,
    /// Messages page B received.
    #[serde(default)]
    pub b_got: Vec<String>,
    /// Messages page A received.
    #[serde(default)]
    pub a_got: Vec<String>,
    /// Page A's selected pair.
    pub pair_a: Option<CandidatePair>,
    /// Page B's selected pair.
    pub pair_b: Option<CandidatePair>,
}

/// Opens a DataChannel between two headless Chromium pages on `host`, relay candidates only,
/// through `url` (`turn:…` or `turns:…`) with a REST credential, and exchanges `messages` each
/// way.
pub fn webrtc_pair(lab: &NatLab, host: Host, url: &str, messages: u32) -> Result<WebRtcReport> {
    let (python, args) = webrtc_args(url, messages, 0)?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.exec_output(
        host,
        python.to_str().context("path")?,
        &args,
        Duration::from_secs(90),
    )?;
    webrtc_report(&out)
}

/// [`webrtc_pair`] in the background as process `name`, one message every `pace_ms` each way:
/// a call that lasts. It prints `OPEN` once the DataChannel is open; [`finish_webrtc_pair`]
/// waits for its report.
pub fn spawn_webrtc_pair(
    lab: &mut NatLab,
    host: Host,
    name: &str,
    url: &str,
    messages: u32,
    pace_ms: u32,
) -> Result<()> {
    let (python, args) = webrtc_args(url, messages, pace_ms)?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.spawn(host, name, &python, &args)
}

/// Waits (at most `limit`) for the background pair `name` to end and reads its report.
pub fn finish_webrtc_pair(lab: &mut NatLab, name: &str, limit: Duration) -> Result<WebRtcReport> {
    if !NatLab::wait_until(limit, || !lab.running(name)) {
        bail!("{name} still running after {limit:?}:\n{}", lab.log(name));
    }
    webrtc_report(&lab.log(name))
}

/// The lab's Python and the script's arguments, with a fresh REST credential.
fn webrtc_args(
    url: &str,
    messages: u32,
    pace_ms: u32,
) -> Result<(std::path::PathBuf, Vec<String>)> {
    require_tool("chromium")?;
    let python = lab_python()?;
    let script = crate::workspace_root().join("relay-lab/scripts/webrtc_pair.py");
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let username = relay_userspace::fronts::turn::auth::rest_username("chromium", expiry);
    let password =
        relay_userspace::fronts::turn::auth::rest_password(TURN_SECRET.as_bytes(), &username);
    let args = vec![
        script.to_str().context("path")?.to_string(),
        url.to_string(),
        username,
        password,
        messages.to_string(),
        pace_ms.to_string(),
    ];
    Ok((python, args))
}

fn webrtc_report(out: &str) -> Result<WebRtcReport> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("the WebRTC pair printed no result:\n{out}"))?;
    serde_json::from_str(line).with_context(|| format!("its result: {line}\n{out}"))
}

/// The realm clients must see (for assertions on challenges).
pub fn realm() -> &'static str {
    TURN_REALM
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uclient_summary_is_read() {
        let output = "0: Total connect time is 0\n\
                      1: start_mclient: tot_send_msgs=50, tot_recv_msgs=48\n\
                      1: start_mclient: tot_send_bytes ~ 5000, tot_recv_bytes ~ 4800\n\
                      1: Total transmit time is 1\n\
                      1: Total lost packets 2 (4.000000%), total send dropped 0 (0.000000%)\n";
        let r = parse_uclient(output).unwrap();
        assert_eq!((r.sent, r.received, r.lost), (50, 48, 2));
        assert!(parse_uclient("nothing").is_err());
    }
}
