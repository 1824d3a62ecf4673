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

/// Runs the benchmarks.
pub fn run(quick: bool) -> Result<()> {
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
        "--bins",
    ]))?;
    let root = workspace_root();
    let out_dir = root.join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let lab = root.join("target/release/relay-lab");

    println!("== fast path micro-benchmark (BPF_PROG_TEST_RUN)");
    let xdp_json = out_dir.join("xdp-micro.json");
    let mut cmd = Command::new(&lab);
    cmd.arg("bench-xdp").arg("--json").arg(&xdp_json);
    if quick {
        cmd.args(["--rounds", "2", "--calls", "500"]);
    }
    status(&mut cmd)?;

    if quick {
        println!(
            "quick run: results in {}, docs untouched",
            out_dir.display()
        );
        return Ok(());
    }
    let machine = machine_description();
    let xdp: Value = serde_json::from_str(&fs::read_to_string(&xdp_json)?)?;
    let section = xdp_micro_section(&xdp, &machine)?;
    replace_section(&root.join("docs/benchmarks.md"), "xdp-micro", &section)?;
    println!("docs/benchmarks.md updated");
    Ok(())
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
        "| case | relay ns/packet | reflector ns/packet | xdp_pass ns/packet (harness floor) | relay / reflector |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|")?;
    let results = doc
        .get("results")
        .and_then(Value::as_array)
        .context("benchmark JSON: no `results`")?;
    for r in results {
        writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.1} | {:.2}× |",
            r.get("case").and_then(Value::as_str).unwrap_or("?"),
            num(r, "relay_ns")?,
            num(r, "reflector_ns")?,
            num(r, "pass_ns")?,
            num(r, "ratio")?,
        )?;
    }
    let options = doc.get("options").context("benchmark JSON: no `options`")?;
    writeln!(
        s,
        "\n{} interleaved rounds × {} runs per program and case; median round.",
        num(options, "rounds")?,
        num(options, "calls")?
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
