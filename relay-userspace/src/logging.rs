//! Structured logs (tracing) for every command: the level comes from the configuration (or a
//! default) and `RUST_LOG` overrides it.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// The STUN codec warns about every malformed message it is given; on a public TURN port those
/// are anyone's to send, so its lines would let strangers fill the journal. The relay counts and
/// (at debug level) logs what it refuses itself.
const QUIET_CODECS: &str = "stun_types=error,turn_types=error,stun_proto=error";

/// Installs the global subscriber, writing to stderr.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level},{QUIET_CODECS}")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: under systemd stderr is the journal, which would store the
    // escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// How often a throttled warning may repeat.
pub const THROTTLE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps a recurring warning — a limit refusing clients, a full descriptor table — to one line
/// per interval: the journal shows that it happens, how often, and which key controls it, and
/// a flood cannot fill it.
#[derive(Debug)]
pub struct Throttle {
    every: std::time::Duration,
    /// When the last line was written, and the occurrences held back since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttle {
    /// At most one line per `every`.
    pub const fn new(every: std::time::Duration) -> Throttle {
        Throttle {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// One occurrence at `now`: `Some(held)` when it is to be logged (with `held` occurrences
    /// since the previous line that were not), `None` when it is held back.
    pub fn allow(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let due = state
            .0
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if due {
            let held = state.1;
            *state = (Some(now), 0);
            Some(held)
        } else {
            state.1 += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_throttle_logs_once_per_interval_and_counts_what_it_held() {
        let t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.allow(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(t.allow(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(t.allow(t0 + Duration::from_secs(11)), None);
    }
}
