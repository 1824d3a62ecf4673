//! `cargo xtask bench`: release builds, then every benchmark, then `docs/benchmarks.md`
//! regenerated between its `<!-- BEGIN name -->` / `<!-- END name -->` markers (prose outside
//! the markers is kept). `--quick` is a smoke run that checks the harness and writes nothing
//! to docs.

use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    ebpf::{self, Profile},
    run::{clean_command, is_root, output, status, workspace_root},
    setup,
};

/// Benchmark names, as `--only` takes them and as their docs sections are marked.
const NAMES: [&str; 7] = [
    "xdp-micro",
    "throughput",
    "turn",
    "wireguard",
    "control-plane",
    "load",
    "hot-paths",
];

/// Runs the benchmarks (all, or those in `only`) and writes their docs; with `render`, only
/// writes the docs from the last results.
pub fn run(quick: bool, render: bool, only: &[String]) -> Result<()> {
    if let Some(bad) = only.iter().find(|n| !NAMES.contains(&n.as_str())) {
        bail!("no benchmark `{bad}`: choose from {}", NAMES.join(", "));
    }
    let wanted = |name: &str| only.is_empty() || only.iter().any(|n| n == name);
    let root = workspace_root();
    let out_dir = root.join("target/bench");
    if render {
        return write_docs(&wanted, &out_dir, "");
    }
    if !is_root() {
        bail!("the benchmarks load XDP programs and build network namespaces: run as root");
    }
    setup::run()?;
    ebpf::build(Profile::Release)?;
    status(clean_command("cargo").args([
        "build",
        "--release",
        "--locked",
        "-p",
        "relay-userspace",
        "-p",
        "relay-lab",
        "--bins",
    ]))?;
    fs::create_dir_all(&out_dir)?;
    let lab = root.join("target/release/relay-lab");

    let xdp_json = out_dir.join("xdp-micro.json");
    if wanted("xdp-micro") {
        println!("== fast path micro-benchmark (BPF_PROG_TEST_RUN)");
        let mut cmd = Command::new(&lab);
        cmd.arg("bench-xdp").arg("--json").arg(&xdp_json);
        if quick {
            cmd.args(["--rounds", "2", "--calls", "500"]);
            cmd.args(["--table-sizes", "1,1000", "--turn-table-sizes", "1,1000"]);
        }
        status(&mut cmd)?;
    }

    let throughput_json = out_dir.join("throughput.json");
    if wanted("throughput") {
        println!(
            "== relayed packets per second: XDP native (sessions, WireGuard pairs), generic, off, reflector (NAT lab)"
        );
        let mut cmd = Command::new(&lab);
        cmd.arg("bench-throughput")
            .arg("--json")
            .arg(&throughput_json);
        if quick {
            cmd.arg("--quick");
        }
        status(&mut cmd)?;
    }

    let turn_json = out_dir.join("turn.json");
    if wanted("turn") {
        println!("== TURN: the TURN front (XDP native, off) against coturn (NAT lab)");
        let mut cmd = Command::new(&lab);
        cmd.arg("bench-turn").arg("--json").arg(&turn_json);
        if quick {
            cmd.arg("--quick");
        }
        status(&mut cmd)?;
        println!("== TURN over TCP and TLS: the relay against coturn, a ladder of loads (NAT lab)");
        let mut cmd = Command::new(&lab);
        cmd.arg("bench-turn-streams")
            .arg("--json")
            .arg(out_dir.join("turn-streams.json"));
        if quick {
            cmd.arg("--quick");
        }
        status(&mut cmd)?;
    }

    let wireguard_json = out_dir.join("wireguard.json");
    if wanted("wireguard") {
        println!(
            "== stock WireGuard: direct, through the WireGuard front (no client software), through sidecars (NAT lab)"
        );
        let mut cmd = Command::new(&lab);
        cmd.arg("bench-wireguard")
            .arg("--json")
            .arg(&wireguard_json);
        if quick {
            cmd.arg("--quick");
        }
        status(&mut cmd)?;
    }

    let control_json = out_dir.join("control.json");
    if wanted("control-plane") {
        println!("== control plane (API, binds, memory, fill)");
        let mut cmd = Command::new(&lab);
        cmd.arg("bench-control").arg("--json").arg(&control_json);
        if quick {
            cmd.args(["--alloc-seconds", "0.5", "--binds", "500", "--fill", "5000"]);
        }
        status(&mut cmd)?;
    }

    if wanted("load") {
        println!(
            "== load: a crowd behind one NAT against coturn, the maxima at once, churn, floods (NAT lab)"
        );
        let mut cmd = Command::new(&lab);
        cmd.arg("bench-load")
            .arg("--json")
            .arg(out_dir.join("load.json"));
        if quick {
            cmd.arg("--quick");
        }
        status(&mut cmd)?;
    }

    let criterion_out = if wanted("hot-paths") {
        hot_paths(quick)?
    } else {
        String::new()
    };

    if quick {
        println!(
            "quick run: results in {}, docs untouched",
            out_dir.display()
        );
        return Ok(());
    }
    write_docs(&wanted, &out_dir, &criterion_out)
}

