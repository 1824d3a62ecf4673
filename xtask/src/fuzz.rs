//! `cargo xtask fuzz`: builds the cargo-fuzz targets in `fuzz/` (nightly, libFuzzer) and runs
//! each for a bounded time from its committed seeds, failing on any crash, timeout or
//! out-of-memory. Prints the executions per target and writes them to
//! `target/fuzz-summary.json` so the docs can quote a run.
//!
//! The runtime corpora (`fuzz/corpus/<target>`) and crash inputs (`fuzz/artifacts/<target>`)
//! stay between runs and are not committed: a longer local run leaves a richer corpus that the
//! next run starts from. Reproduce a crash with
//! `fuzz/target/x86_64-unknown-linux-gnu/release/<target> <artifact>`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::{
    run::{clean_command, output, status, workspace_root},
    setup::NIGHTLY,
};

/// Seconds per target of `cargo xtask fuzz` without `--seconds`: enough to run every seed and
/// shake out shallow bugs in CI; longer runs are for finding deep ones.
pub const DEFAULT_SECONDS: u32 = 20;

/// No sanitizer. The fuzzed code has no `unsafe` (relay-common's and relay-userspace's only
/// `unsafe` is `aya::Pod` impls and syscalls the targets never reach), so AddressSanitizer would
/// find nothing that safe Rust's bounds checks do not already turn into a panic. What it costs,
/// measured on the 2-core CI machine: a cold build of 5 min 18 s instead of 3 min 43 s, and 6 to
/// 8 times fewer executions per second. Overflow checks and debug assertions stay on
/// (cargo-fuzz's default), so arithmetic bugs still crash.
const SANITIZER: &str = "none";

/// libFuzzer's limit on the fuzzed process's memory; above it the run fails as out-of-memory
/// (a parser that allocates without bound is a bug worth failing for).
const RSS_LIMIT_MB: u32 = 2048;

/// libFuzzer's limit on one input, in seconds; every target handles an input in microseconds,
/// so anything near this is a hang.
const INPUT_TIMEOUT_S: u32 = 10;

/// The host triple cargo-fuzz builds for (its default), which names the output directory.
const FUZZ_TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Stand-in for the XDP object that relay-userspace's build script embeds. No target loads
/// it, and pointing `RELAY_EBPF_OBJECT` here keeps fuzzing independent of the eBPF build
/// (and of its staleness check, which fails whenever relay-common changed since that build).
const XDP_PLACEHOLDER_DIR: &str = "target/fuzz-xdp-placeholder";

/// How one target's run ended.
struct TargetRun {
    target: String,
    executions: Option<u64>,
    seconds: f64,
    /// `None` when it passed; otherwise what went wrong.
    failure: Option<String>,
    log: PathBuf,
}

/// Builds every target, then runs `targets` (all when empty) for `seconds` each.
pub fn run(seconds: u32, targets: &[String]) -> Result<()> {
    let all = all_targets()?;
    let selected = select(&all, targets)?;
    let started = Instant::now();
    println!(
        "== fuzz: build ({} targets, sanitizer {SANITIZER})",
        all.len()
    );
    require_cargo_fuzz()?;
    build()?;
    let build_seconds = started.elapsed().as_secs_f64();
    println!("fuzz build: {build_seconds:.0} s");

    let mut runs = Vec::new();
    for target in selected {
        println!("== fuzz {target}: {seconds} s");
        let run = run_target(&target, seconds)?;
        match &run.failure {
            None => println!(
                "fuzz {target}: ok, {} executions in {:.0} s",
                run.executions.map_or("?".into(), |e| e.to_string()),
                run.seconds
            ),
            Some(why) => {
                println!("fuzz {target}: FAILED: {why}");
                print_tail(&run.log, 60);
            }
        }
        runs.push(run);
    }
    let total = started.elapsed().as_secs_f64();
    write_summary(&runs, seconds, build_seconds, total)?;
    let failed: Vec<&str> = runs
        .iter()
        .filter(|r| r.failure.is_some())
        .map(|r| r.target.as_str())
        .collect();
    println!(
        "fuzz stage: {total:.0} s (build {build_seconds:.0} s); summary in target/fuzz-summary.json"
    );
    // The plain closing line CI reads as a test count.
    println!(
        "fuzz: {} passed, {} failed",
        runs.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs under fuzz/artifacts/)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Every fuzz target: cargo-fuzz's convention of one `fuzz/fuzz_targets/<name>.rs` per target
/// (each also a `[[bin]]` of `fuzz/Cargo.toml`, which a test checks).
fn all_targets() -> Result<Vec<String>> {
    let targets: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))?
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    if targets.is_empty() {
        bail!("no fuzz targets under fuzz/fuzz_targets/");
    }
    Ok(targets)
}

/// The targets named (all when none), refusing unknown names.
fn select(all: &[String], names: &[String]) -> Result<Vec<String>> {
    if names.is_empty() {
        return Ok(all.to_vec());
    }
    names
        .iter()
        .map(|name| {
            all.iter()
                .find(|t| *t == name)
                .cloned()
                .with_context(|| format!("no fuzz target {name:?}; targets: {}", all.join(", ")))
        })
        .collect()
}

fn require_cargo_fuzz() -> Result<()> {
    if output(clean_command("cargo").args([&format!("+{NIGHTLY}"), "fuzz", "--version"])).is_none()
    {
        bail!("cargo-fuzz is missing: run `cargo xtask setup`");
    }
    Ok(())
}

