//! `relay explain`: run frames through the relay's program against its live maps.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::sessions::PinArgs;
use crate::explain::{Explainer, frame_from_hex, frames_from_pcap};

/// `relay explain` arguments.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// The frame in hex (Ethernet header first); `-` reads it from stdin.
    #[arg(conflicts_with = "pcap")]
    pub hex: Option<String>,
    /// A capture (pcap or pcapng) with one or more frames.
    #[arg(long)]
    pub pcap: Option<PathBuf>,
    /// Interface the frames arrive on (default: the relay's first interface).
    #[arg(long)]
    pub interface: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `relay explain`.
pub fn run(args: ExplainArgs) -> Result<()> {
    let frames = match (&args.hex, &args.pcap) {
        (Some(h), _) if h == "-" => {
            frame_from_hex(&std::io::read_to_string(std::io::stdin()).context("reading stdin")?)
                .map(|f| vec![f])?
        }
        (Some(h), _) => vec![frame_from_hex(h)?],
        (None, Some(p)) => frames_from_pcap(p)?,
        (None, None) => bail!("give a frame in hex, or --pcap FILE"),
    };
    let mut explainer = Explainer::open(&args.pin.pin_dir, args.interface.as_deref())?;
    if !args.json {
        match &explainer.interface {
            Some(i) => println!("frames arrive on {i} (routes and neighbours of this namespace)\n"),
            None => println!(
                "frames arrive on lo: the relay has no pinned interface here; use --interface\n"
            ),
        }
    }
    let mut all = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let e = explainer
            .explain(frame)
            .with_context(|| format!("frame {}", i + 1))?;
        if args.json {
            all.push(e);
            continue;
        }
        println!("frame {} ({} bytes)", i + 1, frame.len());
        for line in e.input.lines() {
            println!("  in      {line}");
        }
        println!(
            "  verdict {} ({})",
            e.action,
            e.reason.unwrap_or("no counter moved")
        );
        if let Some(out) = &e.output {
            for line in out.lines() {
                println!("  out     {line}");
            }
        }
        println!();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}
