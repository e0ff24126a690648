//! BIG-bench task files (PyPI bigbench 1.0.0 sdist): `{"examples":[{"input","target_scores",
//! "target"?}]}`. Three are used: cifar10_classification (10,000 CIFAR-10 test images as base64
//! PNG), geometric_shapes (SVG path -> shape name) and color/rgb (rgb triple -> colour name).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use vlmix_data::DataLayout;

const TASKS_DIR: &str = "bigbench-1.0.0/bigbench/benchmark_tasks";

#[derive(Debug, Deserialize)]
pub struct Example {
    pub input: String,
    pub target_scores: BTreeMap<String, f64>,
    #[serde(default)]
    pub target: Option<String>,
}

impl Example {
    /// The choices scored 1 (correct), the declared `target` first.
    pub fn correct(&self) -> Vec<String> {
        let mut correct: Vec<String> =
            self.target_scores.iter().filter(|(_, s)| **s > 0.0).map(|(k, _)| k.clone()).collect();
        if let Some(target) = &self.target {
            if let Some(i) = correct.iter().position(|c| c == target) {
                correct.swap(0, i);
            }
        }
        correct
    }
}

#[derive(Deserialize)]
struct TaskFile {
    examples: Vec<Example>,
}

/// Path of a task file, e.g. `task_path(layout, "color/rgb")`.
pub fn task_path(layout: &DataLayout, task: &str) -> Result<PathBuf> {
    let path = layout.require_source("bigbench")?.join(TASKS_DIR).join(task).join("task.json");
    if !path.is_file() {
        bail!("{} is missing: run scripts/fetch-data.sh bigbench", path.display());
    }
    Ok(path)
}

pub fn read_examples(path: &Path) -> Result<Vec<Example>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file: TaskFile = serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    if file.examples.is_empty() {
        bail!("{} has no examples", path.display());
    }
    Ok(file.examples)
}

/// The `d` attribute of the `<path d="..."/>` in a geometric_shapes input.
pub fn svg_path_data(input: &str) -> Option<&str> {
    let start = input.find("d=\"")? + 3;
    let len = input[start..].find('"')?;
    Some(&input[start..start + len])
}

/// The (r, g, b) of a color/rgb input "... rgb(128, 2, 198) ?".
pub fn rgb_triple(input: &str) -> Option<[u8; 3]> {
    let start = input.find("rgb(")? + 4;
    let len = input[start..].find(')')?;
    let parts: Vec<u8> = input[start..start + len].split(',').map(|p| p.trim().parse().ok()).collect::<Option<_>>()?;
    parts.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_parsed() {
        let shape = r#"This SVG path element <path d="M 1,2 L 3,4"/> draws a "#;
        assert_eq!(svg_path_data(shape), Some("M 1,2 L 3,4"));
        assert_eq!(rgb_triple("matching this RGB representation: rgb(128, 2, 198) ?"), Some([128, 2, 198]));
        assert_eq!(rgb_triple("rgb(1, 2)"), None);
        let example = Example {
            input: String::new(),
            target_scores: [("circle".to_string(), 1.0), ("ellipse".to_string(), 1.0), ("line".to_string(), 0.0)]
                .into(),
            target: Some("ellipse".into()),
        };
        assert_eq!(example.correct(), ["ellipse", "circle"]);
    }
}