/// Writes each wanted benchmark's section of docs/benchmarks.md (and its plot) from its
/// results under `out_dir`; hot paths from `criterion_out` (skipped when empty: a render-only
/// run has no criterion output to render).
fn write_docs(wanted: &dyn Fn(&str) -> bool, out_dir: &Path, criterion_out: &str) -> Result<()> {
    let root = workspace_root();
    let xdp_json = out_dir.join("xdp-micro.json");
    let throughput_json = out_dir.join("throughput.json");
    let turn_json = out_dir.join("turn.json");
    let control_json = out_dir.join("control.json");
    let machine = machine_description();
    let doc = root.join("docs/benchmarks.md");
    if wanted("xdp-micro") {
        let xdp: Value = serde_json::from_str(&fs::read_to_string(&xdp_json)?)?;
        replace_section(&doc, "xdp-micro", &xdp_micro_section(&xdp, &machine)?)?;
    }
    if wanted("throughput") {
        let throughput: Value = serde_json::from_str(&fs::read_to_string(&throughput_json)?)?;
        replace_section(
            &doc,
            "throughput",
            &throughput_section(&throughput, &machine)?,
        )?;
        throughput_plot(&throughput, &root.join("docs/throughput.svg"))?;
    }
    if wanted("turn") {
        let turn: Value = serde_json::from_str(&fs::read_to_string(&turn_json)?)?;
        replace_section(&doc, "turn", &turn_section(&turn, &machine)?)?;
        mode_bars(
            &turn,
            &["turn-native", "turn-off", "coturn"],
            (
                "packets_per_cpu_second",
                1e6,
                "million packets per relay CPU-second",
            ),
            |most| format!("TURN: packets per relay CPU-second, {most} allocations"),
            &root.join("docs/turn.svg"),
        )?;
        let streams: Value =
            serde_json::from_str(&fs::read_to_string(out_dir.join("turn-streams.json"))?)?;
        replace_section(
            &doc,
            "turn-streams",
            &turn_streams_section(&streams, &machine)?,
        )?;
    }
    if wanted("wireguard") {
        let wireguard: Value =
            serde_json::from_str(&fs::read_to_string(out_dir.join("wireguard.json"))?)?;
        replace_section(&doc, "wireguard", &wireguard_section(&wireguard, &machine)?)?;
    }
    if wanted("control-plane") {
        let control: Value = serde_json::from_str(&fs::read_to_string(&control_json)?)?;
        replace_section(&doc, "control-plane", &control_section(&control, &machine)?)?;
    }
    if wanted("load") {
        let load: Value = serde_json::from_str(&fs::read_to_string(out_dir.join("load.json"))?)?;
        replace_section(&doc, "load", &crate::load_report::section(&load, &machine)?)?;
    }
    if wanted("hot-paths") && !criterion_out.is_empty() {
        replace_section(
            &doc,
            "hot-paths",
            &criterion_section(criterion_out, &machine),
        )?;
    }
    println!("docs/benchmarks.md updated");
    Ok(())
}

