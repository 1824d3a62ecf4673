//! `relay top`: a live view of the busiest sessions and the relay's rates, refreshed every
//! interval from the pinned maps. `q`, Esc or Ctrl-C quit; `--once` prints one frame as text.

use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::Args;
use crossterm::{
    event::{self, Event, KeyCode, KeyEvent, KeyModifiers},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use ratatui::{
    Frame, Terminal,
    backend::{CrosstermBackend, TestBackend},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Paragraph, Row, Table},
};
use relay_common::verdict::Reason;

use super::sessions::{PinArgs, human_age, human_rate};
use crate::inspect::{self, Rate, Snapshot};

/// `relay top` arguments.
#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// Refresh interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Print one frame (after one interval) as text and exit.
    #[arg(long)]
    pub once: bool,
    /// With --once: print the sessions with their current rates as JSON instead.
    #[arg(long, requires = "once")]
    pub json: bool,
}

/// What one frame shows.
pub struct TopModel {
    /// Pin directory shown in the title.
    pub source: String,
    /// The newest snapshot, with session rates filled in.
    pub snapshot: Snapshot,
    /// Forwarded rates: [kernel, userspace].
    pub forwarded: [Rate; 2],
    /// Verdict reasons with traffic in the interval: (name, kernel pps, userspace pps).
    pub verdicts: Vec<(&'static str, f64, f64)>,
}

/// Builds a frame's model from two snapshots.
pub fn model(source: String, before: &Snapshot, mut after: Snapshot) -> TopModel {
    inspect::with_rates(&mut after, before);
    let secs = after
        .taken
        .saturating_duration_since(before.taken)
        .as_secs_f64()
        .max(1e-3);
    let pps = |a: &[relay_common::verdict::VerdictCounter],
               b: &[relay_common::verdict::VerdictCounter],
               r: Reason| {
        a[r as usize].packets.saturating_sub(b[r as usize].packets) as f64 / secs
    };
    let verdicts = Reason::ALL
        .iter()
        .map(|r| {
            (
                r.name(),
                pps(&after.kernel_verdicts, &before.kernel_verdicts, *r),
                pps(&after.userspace_verdicts, &before.userspace_verdicts, *r),
            )
        })
        .filter(|(_, k, u)| *k > 0.0 || *u > 0.0)
        .collect();
    let forwarded = inspect::path_rates(&after, before);
    // Busiest first.
    after.sessions.sort_by(|a, b| {
        let total = |s: &inspect::SessionView| {
            s.rates
                .map_or(0.0, |r| r[0].bits_per_sec + r[1].bits_per_sec)
        };
        total(b).total_cmp(&total(a))
    });
    TopModel {
        source,
        snapshot: after,
        forwarded,
        verdicts,
    }
}

/// Draws a frame.
pub fn draw(frame: &mut Frame, m: &TopModel) {
    let bound = m
        .snapshot
        .sessions
        .iter()
        .filter(|s| s.state == "bound")
        .count();
    let header = vec![
        Line::from(format!(
            "relay top — {} — {} sessions ({} bound) of {}, {} TURN allocations",
            m.source,
            m.snapshot.sessions.len(),
            bound,
            m.snapshot.capacity,
            m.snapshot.allocations.len()
        )),
        Line::from(format!(
            "kernel fast path {}   userspace forwarder {}",
            human_rate(&m.forwarded[0]),
            human_rate(&m.forwarded[1])
        )),
    ];
    let [top, middle, bottom, help] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(5),
        Constraint::Length((m.verdicts.len() as u16 + 3).min(12)),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(header).block(Block::default().borders(Borders::ALL)),
        top,
    );
    let rows = m.snapshot.sessions.iter().map(|s| {
        let rate = |i: usize| s.rates.map_or("-".into(), |r| human_rate(&r[i]));
        let leg = |i: usize| s.legs[i].label.clone().unwrap_or_else(|| "-".into());
        let seen = s.directions.iter().filter_map(|d| d.last_seen).min();
        Row::new(vec![
            s.vni.to_string(),
            s.kind.to_string(),
            s.state.to_string(),
            leg(0),
            leg(1),
            rate(0),
            rate(1),
            s.path.name().to_string(),
            human_age(seen),
        ])
    });
    let sessions = Table::new(
        rows,
        [
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(16),
            Constraint::Length(16),
            Constraint::Length(24),
            Constraint::Length(24),
            Constraint::Length(9),
            Constraint::Length(9),
        ],
    )
    .header(
        Row::new([
            "VNI", "KIND", "STATE", "LEG A", "LEG B", "A→B", "B→A", "PATH", "SEEN",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(" busiest sessions "),
    );
    frame.render_widget(sessions, middle);
    let verdicts = Table::new(
        m.verdicts
            .iter()
            .map(|(r, k, u)| Row::new(vec![r.to_string(), format!("{k:.0}"), format!("{u:.0}")])),
        [
            Constraint::Length(32),
            Constraint::Length(14),
            Constraint::Length(14),
        ],
    )
    .header(
        Row::new(["VERDICT", "KERNEL PPS", "USERSPACE PPS"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::default().borders(Borders::ALL).title(" verdicts "));
    frame.render_widget(verdicts, bottom);
    frame.render_widget(Paragraph::new("q / Esc / Ctrl-C: quit"), help);
}

/// Whether a key ends `relay top`.
pub fn quits(key: &KeyEvent) -> bool {
    matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
        || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL))
}

/// A frame as plain text, `width` × `height` cells.
pub fn render_text(m: &TopModel, width: u16, height: u16) -> Result<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height))?;
    terminal.draw(|f| draw(f, m))?;
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..height {
        let line: String = (0..width)
            .map(|x| buffer[(x, y)].symbol().to_string())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// Restores the terminal however `relay top` ends.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen);
    }
}