/// The fuzz project directory.
fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// Builds all targets in one cargo invocation.
fn build() -> Result<()> {
    let placeholder = workspace_root().join(XDP_PLACEHOLDER_DIR);
    fs::create_dir_all(&placeholder)
        .with_context(|| format!("creating {}", placeholder.display()))?;
    let file = placeholder.join("relay-ebpf");
    // Written once: a new modification time would make cargo rebuild relay-userspace.
    if !file.exists() {
        fs::write(&file, b"").with_context(|| format!("writing {}", file.display()))?;
    }
    let mut cmd = clean_command("cargo");
    cmd.args([
        &format!("+{NIGHTLY}"),
        "fuzz",
        "build",
        "--sanitizer",
        SANITIZER,
    ])
    .arg("--fuzz-dir")
    .arg(fuzz_dir())
    .env("RELAY_EBPF_OBJECT", placeholder.join("relay-ebpf"));
    status(&mut cmd)
}

/// Runs one target from its seeds; a crash, timeout or OOM is a failure, not an error.
fn run_target(target: &str, seconds: u32) -> Result<TargetRun> {
    let dir = fuzz_dir();
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
    seed(target, &corpus)?;
    let before = files(&artifacts)?;

    let logs = workspace_root().join("target/fuzz-logs");
    fs::create_dir_all(&logs)?;
    let log = logs.join(format!("{target}.log"));
    let binary = dir
        .join("target")
        .join(FUZZ_TRIPLE)
        .join("release")
        .join(target);
    // libFuzzer wants the artifact prefix as a string ending in a separator.
    let prefix = format!("{}/", artifacts.display());
    let started = Instant::now();
    let exit = Command::new(&binary)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={prefix}"))
        .arg(&corpus)
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    let elapsed = started.elapsed();

    let text = fs::read_to_string(&log).unwrap_or_default();
    let executions = final_stat(&text, "stat::number_of_executed_units");
    let new: Vec<PathBuf> = files(&artifacts)?
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    let failure = if !new.is_empty() {
        let names: Vec<String> = new.iter().map(|p| p.display().to_string()).collect();
        Some(format!("new artifact(s): {}", names.join(", ")))
    } else if !exit.success() {
        Some(format!("libFuzzer exited with {exit}"))
    } else if executions.is_none() {
        Some("no final stats in the log (did libFuzzer run?)".into())
    } else {
        None
    };
    Ok(TargetRun {
        target: target.to_string(),
        executions,
        seconds: secs(elapsed),
        failure,
        log,
    })
}

/// Copies the committed seeds (and, for the config target, the documented example config) into
/// the runtime corpus, where libFuzzer reads them and adds what it finds.
fn seed(target: &str, corpus: &Path) -> Result<()> {
    let seeds = fuzz_dir().join("seeds").join(target);
    let mut sources = files(&seeds)?;
    if target == "config" {
        // One source of truth: the example the docs and a test keep complete.
        sources.push(workspace_root().join("deploy/relay.example.yaml"));
    }
    for source in sources {
        let name = source.file_name().context("a seed file name")?;
        fs::copy(&source, corpus.join(name))
            .with_context(|| format!("copying seed {}", source.display()))?;
    }
    Ok(())
}

/// The files in `dir` (none when it does not exist).
fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// A `stat::name: value` line of libFuzzer's `-print_final_stats=1` output.
fn final_stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

fn print_tail(log: &Path, lines: usize) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    println!("--- last {lines} lines of {}", log.display());
    for line in &all[all.len().saturating_sub(lines)..] {
        println!("{line}");
    }
    println!("---");
}

fn write_summary(runs: &[TargetRun], seconds: u32, build_seconds: f64, total: f64) -> Result<()> {
    let targets: Vec<_> = runs
        .iter()
        .map(|r| {
            json!({
                "target": r.target,
                "executions": r.executions,
                "seconds": r.seconds,
                "result": if r.failure.is_none() { "ok" } else { "failed" },
                "failure": r.failure,
            })
        })
        .collect();
    let summary = json!({
        "sanitizer": SANITIZER,
        "seconds_per_target": seconds,
        "build_seconds": (build_seconds * 10.0).round() / 10.0,
        "total_seconds": (total * 10.0).round() / 10.0,
        "targets": targets,
    });
    let path = workspace_root().join("target/fuzz-summary.json");
    fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzers_final_stats() {
        let log = "#1024\tDONE   cov: 40 ft: 41 corp: 3/9b\n\
                   stat::number_of_executed_units: 123456\n\
                   stat::average_exec_per_sec:     6172\n\
                   stat::peak_rss_mb:              31\n";
        assert_eq!(
            final_stat(log, "stat::number_of_executed_units"),
            Some(123456)
        );
        assert_eq!(final_stat(log, "stat::peak_rss_mb"), Some(31));
        assert_eq!(
            final_stat("crashed before the stats", "stat::peak_rss_mb"),
            None
        );
    }

    #[test]
    fn targets_are_bins_of_the_fuzz_crate_and_seed_folders_name_targets() {
        let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
        let all = all_targets().unwrap();
        for target in &all {
            assert!(
                manifest.contains(&format!(
                    "name = \"{target}\"\npath = \"fuzz_targets/{target}.rs\""
                )),
                "fuzz/Cargo.toml has no [[bin]] for {target}"
            );
        }
        for entry in fs::read_dir(fuzz_dir().join("seeds")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                path.is_dir() && all.contains(&name),
                "fuzz/seeds/{name} is not a folder named after a target"
            );
        }
        assert!(select(&all, &["nope".into()]).is_err());
        assert_eq!(select(&all, &["wire".into()]).unwrap(), ["wire"]);
        assert_eq!(select(&all, &[]).unwrap(), all);
    }
}