/// The criterion benches; returns their bencher-format output.
fn hot_paths(quick: bool) -> Result<String> {
    println!("== host hot paths (criterion)");
    let mut cmd = clean_command("cargo");
    cmd.args([
        "bench",
        "--locked",
        "-p",
        "relay-userspace",
        "--bench",
        "hot_paths",
        "--",
    ])
    .args(["--output-format", "bencher"]);
    if quick {
        cmd.args(["--warm-up-time", "0.1", "--measurement-time", "0.2"]);
    }
    let criterion = cmd.output().context("running cargo bench")?;
    let criterion_out = String::from_utf8_lossy(&criterion.stdout).into_owned();
    print!("{criterion_out}");
    if !criterion.status.success() {
        bail!(
            "cargo bench failed: {}",
            String::from_utf8_lossy(&criterion.stderr)
        );
    }
    Ok(criterion_out)
}

fn control_section(doc: &Value, machine: &str) -> Result<String> {
    let r = doc.get("results").context("benchmark JSON: no `results`")?;
    let o = doc.get("options").context("benchmark JSON: no `options`")?;
    let mut s = String::new();
    writeln!(s, "Machine: {machine}.\n")?;
    writeln!(s, "| measure | result | target |")?;
    writeln!(s, "|---|---:|---:|")?;
    writeln!(
        s,
        "| allocations/s through the API ({} clients, {} s) | {:.0} | ≥ 20 000 |",
        num(o, "concurrency")?,
        num(o, "alloc_seconds")?,
        num(r, "allocations_per_sec")?
    )?;
    writeln!(
        s,
        "| bind handshakes/s, relay side ({} binds) | {:.0} | ≥ 50 000 |",
        num(o, "binds")?,
        num(r, "binds_per_sec")?
    )?;
    writeln!(
        s,
        "| fast-path map memory per session (sessions + per-CPU counters) | {:.0} B | ≤ 256 B |",
        num(r, "fast_path_bytes_per_session")?
    )?;
    writeln!(
        s,
        "| userspace-only map memory per session (forwarder counters, metadata) | {:.0} B | |",
        num(r, "control_bytes_per_session")?
    )?;
    writeln!(
        s,
        "| daemon heap per session | {:.0} B | |",
        num(r, "heap_bytes_per_session")?
    )?;
    writeln!(
        s,
        "| time to fill {} sessions (table + maps, no HTTP) | {:.2} s | |",
        num(r, "fill_sessions")?,
        num(r, "fill_seconds")?
    )?;
    writeln!(
        s,
        "\nKernel memory per session slot, by map (bpftool `bytes_memlock` / capacity):\n"
    )?;
    for m in r.get("maps").and_then(Value::as_array).context("maps")? {
        writeln!(
            s,
            "- `{}`: {:.0} B",
            m[0].as_str().unwrap_or("?"),
            m[1].as_f64().unwrap_or(0.0)
        )?;
    }
    Ok(s)
}

/// The criterion results (bencher format: `test NAME ... bench: N ns/iter (+/- D)`).
fn criterion_section(output: &str, machine: &str) -> String {
    let mut s = format!("Machine: {machine}.\n\n| bench | ns/iter |\n|---|---:|\n");
    for line in output.lines().filter(|l| l.starts_with("test ")) {
        let Some((name, rest)) = line[5..].split_once(" ... bench:") else {
            continue;
        };
        let ns = rest.split_whitespace().next().unwrap_or("?");
        s.push_str(&format!("| {} | {} |\n", name.trim(), ns));
    }
    s
}

/// CPU model, core count, kernel and date, for the record.
fn machine_description() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = output(Command::new("uname").arg("-r")).unwrap_or_default();
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d"])).unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, kernel {}, measured {}",
        kernel.trim(),
        date.trim()
    )
}

/// A number field of a JSON object.
fn num(v: &Value, key: &str) -> Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("benchmark JSON: no number `{key}`"))
}

