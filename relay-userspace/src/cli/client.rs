//! `relay client …`: allocate sessions through the API and join them with the sidecar.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use tokio::sync::watch;

use crate::{
    api::types::{CreatePair, CreateSession, Labels, PairDetails, PairKeys, SessionDetails},
    client::{
        api::ApiClient,
        sidecar::{self, Family, SidecarOptions, SidecarStats},
    },
    fronts::geneve::ticket::Ticket,
};

/// Where the API is and who is asking.
#[derive(Args, Clone, Debug)]
pub struct ApiArgs {
    /// Base URL of the relay's API. `relay client create` takes several, comma-separated or
    /// repeated (a fleet): it allocates on the first that is ready and has room (`/readyz`),
    /// falling back in order.
    #[arg(
        long,
        env = "RELAY_API",
        default_value = "http://127.0.0.1:8080",
        value_delimiter = ','
    )]
    pub api: Vec<String>,
    /// API token (better given in RELAY_TOKEN than on the command line).
    #[arg(long, env = "RELAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the certificate (or its CA) an https:// API presents, when no public CA
    /// vouches for it (e.g. a self-signed certificate).
    #[arg(long, env = "RELAY_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

impl ApiArgs {
    fn token(&self) -> Result<&str> {
        self.token
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("give the API token: --token or RELAY_TOKEN"))
    }

    /// The one relay this command acts on (a session, a pair, a drain lives on one).
    pub(crate) fn client(&self) -> Result<ApiClient> {
        match self.api.as_slice() {
            [one] => ApiClient::new(one, self.token()?, self.ca_cert.as_deref()),
            several => anyhow::bail!(
                "--api names {} relays; this command acts on one: give the relay it concerns",
                several.len()
            ),
        }
    }

    /// The relays in the order to try for a new allocation: those ready with room first (in
    /// the given order), then the rest (a relay whose `/readyz` cannot be read may still
    /// answer). Says on stderr why each one is passed over.
    pub(crate) async fn candidates(&self) -> Result<Vec<(String, ApiClient)>> {
        let mut ready = Vec::new();
        let mut others = Vec::new();
        for base in &self.api {
            let client = ApiClient::new(base, self.token()?, self.ca_cert.as_deref())?;
            if self.api.len() == 1 {
                return Ok(vec![(base.clone(), client)]);
            }
            match client.readiness().await {
                Ok(r) if r.ready => ready.push((base.clone(), client)),
                Ok(r) => eprintln!("{base}: not ready ({})", r.reasons.join(", ")),
                Err(e) => {
                    eprintln!("{base}: readiness unknown ({e:#})");
                    others.push((base.clone(), client));
                }
            }
        }
        ready.extend(others);
        if ready.is_empty() {
            anyhow::bail!("no relay of {} is ready", self.api.join(", "));
        }
        Ok(ready)
    }
}

/// `relay client` subcommands.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Allocate a session and print its two tickets (one per leg); with --wireguard, a pair of
    /// stock WireGuard peers and the [Peer] section each of them pastes (no sidecar).
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// A stock WireGuard pair (give --peer-a and --peer-b) instead of a session.
        #[arg(long, requires_all = ["peer_a", "peer_b"])]
        wireguard: bool,
        /// Peer a's WireGuard public key (`wg pubkey` prints it).
        #[arg(long, requires = "wireguard")]
        peer_a: Option<String>,
        /// Peer b's WireGuard public key.
        #[arg(long, requires = "wireguard")]
        peer_b: Option<String>,
        /// Both WireGuard peers may be behind one IP address (see docs/security.md).
        #[arg(long, requires = "wireguard")]
        shared_address: bool,
        /// Label of leg a (e.g. alice-laptop).
        #[arg(long)]
        label_a: Option<String>,
        /// Label of leg b (e.g. office-nas).
        #[arg(long)]
        label_b: Option<String>,
        /// Retries with the same key return the same session.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Print the API's JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Show one of your sessions (with its tickets), or with --wireguard a pair (with its
    /// snippets).
    Get {
        #[command(flatten)]
        api: ApiArgs,
        /// The id is a WireGuard pair's.
        #[arg(long)]
        wireguard: bool,
        /// Session id (a pair id with --wireguard).
        vni: u32,
        /// Print the API's JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Delete one of your sessions (or with --wireguard, a pair).
    Delete {
        #[command(flatten)]
        api: ApiArgs,
        /// The id is a WireGuard pair's.
        #[arg(long)]
        wireguard: bool,
        /// Session id (a pair id with --wireguard).
        vni: u32,
    },
    /// Join a leg and carry a local application's UDP through the relay.
    ///
    /// The application sends to --listen; the peer's datagrams go to --app. With WireGuard:
    /// set the peer's `Endpoint = 127.0.0.1:51821` (--listen) and keep `ListenPort = 51820`,
    /// where the sidecar delivers by default, so a peer that only answers (no
    /// PersistentKeepalive, a server) receives the handshakes it answers. For any other
    /// application, or another ListenPort, give --app.
    Join(JoinArgs),
}

