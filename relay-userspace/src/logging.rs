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
