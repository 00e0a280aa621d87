//! The chart: grouped bars of operations per second for every workload and
//! client count, one colour per system, on a log scale (SVG via plotters).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::prelude::*;

use crate::measure::Row;
use crate::plan::SYSTEMS;
use crate::report::{num, sorted};

const COLOURS: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(188, 189, 34),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(227, 119, 194),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn short(workload: &str) -> &str {
    match workload {
        "durable_register" => "durable_reg",
        "resolve_hot" => "resolve_hot",
        other => other,
    }
}

/// The x axis: `n` groups, one unit wide each, labelled at their centres.
struct Groups(usize);

impl Ranged for Groups {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = f64::from(limit.1 - limit.0);
        limit.0 + (value / self.0 as f64 * span).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        (0..self.0).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.0 as f64
    }
}

impl ValueFormatter<f64> for Groups {
    fn format(_value: &f64) -> String {
        String::new()
    }
}

/// Writes the chart of every row with an ops/s figure to `path` (not the
/// server-cost rows, whose figure is CPU or commands: the table has them).
pub fn write(rows: &[Row], path: &Path, title: &str) -> Result<()> {
    let rows: Vec<Row> = sorted(rows)
        .into_iter()
        .filter(|r| r.ops_per_sec.is_some_and(|o| o > 0.0))
        .filter(|r| !r.workload.starts_with("cpu_") && r.workload != "idle_cost")
        .collect();
    if rows.is_empty() {
        return Err(anyhow!("no throughput figures to chart"));
    }
    let mut groups: Vec<(String, Option<usize>)> = Vec::new();
    for r in &rows {
        let g = (r.workload.clone(), r.threads);
        if groups.last() != Some(&g) {
            groups.push(g);
        }
    }
    let systems: Vec<&str> = SYSTEMS
        .iter()
        .copied()
        .filter(|s| rows.iter().any(|r| r.system == *s))
        .collect();
    let ops = |g: &(String, Option<usize>), system: &str| {
        rows.iter()
            .find(|r| r.workload == g.0 && r.threads == g.1 && r.system == system)
            .and_then(|r| r.ops_per_sec)
    };
    let max = rows
        .iter()
        .filter_map(|r| r.ops_per_sec)
        .fold(1.0, f64::max);
    let min = rows
        .iter()
        .filter_map(|r| r.ops_per_sec)
        .fold(max, f64::min);
    let (y0, y1) = (
        10f64.powf(min.log10().floor()),
        10f64.powf(max.log10().ceil()),
    );

    let labels: Vec<String> = groups
        .iter()
        .map(|(w, t)| match t {
            Some(t) if w != "reap" => format!("{} x{t}", short(w)),
            _ => short(w).to_owned(),
        })
        .collect();
    let width = (groups.len() as u32 * 120).max(900) + 200;
    let root = SVGBackend::new(path, (width, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(Groups(groups.len()), (y0..y1).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    let label_of = |x: &f64| {
        labels
            .get(x.floor().max(0.0) as usize)
            .cloned()
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&label_of)
        .x_label_style(("sans-serif", 13))
        .x_desc("workload x client threads (reap: sessions reaped per second)")
        .y_desc("operations per second (log scale, higher is better)")
        .y_label_formatter(&|y| num(*y))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (si, system) in systems.iter().enumerate() {
        let colour = COLOURS[si % COLOURS.len()];
        let bars: Vec<_> = groups
            .iter()
            .enumerate()
            .filter_map(|(gi, g)| {
                let value = ops(g, system)?;
                let present: Vec<&&str> = systems.iter().filter(|s| ops(g, s).is_some()).collect();
                let slot = present.iter().position(|s| **s == *system)?;
                let w = 0.84 / present.len() as f64;
                let x0 = gi as f64 + 0.08 + slot as f64 * w;
                Some(Rectangle::new(
                    [(x0, y0), (x0 + w * 0.9, value)],
                    colour.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(|e| anyhow!("{e}"))?
            .label(*system)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