fn xdp_micro_section(doc: &Value, machine: &str) -> Result<String> {
    let mut s = String::new();
    writeln!(s, "Machine: {machine}.\n")?;
    writeln!(
        s,
        "| case | relay ns/packet | reflector ns/packet | xdp_pass ns/packet (harness floor) | relay / reflector (target ≤ 1.5) | above the floor: relay / reflector |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|")?;
    let results = doc
        .get("results")
        .and_then(Value::as_array)
        .context("benchmark JSON: no `results`")?;
    for r in results {
        let (relay, reflector, pass, ratio) = (
            num(r, "relay_ns")?,
            num(r, "reflector_ns")?,
            num(r, "pass_ns")?,
            num(r, "ratio")?,
        );
        writeln!(
            s,
            "| {} | {relay:.1} | {reflector:.1} | {pass:.1} | {ratio:.2}× ({}) | {:.1}× |",
            r.get("case").and_then(Value::as_str).unwrap_or("?"),
            if ratio <= 1.5 { "met" } else { "**missed**" },
            (relay - pass) / (reflector - pass).max(0.1),
        )?;
    }
    let options = doc.get("options").context("benchmark JSON: no `options`")?;
    writeln!(
        s,
        "\n{} interleaved rounds × {} runs per program and case; median round.",
        num(options, "rounds")?,
        num(options, "calls")?
    )?;
    let tables = doc
        .get("table_sizes")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty());
    if let Some(tables) = tables {
        writeln!(
            s,
            "\n**Table size** (v4 → v4 sessions; TURN: ChannelData client → peer, one channel per allocation; every run a packet of another session or allocation drawn at random from the table, {} frames in turn):\n",
            num(&tables[tables.len() - 1], "frames")?
        )?;
        writeln!(
            s,
            "| path | live sessions or allocations | relay ns/packet | reflector ns/packet | xdp_pass ns/packet | relay above the floor | relay / reflector |"
        )?;
        writeln!(s, "|---|---:|---:|---:|---:|---:|---:|")?;
        for t in tables {
            let (relay, reflector, pass) = (
                num(t, "relay_ns")?,
                num(t, "reflector_ns")?,
                num(t, "pass_ns")?,
            );
            writeln!(
                s,
                "| {} | {} | {relay:.1} | {reflector:.1} | {pass:.1} | {:.1} | {:.2}× |",
                match text(t, "front")? {
                    "turn" => "TURN allocations",
                    _ => "sessions",
                },
                num(t, "records")?,
                relay - pass,
                relay / reflector
            )?;
        }
    }
    Ok(s)
}

fn array<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    v.get(key)
        .and_then(Value::as_array)
        .with_context(|| format!("benchmark JSON: no array `{key}`"))
}

fn text<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .with_context(|| format!("benchmark JSON: no string `{key}`"))
}

fn verdict(value: f64, target: f64) -> &'static str {
    if value >= target { "met" } else { "**missed**" }
}

/// The per-cell table of a load benchmark's summaries (throughput, TURN); `names` are its first,
/// third and eighth column headings, which differ between the two.
fn summary_table(s: &mut String, doc: &Value, names: [&str; 3]) -> Result<()> {
    let [mode, count, process] = names;
    writeln!(
        s,
        "| {mode} | UDP payload | {count} | relayed/s at saturation | loss | relay core busy | relay CPU ns/packet | {process} | XDP program ns/packet | packets per relay CPU-second |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for x in array(doc, "summaries")? {
        writeln!(
            s,
            "| {} | {} B | {} | {:.0} | {:.2} % | {:.0} % | {:.0} | {:.0} | {} | {:.0} |",
            text(x, "mode")?,
            num(x, "payload")?,
            num(x, "sessions")?,
            num(x, "relayed_pps")?,
            num(x, "loss")? * 100.0,
            num(x, "relay_busy")? * 100.0,
            num(x, "cpu_ns_per_packet")?,
            num(x, "daemon_ns_per_packet")?,
            x.get("program_ns")
                .and_then(Value::as_f64)
                .map_or("–".to_string(), |p| format!("{p:.0}")),
            num(x, "packets_per_cpu_second")?,
        )?;
    }
    Ok(())
}

