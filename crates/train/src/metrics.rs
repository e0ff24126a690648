//! Per-step training metrics as JSON lines (and the same scalars as a TensorBoard event file beside
//! them), consistent across kills and resumes.
//!
//! A resumed run restarts at its last checkpoint, so lines written after that checkpoint would be
//! written again; `open` drops them so the file reads as one uninterrupted run. Each line reaches the
//! file as its step ends, so `tail -f metrics.jsonl` (and anything watching a run) sees live progress.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::tensorboard::EventWriter;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    /// Tokens consumed so far in this stage (image tokens included).
    pub tokens: u64,
    pub loss: f64,
    pub lr: f64,
    /// Fraction of image tokens among this step's tokens (0 in text-only stages).
    pub achieved_image_fraction: f64,
    pub tokens_per_s: f64,
    pub grad_norm: f64,
}

pub struct MetricsLog {
    path: PathBuf,
    file: File,
    events: EventWriter,
}

impl MetricsLog {
    /// Opens `path` for appending, keeping only the lines of steps before `resume_step`.
    pub fn open(path: &Path, resume_step: u64) -> Result<Self> {
        if path.exists() {
            // A damaged line (a disk fault, a hand edit) costs its metric point, not the run.
            let lines = read_lines(path, |line, e| {
                tracing::warn!("{}:{line}: bad metrics line dropped on resume ({e})", path.display());
                Ok(())
            })?;
            let kept = lines.into_iter().filter(|m| m.step < resume_step).collect::<Vec<_>>();
            let mut text = String::new();
            for m in &kept {
                text.push_str(&serde_json::to_string(m)?);
                text.push('\n');
            }
            std::fs::write(path, text).with_context(|| format!("rewriting {}", path.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let events = EventWriter::open(path.parent().unwrap_or(Path::new(".")), resume_step)?;
        Ok(Self { path: path.to_owned(), file, events })
    }

    /// Appends one line in a single write (a kill leaves at most a torn last line, which `read` skips).
    pub fn write(&mut self, m: &StepMetrics) -> Result<()> {
        let mut line = serde_json::to_string(m)?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).with_context(|| format!("writing {}", self.path.display()))?;
        let scalars = [
            ("train/loss", m.loss),
            ("train/lr", m.lr),
            ("train/grad_norm", m.grad_norm),
            ("train/achieved_image_fraction", m.achieved_image_fraction),
            ("train/tokens", m.tokens as f64),
            ("train/tokens_per_s", m.tokens_per_s),
        ];
        self.events.scalars(m.step, &scalars)
    }
}

/// Reads a metrics file; a torn last line (killed mid-write) is ignored, any other bad line is an error.
pub fn read(path: &Path) -> Result<Vec<StepMetrics>> {
    read_lines(path, |line, e| anyhow::bail!("{}:{line}: bad metrics line: {e}", path.display()))
}

/// The file's metrics lines; a torn last line is skipped, any other bad one goes to `on_bad` (its
/// 1-based line number and the parse error), which decides whether reading goes on.
fn read_lines(path: &Path, mut on_bad: impl FnMut(usize, serde_json::Error) -> Result<()>) -> Result<Vec<StepMetrics>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(m) => out.push(m),
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => on_bad(i + 1, e)?,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(step: u64) -> StepMetrics {
        StepMetrics {
            step,
            tokens: step * 10,
            loss: 1.0 / (step + 1) as f64,
            lr: 1e-3,
            achieved_image_fraction: 0.0,
            tokens_per_s: 5.0,
            grad_norm: 1.0,
        }
    }

    #[test]
    fn resume_drops_steps_after_the_checkpoint_and_tolerates_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, 0).unwrap();
        for s in 0..6 {
            log.write(&m(s)).unwrap();
        }
        drop(log);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"step\":6,\"tok").unwrap();
        assert_eq!(read(&path).unwrap().len(), 6);

        let mut log = MetricsLog::open(&path, 4).unwrap();
        log.write(&m(4)).unwrap();
        let steps: Vec<u64> = read(&path).unwrap().iter().map(|m| m.step).collect();
        assert_eq!(steps, vec![0, 1, 2, 3, 4]);
        let events = crate::tensorboard::read_events(&dir.path().join(crate::tensorboard::EVENTS_FILE)).unwrap();
        let logged: Vec<(i64, f32)> = events.iter().skip(1).map(|e| (e.step, e.scalars[0].1)).collect();
        assert_eq!(
            logged,
            steps.iter().map(|&s| (s as i64, 1.0 / (s + 1) as f32)).collect::<Vec<_>>(),
            "TensorBoard events mirror the JSONL"
        );
    }

    #[test]
    fn a_bad_line_in_the_middle_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(
            &path,
            format!("{}\nnot json\n{}\n", serde_json::to_string(&m(0)).unwrap(), serde_json::to_string(&m(1)).unwrap()),
        )
        .unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl:2"), "{err}");
    }
}
