//! The load side of a relay benchmark, whatever the relay: the in-kernel generator and sink on
//! the internet router's interface (CPU 0), the relay's tasks on CPU 1 and their CPU time, and
//! the passes that measure a workload — a saturation pass, a search for the loss-free load, a
//! pass with BPF run-time statistics. The session benchmark ([`super`]) and the TURN one
//! ([`crate::turn_bench`]) differ only in how the relay is started and what the frames are.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aya::programs::XdpMode as AyaMode;
use relay_common::bench::{PACE_ALL, Template};
use relay_userspace::dataplane::attachment;

use super::{
    cpu::{self, CpuSample, RelayTasks},
    report::{self, Pass},
};
use crate::{
    lab_xdp::LabXdp,
    nat_lab::{Host, INET_RELAY_IF, NatLab, RELAY_IF},
};

/// The core the load runs on.
pub const LOAD_CORE: usize = 0;
/// The core the relay runs on.
pub const RELAY_CORE: usize = 1;
/// Generator runs per BPF_PROG_TEST_RUN call: large, because each call also costs a fixed
/// ~20 ms of page-pool set-up and tear-down during which nothing is sent (measured per run and
/// subtracted from the pass time).
const CALL_RUNS: u32 = 1 << 19;
/// Passes the search for the loss-free load may take.
const SEARCH_PASSES: usize = 6;
/// Time for the last frames of a pass to come back.
const DRAIN: Duration = Duration::from_millis(50);

/// What one cell measured.
#[derive(Clone, Copy, Debug)]
pub struct Cell {
    /// As fast as the generator sends.
    pub saturation: Pass,
    /// At the highest loss-free load, when the saturation pass lost packets.
    pub paced: Option<Pass>,
    /// The XDP program's own run time per packet (bpf_stats).
    pub program_ns: Option<f64>,
}

/// The generator, the sink and the relay's tasks.
pub struct Load {
    /// The lab's XDP programs (generator, sink, reflector).
    pub xdp: LabXdp,
    /// The generator's interface in the router's namespace.
    gen_ifindex: u32,
    /// The fixed cost of one generator call.
    call_overhead: Option<Duration>,
    tasks: Option<RelayTasks>,
    /// The sink's link while it is attached.
    sink: Option<aya::programs::xdp::XdpLinkId>,
}

/// The id of the XDP program attached to the relay's interface.
pub fn attached_program(lab: &NatLab) -> Result<u32> {
    let now = lab.in_host(Host::Relay, || attachment::attachment(RELAY_IF))??;
    Ok(now
        .program_id
        .context("no program on the relay interface")? as u32)
}

impl Load {
    /// Loads the lab's programs (generator, sink, reflector).
    pub fn new(gen_ifindex: u32) -> Result<Load> {
        Ok(Load {
            xdp: LabXdp::load()?,
            gen_ifindex,
            call_overhead: None,
            tasks: None,
            sink: None,
        })
    }

    /// Attaches the sink to the generator's interface and moves that interface's NAPI to the
    /// load core. From then on, what comes back to the router is counted and dropped: set up
    /// the relay's state (handshakes, allocations) before.
    pub fn attach_sink(&mut self, lab: &NatLab) -> Result<()> {
        let xdp = &mut self.xdp;
        self.sink = Some(lab.in_host(Host::Inet, || {
            xdp.attach(
                relay_common::bench::PROGRAM_SINK,
                INET_RELAY_IF,
                AyaMode::Driver,
            )
        })??);
        let napi = cpu::threaded_napi(lab.ns(Host::Inet), INET_RELAY_IF, LOAD_CORE)?;
        // The sink's NAPI thread preempts the generator as soon as relayed frames arrive: its
        // receive ring (256 frames) must never overflow, or the relay's transmits would fail and
        // count as the relay's loss.
        cpu::realtime(napi)?;
        Ok(())
    }

    /// Detaches the sink (to set up new relay state from the router).
    pub fn detach_sink(&mut self, lab: &NatLab) -> Result<()> {
        if let Some(link) = self.sink.take() {
            let xdp = &mut self.xdp;
            lab.in_host(Host::Inet, || {
                xdp.detach(relay_common::bench::PROGRAM_SINK, link)
            })??;
        }
        Ok(())
    }

    /// Takes the relay to be the relay interface's NAPI thread (moved to the relay core) and
    /// process `daemon` (already pinned there).
    pub fn watch(&mut self, lab: &NatLab, daemon: u32) -> Result<()> {
        let napi = cpu::threaded_napi(lab.ns(Host::Relay), RELAY_IF, RELAY_CORE)?;
        self.tasks = Some(RelayTasks {
            napi,
            daemon,
            core: RELAY_CORE,
        });
        Ok(())
    }

    fn sample(&self) -> Result<CpuSample> {
        self.tasks.context("no relay tasks")?.sample()
    }

