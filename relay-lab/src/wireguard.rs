//! Real WireGuard on both lab clients — wireguard-go, or boringtun (Cloudflare's, a second
//! implementation with its own timers) for a peer where it matters — each peer's endpoint
//! pointing at its own `relay client` sidecar or at the relay's WireGuard front: the tunnel
//! crosses the NATs through the relay.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};

use relay_userspace::api::types::PairDetails;

use crate::{
    nat_lab::{Host, NatLab},
    scenario::{APP_PORT, SIDECAR_PORT, Scenario},
};

/// A userspace WireGuard implementation, both driven by `wg` through the same control socket
/// (/var/run/wireguard/IFACE.sock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implementation {
    /// wireguard-go (Debian's `wireguard-go`).
    WireGuardGo,
    /// boringtun (`boringtun-cli` from crates.io, installed by `cargo xtask setup`).
    Boringtun,
}

impl Implementation {
    /// Its program (in `PATH`).
    fn program(self) -> &'static str {
        match self {
            Implementation::WireGuardGo => "wireguard-go",
            Implementation::Boringtun => "boringtun-cli",
        }
    }

    /// The arguments that run a device named `iface` in the foreground.
    fn args(self, iface: &str) -> Vec<&str> {
        match self {
            Implementation::WireGuardGo => vec!["-f", iface],
            // It runs as root in the lab; dropping to nobody would lose the control socket.
            Implementation::Boringtun => vec!["--foreground", "--disable-drop-privileges", iface],
        }
    }
}

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

/// Starts wireguard-go on both clients and configures them as each other's peer, the lab's way
/// (`wg set`, listen port [`APP_PORT`], endpoint the client's own sidecar).
pub fn start(scenario: &mut Scenario) -> Result<[String; 2]> {
    start_with(scenario, |keys, _| {
        let (mine, peer, peer_addr) = keys;
        Ok(vec![
            "set".into(),
            "IFACE".into(),
            "private-key".into(),
            mine.to_str().context("path")?.to_string(),
            "listen-port".into(),
            APP_PORT.to_string(),
            "peer".into(),
            peer.to_string(),
            "endpoint".into(),
            format!("127.0.0.1:{SIDECAR_PORT}"),
            "allowed-ips".into(),
            format!("{peer_addr}/32"),
        ])
    })
}

/// Starts wireguard-go on both clients as stock WireGuard peers with no sidecar: client A's
/// endpoint for B is `endpoints[0]`, B's for A `endpoints[1]` (a relay's two ports for the
/// pair), with WireGuard's own PersistentKeepalive of `keepalive` seconds. Returns the
/// interface names and the two public keys (A's, B's), as `wg` prints them.
pub fn start_stock(
    scenario: &mut Scenario,
    endpoints: [std::net::SocketAddr; 2],
    keepalive: u32,
) -> Result<([String; 2], [String; 2])> {
    let names = start_with(scenario, |(mine, peer, peer_addr), _| {
        // A's peer is B (TUNNEL_B): A sends to the first endpoint.
        let endpoint = endpoints[usize::from(peer_addr == TUNNEL_A)];
        Ok(vec![
            "set".into(),
            "IFACE".into(),
            "private-key".into(),
            mine.to_str().context("path")?.to_string(),
            "peer".into(),
            peer.to_string(),
            "endpoint".into(),
            endpoint.to_string(),
            "allowed-ips".into(),
            format!("{peer_addr}/32"),
            "persistent-keepalive".into(),
            keepalive.to_string(),
        ])
    })?;
    let mut keys = [String::new(), String::new()];
    for (i, host) in [Host::ClientA, Host::ClientB].into_iter().enumerate() {
        keys[i] = scenario
            .lab
            .exec(host, "wg", &["show", &names[i], "public-key"])?
            .trim()
            .to_string();
    }
    Ok((names, keys))
}

/// Starts wireguard-go on both clients as stock WireGuard peers through the relay's WireGuard
/// front, as a user would: `relay client create --wireguard` with the two public keys, then
/// each peer configured (`wg setconf`) from its own `[Interface]` (private key, and
/// `ListenPort` [`APP_PORT`] so the same tunnel can also run direct or through sidecars) and the
/// `[Peer]` section the relay printed for it, plus the peer's tunnel address as `AllowedIPs` —
/// nothing else. Returns the interface names and the pair as the API described it.
pub fn start_through_front(scenario: &mut Scenario) -> Result<([String; 2], PairDetails)> {
    start_through_front_with(scenario, [Implementation::WireGuardGo; 2])
}