fn throughput_section(doc: &Value, machine: &str) -> Result<String> {
    let mut s = String::new();
    let o = doc.get("options").context("benchmark JSON: no `options`")?;
    writeln!(
        s,
        "Machine: {machine}. {} interleaved rounds of {} s passes; medians.\n",
        num(o, "rounds")?,
        num(o, "seconds")?
    )?;
    summary_table(&mut s, doc, ["mode", "sessions", "of which daemon"])?;
    writeln!(
        s,
        "\n![relayed packets per second by mode and size](throughput.svg)\n"
    )?;
    // The targets come with the results, from `relay-lab`'s one definition of them.
    let targets = doc.get("targets").context("benchmark JSON: no `targets`")?;
    let vs_reflector_target = num(targets, "native_vs_reflector")?;
    let vs_userspace_target = num(targets, "native_vs_userspace")?;
    let per_cpu_target = num(targets, "per_cpu_vs_reflector")?;
    writeln!(
        s,
        "| UDP payload | sessions (pairs) | native / reflector, relayed/s (target ≥ {vs_reflector_target}) | native / reflector, per relay CPU-second (target ≥ {per_cpu_target}) | WireGuard pairs / reflector, per relay CPU-second (target ≥ {per_cpu_target}) | native / userspace, per relay CPU-second (target ≥ {vs_userspace_target}) | generic / userspace, per CPU-second |"
    )?;
    writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|")?;
    let per_cpu = |v: f64| format!("{v:.2} ({})", verdict(v, per_cpu_target));
    for r in array(doc, "ratios")? {
        let vs_refl = num(r, "native_vs_reflector_pps")?;
        let vs_off = num(r, "native_vs_off_per_cpu")?;
        writeln!(
            s,
            "| {} B | {} | {:.2} ({}) | {} | {} | {:.1}× ({}) | {:.1}× |",
            num(r, "payload")?,
            num(r, "sessions")?,
            vs_refl,
            verdict(vs_refl, vs_reflector_target),
            per_cpu(num(r, "native_vs_reflector_per_cpu")?),
            r.get("wireguard_vs_reflector_per_cpu")
                .and_then(Value::as_f64)
                .map_or("–".to_string(), per_cpu),
            vs_off,
            verdict(vs_off, vs_userspace_target),
            num(r, "generic_vs_off_per_cpu")?,
        )?;
    }
    writeln!(
        s,
        "\n**On paper: a 10 GbE NIC** (line rate in one direction, the relay's measured CPU ns per packet, XDP native, most sessions):\n"
    )?;
    writeln!(
        s,
        "| traffic | packets/s at 10 Gbit/s | relay CPU ns/packet | cores |"
    )?;
    writeln!(s, "|---|---:|---:|---:|")?;
    for e in array(doc, "extrapolation")? {
        writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.2} |",
            text(e, "case")?,
            num(e, "line_rate_pps")?,
            num(e, "cpu_ns_per_packet")?,
            num(e, "cores")?,
        )?;
    }
    Ok(s)
}

/// The plot: relayed Mpps at saturation by payload size and mode, most sessions.
fn throughput_plot(doc: &Value, path: &Path) -> Result<()> {
    mode_bars(
        doc,
        &["native", "wireguard", "generic", "off", "reflector"],
        ("relayed_pps", 1e6, "Mpps"),
        |most| format!("Relayed packets per second, {most} sessions, one relay core"),
        path,
    )
}

