//! Converting the kernel's jiffies timestamps (session last-seen, next-hop cache lifetimes) to
//! and from wall durations.
//!
//! The XDP program stamps packets with `bpf_jiffies64()` because it is several times cheaper
//! than any clock read. Userspace learns the kernel's tick rate and the current jiffies from the
//! program's own `clock_probe`, run with BPF_PROG_TEST_RUN, so nothing depends on the kernel's
//! build configuration being readable.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::programs::Xdp;

use super::simulate::run_frame;

/// Tick rates Linux can be built with (`CONFIG_HZ`).
const KNOWN_HZ: [u32; 4] = [100, 250, 300, 1000];
/// Ticks timed to measure the rate.
const TICKS_TIMED: u64 = 4;
/// Give up measuring after this long (a kernel ticking slower than 10 Hz is not Linux).
const CALIBRATION_LIMIT: Duration = Duration::from_millis(500);

/// The relation between the kernel's jiffies and this process's monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JiffiesClock {
    /// Kernel ticks per second.
    pub hz: u32,
    /// Jiffies read at `at`.
    pub jiffies: u64,
    /// When `jiffies` was read.
    pub at: Instant,
}

impl JiffiesClock {
    /// The nearest tick rate Linux supports to a measured tick interval.
    pub fn hz_for_tick(tick: Duration) -> u32 {
        let measured = 1.0 / tick.as_secs_f64().max(1e-9);
        *KNOWN_HZ
            .iter()
            .min_by(|a, b| {
                let da = (**a as f64 - measured).abs();
                let db = (**b as f64 - measured).abs();
                da.total_cmp(&db)
            })
            .expect("non-empty")
    }

    /// Jiffies now, extrapolated from the calibration.
    pub fn now(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.at);
        self.jiffies + (elapsed.as_nanos() * self.hz as u128 / 1_000_000_000) as u64
    }

    /// How long before `now` the kernel stamped `jiffies`; `None` for 0 (never stamped).
    pub fn age(&self, jiffies: u64, now: Instant) -> Option<Duration> {
        if jiffies == 0 {
            return None;
        }
        let ticks = self.now(now).saturating_sub(jiffies);
        Some(self.ticks(ticks))
    }

    /// The duration of `ticks` jiffies.
    pub fn ticks(&self, ticks: u64) -> Duration {
        Duration::from_nanos((ticks as u128 * 1_000_000_000 / self.hz as u128) as u64)
    }

    /// `duration` in jiffies, rounded up, at least 1 for a non-zero duration.
    pub fn to_ticks(&self, duration: Duration) -> u64 {
        let ticks = (duration.as_nanos() * self.hz as u128).div_ceil(1_000_000_000) as u64;
        if duration.is_zero() { 0 } else { ticks.max(1) }
    }

    /// Reads the kernel's jiffies through `clock_probe`.
    pub fn read(probe: &Xdp) -> Result<u64> {
        let out = run_frame(probe, &[0u8; super::simulate::MIN_FRAME_LEN], None)
            .context("running clock_probe")?;
        let bytes: [u8; 8] = out.frame[..8].try_into().context("clock_probe output")?;
        Ok(u64::from_ne_bytes(bytes))
    }

    /// Measures the tick rate (timing a few ticks, a few milliseconds) and samples jiffies.
    pub fn calibrate(probe: &Xdp) -> Result<JiffiesClock> {
        let start = Instant::now();
        let first = Self::read(probe)?;
        // Wait for a tick edge, then time TICKS_TIMED more.
        let (edge_jiffies, edge_at) = loop {
            let j = Self::read(probe)?;
            if j != first {
                break (j, Instant::now());
            }
            if start.elapsed() > CALIBRATION_LIMIT {
                bail!("the kernel's jiffies did not advance in {CALIBRATION_LIMIT:?}");
            }
        };
        loop {
            let j = Self::read(probe)?;
            if j >= edge_jiffies + TICKS_TIMED {
                let now = Instant::now();
                let tick = (now - edge_at) / (j - edge_jiffies) as u32;
                return Ok(JiffiesClock {
                    hz: Self::hz_for_tick(tick),
                    jiffies: j,
                    at: now,
                });
            }
            if start.elapsed() > CALIBRATION_LIMIT {
                bail!("could not time the kernel's ticks in {CALIBRATION_LIMIT:?}");
            }
        }
    }

    /// Calibrates with the probe a daemon pinned in `pin_dir`.
    pub fn from_pinned(pin_dir: &std::path::Path) -> Result<JiffiesClock> {
        let path = pin_dir.join(relay_common::maps::CLOCK_PROBE_PIN);
        let probe = Xdp::from_pin(&path, aya_obj::programs::XdpAttachType::Interface)
            .with_context(|| format!("opening {}", path.display()))?;
        JiffiesClock::calibrate(&probe)
    }

    /// A fresh sample with the already measured rate (cheap: one probe run).
    pub fn resample(&self, probe: &Xdp) -> Result<JiffiesClock> {
        let jiffies = Self::read(probe)?;
        Ok(JiffiesClock {
            hz: self.hz,
            jiffies,
            at: Instant::now(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_intervals_map_to_linux_rates() {
        assert_eq!(JiffiesClock::hz_for_tick(Duration::from_micros(4_000)), 250);
        assert_eq!(JiffiesClock::hz_for_tick(Duration::from_micros(4_300)), 250);
        assert_eq!(
            JiffiesClock::hz_for_tick(Duration::from_micros(1_050)),
            1000
        );
        assert_eq!(JiffiesClock::hz_for_tick(Duration::from_micros(3_333)), 300);
        assert_eq!(JiffiesClock::hz_for_tick(Duration::from_millis(10)), 100);
    }

    #[test]
    fn conversions_round_trip() {
        let at = Instant::now();
        let clock = JiffiesClock {
            hz: 250,
            jiffies: 10_000,
            at,
        };
        assert_eq!(clock.now(at + Duration::from_secs(2)), 10_500);
        assert_eq!(
            clock.age(9_750, at + Duration::from_secs(1)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(clock.age(0, at), None);
        // A stamp slightly ahead of the extrapolation is "just now", not negative.
        assert_eq!(clock.age(10_001, at), Some(Duration::ZERO));
        assert_eq!(clock.to_ticks(Duration::from_millis(1000)), 250);
        assert_eq!(clock.to_ticks(Duration::from_millis(1)), 1);
        assert_eq!(clock.to_ticks(Duration::ZERO), 0);
        assert_eq!(clock.ticks(250), Duration::from_secs(1));
    }
}
