//! The daemon's configuration parser (`Config::parse`) on arbitrary text, seeded with the
//! documented example (`deploy/relay.example.yaml`, copied in by `cargo xtask fuzz`) and the
//! small files in `fuzz/seeds/config/`.
//!
//! Invariants:
//! * It never panics, whatever the YAML (anchors, tags, deep nesting, odd scalars).
//! * A refusal says where and what: its Display names the origin and a non-empty message, and
//!   the line it cites exists in the text.
//! * An accepted configuration written back out (the derived `Serialize`) is accepted again and
//!   means the same: nothing the parser accepts is lost or changed by a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_userspace::config::Config;

/// Names the text in errors, as a file path would.
const ORIGIN: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, ORIGIN) {
        Ok(config) => {
            let written = serde_yaml::to_string(&config).expect("a parsed config serialises");
            match Config::parse(&written, ORIGIN) {
                Ok(again) => assert_eq!(again, config, "round trip changed it:\n{written}"),
                Err(e) => panic!("written back, it is refused: {e}\n{written}"),
            }
        }
        Err(error) => {
            let shown = error.to_string();
            assert!(shown.starts_with(ORIGIN), "{shown}");
            assert!(!error.message.trim().is_empty(), "no message: {shown}");
            if let Some(line) = error.line {
                let lines = yaml_lines(text);
                assert!(
                    (1..=lines).contains(&line),
                    "line {line} of {lines}: {shown}"
                );
            }
        }
    }
});

/// The last line an error may cite: lines as YAML counts them (CR LF, CR, LF, NEL, LS and PS
/// each end one), plus one for the end of the input, which libyaml puts on a line of its own
/// (it forces a line break at the end of a stream that does not end with one).
fn yaml_lines(text: &str) -> usize {
    let breaks = text
        .replace("\r\n", "\n")
        .chars()
        .filter(|c| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        .count();
    breaks + 2
}
