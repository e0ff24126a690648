//! `vlmix report`: the study's results as a self-contained HTML page with PNG + SVG figures that
//! mirror the paper's (stable score vs. introduction point, image-token share, instruction share,
//! fine-tune epochs), per-task tables, training curves and where every node ran.

pub mod curves;
pub mod figures;
pub mod findings;
pub mod grid;
pub mod html;
pub mod results_table;

pub use curves::{MetricPoint, TrainingCurve};
pub use findings::Finding;
pub use results_table::{DataRecord, NodeRecord, ResultRow, ResultsTable, TaskScore};

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use vlmix_atomic_file::write_atomic;

/// Name of the page inside the report directory.
pub const INDEX_FILE: &str = "index.html";

/// Everything a report is drawn from.
pub struct ReportInput<'a> {
    pub title: &'a str,
    /// The verdicts' analysis plan and where this study departs from the paper's protocol.
    pub protocol: &'a Protocol,
    pub table: &'a ResultsTable,
    pub curves: &'a [TrainingCurve],
}

/// What the report states about method before any number: the verdicts' plan (from the config) and
/// every departure from the paper's protocol.
#[derive(Debug, Clone, Default)]
pub struct Protocol {
    pub verdicts: crate::config::VerdictConfig,
    pub departures: Vec<String>,
}

/// Paths written by [`write_report`].
#[derive(Debug, Clone)]
pub struct ReportFiles {
    pub index: PathBuf,
    /// Every figure, PNG then SVG.
    pub figures: Vec<PathBuf>,
}

/// Draws every figure and writes the page into `report_dir` (created if needed); each file is
/// replaced atomically, so rerunning over an old report is safe.
pub fn write_report(report_dir: &Path, input: &ReportInput) -> Result<ReportFiles> {
    input.table.validate()?;
    std::fs::create_dir_all(report_dir).with_context(|| format!("creating {}", report_dir.display()))?;
    let rows = &input.table.rows;
    let mut figures: Vec<figures::Figure> = grid::Knob::ALL.iter().map(|&k| figures::knob_figure(rows, k)).collect();
    figures.push(figures::curves_figure(input.curves));
    let mut written = Vec::new();
    let mut svgs = Vec::new();
    for figure in &figures {
        let rendered = figures::render(figure)?;
        for (ext, bytes) in [("png", rendered.png.as_slice()), ("svg", rendered.svg.as_bytes())] {
            let path = report_dir.join(format!("{}.{ext}", figure.slug));
            write_atomic(&path, bytes)?;
            written.push(path);
        }
        svgs.push(rendered.svg);
    }
    let inline: Vec<(&figures::Figure, &str)> = figures.iter().zip(svgs.iter().map(String::as_str)).collect();
    let findings = findings::findings(rows, &input.protocol.verdicts);
    let page = html::render_page(input.title, input.table, &inline, &findings, input.protocol);
    let index = report_dir.join(INDEX_FILE);
    write_atomic(&index, page.as_bytes())?;
    Ok(ReportFiles { index, figures: written })
}
