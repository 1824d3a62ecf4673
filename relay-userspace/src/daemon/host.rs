//! What the daemon needs from the host: the addresses of its interfaces, and the forwarding
//! sysctls the kernel's XDP route lookup requires.

use std::net::IpAddr;

use anyhow::{Context, Result};
use nix::ifaddrs::getifaddrs;
use tracing::info;

/// The first usable IPv4 and IPv6 address of `interface` (link-local addresses skipped).
pub fn interface_addresses(interface: &str) -> Result<Vec<IpAddr>> {
    let mut v4 = None;
    let mut v6 = None;
    for ifa in getifaddrs().context("listing interface addresses")? {
        if ifa.interface_name != interface {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        if let Some(sin) = addr.as_sockaddr_in() {
            let ip = sin.ip();
            if v4.is_none() && !ip.is_link_local() {
                v4 = Some(IpAddr::V4(ip));
            }
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            let ip = sin6.ip();
            if v6.is_none() && (ip.segments()[0] & 0xffc0) != 0xfe80 {
                v6 = Some(IpAddr::V6(ip));
            }
        }
    }
    Ok(v4.into_iter().chain(v6).collect())
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Reads a sysctl (dotted name).
pub fn read_sysctl(key: &str) -> Result<String> {
    Ok(std::fs::read_to_string(sysctl_path(key))
        .with_context(|| format!("reading {key}"))?
        .trim()
        .to_string())
}

fn write_sysctl(key: &str, value: &str) -> Result<()> {
    std::fs::write(sysctl_path(key), value).with_context(|| format!("setting {key}={value}"))
}

/// Enables IPv4 and IPv6 forwarding on `interface` (the XDP route lookup refuses to work
/// without it). IPv6 forwarding makes the kernel ignore router advertisements unless
/// `accept_ra` is 2, so an interface configured by SLAAC keeps its address and route: 1 → 2.
/// Returns what was changed.
pub fn enable_forwarding(interface: &str) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    let v6_configured = std::path::Path::new(&sysctl_path(&format!(
        "net.ipv6.conf.{interface}.forwarding"
    )))
    .exists();
    let mut keys = vec![(format!("net.ipv4.conf.{interface}.forwarding"), "1")];
    if v6_configured {
        let accept_ra = format!("net.ipv6.conf.{interface}.accept_ra");
        if read_sysctl(&accept_ra)? == "1" {
            keys.push((accept_ra, "2"));
        }
        keys.push((format!("net.ipv6.conf.{interface}.forwarding"), "1"));
    }
    for (key, value) in keys {
        if read_sysctl(&key)? != value {
            write_sysctl(&key, value)?;
            info!(%key, %value, "sysctl set for the XDP fast path");
            changed.push(format!("{key}={value}"));
        }
    }
    Ok(changed)
}
