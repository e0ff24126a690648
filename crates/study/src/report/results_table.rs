//! The study's results table: one row per evaluated model, plus a record per executed node.
//!
//! JSON (`results.json`) is the source of truth; CSV (`results.csv`) flattens it for spreadsheets,
//! one column per task's stable score.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use vlmix_eval::stats::{group_ci, Design, RunItems};
use vlmix_eval::{EvalReport, Interval, Modality, TaskResult};

/// One task's headline numbers for one model, with what the report's intervals are drawn from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    pub task: String,
    pub modality: Modality,
    pub accuracy: f64,
    pub chance: f64,
    pub stable_score: f64,
    /// What `accuracy` measures ("acc", "acc_norm", "vqa_accuracy", "yes_no_accuracy").
    #[serde(default)]
    pub metric: String,
    /// 95 % bootstrap interval of `accuracy` over items.
    #[serde(default)]
    pub ci: Option<Interval>,
    /// Accuracy of always giving the most frequent gold answer.
    #[serde(default)]
    pub majority: Option<f64>,
    /// The blind control (vision-language tasks): accuracy with the blank image, and the gain.
    #[serde(default)]
    pub blind_accuracy: Option<f64>,
    #[serde(default)]
    pub vision_gain: Option<f64>,
    #[serde(default)]
    pub gain_ci: Option<Interval>,
    /// Accuracy of the control without an image (vision-language tasks): it carries no answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_image_accuracy: Option<f64>,
    /// Per-item credit in item order, for comparisons between models paired by item.
    #[serde(default)]
    pub item_scores: Vec<f64>,
    /// Per-item credit of the blind control in the same order (empty where not scored): the
    /// verdicts' vision gain is `item_scores - blind_item_scores`, item by item.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blind_item_scores: Vec<f64>,
    /// Per-item image keys in the same order (empty where the item has none or rows predate it):
    /// items about one image are resampled together.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub item_images: Vec<String>,
    /// FNV-1a digest of the item ids: two rows are compared item by item only when it matches.
    #[serde(default)]
    pub items_digest: String,
}

impl From<&TaskResult> for TaskScore {
    fn from(t: &TaskResult) -> Self {
        Self {
            task: t.task.clone(),
            modality: t.modality,
            accuracy: t.accuracy,
            chance: t.chance,
            stable_score: t.stable_score,
            metric: t.metric.clone(),
            ci: Some(t.ci),
            majority: Some(t.majority),
            blind_accuracy: t.blind.as_ref().map(|b| b.accuracy),
            vision_gain: t.blind.as_ref().map(|b| b.vision_gain),
            gain_ci: t.blind.as_ref().map(|b| b.gain_ci),
            no_image_accuracy: t.no_image.as_ref().map(|c| c.accuracy),
            item_scores: t.item_scores(),
            blind_item_scores: t.blind.as_ref().map(|b| b.items.iter().map(|o| o.score).collect()).unwrap_or_default(),
            item_images: t.item_images(),
            items_digest: items_digest(t.items.iter().map(|o| o.id.as_str())),
        }
    }
}

/// The resampling design of some tasks' items: their image keys where recorded, else item by item.
pub fn design_of<'a>(tasks: impl Iterator<Item = &'a TaskScore>) -> Design {
    let keys: Vec<Vec<String>> = tasks
        .map(|t| {
            if t.item_images.len() == t.item_scores.len() {
                t.item_images.clone()
            } else {
                vec![String::new(); t.item_scores.len()]
            }
        })
        .collect();
    Design::by_key(&keys)
}

