//! Per-run training curves, read from the metrics JSONL each training node writes.
//!
//! Line format: `{"step","tokens","loss","lr","achieved_image_fraction","tokens_per_s"}` (extra
//! fields are ignored, so the trainer may log more).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One logged training step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub step: u64,
    pub tokens: u64,
    pub loss: f64,
    pub lr: f64,
    /// Achieved share of image tokens in the step's batch.
    pub achieved_image_fraction: f64,
    pub tokens_per_s: f64,
}

/// A run's logged steps, labelled for the legend.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingCurve {
    pub run_id: String,
    pub points: Vec<MetricPoint>,
}

impl TrainingCurve {
    /// Reads a metrics JSONL file; a bad line is an error naming file, line and the serde message.
    pub fn load_jsonl(run_id: &str, path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading metrics {}", path.display()))?;
        let points = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).with_context(|| format!("{}:{}: bad metrics line", path.display(), i + 1))
            })
            .collect::<Result<Vec<MetricPoint>>>()?;
        Ok(Self { run_id: run_id.to_string(), points })
    }
}
