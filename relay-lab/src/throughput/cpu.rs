//! Where the relay host's CPU time goes during a benchmark pass.
//!
//! The lab pins everything that is the relay to one core and the load generator to another:
//! the relay interface's NAPI instance runs as a kernel thread (threaded NAPI) pinned to the
//! relay core, and so does the daemon. The relay's CPU time for a pass is then exact: the run
//! time of that kernel thread (driver receive, the XDP program, transmit; in generic and off
//! modes also the network stack) plus the daemon's threads (the userspace forwarder), read from
//! `/proc/<pid>/schedstat` in nanoseconds. The relay core's total busy time from `/proc/stat`
//! (ticks) is kept as a cross-check: it also catches work the threads do not account for.

use std::{collections::BTreeSet, path::Path};

use anyhow::{Context, Result, bail};
use nix::{sched::CpuSet, unistd::Pid};

use crate::Netns;

/// Nanoseconds a task has run on a CPU, from the first field of `/proc/<pid>/schedstat`.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Busy and total jiffies of `cpu` from `/proc/stat` (busy: everything but idle and iowait).
pub fn parse_cpu_line(stat: &str, cpu: usize) -> Option<(u64, u64)> {
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields[4];
    Some((total - idle, total))
}

/// Run time of task `pid` (a kernel thread or one thread of a process).
fn task_ns(path: &Path) -> Result<u64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_schedstat(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Run time of every thread of process `pid`.
pub fn process_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    let dir = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // A thread may exit between listing and reading: it no longer runs, skip it.
        if let Ok(ns) = task_ns(&entry?.path().join("schedstat")) {
            total += ns;
        }
    }
    Ok(total)
}

/// The relay's tasks whose CPU time is the relay's.
#[derive(Clone, Copy, Debug)]
pub struct RelayTasks {
    /// The relay interface's NAPI kernel thread.
    pub napi: u32,
    /// The daemon process.
    pub daemon: u32,
    /// The core they are pinned to.
    pub core: usize,
}

/// One reading of the relay's CPU time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// NAPI thread run time, ns.
    pub napi_ns: u64,
    /// Daemon run time (all threads), ns.
    pub daemon_ns: u64,
    /// Relay core busy jiffies.
    pub core_busy: u64,
    /// Relay core total jiffies.
    pub core_total: u64,
}

impl CpuSample {
    /// The relay's CPU time between `earlier` and `self`, ns.
    pub fn relay_ns_since(&self, earlier: &CpuSample) -> u64 {
        (self.napi_ns - earlier.napi_ns) + (self.daemon_ns.saturating_sub(earlier.daemon_ns))
    }

    /// How busy the relay core was between `earlier` and `self` (0..=1), from `/proc/stat`.
    pub fn core_busy_since(&self, earlier: &CpuSample) -> f64 {
        let total = self.core_total.saturating_sub(earlier.core_total);
        if total == 0 {
            return 0.0;
        }
        self.core_busy.saturating_sub(earlier.core_busy) as f64 / total as f64
    }
}

impl RelayTasks {
    /// Reads the counters now.
    pub fn sample(&self) -> Result<CpuSample> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let (core_busy, core_total) =
            parse_cpu_line(&stat, self.core).context("no relay core line in /proc/stat")?;
        Ok(CpuSample {
            napi_ns: task_ns(Path::new(&format!("/proc/{}/schedstat", self.napi)))?,
            daemon_ns: process_ns(self.daemon)?,
            core_busy,
            core_total,
        })
    }
}

/// Pins task `pid` (or, with 0, the calling thread) to `core`.
pub fn pin(pid: u32, core: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(core)?;
    nix::sched::sched_setaffinity(Pid::from_raw(pid as i32), &set)
        .with_context(|| format!("pinning task {pid} to CPU {core}"))
}

/// Gives task `pid` a real-time priority (SCHED_FIFO 50), so it runs as soon as it is woken.
pub fn realtime(pid: u32) -> Result<()> {
    let out = std::process::Command::new("chrt")
        .args(["-f", "-p", "50", &pid.to_string()])
        .output()
        .context("running chrt (util-linux)")?;
    if !out.status.success() {
        bail!(
            "chrt -f -p 50 {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Kernel threads running NAPI instances now: (pid, name).
fn napi_threads() -> BTreeSet<(u32, String)> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm"))
            && comm.starts_with("napi/")
        {
            out.insert((pid, comm.trim().to_string()));
        }
    }
    out
}

/// Switches `interface` in `ns` to threaded NAPI (restarting its thread) and pins the new
/// thread to `core`; returns its pid. The interface's NAPI must be enabled (an XDP program
/// attached, or GRO on for a veth).
pub fn threaded_napi(ns: &Netns, interface: &str, core: usize) -> Result<u32> {
    let knob = format!("/sys/class/net/{interface}/threaded");
    ns.exec("sh", &["-c", &format!("echo 0 > {knob}")])?;
    let before = napi_threads();
    ns.exec("sh", &["-c", &format!("echo 1 > {knob}")])?;
    let mut new = Vec::new();
    for _ in 0..50 {
        new = napi_threads().difference(&before).cloned().collect();
        if !new.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let [(pid, name)] = new.as_slice() else {
        bail!("expected one new NAPI thread for {interface}, found {new:?}");
    };
    if !name.starts_with(&format!("napi/{}", &interface[..interface.len().min(10)])) {
        bail!("the new NAPI thread {name} is not {interface}'s");
    }
    pin(*pid, core)?;
    Ok(*pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_is_run_time_in_ns() {
        assert_eq!(parse_schedstat("594753 0 1\n"), Some(594_753));
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn busy_excludes_idle_and_iowait() {
        let stat = "cpu  222085 0 69746 1650861 5692 0 1764 123 0 0\n\
                    cpu0 96887 0 31563 844511 1066 0 759 60 0 0\n\
                    cpu1 125198 0 38182 806350 4626 0 1004 62 0 0\n";
        let total1 = 125198 + 38182 + 806350 + 4626 + 1004 + 62;
        assert_eq!(
            parse_cpu_line(stat, 1),
            Some((total1 - 806350 - 4626, total1))
        );
        // "cpu1" must not match "cpu10".
        assert_eq!(parse_cpu_line("cpu10 1 2 3 4 5 6 7 8\n", 1), None);
        assert_eq!(parse_cpu_line(stat, 2), None);
    }

    #[test]
    fn relay_time_adds_napi_and_daemon() {
        let a = CpuSample {
            napi_ns: 100,
            daemon_ns: 50,
            core_busy: 10,
            core_total: 100,
        };
        let b = CpuSample {
            napi_ns: 1100,
            daemon_ns: 550,
            core_busy: 60,
            core_total: 200,
        };
        assert_eq!(b.relay_ns_since(&a), 1500);
        assert!((b.core_busy_since(&a) - 0.5).abs() < 1e-9);
        // A daemon thread that exited makes the sum shrink: never negative.
        let c = CpuSample { daemon_ns: 10, ..b };
        assert_eq!(c.relay_ns_since(&a), 1000);
    }
}