    /// One cell of `templates` (`frame` is one full frame of them): warm-up, a saturation pass,
    /// a paced pass when the saturation lost packets, and a short pass with BPF run-time
    /// statistics on for `program` (when the relay runs one).
    pub fn cell(
        &mut self,
        lab: &NatLab,
        frame: &[u8],
        templates: &[Template],
        seconds: f64,
        program: Option<u32>,
    ) -> Result<Cell> {
        self.xdp.set_templates(templates)?;
        let inet = lab.ns(Host::Inet);
        let _inside = inet.enter()?;
        if self.call_overhead.is_none() {
            self.call_overhead = Some(self.calibrate(frame)?);
        }
        self.pass(frame, 0.2, PACE_ALL)?;
        let saturation = self.pass(frame, seconds, PACE_ALL)?;
        let paced = if saturation.relay_busy() >= report::RELAY_BOUND
            && saturation.loss() > report::LOSS_FREE
        {
            self.loss_free(frame, seconds, &saturation)?
        } else {
            None
        };
        let program_ns = match program {
            Some(id) => self.program_ns(id, frame, seconds.min(0.5))?,
            None => None,
        };
        Ok(Cell {
            saturation,
            paced,
            program_ns,
        })
    }

    /// Searches for the highest load the relay carries without loss (an overloaded relay also
    /// spends CPU on packets it then drops, and a livelocked one relays less than it could):
    /// starts at 90 % of what the saturation pass relayed, raises the load by half while no
    /// packets are lost and lowers it while they are, then bisects between the best loss-free
    /// and the lowest lossy load; at most [`SEARCH_PASSES`] passes. Returns the loss-free pass at
    /// the highest load, or the last pass when none was loss-free.
    fn loss_free(&mut self, frame: &[u8], seconds: f64, saturation: &Pass) -> Result<Option<Pass>> {
        let mut share = saturation.relayed_pps() * 0.9 / saturation.offered_pps();
        let mut best: Option<(f64, Pass)> = None;
        let mut lossy: Option<f64> = None;
        let mut last = None;
        for _ in 0..SEARCH_PASSES {
            let pass = self.pass(frame, seconds, (share * f64::from(PACE_ALL)) as u32)?;
            if pass.loss() <= report::LOSS_FREE {
                if best.is_none_or(|(_, b)| pass.relayed_pps() > b.relayed_pps()) {
                    best = Some((share, pass));
                }
                if share >= 1.0 {
                    break;
                }
                share = match lossy {
                    Some(hi) => (share + hi) / 2.0,
                    None => (share * 1.5).min(1.0),
                };
            } else {
                lossy = Some(lossy.map_or(share, |hi: f64| hi.min(share)));
                share = match best {
                    Some((lo, _)) => (lo + share) / 2.0,
                    None => share * 0.6,
                };
            }
            last = Some(pass);
        }
        Ok(best.map(|(_, p)| p).or(last))
    }

    /// The fixed cost of one generator call (set-up and tear-down): the median of a few calls
    /// that send one batch.
    fn calibrate(&mut self, frame: &[u8]) -> Result<Duration> {
        let mut walls = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            self.xdp
                .transmit(self.gen_ifindex, frame, crate::lab_xdp::LIVE_BATCH)?;
            walls.push(start.elapsed());
        }
        walls.sort();
        Ok(walls[walls.len() / 2])
    }

    /// Sends for about `seconds`, transmitting on `send_per_65536` of the generator's runs, and
    /// counts what came back. The calling thread must be in the router's namespace.
    fn pass(&mut self, frame: &[u8], seconds: f64, send_per_65536: u32) -> Result<Pass> {
        self.xdp.set_pace(send_per_65536)?;
        let sink_before = self.xdp.sink_counts()?;
        let cpu_before = self.sample()?;
        let start = Instant::now();
        let limit = Duration::from_secs_f64(seconds);
        let mut runs: u64 = 0;
        let mut calls: u32 = 0;
        while start.elapsed() < limit {
            self.xdp.transmit(self.gen_ifindex, frame, CALL_RUNS)?;
            runs += u64::from(CALL_RUNS);
            calls += 1;
        }
        // Time spent sending: the calls minus their fixed cost.
        let overhead = self.call_overhead.unwrap_or_default() * calls;
        let sent_for = start.elapsed().saturating_sub(overhead);
        std::thread::sleep(DRAIN);
        let cpu_after = self.sample()?;
        let sink_after = self.xdp.sink_counts()?;
        Ok(Pass {
            seconds: sent_for.as_secs_f64(),
            offered: relay_common::bench::paced_sends(runs, send_per_65536),
            relayed: sink_after.packets - sink_before.packets,
            relay_cpu_ns: cpu_after.relay_ns_since(&cpu_before),
            daemon_cpu_ns: cpu_after.daemon_ns.saturating_sub(cpu_before.daemon_ns),
            wall_ns: sent_for.as_nanos() as u64,
            core_busy: cpu_after.core_busy_since(&cpu_before),
        })
    }

    /// The run time per packet of XDP program `id` (tail calls included), from the kernel's BPF
    /// statistics over a short saturation pass (they are on only for that pass: they add two
    /// clock reads per run).
    fn program_ns(&mut self, id: u32, frame: &[u8], seconds: f64) -> Result<Option<f64>> {
        let stats = |id: u32| -> Result<(Duration, u64)> {
            let info = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .find(|p| p.id() == id)
                .with_context(|| format!("no loaded program {id}"))?;
            Ok((info.run_time(), info.run_count()))
        };
        let _on = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics")?;
        let (t0, n0) = stats(id)?;
        self.pass(frame, seconds, PACE_ALL)?;
        let (t1, n1) = stats(id)?;
        if n1 <= n0 {
            return Ok(None);
        }
        Ok(Some((t1 - t0).as_nanos() as f64 / (n1 - n0) as f64))
    }
}