/// Runs `relay top`.
pub fn run(args: TopArgs) -> Result<()> {
    let source = args.pin.pin_dir.display().to_string();
    let mut before = inspect::snapshot(&args.pin.pin_dir)?;
    if args.once {
        std::thread::sleep(args.interval);
        let m = model(source, &before, inspect::snapshot(&args.pin.pin_dir)?);
        if args.json {
            let doc = serde_json::json!({
                "forwarded": { "kernel": m.forwarded[0], "userspace": m.forwarded[1] },
                "sessions": m.snapshot.sessions,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            print!("{}", render_text(&m, 140, 40)?);
        }
        return Ok(());
    }
    enable_raw_mode()?;
    let _guard = TerminalGuard;
    execute!(io::stdout(), EnterAlternateScreen)?;
    let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    terminal.clear()?;
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next {
            let after = inspect::snapshot(&args.pin.pin_dir)?;
            let m = model(source.clone(), &before, after.clone());
            terminal.draw(|f| draw(f, &m))?;
            before = after;
            next = now + args.interval;
        }
        if event::poll(next.saturating_duration_since(Instant::now()))?
            && let Event::Key(key) = event::read()?
            && quits(&key)
        {
            break;
        }
    }
    io::stdout().flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use relay_common::verdict::VerdictCounter;

    use super::*;
    use crate::inspect::{DirectionCounters, LegView, Path_, SessionView};

    fn snapshot(at: Instant, kernel_bytes: u64, fwd_packets: u64) -> Snapshot {
        let mut verdicts = vec![VerdictCounter::default(); Reason::COUNT as usize];
        verdicts[Reason::ForwardedV4 as usize] = VerdictCounter {
            packets: fwd_packets,
            bytes: fwd_packets * 100,
        };
        let session = |vni: u32, bytes: u64| SessionView {
            vni,
            kind: "geneve",
            ports: None,
            state: "bound",
            token: Some("ops".into()),
            created_unix_ms: None,
            bind_lifetime_s: None,
            idle_lifetime_s: None,
            legs: [
                LegView {
                    label: Some(format!("a-{vni}")),
                    bound: Some("198.51.100.1:1".parse().unwrap()),
                },
                LegView {
                    label: Some(format!("b-{vni}")),
                    bound: Some("198.51.100.2:2".parse().unwrap()),
                },
            ],
            directions: [
                DirectionCounters {
                    kernel_packets: bytes / 100,
                    kernel_bytes: bytes,
                    last_seen: Some(Duration::from_millis(200)),
                    ..Default::default()
                },
                DirectionCounters::default(),
            ],
            path: Path_::Kernel,
            slot: vni,
            rates: None,
        };
        let pair = SessionView {
            kind: "wireguard",
            ..session(11, kernel_bytes / 10)
        };
        Snapshot {
            sessions: vec![pair, session(22, kernel_bytes)],
            allocations: Vec::new(),
            allocation_capacity: 16384,
            kernel_verdicts: verdicts.clone(),
            userspace_verdicts: vec![VerdictCounter::default(); Reason::COUNT as usize],
            capacity: 65536,
            taken: at,
        }
    }

    #[test]
    fn the_busiest_session_comes_first_with_rates_and_totals() {
        let t0 = Instant::now();
        let before = snapshot(t0, 0, 0);
        let after = snapshot(t0 + Duration::from_secs(1), 1_000_000, 10_000);
        let m = model("/sys/fs/bpf/relay".into(), &before, after);
        let text = render_text(&m, 140, 30).unwrap();
        assert!(
            text.contains("relay top — /sys/fs/bpf/relay — 2 sessions (2 bound) of 65536"),
            "{text}"
        );
        assert!(
            text.contains("kernel fast path 10000 pps 8.0 Mbit/s"),
            "{text}"
        );
        let first = text
            .lines()
            .position(|l| l.contains("22") && l.contains("a-22"))
            .unwrap();
        let second = text.lines().position(|l| l.contains("a-11")).unwrap();
        assert!(first < second, "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[first].contains(" geneve "), "{text}");
        assert!(lines[second].contains(" wireguard "), "{text}");
        assert!(text.contains("10000 pps 8.0 Mbit/s"), "{text}");
        assert!(
            text.contains("forwarded_v4") && text.contains("10000"),
            "{text}"
        );
        assert!(text.contains("q / Esc / Ctrl-C: quit"));
    }

    #[test]
    fn q_esc_and_ctrl_c_quit() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&key(KeyCode::Char('x'), KeyModifiers::NONE)));
    }
}
