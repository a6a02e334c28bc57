//! Parameter sweeps: one scenario run over a grid of two parameters, for a table and a
//! heatmap of the share of devices updated.

use anyhow::{bail, Result};
use serde::Serialize;

use crate::report::Report;
use crate::run::run;
use crate::scenario::Scenario;

/// A parameter a sweep can vary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    /// Extra downlink loss (0 to 1).
    Loss,
    /// Coded fragments of the first round.
    Redundancy,
    /// Class C data rate.
    Dr,
    /// Radius of the device disc, metres.
    Radius,
}

impl Axis {
    pub fn name(self) -> &'static str {
        match self {
            Axis::Loss => "downlink loss",
            Axis::Redundancy => "redundancy (coded fragments)",
            Axis::Dr => "class C DR",
            Axis::Radius => "radius (m)",
        }
    }

    /// `s` with this parameter set to `v`.
    pub fn apply(self, s: &mut Scenario, v: f64) -> Result<()> {
        match self {
            Axis::Loss => {
                if !(0.0..1.0).contains(&v) {
                    bail!("loss {v} is not in [0, 1)");
                }
                s.radio.extra_downlink_loss = v;
            }
            Axis::Redundancy => s.campaign.redundancy = Some(v as usize),
            Axis::Dr => s.campaign.dr = v as u8,
            Axis::Radius => s.radius_m = v,
        }
        Ok(())
    }

    pub fn label(self, v: f64) -> String {
        match self {
            Axis::Loss => format!("{:.0} %", v * 100.0),
            _ => format!("{v}"),
        }
    }
}

/// One cell of the grid.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub row: f64,
    pub col: f64,
    pub devices: usize,
    pub updated: usize,
    pub updated_percent: f64,
    pub time_to_90_s: Option<f64>,
    pub fragments_sent: u64,
}

/// The result of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub scenario: String,
    pub rows: Axis,
    pub cols: Axis,
    pub row_values: Vec<f64>,
    pub col_values: Vec<f64>,
    pub cells: Vec<Cell>,
}

impl Sweep {
    /// Percent updated, row by row.
    pub fn grid(&self) -> Vec<Vec<f64>> {
        self.cells
            .chunks(self.col_values.len().max(1))
            .map(|row| row.iter().map(|c| c.updated_percent).collect())
            .collect()
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{}: % of devices updated ({} down, {} across)\n",
            self.scenario,
            self.rows.name(),
            self.cols.name()
        );
        out.push_str(&format!("{:>12}", ""));
        for &c in &self.col_values {
            out.push_str(&format!("{:>10}", self.cols.label(c)));
        }
        out.push('\n');
        for (r, row) in self.row_values.iter().zip(self.grid()) {
            out.push_str(&format!("{:>12}", self.rows.label(*r)));
            for v in row {
                out.push_str(&format!("{v:>9.1}%"));
            }
            out.push('\n');
        }
        out
    }
}

/// Runs `base` for every (row, col) pair; `progress` gets each cell's report as it comes.
pub fn sweep(
    base: &Scenario,
    rows: (Axis, &[f64]),
    cols: (Axis, &[f64]),
    mut progress: impl FnMut(&Report),
) -> Result<Sweep> {
    if rows.0 == cols.0 {
        bail!("sweep two different parameters");
    }
    let mut cells = Vec::new();
    for &r in rows.1 {
        for &c in cols.1 {
            let mut s = base.clone();
            rows.0.apply(&mut s, r)?;
            cols.0.apply(&mut s, c)?;
            let (_, _, report) = run(&s, |_, _, _| {})?;
            progress(&report);
            cells.push(Cell {
                row: r,
                col: c,
                devices: report.devices,
                updated: report.updated,
                updated_percent: report.updated_percent,
                time_to_90_s: report.time_to_90_s,
                fragments_sent: report.uncoded_sent + report.coded_sent + report.repair_sent,
            });
        }
    }
    Ok(Sweep {
        scenario: base.name.clone(),
        rows: rows.0,
        cols: cols.0,
        row_values: rows.1.to_vec(),
        col_values: cols.1.to_vec(),
        cells,
    })
}
