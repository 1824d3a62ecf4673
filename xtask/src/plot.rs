//! The throughput plot in `docs/`: relayed packets per second by mode and UDP payload size.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

/// One bar group per payload size, one bar per mode: `values[group][mode]` in Mpps.
pub struct Bars<'a> {
    /// Group labels (payload sizes).
    pub groups: Vec<String>,
    /// Series names (modes).
    pub series: &'a [&'a str],
    /// Heights, `values[group][series]`.
    pub values: Vec<Vec<f64>>,
    /// Chart title.
    pub title: String,
    /// Y axis label.
    pub y_label: &'a str,
}

const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(127, 127, 127),
];

/// Writes `bars` as an SVG grouped bar chart to `path`.
pub fn bar_chart(path: &Path, bars: &Bars) -> Result<()> {
    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let top = bars.values.iter().flatten().copied().fold(0.0f64, f64::max) * 1.15;
    let n = bars.groups.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(&bars.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..top.max(0.001))
        .map_err(|e| anyhow!("{e}"))?;
    let groups = bars.groups.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (x - 0.5).round();
            if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < groups.len() {
                groups[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc(bars.y_label)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let width = 0.8 / bars.series.len() as f64;
    for (s, name) in bars.series.iter().enumerate() {
        let colour = COLOURS[s % COLOURS.len()];
        chart
            .draw_series(bars.values.iter().enumerate().map(|(g, row)| {
                let x0 = g as f64 + 0.1 + s as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, row[s])], colour.filled())
            }))
            .map_err(|e| anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_every_group_and_series() {
        let dir = std::env::temp_dir().join(format!("xtask-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.svg");
        bar_chart(
            &path,
            &Bars {
                groups: vec!["64 B".into(), "1420 B".into()],
                series: &["native", "off"],
                values: vec![vec![3.0, 0.1], vec![1.0, 0.05]],
                title: "t".into(),
                y_label: "Mpps",
            },
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"));
        for text in ["64 B", "1420 B", "native", "off", "Mpps"] {
            assert!(svg.contains(text), "{text} missing");
        }
        // Four bars plus the legend's two swatches and the background.
        assert!(svg.matches("<rect").count() >= 6);
    }
}