/// [`start_through_front`] with client A's and client B's WireGuard `implementations`.
pub fn start_through_front_with(
    scenario: &mut Scenario,
    implementations: [Implementation; 2],
) -> Result<([String; 2], PairDetails)> {
    let pair: std::cell::RefCell<Option<PairDetails>> = Default::default();
    let names = start_keyed(
        scenario,
        implementations,
        |i, (mine, _, peer_addr), publics, dir, scenario| {
            if pair.borrow().is_none() {
                let out = scenario.relay_cli(&[
                    "client",
                    "create",
                    "--wireguard",
                    "--peer-a",
                    &publics[0],
                    "--peer-b",
                    &publics[1],
                    "--label-a",
                    "alice-phone",
                    "--label-b",
                    "office-router",
                    "--json",
                ])?;
                *pair.borrow_mut() = Some(serde_json::from_str(&out).context("the pair's JSON")?);
            }
            let snippet = pair.borrow().as_ref().expect("made above").peers[i]
                .snippet
                .clone()
                .context("no snippet in the API's answer")?;
            let private = std::fs::read_to_string(mine)?;
            let file = dir.join(format!("stock-{i}.conf"));
            std::fs::write(
                &file,
                format!(
                    "[Interface]\nPrivateKey = {}\nListenPort = {APP_PORT}\n\n{snippet}AllowedIPs = {peer_addr}/32\n",
                    private.trim()
                ),
            )?;
            Ok(vec![
                "setconf".into(),
                "IFACE".into(),
                file.to_str().context("path")?.to_string(),
            ])
        },
    )?;
    let pair = pair.into_inner().expect("configured");
    Ok((names, pair))
}

/// Starts wireguard-go on both clients, each configured (`wg setconf`) from `template`: a
/// WireGuard configuration file whose `PrivateKey`, `PublicKey` and `AllowedIPs` values are
/// replaced by the client's key, its peer's key and its peer's tunnel address; every other line
/// is used as written (the README's configuration, word for word).
pub fn start_from_config(scenario: &mut Scenario, template: &str) -> Result<[String; 2]> {
    let template = template.to_string();
    start_with(scenario, move |(mine, peer, peer_addr), dir| {
        let private = std::fs::read_to_string(mine)?;
        let file = dir.join(format!("{}.conf", peer_addr.replace('.', "-")));
        std::fs::write(
            &file,
            fill_config(&template, private.trim(), peer, &format!("{peer_addr}/32")),
        )?;
        Ok(vec![
            "setconf".into(),
            "IFACE".into(),
            file.to_str().context("path")?.to_string(),
        ])
    })
}

