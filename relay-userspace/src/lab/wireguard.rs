//! Real WireGuard (wireguard-go) on both lab clients, each peer's endpoint pointing at its own
//! `relay client` sidecar: the tunnel crosses the NATs through the relay.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};

use super::{
    nat_lab::{Host, NatLab},
    scenario::{APP_PORT, SIDECAR_PORT, Scenario},
};

/// Tunnel address of client A.
pub const TUNNEL_A: &str = "10.99.0.1";
/// Tunnel address of client B.
pub const TUNNEL_B: &str = "10.99.0.2";

/// Interface names, unique per lab: wireguard-go's control socket lives in the shared
/// /var/run/wireguard, so two labs must not both use `wga`.
pub fn interface_names(lab: &NatLab) -> [String; 2] {
    let tag = lab
        .ns(Host::ClientA)
        .name()
        .rsplit('-')
        .take(2)
        .collect::<Vec<_>>()
        .join("");
    [format!("wga{tag}"), format!("wgb{tag}")].map(|n| n.chars().take(15).collect())
}

/// Starts wireguard-go on both clients and configures them as each other's peer.
pub fn start(scenario: &mut Scenario) -> Result<[String; 2]> {
    super::nat_lab::require_tool("wireguard-go")?;
    let names = interface_names(&scenario.lab);
    let mut keys = Vec::new();
    for (i, host) in [Host::ClientA, Host::ClientB].into_iter().enumerate() {
        let private = scenario
            .lab
            .exec(host, "wg", &["genkey"])?
            .trim()
            .to_string();
        let key_file = scenario.lab.dir.join(format!("wg-{i}.key"));
        std::fs::write(&key_file, &private)?;
        let public = scenario
            .lab
            .exec(
                host,
                "sh",
                &["-c", &format!("wg pubkey < {}", key_file.display())],
            )?
            .trim()
            .to_string();
        keys.push((key_file, public));
        let go = Path::new("/usr/bin/wireguard-go");
        scenario
            .lab
            .spawn(host, &format!("wireguard-{i}"), go, &["-f", &names[i]])?;
    }
    for (i, host) in [Host::ClientA, Host::ClientB].into_iter().enumerate() {
        let iface = &names[i];
        if !NatLab::wait_until(Duration::from_secs(5), || {
            scenario
                .lab
                .exec(host, "ip", &["link", "show", iface])
                .is_ok()
        }) {
            bail!(
                "wireguard-go did not create {iface}:\n{}",
                scenario.lab.log(&format!("wireguard-{i}"))
            );
        }
        let (mine, peer) = (&keys[i].0, &keys[1 - i].1);
        let (addr, peer_addr) = if i == 0 {
            (TUNNEL_A, TUNNEL_B)
        } else {
            (TUNNEL_B, TUNNEL_A)
        };
        scenario.lab.exec(
            host,
            "wg",
            &[
                "set",
                iface,
                "private-key",
                mine.to_str().context("path")?,
                "listen-port",
                &APP_PORT.to_string(),
                "peer",
                peer,
                "endpoint",
                &format!("127.0.0.1:{SIDECAR_PORT}"),
                "allowed-ips",
                &format!("{peer_addr}/32"),
            ],
        )?;
        scenario.lab.exec(
            host,
            "ip",
            &["addr", "add", &format!("{addr}/24"), "dev", iface],
        )?;
        scenario
            .lab
            .exec(host, "ip", &["link", "set", iface, "up"])?;
    }
    Ok(names)
}

/// Bytes WireGuard on `host` sent to and received from its peer (`wg show … transfer`).
pub fn transfer(lab: &NatLab, host: Host, iface: &str) -> Result<(u64, u64)> {
    let out = lab.exec(host, "wg", &["show", iface, "transfer"])?;
    let mut fields = out.split_whitespace().skip(1);
    let rx = fields.next().context("rx")?.parse()?;
    let tx = fields.next().context("tx")?.parse()?;
    Ok((tx, rx))
}
