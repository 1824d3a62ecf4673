//! The benchmark lab's XDP object (`relay_common::bench`): the in-kernel load generator, the
//! counting sink and the reflector. Loaded privately (nothing pinned) by whoever measures.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
    programs::{ProgramInfo, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use relay_common::bench::{
    CURSOR_PACE, CURSOR_TEMPLATE, GENERATOR_CONFIG, GENERATOR_CURSOR, GeneratorConfig,
    MAX_TEMPLATES, PACE_ALL, SINK_COUNTS, SinkCounter, TEMPLATE_LEN, TEMPLATES, Template,
};

use relay_userspace::dataplane::simulate::XdpMd;

/// The lab's XDP object, built by `cargo xtask build-ebpf` next to the relay's and embedded by
/// this crate's build script.
pub fn lab_object() -> &'static [u8] {
    aya::include_bytes_aligned!(env!("RELAY_LAB_EBPF_OBJECT"))
}

/// Frames the kernel runs per batch in live-frame mode (its maximum is 256); each batch is
/// flushed to the device in one go, as a NIC driver's NAPI poll would.
pub const LIVE_BATCH: u32 = 64;

/// The loaded lab object.
pub struct LabXdp {
    ebpf: Ebpf,
}

impl LabXdp {
    /// Loads the object (its maps are private to this instance).
    pub fn load() -> Result<LabXdp> {
        let ebpf = EbpfLoader::new()
            .load(lab_object())
            .context("loading the lab's XDP object")?;
        Ok(LabXdp { ebpf })
    }

    /// Program `name`, loaded into the kernel on first use.
    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program `{name}` in the lab object"))?
            .try_into()?;
        if program.fd().is_err() {
            program
                .load()
                .with_context(|| format!("verifier rejected `{name}`"))?;
        }
        Ok(program)
    }

    /// Attaches program `name` to `interface` (in the calling thread's namespace).
    pub fn attach(&mut self, name: &str, interface: &str, mode: XdpMode) -> Result<XdpLinkId> {
        self.program(name)?
            .attach(interface, mode)
            .with_context(|| format!("attaching `{name}` to {interface} ({mode:?})"))
    }

    /// Detaches what [`LabXdp::attach`] attached.
    pub fn detach(&mut self, name: &str, link: XdpLinkId) -> Result<()> {
        Ok(self.program(name)?.detach(link)?)
    }

    /// The kernel's statistics of program `name` (run count and time need
    /// `kernel.bpf_stats_enabled`).
    pub fn info(&mut self, name: &str) -> Result<ProgramInfo> {
        Ok(self.program(name)?.info()?)
    }

    /// Makes the generator cycle through `templates` (and restart at the first).
    pub fn set_templates(&mut self, templates: &[Template]) -> Result<()> {
        ensure!(
            !templates.is_empty() && templates.len() as u32 <= MAX_TEMPLATES,
            "between 1 and {MAX_TEMPLATES} templates, not {}",
            templates.len()
        );
        let mut map: Array<&mut MapData, Template> =
            Array::try_from(self.ebpf.map_mut(TEMPLATES).context(TEMPLATES)?)?;
        for (i, t) in templates.iter().enumerate() {
            map.set(i as u32, t, 0)?;
        }
        self.reset_cursor(CURSOR_TEMPLATE)?;
        self.set_config(GeneratorConfig {
            count: templates.len() as u32,
            send_per_65536: PACE_ALL,
        })
    }

    /// Makes the generator transmit on `send_per_65536` of every 65536 runs (see
    /// [`GeneratorConfig`]), starting from a zero accumulator.
    pub fn set_pace(&mut self, send_per_65536: u32) -> Result<()> {
        let config = self.config()?;
        self.set_config(GeneratorConfig {
            send_per_65536,
            ..config
        })
    }

    fn config(&self) -> Result<GeneratorConfig> {
        let map: Array<&MapData, GeneratorConfig> =
            Array::try_from(self.ebpf.map(GENERATOR_CONFIG).context(GENERATOR_CONFIG)?)?;
        Ok(map.get(&0, 0)?)
    }

    /// Zeroes entry `index` of the generator's per-CPU cursor map on every CPU.
    fn reset_cursor(&mut self, index: u32) -> Result<()> {
        let mut cursor: PerCpuArray<&mut MapData, u32> = PerCpuArray::try_from(
            self.ebpf
                .map_mut(GENERATOR_CURSOR)
                .context(GENERATOR_CURSOR)?,
        )?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        cursor.set(
            index,
            aya::maps::PerCpuValues::try_from(vec![0u32; cpus])?,
            0,
        )?;
        Ok(())
    }

    fn set_config(&mut self, value: GeneratorConfig) -> Result<()> {
        self.reset_cursor(CURSOR_PACE)?;
        let mut config: Array<&mut MapData, GeneratorConfig> = Array::try_from(
            self.ebpf
                .map_mut(GENERATOR_CONFIG)
                .context(GENERATOR_CONFIG)?,
        )?;
        config.set(0, value, 0)?;
        Ok(())
    }

    /// What the sink has counted so far, summed over CPUs.
    pub fn sink_counts(&self) -> Result<SinkCounter> {
        let map: PerCpuArray<&MapData, SinkCounter> =
            PerCpuArray::try_from(self.ebpf.map(SINK_COUNTS).context(SINK_COUNTS)?)?;
        let per_cpu = map.get(&0, 0)?;
        Ok(per_cpu
            .iter()
            .fold(SinkCounter::default(), |a, c| SinkCounter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            }))
    }

    /// Sends `count` frames out of interface `ifindex` (of the calling thread's namespace): the
    /// generator runs `count` times over copies of `frame` in live-frame mode, each run restoring
    /// the next template's headers, and the kernel transmits every frame as if the program had
    /// run in the driver and returned XDP_TX. Returns the kernel's time for the whole run.
    pub fn transmit(&mut self, ifindex: u32, frame: &[u8], count: u32) -> Result<Duration> {
        ensure!(
            frame.len() >= TEMPLATE_LEN,
            "frames of at least {TEMPLATE_LEN} bytes"
        );
        let ctx = XdpMd {
            data_end: frame.len() as u32,
            ingress_ifindex: ifindex,
            ..Default::default()
        };
        let result = self
            .program(relay_common::bench::PROGRAM_GENERATOR)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(ctx.as_bytes()),
                repeat: count,
                attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN (live frames)")?;
        Ok(result.duration)
    }
}