/// `template` with the values of `PrivateKey`, `PublicKey` and `AllowedIPs` replaced.
pub fn fill_config(template: &str, private: &str, peer: &str, allowed: &str) -> String {
    template
        .lines()
        .map(|line| {
            let key = line.split('=').next().unwrap_or("").trim();
            match key {
                "PrivateKey" => format!("PrivateKey = {private}"),
                "PublicKey" => format!("PublicKey = {peer}"),
                "AllowedIPs" => format!("AllowedIPs = {allowed}"),
                _ => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A client's private-key file, its peer's public key and its peer's tunnel address.
type PeerKeys<'a> = (&'a Path, &'a str, &'a str);

/// Starts wireguard-go on both clients; `wg_args` gives the `wg` command that configures one
/// (`IFACE` stands for its interface), then the tunnel address is added and the link set up.
fn start_with(
    scenario: &mut Scenario,
    wg_args: impl Fn(PeerKeys, &Path) -> Result<Vec<String>>,
) -> Result<[String; 2]> {
    start_keyed(
        scenario,
        [Implementation::WireGuardGo; 2],
        |_, keys, _, dir, _| wg_args(keys, dir),
    )
}

/// [`start_with`] with client A's and B's `implementations`, the configuring callback also
/// given the client's index, both public keys and the scenario (to allocate with them).
fn start_keyed(
    scenario: &mut Scenario,
    implementations: [Implementation; 2],
    wg_args: impl Fn(usize, PeerKeys, &[String; 2], &Path, &Scenario) -> Result<Vec<String>>,
) -> Result<[String; 2]> {
    for implementation in implementations {
        crate::nat_lab::require_tool(implementation.program())?;
    }
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
        let implementation = implementations[i];
        scenario.lab.spawn(
            host,
            &format!("wireguard-{i}"),
            Path::new(implementation.program()),
            &implementation.args(&names[i]),
        )?;
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
                "{:?} did not create {iface}:\n{}",
                implementations[i],
                scenario.lab.log(&format!("wireguard-{i}"))
            );
        }
        let (addr, peer_addr) = if i == 0 {
            (TUNNEL_A, TUNNEL_B)
        } else {
            (TUNNEL_B, TUNNEL_A)
        };
        let publics = [keys[0].1.clone(), keys[1].1.clone()];
        let args = wg_args(
            i,
            (&keys[i].0, &keys[1 - i].1, peer_addr),
            &publics,
            &scenario.lab.dir,
            scenario,
        )?;
        let args: Vec<&str> = args
            .iter()
            .map(|a| if a == "IFACE" { iface.as_str() } else { a })
            .collect();
        scenario.lab.exec(host, "wg", &args)?;
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

/// The README's recipe for WireGuard through sidecars: the `relay client join` command and the
/// WireGuard configuration, read from the README itself so the test runs what users read.
#[derive(Clone, Debug)]
pub struct ReadmeRecipe {
    /// The join command's arguments after `relay` (the ticket as
    /// [`crate::scenario::TICKET_PLACEHOLDER`]).
    pub join_command: Vec<String>,
    /// The WireGuard configuration block.
    pub wg_config: String,
}

impl ReadmeRecipe {
    /// Reads the recipe from the README's text: the first `relay client join` line of a code
    /// block (its trailing `# comment` removed) and the first ```ini block.
    pub fn parse(readme: &str) -> Result<ReadmeRecipe> {
        let join = readme
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("relay client join "))
            .context("the README has no `relay client join` command")?;
        let join = join.split(" #").next().unwrap_or(join);
        let join_command: Vec<String> = join.split_whitespace().skip(1).map(String::from).collect();
        let start = readme
            .find("```ini\n")
            .context("the README has no ```ini WireGuard configuration")?
            + "```ini\n".len();
        let end = readme[start..]
            .find("```")
            .context("unterminated ```ini block")?;
        Ok(ReadmeRecipe {
            join_command,
            wg_config: readme[start..start + end].to_string(),
        })
    }
}

/// Bytes WireGuard on `host` sent to and received from its peer (`wg show … transfer`).
pub fn transfer(lab: &NatLab, host: Host, iface: &str) -> Result<(u64, u64)> {
    let out = lab.exec(host, "wg", &["show", iface, "transfer"])?;
    let mut fields = out.split_whitespace().skip(1);
    let rx = fields.next().context("rx")?.parse()?;
    let tx = fields.next().context("tx")?.parse()?;
    Ok((tx, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_recipe_is_found_and_filled() {
        let readme = "x\n```sh\nrelay client join --ticket relay1.… --listen 127.0.0.1:51821      # on each peer\n```\n\
                      ```ini\n[Interface]\nPrivateKey = …\nListenPort = 51820  # here\n\n[Peer]\nPublicKey = …\nAllowedIPs = 10.99.0.2/32\n```\n";
        let recipe = ReadmeRecipe::parse(readme).unwrap();
        assert_eq!(
            recipe.join_command,
            [
                "client",
                "join",
                "--ticket",
                "relay1.…",
                "--listen",
                "127.0.0.1:51821"
            ]
        );
        let filled = fill_config(&recipe.wg_config, "PRIV", "PUB", "10.99.0.1/32");
        assert_eq!(
            filled,
            "[Interface]\nPrivateKey = PRIV\nListenPort = 51820  # here\n\n[Peer]\nPublicKey = PUB\nAllowedIPs = 10.99.0.1/32\n"
        );
    }

    #[test]
    fn the_projects_readme_has_a_recipe_without_extra_flags() {
        let readme = include_str!("../../README.md");
        let recipe = ReadmeRecipe::parse(readme).unwrap();
        assert_eq!(&recipe.join_command[..3], ["client", "join", "--ticket"]);
        assert!(!recipe.wg_config.contains("PersistentKeepalive"));
    }
}