/// FNV-1a (64-bit) over the ids, newline-separated, as hex.
pub fn items_digest<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in ids.flat_map(|id| id.bytes().chain(std::iter::once(b'\n'))) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// One evaluated model and the knobs that produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub run_id: String,
    /// The stage whose output was evaluated: "pretrain", "cooldown" or "finetune".
    pub stage: String,
    /// Share of text pre-training done before images came in (0..=1); None for a text-only model.
    pub introduction: Option<f64>,
    /// True where the cooldown used a fresh warmup + cosine (the scratch 0 % and full 100 % points)
    /// instead of continuing the text schedule; such points are drawn hollow.
    pub fresh_schedule: bool,
    /// Share of cooldown tokens that are image tokens (0..=1).
    pub image_token_fraction: f64,
    /// Share of instruction data inside the image part of the cooldown mix (0..=1).
    pub instruction_share: f64,
    /// Instruction fine-tuning epochs (0 = not fine-tuned).
    pub finetune_epochs: u32,
    pub seed: u64,
    pub tasks: Vec<TaskScore>,
    pub vision_stable_score: Option<f64>,
    pub text_stable_score: Option<f64>,
    /// 95 % bootstrap intervals of the two stable scores (items resampled within each task).
    #[serde(default)]
    pub vision_ci: Option<Interval>,
    #[serde(default)]
    pub text_ci: Option<Interval>,
    pub bits_per_byte: Option<f64>,
    /// Summed loss (nats) of each held-out validation sequence: pairs two models' bits-per-byte
    /// over the same sequences for an interval (empty where not measured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_nats: Vec<f64>,
    /// Wall time of this model's own node (not of its shared ancestors), seconds.
    pub wall_time_s: f64,
    pub machine: String,
    pub versions: BTreeMap<String, String>,
    /// The run's full resolved config, for reproduction.
    pub config: serde_json::Value,
}

impl ResultRow {
    /// Copies a model's evaluation into the row's score fields.
    pub fn set_scores(&mut self, eval: &EvalReport) -> Result<()> {
        self.tasks = eval.tasks.iter().map(TaskScore::from).collect();
        self.vision_stable_score = eval.vision_stable_score;
        self.text_stable_score = eval.text_stable_score;
        self.bits_per_byte = eval.validation.as_ref().map(|v| v.bits_per_byte);
        self.set_intervals()
    }

    /// Recomputes the stable scores' intervals from the tasks' item scores.
    pub fn set_intervals(&mut self) -> Result<()> {
        self.vision_ci = self.stable_ci(Modality::Vision)?;
        self.text_ci = self.stable_ci(Modality::Text)?;
        Ok(())
    }

    /// Per-item credit of the tasks of `modality` (None when a task lacks item scores).
    pub fn run_items(&self, modality: Modality) -> Option<RunItems> {
        let tasks: Vec<&TaskScore> = self.tasks.iter().filter(|t| t.modality == modality).collect();
        (!tasks.is_empty() && tasks.iter().all(|t| !t.item_scores.is_empty()))
            .then(|| tasks.iter().map(|t| t.item_scores.clone()).collect())
    }

    /// How the items of `modality`'s tasks are resampled: by image where items share one.
    pub fn design(&self, modality: Modality) -> Design {
        design_of(self.tasks.iter().filter(|t| t.modality == modality))
    }

    /// Interval of a stable score: the accuracy group mean's interval less the mean chance.
    fn stable_ci(&self, modality: Modality) -> Result<Option<Interval>> {
        let Some(items) = self.run_items(modality) else { return Ok(None) };
        let tasks: Vec<&TaskScore> = self.tasks.iter().filter(|t| t.modality == modality).collect();
        let chance = tasks.iter().map(|t| t.chance).sum::<f64>() / tasks.len() as f64;
        Ok(Some(group_ci(&items, &self.design(modality))?.shifted(-chance)))
    }

    /// Rejects values the figures could not place, naming the row and field.
    pub fn validate(&self) -> Result<()> {
        let in_unit = |name: &str, v: f64| {
            vlmix_data::mixing::check_fraction(&format!("field `{name}`"), v)
                .with_context(|| format!("row {:?}", self.run_id))
        };
        if let Some(x) = self.introduction {
            in_unit("introduction", x)?;
        }
        in_unit("image_token_fraction", self.image_token_fraction)?;
        in_unit("instruction_share", self.instruction_share)
    }

