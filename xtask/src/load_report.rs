//! The load benchmark's section of docs/benchmarks.md, from `relay-lab bench-load --json`.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::Value;

fn f(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The section's markdown.
pub fn section(doc: &Value, machine: &str) -> Result<String> {
    let mut s = String::new();
    let o = doc.get("options").context("benchmark JSON: no `options`")?;
    writeln!(
        s,
        "Machine: {machine}. Both servers start through a soft open-files limit of 1024 (systemd's \
         default for a unit without `LimitNOFILE`) with a hard limit of {} (the shipped unit's \
         `LimitNOFILE=1048576`, or this machine's own hard limit when it is lower: raising it \
         needs CAP_SYS_RESOURCE). The relay runs its shipped defaults (XDP native, IPv4 only), \
         coturn 4.6 its own (`turnserver` with the lab's realm, REST secret and certificate and \
         nothing else).\n",
        f(doc, &["hard_limit"])
    )?;
    writeln!(
        s,
        "**1. A crowd behind one NAT address.** {} TURN clients from client A (behind nat-a), \
         a third each over UDP, TCP and TLS, starting over {} s; each allocates (REST \
         credentials after the 401), creates a permission, binds a channel and relays {} \
         messages of {} B to an echo peer and back, then holds its allocation until all have \
         (descriptors and memory are read then).\n",
        f(o, &["crowd_clients"]),
        f(o, &["crowd_ramp_s"]),
        f(o, &["messages"]),
        f(o, &["message_size"])
    )?;
    writeln!(
        s,
        "| server | clients relayed all | echoed / sent | first byte, median / p99 (ms): all | UDP | TCP | TLS | requests per client | descriptors per allocation | RSS at hold | CPU |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for c in list(doc, "crowd") {
        let lat = |path: &[&str]| {
            let mut median = vec!["first_byte_by_transport"];
            median.extend_from_slice(path);
            let mut p99 = median.clone();
            median.push("median_ms");
            p99.push("p99_ms");
            format!("{:.1} / {:.1}", f(c, &median), f(c, &p99))
        };
        writeln!(
            s,
            "| {} | {} of {} | {} / {} | {:.1} / {:.1} | {} | {} | {} | {:.1} | {:.2} | {:.0} MiB | {:.1} s |",
            c["server"].as_str().unwrap_or("?"),
            f(c, &["succeeded"]),
            f(c, &["clients"]),
            f(c, &["echoed"]),
            f(c, &["sent"]),
            f(c, &["first_byte", "median_ms"]),
            f(c, &["first_byte", "p99_ms"]),
            lat(&["udp"]),
            lat(&["tcp"]),
            lat(&["tls"]),
            f(c, &["requests_per_client"]),
            f(c, &["descriptors_per_allocation"]),
            f(c, &["rss_mib"]),
            f(c, &["cpu_seconds"]),
        )?;
    }
    if let Some(m) = doc.get("maxima").filter(|m| !m.is_null()) {
        writeln!(
            s,
            "\n**2. The configured maxima at once**, in one daemon: sessions and WireGuard pairs \
             through the API (together they fill `sessions.max_sessions`), then TURN \
             allocations (UDP, allocate only, the first request padded so that it is answered \
             from its own credit) from client A. Per item: what each step added.\n"
        )?;
        writeln!(
            s,
            "| state | asked | held | RSS per item | descriptors per item | control-plane CPU per item | time to create all |"
        )?;
        writeln!(s, "|---|---:|---:|---:|---:|---:|---:|")?;
        for (name, key) in [
            ("sessions", "sessions"),
            ("WireGuard pairs", "pairs"),
            ("TURN allocations", "allocations"),
        ] {
            writeln!(
                s,
                "| {name} | {} | {} | {:.0} B | {:.2} | {:.0} µs | {:.1} s |",
                f(m, &[key, "asked"]),
                f(m, &[key, "held"]),
                f(m, &[key, "rss_bytes"]),
                f(m, &[key, "descriptors"]),
                f(m, &[key, "cpu_us"]),
                f(m, &[key, "seconds"]),
            )?;
        }
        writeln!(
            s,
            "\nAll held at once: {:.0} MiB resident, {} descriptors, {:.0} MiB of BPF maps \
             (preallocated for the configured maxima); at rest, the daemon spends {:.1} ms of \
             CPU a second on it all (expiry, counters).",
            f(m, &["rss_mib"]),
            f(m, &["descriptors"]),
            f(m, &["map_mib"]),
            f(m, &["cpu_at_rest_ms_per_sec"])
        )?;
        if let Some(failures) = m.get("allocation_failures").and_then(Value::as_object)
            && !failures.is_empty()
        {
            let text: Vec<String> = failures.iter().map(|(k, v)| format!("{v} × {k}")).collect();
            writeln!(s, "TURN clients that failed: {}.", text.join("; "))?;
        }
    }
    if let Some(c) = doc.get("churn").filter(|c| !c.is_null()) {
        let co = &c["options"];
        writeln!(
            s,
            "\n**3. Churn** for {} s: {} sessions/s and {} pairs/s created and deleted through \
             the API ({} of each alive), {} TURN clients/s each allocating, relaying, \
             refreshing and deleting. Done: {} sessions, {} pairs, {} TURN clients; {} \
             failures. Slope per hour over the samples after the first quarter:\n",
            f(co, &["seconds"]),
            f(co, &["sessions_per_sec"]),
            f(co, &["pairs_per_sec"]),
            f(co, &["alive"]),
            f(co, &["allocations_per_sec"]),
            f(c, &["sessions_created"]),
            f(c, &["pairs_created"]),
            f(c, &["allocations_done"]),
            f(c, &["failures"]),
        )?;
        let slopes = list(c, "slope_per_hour");
        let at = |i: usize| slopes.get(i).and_then(Value::as_f64).unwrap_or(f64::NAN);
        writeln!(
            s,
            "| resident memory | descriptors | session-table entries | TURN allocations | bound UDP ports |"
        )?;
        writeln!(s, "|---:|---:|---:|---:|---:|")?;
        writeln!(
            s,
            "| {:+.0} KiB/h | {:+.1}/h | {:+.1}/h | {:+.1}/h | {:+.1}/h |",
            at(0),
            at(1),
            at(2),
            at(3),
            at(4)
        )?;
    }
    let floods = list(doc, "floods");
    if !floods.is_empty() {
        writeln!(
            s,
            "\n**4. Floods** of connections that prove nothing, from client A's NAT (one \
             address) or from 60 addresses of the attacker host, while legitimate clients (UDP, \
             TCP, TLS) allocate from client B's NAT:\n"
        )?;
        writeln!(
            s,
            "| flood | attempted | descriptors at peak, beyond before | held > 1 s | refused at once | RSS before → peak | per descriptor at peak | legitimate clients relayed all | their first byte, median / p99 |"
        )?;
        writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for fl in floods {
            let attempted = f(fl, &["options", "idle_tcp"]) + f(fl, &["options", "tls_handshakes"]);
            let at_once = f(fl, &["descriptors_peak"]) - f(fl, &["descriptors_before"]);
            let growth = (f(fl, &["rss_peak_mib"]) - f(fl, &["rss_before_mib"])) * 1024.0;
            writeln!(
                s,
                "| {} | {attempted} | {at_once} | {} | {} | {:.0} → {:.0} MiB | {:.1} KiB | {} of {} | {:.1} / {:.1} ms |",
                fl["options"]["name"].as_str().unwrap_or("?"),
                f(fl, &["held"]),
                f(fl, &["refused"]),
                f(fl, &["rss_before_mib"]),
                f(fl, &["rss_peak_mib"]),
                growth / at_once.max(1.0),
                f(fl, &["legit_succeeded"]),
                f(fl, &["legit_clients"]),
                f(fl, &["legit_first_byte", "median_ms"]),
                f(fl, &["legit_first_byte", "p99_ms"]),
            )?;
        }
        writeln!(
            s,
            "\nEach flood runs against a freshly restarted daemon (it adopts the pinned state), \
             so its memory is its own. The descriptors at peak include the legitimate clients' \
             (a TCP or TLS connection and a relayed socket each: about 500), so the memory per \
             descriptor slightly understates an idle connection's cost. A connection held more \
             than a second may still have been closed early to make room for a newer one."
        )?;
    }
    Ok(s)
}