/// Bars of one summary field (scaled down by `scale`) per payload size and mode, at the most
/// sessions (allocations) measured.
fn mode_bars(
    doc: &Value,
    modes: &[&str],
    (field, scale, y_label): (&str, f64, &str),
    title: impl Fn(u64) -> String,
    path: &Path,
) -> Result<()> {
    let summaries = array(doc, "summaries")?;
    let most = summaries
        .iter()
        .filter_map(|x| x.get("sessions").and_then(Value::as_u64))
        .max()
        .unwrap_or(1);
    let mut payloads: Vec<u64> = summaries
        .iter()
        .filter_map(|x| x.get("payload").and_then(Value::as_u64))
        .collect();
    payloads.sort_unstable();
    payloads.dedup();
    let mut values = Vec::new();
    for p in &payloads {
        let mut row = Vec::new();
        for m in modes {
            let v = summaries
                .iter()
                .find(|x| {
                    x.get("mode").and_then(Value::as_str) == Some(m)
                        && x.get("payload").and_then(Value::as_u64) == Some(*p)
                        && x.get("sessions").and_then(Value::as_u64) == Some(most)
                })
                .map_or(Ok(0.0), |x| num(x, field))?;
            row.push(v / scale);
        }
        values.push(row);
    }
    crate::plot::bar_chart(
        path,
        &crate::plot::Bars {
            groups: payloads
                .iter()
                .map(|p| format!("{p} B UDP payload"))
                .collect(),
            series: modes,
            values,
            title: title(most),
            y_label,
        },
    )
}

/// The TURN section: each server's numbers, the ratios to coturn against their targets, and
/// the paper 10 GbE table.
fn turn_section(doc: &Value, machine: &str) -> Result<String> {
    let mut s = String::new();
    let o = doc.get("options").context("benchmark JSON: no `options`")?;
    writeln!(
        s,
        "Machine: {machine}. {} interleaved rounds of {} s passes; medians. Each server relays \
         on one core; ChannelData from each allocation's client and a datagram from its peer, \
         in turn, at the UDP payload size given (at the relay's ingress).\n",
        num(o, "rounds")?,
        num(o, "seconds")?
    )?;
    writeln!(s, "coturn ran as `turnserver {}`.\n", text(doc, "coturn")?)?;
    summary_table(
        &mut s,
        doc,
        ["server", "allocations", "of which the server process"],
    )?;
    writeln!(
        s,
        "\n![packets per relay CPU-second by server and size](turn.svg)\n"
    )?;
    let targets = doc.get("targets").context("benchmark JSON: no `targets`")?;
    let native_target = num(targets, "native_vs_coturn")?;
    let userspace_target = num(targets, "userspace_vs_coturn")?;
    writeln!(
        s,
        "Targets: native / coturn ≥ {native_target}, userspace / coturn ≥ {userspace_target}, in \
         packets per relay CPU-second at each server's best loss-free load. The saturation \
         column divides packets relayed by relay CPU time in the saturation pass instead.\n"
    )?;
    writeln!(
        s,
        "| UDP payload | allocations | native / coturn, per relay CPU-second | userspace / coturn, per relay CPU-second | native / coturn at saturation, per CPU-second | native / coturn, relayed/s |"
    )?;
    writeln!(s, "|---:|---:|---:|---:|---:|---:|")?;
    for r in array(doc, "ratios")? {
        let native = num(r, "native_vs_coturn_per_cpu")?;
        let userspace = num(r, "userspace_vs_coturn_per_cpu")?;
        writeln!(
            s,
            "| {} B | {} | {:.1}× ({}) | {:.2}× ({}) | {:.1}× | {:.1}× |",
            num(r, "payload")?,
            num(r, "allocations")?,
            native,
            verdict(native, native_target),
            userspace,
            verdict(userspace, userspace_target),
            num(r, "native_vs_coturn_per_cpu_saturated")?,
            num(r, "native_vs_coturn_pps")?,
        )?;
    }
    writeln!(
        s,
        "\n**On paper: a 10 GbE NIC relaying TURN** (line rate in one direction, each server's measured CPU ns per packet, most allocations):\n"
    )?;
    writeln!(
        s,
        "| UDP payload | server | packets/s at 10 Gbit/s | relay CPU ns/packet | cores |"
    )?;
    writeln!(s, "|---:|---|---:|---:|---:|")?;
    for e in array(doc, "extrapolation")? {
        writeln!(
            s,
            "| {} B | {} | {:.0} | {:.0} | {:.2} |",
            num(e, "payload")?,
            text(e, "mode")?,
            num(e, "line_rate_pps")?,
            num(e, "cpu_ns_per_packet")?,
            num(e, "cores")?,
        )?;
    }
    Ok(s)
}