    /// How the introduction point reads in tables: "scratch", "full", "80 %" or "text only".
    pub fn introduction_label(&self) -> String {
        match self.introduction {
            None => "text only".to_string(),
            Some(x) if self.fresh_schedule && x == 0.0 => "scratch (0 %)".to_string(),
            Some(x) if self.fresh_schedule && x == 1.0 => "full (100 %)".to_string(),
            Some(x) if self.fresh_schedule => format!("{} % (fresh)", percent(x)),
            Some(x) => format!("{} %", percent(x)),
        }
    }
}

/// A fraction as a percentage without trailing zeros ("12.5", "80").
pub fn percent(fraction: f64) -> String {
    let p = (fraction * 1000.0).round() / 10.0;
    if p.fract() == 0.0 {
        format!("{p:.0}")
    } else {
        format!("{p}")
    }
}

/// Where and how long one node of the study's DAG ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    /// "pretrain", "cooldown", "finetune" or "eval".
    pub stage: String,
    pub wall_time_s: f64,
    pub machine: String,
    pub versions: BTreeMap<String, String>,
}

/// All rows and node records of a study.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultsTable {
    pub rows: Vec<ResultRow>,
    pub nodes: Vec<NodeRecord>,
    /// The data the study ran on: package versions, and what this machine lacked.
    #[serde(default)]
    pub data: DataRecord,
}

/// Data provenance of a run, and the config's tasks it left out (see `--without-missing-tasks`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    pub provenance: vlmix_data::provenance::DataProvenance,
    #[serde(default)]
    pub left_out: Vec<crate::config::LeftOutTask>,
}

impl ResultsTable {
    pub fn validate(&self) -> Result<()> {
        self.rows.iter().try_for_each(ResultRow::validate)
    }

    pub fn read_json(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading results table {}", path.display()))?;
        let table: Self =
            serde_json::from_slice(&bytes).with_context(|| format!("parsing results table {}", path.display()))?;
        table.validate().with_context(|| format!("results table {}", path.display()))?;
        Ok(table)
    }

    /// Writes pretty JSON atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).context("serialising results table")?;
        vlmix_atomic_file::write_atomic(path, &json)
    }

    /// Task names in first-seen order, vision tasks first.
    pub fn task_names(&self) -> Vec<(String, Modality)> {
        let mut names: Vec<(String, Modality)> = Vec::new();
        for t in self.rows.iter().flat_map(|r| &r.tasks) {
            if !names.iter().any(|(n, _)| *n == t.task) {
                names.push((t.task.clone(), t.modality));
            }
        }
        names.sort_by_key(|(_, m)| *m != Modality::Vision);
        names
    }

    /// Writes one CSV line per row (RFC 4180 quoting), atomically.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let tasks = self.task_names();
        let mut header: Vec<String> = [
            "run_id",
            "stage",
            "introduction",
            "fresh_schedule",
            "image_token_fraction",
            "instruction_share",
            "finetune_epochs",
            "seed",
            "vision_stable_score",
            "text_stable_score",
            "bits_per_byte",
            "wall_time_s",
            "machine",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        header.extend(tasks.iter().map(|(t, _)| format!("stable:{t}")));
        let mut out = csv_line(&header);
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        for r in &self.rows {
            let mut cells = vec![
                r.run_id.clone(),
                r.stage.clone(),
                opt(r.introduction),
                r.fresh_schedule.to_string(),
                r.image_token_fraction.to_string(),
                r.instruction_share.to_string(),
                r.finetune_epochs.to_string(),
                r.seed.to_string(),
                opt(r.vision_stable_score),
                opt(r.text_stable_score),
                opt(r.bits_per_byte),
                r.wall_time_s.to_string(),
                r.machine.clone(),
            ];
            cells.extend(tasks.iter().map(|(t, _)| opt(r.tasks.iter().find(|s| s.task == *t).map(|s| s.stable_score))));
            out.push_str(&csv_line(&cells));
        }
        vlmix_atomic_file::write_atomic(path, out.as_bytes())
    }
}

fn csv_line(cells: &[String]) -> String {
    let quoted: Vec<String> = cells
        .iter()
        .map(|c| if c.contains([',', '"', '\n', '\r']) { format!("\"{}\"", c.replace('"', "\"\"")) } else { c.clone() })
        .collect();
    format!("{}\n", quoted.join(","))
}