/// `relay client join`.
#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Ticket of the leg to join (from `relay client create`, or handed over by the peer).
    #[arg(long, env = "RELAY_TICKET", hide_env_values = true, conflicts_with_all = ["vni", "leg"])]
    pub ticket: Option<String>,
    /// Instead of a ticket: the session id, fetched from the API with --token.
    #[arg(long, requires_all = ["leg", "token"])]
    pub vni: Option<u32>,
    /// Instead of a ticket: which leg (a or b).
    #[arg(long, value_parser = ["a", "b"])]
    pub leg: Option<String>,
    /// API for --vni.
    #[arg(long, env = "RELAY_API", default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// Token for --vni.
    #[arg(long, env = "RELAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Certificate (or CA) of an https:// API, for --vni.
    #[arg(long, env = "RELAY_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Local address the application sends to (e.g. WireGuard's peer Endpoint).
    #[arg(long, default_value = "127.0.0.1:51821")]
    pub listen: SocketAddr,
    /// Where the application listens: the peer's datagrams are delivered there. Default: where
    /// the application last sent from, and until it has sent, port 51820 (WireGuard's
    /// ListenPort) on the --listen host.
    #[arg(long)]
    pub app: Option<SocketAddr>,
    /// Which relay endpoint to use.
    #[arg(long, value_enum, default_value = "auto")]
    pub family: Family,
    /// Local address to reach the relay from (default: chosen by routing).
    #[arg(long)]
    pub bind: Option<std::net::IpAddr>,
    /// Bind refresh interval.
    #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
    pub keepalive: Duration,
    /// Check the path with one bind when the peer's datagrams stop this long while the
    /// application keeps sending (a NAT that moved the mapping).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub silence: Duration,
}

/// Prints `value` as JSON when asked to, else as `print` lays it out for people.
fn show<T: serde::Serialize>(value: &T, json: bool, print: impl Fn(&T)) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print(value);
    }
    Ok(())
}