/// The TURN-over-streams section: per server and transport, the best loss-free load and its
/// messages per server CPU-second, the loss at the highest load; the ratios to coturn; and
/// every load's median.
fn turn_streams_section(doc: &Value, machine: &str) -> Result<String> {
    let mut s = String::new();
    let o = doc.get("options").context("benchmark JSON: no `options`")?;
    writeln!(
        s,
        "Machine: {machine}. {} rounds; each load offered for {} s over {} connections (one \
         allocation each), {} B messages, one write per message; medians over rounds (loss: \
         the worst round). A message relayed is one ChannelData in and one datagram out, either \
         way.\n",
        num(o, "rounds")?,
        num(o, "seconds")?,
        num(o, "connections")?,
        num(o, "payload")?,
    )?;
    writeln!(s, "coturn ran as `turnserver {}`.\n", text(doc, "coturn")?)?;
    writeln!(
        s,
        "| server | transport | best loss-free load, messages/s | messages per server CPU-second there | CPU µs per message | loss at the highest load | at |"
    )?;
    writeln!(s, "|---|---|---:|---:|---:|---:|---:|")?;
    let optional = |v: &Value, key: &str, f: &dyn Fn(f64) -> String| {
        v.get(key)
            .and_then(Value::as_f64)
            .map_or("–".to_string(), f)
    };
    for x in array(doc, "summaries")? {
        writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.2} % | {:.0}/s |",
            text(x, "server")?,
            text(x, "transport")?,
            optional(x, "best_lossless", &|v| format!("{v:.0}")),
            optional(x, "per_cpu_at_best", &|v| format!("{v:.0}")),
            optional(x, "cpu_us_per_message_at_best", &|v| format!("{v:.2}")),
            num(x, "loss_at_most")? * 100.0,
            num(x, "most_offered")?,
        )?;
    }
    let target = num(doc, "target")?;
    writeln!(
        s,
        "\nTarget: relay / coturn ≥ {target} in messages per server CPU-second at each one's best \
         loss-free load, and no loss wherever coturn has none.\n"
    )?;
    writeln!(
        s,
        "| transport | relay / coturn, per server CPU-second | loss-free wherever coturn is |"
    )?;
    writeln!(s, "|---|---:|---|")?;
    for r in array(doc, "ratios")? {
        let ratio = r.get("relay_vs_coturn_per_cpu").and_then(Value::as_f64);
        writeln!(
            s,
            "| {} | {} | {} |",
            text(r, "transport")?,
            ratio.map_or("–".to_string(), |v| format!(
                "{v:.2}× ({})",
                verdict(v, target)
            )),
            if r.get("lossless_where_coturn_is").and_then(Value::as_bool) == Some(true) {
                "yes"
            } else {
                "**no**"
            },
        )?;
    }
    writeln!(
        s,
        "\n| offered messages/s | relay TCP | coturn TCP | relay TLS | coturn TLS |"
    )?;
    writeln!(s, "|---:|---:|---:|---:|---:|")?;
    let cells = array(doc, "cells")?;
    for load in array(o, "loads")?.iter().filter_map(Value::as_f64) {
        let mut row = format!("| {load:.0} |");
        for (server, transport) in [
            ("relay", "tcp"),
            ("coturn", "tcp"),
            ("relay", "tls"),
            ("coturn", "tls"),
        ] {
            let at: Vec<&Value> = cells
                .iter()
                .filter(|c| {
                    c.get("server").and_then(Value::as_str) == Some(server)
                        && c.get("transport").and_then(Value::as_str) == Some(transport)
                        && c.get("offered").and_then(Value::as_f64) == Some(load)
                })
                .collect();
            let mut per_cpu: Vec<f64> = at
                .iter()
                .map(|c| {
                    let relayed = num(c, "sent").unwrap_or(0.0) + num(c, "echoed").unwrap_or(0.0);
                    relayed / (num(c, "server_cpu_ns").unwrap_or(1.0).max(1.0) / 1e9)
                })
                .collect();
            per_cpu.sort_by(f64::total_cmp);
            let loss = at
                .iter()
                .map(|c| {
                    let sent = num(c, "sent").unwrap_or(0.0).max(1.0);
                    1.0 - num(c, "echoed").unwrap_or(0.0) / sent
                })
                .fold(0.0, f64::max);
            match per_cpu.get(per_cpu.len() / 2) {
                Some(v) => write!(row, " {:.0}k/CPU-s, {:.2} % lost |", v / 1e3, loss * 100.0)?,
                None => row.push_str(" – |"),
            }
        }
        writeln!(s, "{row}")?;
    }
    Ok(s)
}

