//! Plots of a run (SVG, `plotters`): completion-time CDF, the map coloured by outcome, and
//! the histogram of fragments each device received; and the sweep heatmap.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::report::Report;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

/// Writes `completion_cdf.svg`, `map.svg` and `fragments.svg` into `dir`.
pub fn write_all(dir: &Path, report: &Report) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    completion_cdf(&dir.join("completion_cdf.svg"), report)?;
    map(&dir.join("map.svg"), report)?;
    fragments(&dir.join("fragments.svg"), report)?;
    Ok(())
}

fn completion_cdf(path: &Path, r: &Report) -> Result<()> {
    let times = r.completion_times();
    let n = r.devices.max(1) as f64;
    let t_max = times.last().copied().unwrap_or(1.0).max(1.0) / 60.0;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: devices updated over time", r.scenario),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..t_max * 1.05, 0f64..100f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("minutes from the campaign start")
        .y_desc("% of devices running the new image")
        .draw()
        .map_err(err)?;
    let points = std::iter::once((0.0, 0.0)).chain(times.iter().enumerate().flat_map(|(i, &t)| {
        [
            (t / 60.0, 100.0 * i as f64 / n),
            (t / 60.0, 100.0 * (i + 1) as f64 / n),
        ]
    }));
    chart
        .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn map(path: &Path, r: &Report) -> Result<()> {
    let pts = r.map();
    let extent = pts
        .iter()
        .map(|(p, _)| p.x.abs().max(p.y.abs()))
        .chain(r.gateways.iter().map(|g| g.x.abs().max(g.y.abs())))
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (700, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: devices (green updated, red not) and gateways",
                r.scenario
            ),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(-extent..extent, -extent..extent)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("m")
        .y_desc("m")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(pts.iter().map(|(p, ok)| {
            let colour = if *ok { GREEN.filled() } else { RED.filled() };
            Circle::new((p.x, p.y), 3, colour)
        }))
        .map_err(err)?;
    chart
        .draw_series(
            r.gateways
                .iter()
                .map(|g| TriangleMarker::new((g.x, g.y), 8, BLACK.filled())),
        )
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn fragments(path: &Path, r: &Report) -> Result<()> {
    let counts: Vec<u64> = r.per_device.iter().map(|d| d.multicast_fragments).collect();
    let max = counts.iter().copied().max().unwrap_or(0) + 1;
    let bucket = (max / 40).max(1);
    let mut bins = vec![0u32; (max / bucket + 1) as usize];
    for c in &counts {
        bins[(c / bucket) as usize] += 1;
    }
    let top = bins.iter().copied().max().unwrap_or(1) + 1;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: fragments received by multicast ({} data fragments)",
                r.scenario, r.data_fragments
            ),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((0u64..max).into_segmented(), 0u32..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("fragments received")
        .y_desc("devices")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(BLUE.mix(0.6).filled())
                .margin(0)
                .data(counts.iter().map(|&c| (c / bucket * bucket, 1u32))),
        )
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// A heatmap of `values[row][col]` (percent updated) with labelled axes.
pub fn heatmap(
    path: &Path,
    title: &str,
    rows: (&str, &[String]),
    cols: (&str, &[String]),
    values: &[Vec<f64>],
) -> Result<()> {
    let (nr, nc) = (rows.1.len(), cols.1.len());
    let root =
        SVGBackend::new(path, (120 + 90 * nc as u32, 120 + 60 * nr as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0..nc, 0..nr)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(cols.0)
        .y_desc(rows.0)
        .x_labels(nc)
        .y_labels(nr)
        .x_label_formatter(&|i| cols.1.get(*i).cloned().unwrap_or_default())
        .y_label_formatter(&|i| rows.1.get(*i).cloned().unwrap_or_default())
        .draw()
        .map_err(err)?;
    for (r, row) in values.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let shade = (v / 100.0).clamp(0.0, 1.0);
            let colour = RGBColor((255.0 * (1.0 - shade)) as u8, (200.0 * shade) as u8, 60);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(c, r), (c + 1, r + 1)],
                    colour.filled(),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{v:.0} %"),
                    (c, r),
                    ("sans-serif", 14).into_font().color(&BLACK),
                )))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}