fn print_session(s: &SessionDetails) {
    println!(
        "session {} ({}) token {} created {}",
        s.vni, s.state, s.token, s.created
    );
    println!(
        "relay   {}",
        s.relay
            .all()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for leg in &s.legs {
        println!(
            "leg {}   {}{}",
            leg.leg,
            leg.label.as_deref().unwrap_or("-"),
            leg.bound.map_or(String::new(), |b| format!(" (bound {b})"))
        );
        if let Some(t) = &leg.ticket {
            println!("  ticket {t}");
        }
    }
}

fn print_pair(p: &PairDetails) {
    println!(
        "wireguard pair {} ({}) token {} created {}",
        p.id, p.state, p.token, p.created
    );
    for peer in &p.peers {
        let relay: Vec<String> = peer.relay.all().iter().map(ToString::to_string).collect();
        println!(
            "peer {}  {}  key {}  relay {}{}",
            peer.peer,
            peer.label.as_deref().unwrap_or("-"),
            peer.public_key,
            relay.join(", "),
            peer.bound.map_or(String::new(), |b| format!(" (at {b})"))
        );
    }
    for peer in &p.peers {
        if let Some(snippet) = &peer.snippet {
            println!(
                "\n# On peer {} ({}): add this to its WireGuard configuration (nothing else changes)\n{snippet}",
                peer.peer,
                peer.label.as_deref().unwrap_or(&peer.public_key),
            );
        }
    }
}

/// Runs a client subcommand.
pub async fn run(command: ClientCommand) -> Result<()> {
    match command {
        ClientCommand::Create {
            api,
            wireguard,
            peer_a,
            peer_b,
            shared_address,
            label_a,
            label_b,
            idempotency_key,
            json,
        } => {
            let labels = (label_a.is_some() || label_b.is_some()).then_some(Labels {
                a: label_a,
                b: label_b,
            });
            let mut failures = Vec::new();
            for (base, client) in api.candidates().await? {
                let made = if wireguard {
                    client
                        .create_pair(&CreatePair {
                            public_keys: Some(PairKeys {
                                a: peer_a.clone().unwrap_or_default(),
                                b: peer_b.clone().unwrap_or_default(),
                            }),
                            labels: labels.clone(),
                            shared_address,
                            idempotency_key: idempotency_key.clone(),
                        })
                        .await
                        .map(|p| show(&p, json, print_pair))
                } else {
                    client
                        .create(&CreateSession {
                            labels: labels.clone(),
                            idempotency_key: idempotency_key.clone(),
                        })
                        .await
                        .map(|s| show(&s, json, print_session))
                };
                match made {
                    Ok(shown) => return shown,
                    // Draining or full since its /readyz: the next relay.
                    Err(e) if api.api.len() > 1 => {
                        eprintln!("{base}: {e:#}");
                        failures.push(format!("{base}: {e:#}"));
                    }
                    Err(e) => return Err(e),
                }
            }
            anyhow::bail!("no relay allocated:\n{}", failures.join("\n"));
        }
        ClientCommand::Get {
            api,
            wireguard: true,
            vni,
            json,
        } => {
            show(&api.client()?.get_pair(vni).await?, json, print_pair)?;
        }
        ClientCommand::Get { api, vni, json, .. } => {
            show(&api.client()?.get(vni).await?, json, print_session)?;
        }
        ClientCommand::Delete {
            api,
            wireguard: true,
            vni,
        } => {
            api.client()?.delete_pair(vni).await?;
            println!("wireguard pair {vni} deleted");
        }
        ClientCommand::Delete { api, vni, .. } => {
            api.client()?.delete(vni).await?;
            println!("session {vni} deleted");
        }
        ClientCommand::Join(args) => join(args).await?,
    }
    Ok(())
}

async fn join(args: JoinArgs) -> Result<()> {
    let ticket = match (&args.ticket, args.vni) {
        (Some(t), _) => Ticket::decode(t)?,
        (None, Some(vni)) => {
            let token = args.token.as_deref().context("--vni needs --token")?;
            let session = ApiClient::new(&args.api, token, args.ca_cert.as_deref())?
                .get(vni)
                .await?;
            let leg = args.leg.as_deref().unwrap_or("a");
            let details = session
                .legs
                .iter()
                .find(|l| l.leg == leg)
                .and_then(|l| l.ticket.clone())
                .with_context(|| format!("the API returned no ticket for leg {leg}"))?;
            Ticket::decode(&details)?
        }
        (None, None) => bail!("give --ticket, or --vni with --leg and --token"),
    };
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (status, _) = watch::channel(None);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = shutdown_tx.send(true);
    });
    let stats = Arc::new(SidecarStats::default());
    let result = sidecar::run(
        SidecarOptions {
            ticket,
            listen: args.listen,
            app: args.app,
            family: args.family,
            bind: args.bind,
            keepalive: args.keepalive,
            silence: args.silence,
        },
        stats.clone(),
        status,
        shutdown,
    )
    .await;
    tracing::info!(
        to_relay = stats.to_relay.load(Relaxed),
        to_app = stats.to_app.load(Relaxed),
        binds = stats.binds.load(Relaxed),
        undeliverable = stats.undeliverable.load(Relaxed),
        unsent = stats.unsent.load(Relaxed),
        "sidecar stopped"
    );
    result
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        sync::{Arc, Mutex},
    };

    use super::ApiArgs;
    use crate::{
        api::{self, ApiState, auth::TokenStore, fleet::ReadinessSource},
        config::TokenConfig,
        control::plane::Plane,
        fleet::{Alternates, Fleet},
    };

    const TOKEN: &str = "fleet-token-0123456789";

    /// An API on a loopback port: ready, or draining.
    async fn relay(draining: bool) -> String {
        let tokens = vec![TokenConfig {
            name: "app".into(),
            token: Some(TOKEN.into()),
            token_sha256: None,
            max_sessions: 10,
            admin: false,
        }];
        let plane = Plane::in_memory(10, [("app".to_string(), 10)].into());
        let fleet = Fleet::unpinned(Alternates::default());
        fleet.set_draining(draining).unwrap();
        let state = ApiState::new(Arc::new(Mutex::new(plane)), TokenStore::new(&tokens), 0)
            .with_fleet(fleet);
        let _ = state.readiness.set(ReadinessSource {
            xdp_off: true,
            interfaces: vec![],
            pin_dir: None,
            max_sessions: 10,
            fronts: vec![],
        });
        let app = api::router(&state, [], 4096);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        format!("http://{addr}")
    }

    fn args(api: Vec<String>) -> ApiArgs {
        ApiArgs {
            api,
            token: Some(TOKEN.into()),
            ca_cert: None,
        }
    }

    #[tokio::test]
    async fn a_fleet_is_tried_ready_relays_first_in_order_and_unreachable_ones_last() {
        let draining = relay(true).await;
        let ready = relay(false).await;
        let also_ready = relay(false).await;
        let gone = "http://127.0.0.1:9".to_string();
        let order: Vec<String> = args(vec![
            draining.clone(),
            gone.clone(),
            ready.clone(),
            also_ready.clone(),
        ])
        .candidates()
        .await
        .unwrap()
        .into_iter()
        .map(|(base, _)| base)
        .collect();
        assert_eq!(order, [ready, also_ready, gone]);
        // Only draining relays: nothing to try.
        let refused = args(vec![draining.clone(), relay(true).await])
            .candidates()
            .await;
        let e = refused.err().expect("no relay to try");
        assert!(e.to_string().contains("no relay"), "{e}");
        // One relay is asked without a readiness check (its own answer says why).
        assert_eq!(
            args(vec![draining.clone()])
                .candidates()
                .await
                .unwrap()
                .len(),
            1
        );
        // Commands on one relay refuse several.
        assert!(args(vec![draining, "http://x".into()]).client().is_err());
    }
}