/// The stock WireGuard section: each path's iperf3 throughput and the ratios to direct.
fn wireguard_section(doc: &Value, machine: &str) -> Result<String> {
    let mut s = String::new();
    let o = doc.get("options").context("benchmark JSON: no `options`")?;
    writeln!(
        s,
        "Machine: {machine}. {} interleaved rounds of {} s of iperf3 (TCP, one stream, client A → \
         client B) per path; medians. One pair of wireguard-go peers; each run points both \
         peers' `Endpoint` at the path under test.\n",
        num(o, "rounds")?,
        num(o, "seconds")?
    )?;
    writeln!(
        s,
        "| path | Mbit/s (median) | Mbit/s per round | relay: WireGuard datagrams in the kernel | in userspace | relay: session datagrams |"
    )?;
    writeln!(s, "|---|---:|---|---:|---:|---:|")?;
    for p in array(doc, "paths")? {
        let rounds: Vec<String> = array(p, "mbit_per_s")?
            .iter()
            .filter_map(Value::as_f64)
            .map(|v| format!("{v:.0}"))
            .collect();
        let relay = p.get("relay").context("benchmark JSON: no `relay`")?;
        writeln!(
            s,
            "| {} | {:.0} | {} | {:.0} | {:.0} | {:.0} |",
            text(p, "path")?,
            num(p, "median_mbit_per_s")?,
            rounds.join(", "),
            num(relay, "wireguard_kernel")?,
            num(relay, "wireguard_userspace")?,
            num(relay, "sessions")?,
        )?;
    }
    let ratio = num(doc, "no_software_vs_direct")?;
    let target = num(doc, "target")?;
    writeln!(
        s,
        "\nTarget: no-software / direct ≥ {target}. The kernel carried {:.2} % of the \
         no-software path's relayed WireGuard datagrams.\n",
        100.0 * num(doc, "no_software_kernel_share")?
    )?;
    writeln!(
        s,
        "| `no-software / direct` | `sidecars / direct` | detour / direct (the lab's extra hop alone) | no-software / detour (the relay over a plain router on the same hop) |"
    )?;
    writeln!(s, "|---:|---:|---:|---:|")?;
    writeln!(
        s,
        "| {ratio:.2} ({}) | {:.2} | {:.2} | {:.2} |",
        verdict(ratio, target),
        num(doc, "sidecars_vs_direct")?,
        num(doc, "detour_vs_direct")?,
        num(doc, "no_software_vs_detour")?
    )?;
    Ok(s)
}

/// Replaces the text between `<!-- BEGIN name -->` and `<!-- END name -->` in `path`.
pub fn replace_section(path: &Path, name: &str, body: &str) -> Result<()> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let begin = format!("<!-- BEGIN {name} -->");
    let end = format!("<!-- END {name} -->");
    let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) else {
        bail!("{} lacks the markers {begin} … {end}", path.display());
    };
    let updated = format!("{}{begin}\n{body}{}", &text[..b], &text[e..]);
    fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}
