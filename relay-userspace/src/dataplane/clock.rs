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
/// Time between the two tick edges a measurement times (several ticks at any rate).
const WINDOW: Duration = Duration::from_millis(30);
/// Largest relative uncertainty of an accepted measurement: well under the 9 % half-gap
/// between the closest known rates (250 and 300 Hz).
const MAX_UNCERTAINTY: f64 = 0.04;
/// Give up measuring after this long; the best measurement so far is used then.
const CALIBRATION_LIMIT: Duration = Duration::from_secs(2);

/// A tick edge: the kernel's jiffies became `jiffies` at some instant in `after..before`
/// (the start of the last read that saw the previous value, the end of the read that saw
/// this one). A read preempted on a loaded machine widens it; the estimate accounts for that.
#[derive(Clone, Copy, Debug)]
struct Edge {
    jiffies: u64,
    after: Instant,
    before: Instant,
}

impl Edge {
    fn mid(&self) -> Instant {
        self.after + (self.before - self.after) / 2
    }

    fn width(&self) -> Duration {
        self.before - self.after
    }
}

/// The tick interval between two edges, and its relative uncertainty.
fn estimate(first: &Edge, second: &Edge) -> Option<(Duration, f64)> {
    let ticks = second
        .jiffies
        .checked_sub(first.jiffies)
        .filter(|t| *t > 0)?;
    let elapsed = second.mid().checked_duration_since(first.mid())?;
    let tick = elapsed / u32::try_from(ticks).ok()?;
    let uncertainty = (first.width() + second.width()).as_secs_f64() / 2.0;
    Some((tick, uncertainty / elapsed.as_secs_f64().max(1e-9)))
}

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

    /// Measures the tick rate and samples jiffies. Timing a few ticks naively misjudges the
    /// rate on a loaded machine (a read preempted between the probe and the clock read made
    /// 250 Hz look like 300 in a quarter of tries under load), so each tick edge is bracketed
    /// by the reads around it, edges ~30 ms apart are timed, and a measurement is accepted
    /// only when its brackets are narrow (retrying, at most [`CALIBRATION_LIMIT`], then the
    /// best so far is used).
    pub fn calibrate(probe: &Xdp) -> Result<JiffiesClock> {
        let deadline = Instant::now() + CALIBRATION_LIMIT;
        let mut best: Option<(Duration, f64)> = None;
        let mut first = Self::edge(probe, deadline)?;
        loop {
            std::thread::sleep(WINDOW);
            let second = match Self::edge(probe, deadline) {
                Ok(edge) => edge,
                Err(e) if best.is_none() => return Err(e),
                Err(_) => break,
            };
            if let Some(m) = estimate(&first, &second)
                && best.is_none_or(|b| m.1 < b.1)
            {
                best = Some(m);
            }
            if best.is_some_and(|b| b.1 <= MAX_UNCERTAINTY) || Instant::now() > deadline {
                break;
            }
            first = second;
        }
        let (tick, _) = best.context("no tick timed")?;
        let jiffies = Self::read(probe)?;
        Ok(JiffiesClock {
            hz: Self::hz_for_tick(tick),
            jiffies,
            at: Instant::now(),
        })
    }

    /// Reads jiffies until they advance by exactly one tick and brackets that edge.
    fn edge(probe: &Xdp, deadline: Instant) -> Result<Edge> {
        let mut last_start = Instant::now();
        let mut last = Self::read(probe)?;
        loop {
            let start = Instant::now();
            let j = Self::read(probe)?;
            let end = Instant::now();
            if j == last + 1 {
                return Ok(Edge {
                    jiffies: j,
                    after: last_start,
                    before: end,
                });
            }
            // Same tick, or several passed unseen (preempted): keep looking from here.
            (last, last_start) = (j, start);
            if end > deadline {
                bail!("the kernel's jiffies did not advance by one tick in {CALIBRATION_LIMIT:?}");
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
    fn an_estimate_times_the_edges_midpoints_and_says_how_sure_it_is() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let edge = |jiffies, after, before| Edge {
            jiffies,
            after: at(after),
            before: at(before),
        };
        // Narrow brackets 8 ticks of 4 ms apart: 250 Hz, sure.
        let (tick, uncertainty) = estimate(&edge(100, 0, 20), &edge(108, 32_000, 32_020)).unwrap();
        assert_eq!(tick, Duration::from_millis(4));
        assert!(uncertainty < 0.001);
        assert_eq!(JiffiesClock::hz_for_tick(tick), 250);
        // A preempted read (a 5 ms bracket) makes the same ticks unsure.
        let (_, unsure) = estimate(&edge(100, 0, 5_000), &edge(108, 32_000, 32_020)).unwrap();
        assert!(unsure > MAX_UNCERTAINTY, "{unsure}");
        // No tick between them: no estimate.
        assert!(estimate(&edge(100, 0, 20), &edge(100, 5_000, 5_020)).is_none());
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
