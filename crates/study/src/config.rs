//! The study config: one TOML file describing the whole grid, validated before anything trains.
//!
//! The grid is a set of one-axis sweeps around a base point (as the paper varies one knob at a time)
//! rather than a full Cartesian product, which would cost fractions x ratios x shares cooldowns.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use vlmix_device::{DeviceChoice, DeviceKind, Precision};
use vlmix_engine::checkpoint::resolve_checkpoint;
use vlmix_eval::ItemLimit;
use vlmix_models::lm::LmConfig;
use vlmix_models::stage_record::StageRecord;
use vlmix_models::vision::encoder::{is_siglip_dir, EncoderSpec, FeatureLayer};
use vlmix_train::schedule::{steps_for, CooldownSchedule, WarmupCosine};
use vlmix_train::stages::Batching;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// Shown in the report and used as the default run directory name.
    pub name: String,
    /// The LM: a preset with optional overrides; the vocabulary always comes from the tokenizer.
    pub model: ModelChoice,
    /// Vision encoder: "efficientnet-lite0", "patch" (a trainable linear map of raw pixel patches),
    /// or a Hugging Face SigLIP directory.
    pub encoder: String,
    /// SigLIP only: the last N blocks of the encoder train with the VLM from the cooldown on (the
    /// paper's frozen-vs-unfrozen ablation); 0 keeps the encoder frozen, as the paper's main runs do.
    #[serde(default)]
    pub encoder_trainable_blocks: usize,
    /// Use only the first N training images (and N instruction conversations): quick studies.
    #[serde(default)]
    pub max_images: Option<usize>,
    /// Where every node trains and evaluates: "cpu" or "cuda" (GPU 0). Pinned with the run
    /// directory (results differ in the last bits between devices); left out of `study.json` when
    /// "cpu", so run directories from before the key resume.
    #[serde(default, skip_serializing_if = "is_default")]
    pub device: DeviceKind,
    /// Inputs of the matrix products: "f32", or "bf16" (with `device = "cuda"` only).
    #[serde(default, skip_serializing_if = "is_default")]
    pub precision: Precision,
    pub pretrain: PretrainConfig,
    pub cooldown: CooldownConfig,
    pub finetune: FinetuneConfig,
    pub grid: GridConfig,
    pub eval: EvalConfig,
    /// What the report's verdicts test, fixed before any result exists.
    #[serde(default)]
    pub verdicts: VerdictConfig,
    /// The user's own data (text, image-caption shards, instruction data, eval sets, tokenizer);
    /// absent entries use the prepared registry data.
    #[serde(default, skip_serializing_if = "crate::data_config::DataConfig::is_empty")]
    pub data: crate::data_config::DataConfig,
    /// Where the nodes run (`[executor]`: local, or Slurm jobs); not pinned with the run directory.
    #[serde(default, skip_serializing)]
    pub executor: ExecutorConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelChoice {
    /// A `vlmix_models::lm::LmConfig` preset name (`tiny`, `cpu-small`, `openlm-79m`, ...).
    pub preset: String,
    pub d_model: Option<usize>,
    pub n_layers: Option<usize>,
    pub n_heads: Option<usize>,
    pub seq_len: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Planned text budget in tokens; the LR schedule spans all of it.
    pub tokens: u64,
    /// Sequences per optimizer step: the global batch, as the paper states it.
    pub batch_size: usize,
    /// Sequences per forward/backward pass (gradients accumulate over `batch_size / micro_batch_size`
    /// passes); when absent, the largest that fits in this machine's memory. Same in each stage.
    #[serde(default)]
    pub micro_batch_size: Option<usize>,
    pub peak_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    /// Fractions of the planned run at which full checkpoints are kept.
    pub checkpoint_fractions: Vec<f64>,
    /// Start from this text checkpoint instead of pre-training (a `vlmix import openlm` directory,
    /// or any stage directory / checkpoint): it is the 100 % point, the grid's fractions can only be
    /// 0 (scratch) and 1 (this model, fresh-schedule cooldowns), and the LM config is the
    /// checkpoint's (`model` is not used). The other `pretrain` fields are then unused.
    #[serde(default)]
    pub from: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CooldownConfig {
    /// Token budget of each cooldown (text + image tokens).
    pub tokens: u64,
    pub batch_size: usize,
    #[serde(default)]
    pub micro_batch_size: Option<usize>,
    /// Peak LR of the fresh warmup + cosine used when branching from 0 % or 100 %.
    pub fresh_peak_lr: f64,
    pub fresh_warmup_steps: u64,
    pub weight_decay: f64,
    /// Train the LM during cooldown (the projector always trains).
    #[serde(default = "yes")]
    pub train_lm: bool,
    /// Text a branched cooldown reads: pre-training's stream from where the branch checkpoint
    /// stopped ("continue"), or the corpus again from its start ("fresh": an ablation, replaying
    /// text the model has read).
    #[serde(default)]
    pub text_stream: Carry,
    /// AdamW moments of a branch whose LR schedule continues the text run's (an interior branch):
    /// the text checkpoint's ("continue"), or zeros ("fresh": an ablation).
    #[serde(default)]
    pub optimizer: Carry,
    /// Count pad positions in `tokens` (an ablation: a higher image fraction, whose rows are more
    /// padded, then sees fewer real tokens); by default only real tokens count.
    #[serde(default)]
    pub count_padding: bool,
    /// Image examples per image row, at most: 1 is the paper's single image per sequence (rows
    /// padded to `seq_len`); more packs [image, caption] examples back to back, as text is packed.
    #[serde(default = "one_image")]
    pub images_per_row: usize,
    /// Fill what an image row leaves as padding with the text stream, as far as the image-token
    /// fraction wants text (the paper pads each image sequence): every position then trains.
    #[serde(default)]
    pub fill_image_rows: bool,
}

/// Whether a branch carries on with what its checkpoint saved or starts anew.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Carry {
    #[default]
    Continue,
    Fresh,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Largest epoch count of the base point's epoch sweep: each count 1..=epochs is its own
    /// fine-tuning run, its LR schedule spanning exactly those epochs.
    pub epochs: u32,
    /// The epoch count at which grid points are compared; only the base point sweeps epochs, which
    /// keeps fine-tuning and evaluation cost linear in the grid.
    pub compare_epoch: u32,
    /// Fine-tune on a seeded random subset of at most this many conversations (all when absent).
    pub max_examples: Option<usize>,
    pub batch_size: usize,
    #[serde(default)]
    pub micro_batch_size: Option<usize>,
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
}

impl PretrainConfig {
    /// The batching the stage's spec takes.
    pub fn batching(&self) -> Batching {
        Batching { batch_size: self.batch_size, micro_batch_size: self.micro_batch_size }
    }
}

impl CooldownConfig {
    /// The batching the stage's spec takes.
    pub fn batching(&self) -> Batching {
        Batching { batch_size: self.batch_size, micro_batch_size: self.micro_batch_size }
    }
}

impl FinetuneConfig {
    /// The batching the stage's spec takes.
    pub fn batching(&self) -> Batching {
        Batching { batch_size: self.batch_size, micro_batch_size: self.micro_batch_size }
    }
}

/// One point of the grid: where images come in, how many, and how much instruction data.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridPoint {
    /// Fraction of the text run at which the cooldown branches (0 = scratch, 1 = fully trained).
    pub fraction: f64,
    /// Requested fraction of image tokens among all cooldown tokens.
    pub image_token_fraction: f64,
    /// Share of instruction data within the image part of the cooldown mix.
    pub instruction_share: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridConfig {
    pub base: GridPoint,
    /// Each list varies one knob with the others held at `base`.
    #[serde(default)]
    pub fractions: Vec<f64>,
    #[serde(default)]
    pub image_token_fractions: Vec<f64>,
    #[serde(default)]
    pub instruction_shares: Vec<f64>,
    /// Seeds of every grid point (seed changes the branch's initialisation and data order).
    #[serde(default = "one_seed")]
    pub seeds: Vec<u64>,
    /// More seeds for the base point: the seed noise every contrast carries, measured where every
    /// comparison meets, without multiplying the whole grid. Each runs the base point's epoch sweep.
    #[serde(default)]
    pub extra_base_seeds: Vec<u64>,
    /// Run `extra_base_seeds` also at the other arm of each finding's primary contrast (100 %, 0 %,
    /// every image-token share, the largest instruction share), so both arms are replicated and
    /// paired by seed; costs one cooldown, fine-tune and eval per point and seed.
    #[serde(default)]
    pub replicate_primary_arms: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Vision-language task names (files `eval/vl/<task>.jsonl` of the prepared data).
    pub vision_tasks: Vec<String>,
    /// Text multiple-choice task names (files `eval/text/<task>.jsonl`).
    pub text_tasks: Vec<String>,
    /// At most this many items per task (deterministic subset), to bound eval time.
    pub max_items_per_task: usize,
    /// Per-modality overrides of `max_items_per_task` (vision-language, text tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vision_items: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_text_items: Option<usize>,
    /// Tasks the config named that this machine's prepared data lacks (their source package could
    /// not be had), dropped by `vlmix study --without-missing-tasks`; the report names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOutTask>,
}

/// The analysis plan of the report's verdicts, fixed in the config (not chosen from results): which
/// tasks make the vision side, and where the paper puts the best image-token share for this size.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictConfig {
    /// Vision-language tasks whose per-item vision gain (credit minus the blind control's) every
    /// verdict reads; empty: all of `eval.vision_tasks`.
    #[serde(default)]
    pub vision_tasks: Vec<String>,
    /// What the vision side of a verdict reads per item: "gain" (credit minus the blind control's:
    /// an answer prior cancels) or "accuracy" (credit: less seed noise where the blind control's own
    /// answer prior swings by seed). The other is reported beside it.
    #[serde(default)]
    pub vision_measure: VisionMeasure,
    /// `[lo, hi]` image-token fractions the paper predicts best for this model size (10-20 % at 1B;
    /// smaller models prefer more); finding 2 tests whether the best share lies inside.
    #[serde(default)]
    pub image_token_optimum: Option<[f64; 2]>,
}

/// See [`VerdictConfig::vision_measure`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisionMeasure {
    #[default]
    Gain,
    Accuracy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeftOutTask {
    pub task: String,
    /// The scripts/data-sources.tsv source it comes from.
    pub package: String,
    pub reason: String,
}

/// The `[executor]` table of a study config. It is not part of the study's identity: a run directory
/// may be resumed locally or on another partition.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    /// `local` (the default: one process runs every node) or `slurm`.
    #[serde(default, rename = "type")]
    pub kind: ExecutorKind,
    /// `sbatch --partition`.
    pub partition: Option<String>,
    /// `sbatch --account`.
    pub account: Option<String>,
    /// Time limit of each job (`sbatch --time`, e.g. `"4:00:00"`).
    pub time: Option<String>,
    /// CPUs of each job's task (`--cpus-per-task`).
    pub cpus_per_task: Option<u32>,
    /// Memory of each job (`--mem`, e.g. `"16G"`).
    pub mem: Option<String>,
    /// Training nodes (pretrain, cooldowns, fine-tunes) only: machines, ranks per machine and GPUs
    /// per machine; with more than one rank in all the node runs under `srun` as a data-parallel job.
    #[serde(default = "one")]
    pub train_nodes: u32,
    #[serde(default = "one")]
    pub train_tasks_per_node: u32,
    pub train_gpus_per_node: Option<u32>,
    /// Extra lines for every job script, each written as `#SBATCH <line>` (e.g. `"--qos=high"`).
    #[serde(default)]
    pub sbatch_lines: Vec<String>,
}

fn one() -> u32 {
    1
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            kind: ExecutorKind::Local,
            partition: None,
            account: None,
            time: None,
            cpus_per_task: None,
            mem: None,
            train_nodes: 1,
            train_tasks_per_node: 1,
            train_gpus_per_node: None,
            sbatch_lines: vec![],
        }
    }
}

impl ExecutorConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.train_nodes == 0 || self.train_tasks_per_node == 0 || self.cpus_per_task == Some(0) {
            bail!("executor: train_nodes, train_tasks_per_node and cpus_per_task must be at least 1");
        }
        if let Some(line) = self.sbatch_lines.iter().find(|l| !l.trim().starts_with('-') || l.contains('\n')) {
            bail!("executor.sbatch_lines: {line:?} is not one sbatch option (`--name=value`)");
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    #[default]
    Local,
    Slurm,
}

impl std::str::FromStr for ExecutorKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "local" => Ok(Self::Local),
            "slurm" => Ok(Self::Slurm),
            other => bail!("unknown executor {other:?}: use local or slurm"),
        }
    }
}

fn yes() -> bool {
    true
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn one_image() -> usize {
    1
}

fn one_seed() -> Vec<u64> {
    vec![0]
}

impl StudyConfig {
    /// Reads and validates a study TOML; every error names the file and the offending field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading study config {}", path.display()))?;
        let config: StudyConfig =
            toml::from_str(&text).with_context(|| format!("parsing study config {}", path.display()))?;
        config.validate().with_context(|| format!("invalid study config {}", path.display()))?;
        Ok(config)
    }

    /// The `device` and `precision` keys.
    pub fn device_choice(&self) -> DeviceChoice {
        DeviceChoice { device: self.device, precision: self.precision }
    }

    /// All grid points, deduplicated, in a stable order: base first, then each sweep.
    pub fn points(&self) -> Vec<GridPoint> {
        let g = &self.grid;
        let mut points = vec![g.base];
        points.extend(g.fractions.iter().map(|&fraction| GridPoint { fraction, ..g.base }));
        points.extend(
            g.image_token_fractions.iter().map(|&image_token_fraction| GridPoint { image_token_fraction, ..g.base }),
        );
        points.extend(g.instruction_shares.iter().map(|&instruction_share| GridPoint { instruction_share, ..g.base }));
        let mut seen = Vec::<GridPoint>::new();
        for p in points {
            if !seen.contains(&p) {
                seen.push(p);
            }
        }
        seen
    }

    /// Every way this study departs from the paper's protocol, in words for the report's header.
    pub fn protocol_departures(&self) -> Vec<String> {
        let mut out = vec![format!(
            "model preset {:?} trained on {} text tokens (the paper: 79M parameters on 237B tokens, 1.4B on 4.3T)",
            self.model.preset, self.pretrain.tokens
        )];
        if !is_siglip_dir(Path::new(&self.encoder)) {
            out.push(format!("vision encoder {:?} instead of SigLIP", self.encoder));
        }
        if self.cooldown.images_per_row > 1 {
            out.push(format!(
                "up to {} image-caption examples per cooldown row (the paper: one image per sequence)",
                self.cooldown.images_per_row
            ));
        }
        if self.cooldown.fill_image_rows {
            out.push(
                "cooldown image rows filled with the text stream after their examples (the paper pads them)".into(),
            );
        }
        out.push(
            "the instruction share counts examples within the image part of the cooldown mix, not tokens".to_string(),
        );
        if let Some(n) = self.finetune.max_examples {
            out.push(format!("fine-tuning on a seeded subset of at most {n} conversations"));
        }
        out.push(format!(
            "grid points compared after {} fine-tuning epochs; each epoch count is its own fine-tuning run with its own warmup and decay",
            self.finetune.compare_epoch
        ));
        let g = &self.grid;
        let replicated = if g.replicate_primary_arms {
            "the base point and every primary contrast's other arm"
        } else {
            "the base point"
        };
        out.push(format!("seeds: {:?} everywhere, plus {:?} at {replicated}", g.seeds, g.extra_base_seeds));
        out.push("vision-language tasks are small stand-ins for VQAv2 / GQA / TextVQA (README's task table); text by multiple choice where the text-only model is above chance, else held-out bits-per-byte".to_string());
        out
    }

    /// Every stage's micro-batch set to `micro_batch_size` when one is given (a command-line
    /// override; the batch stays each stage's `batch_size`).
    pub fn override_micro_batch_size(&mut self, micro_batch_size: Option<usize>) {
        for m in [
            &mut self.pretrain.micro_batch_size,
            &mut self.cooldown.micro_batch_size,
            &mut self.finetune.micro_batch_size,
        ] {
            *m = micro_batch_size.or(*m);
        }
    }

    /// Refuses impossible values before any training starts, naming the field.
    pub fn validate(&self) -> Result<()> {
        let unit = vlmix_data::mixing::check_fraction;
        let positive = |field: &str, v: f64| -> Result<()> {
            if v <= 0.0 || !v.is_finite() {
                bail!("{field} = {v} must be a positive number");
            }
            Ok(())
        };
        if self.name.trim().is_empty() {
            bail!("name must not be empty");
        }
        self.device_choice().check().context("study fields `device`, `precision`")?;
        if self.encoder_trainable_blocks > 0 && !is_siglip_dir(Path::new(&self.encoder)) {
            bail!(
                "encoder_trainable_blocks = {} needs a SigLIP directory as `encoder` (blocks of {:?} cannot be unfrozen)",
                self.encoder_trainable_blocks,
                self.encoder
            );
        }
        let p = &self.pretrain;
        positive("pretrain.tokens", p.tokens as f64)?;
        positive("pretrain.batch_size", p.batch_size as f64)?;
        positive("pretrain.peak_lr", p.peak_lr)?;
        if p.min_lr < 0.0 || p.min_lr > p.peak_lr {
            bail!("pretrain.min_lr = {} must lie in [0, pretrain.peak_lr]", p.min_lr);
        }
        for (i, &f) in p.checkpoint_fractions.iter().enumerate() {
            unit(&format!("pretrain.checkpoint_fractions[{i}]"), f)?;
        }
        let c = &self.cooldown;
        positive("cooldown.tokens", c.tokens as f64)?;
        positive("cooldown.batch_size", c.batch_size as f64)?;
        positive("cooldown.fresh_peak_lr", c.fresh_peak_lr)?;
        let f = &self.finetune;
        positive("finetune.epochs", f.epochs as f64)?;
        if f.compare_epoch == 0 || f.compare_epoch > f.epochs {
            bail!("finetune.compare_epoch = {} must lie in 1..=finetune.epochs ({})", f.compare_epoch, f.epochs);
        }
        positive("finetune.batch_size", f.batch_size as f64)?;
        positive("finetune.peak_lr", f.peak_lr)?;
        positive("cooldown.images_per_row", c.images_per_row as f64)?;

        for (field, micro) in
            [("pretrain", p.micro_batch_size), ("cooldown", c.micro_batch_size), ("finetune", f.micro_batch_size)]
        {
            if micro == Some(0) {
                bail!("{field}.micro_batch_size must be positive (or absent, to fit it to this machine's memory)");
            }
        }

        let g = &self.grid;
        let checks: [(&str, Vec<f64>); 4] = [
            ("grid.base", vec![g.base.fraction, g.base.image_token_fraction, g.base.instruction_share]),
            ("grid.fractions", g.fractions.clone()),
            ("grid.image_token_fractions", g.image_token_fractions.clone()),
            ("grid.instruction_shares", g.instruction_shares.clone()),
        ];
        for (field, values) in &checks {
            for (i, &v) in values.iter().enumerate() {
                unit(&format!("{field}[{i}]"), v)?;
            }
        }
        if g.seeds.is_empty() {
            bail!("grid.seeds must list at least one seed");
        }
        let all_seeds = [&g.seeds[..], &g.extra_base_seeds[..]].concat();
        if let Some(i) = (1..all_seeds.len()).find(|&i| all_seeds[..i].contains(&all_seeds[i])) {
            bail!("seed {} is listed twice in grid.seeds and grid.extra_base_seeds", all_seeds[i]);
        }
        let kept: Vec<f64> = p.checkpoint_fractions.clone();
        if let Some(from) = &p.from {
            if let Some(point) = self.points().into_iter().find(|pt| pt.fraction > 0.0 && pt.fraction < 1.0) {
                bail!("grid: introduction fraction {} needs a partly trained text model, but pretrain.from = {:?} gives only the finished one (use 0 or 1)", point.fraction, from.display());
            }
        }
        for point in self.points().into_iter().filter(|_| p.from.is_none()) {
            let interior = point.fraction > 0.0 && point.fraction < 1.0;
            if interior && !kept.iter().any(|&k| (k - point.fraction).abs() < 1e-9) {
                bail!(
                    "grid: introduction fraction {} has no checkpoint; add it to pretrain.checkpoint_fractions (now {:?})",
                    point.fraction,
                    kept
                );
            }
        }
        let unique_vision: BTreeSet<&String> = self.eval.vision_tasks.iter().collect();
        if unique_vision.len() != self.eval.vision_tasks.len() {
            bail!("eval.vision_tasks lists a task twice");
        }
        positive("eval.max_items_per_task", self.eval.max_items_per_task as f64)?;
        for (i, task) in self.verdicts.vision_tasks.iter().enumerate() {
            if !self.eval.vision_tasks.contains(task) {
                bail!("verdicts.vision_tasks[{i}] = {task:?} is not in eval.vision_tasks {:?}", self.eval.vision_tasks);
            }
        }
        if let Some([lo, hi]) = self.verdicts.image_token_optimum {
            unit("verdicts.image_token_optimum[0]", lo)?;
            unit("verdicts.image_token_optimum[1]", hi)?;
            if lo > hi {
                bail!("verdicts.image_token_optimum = [{lo}, {hi}] must be [lo, hi] with lo <= hi");
            }
        }
        for (field, value) in
            [("eval.max_vision_items", self.eval.max_vision_items), ("eval.max_text_items", self.eval.max_text_items)]
        {
            value.map_or(Ok(()), |v| positive(field, v as f64))?;
        }
        self.data.validate()
    }
}

impl EvalConfig {
    /// Items scored per task: the first N of each file, the same for every model of the study.
    pub fn item_limit(&self) -> ItemLimit {
        ItemLimit {
            vision: Some(self.max_vision_items.unwrap_or(self.max_items_per_task)),
            text: Some(self.max_text_items.unwrap_or(self.max_items_per_task)),
        }
    }
}

/// What the config means once resolved against the files it names: the runner, the dry run and
/// the eval nodes read the model, encoder and schedules from here only.
impl StudyConfig {
    /// The study's model: preset, overrides, and the tokenizer's vocabulary; `pretrain.from`'s
    /// model (at `model.seq_len` when given) when the study starts from a checkpoint.
    pub fn model_config(&self, vocab: usize) -> Result<LmConfig> {
        if let Some(from) = self.imported_checkpoint()? {
            let mut lm = StageRecord::of_checkpoint(&from)
                .map(|r| r.model)
                .with_context(|| format!("study field `pretrain.from` ({})", from.display()))?;
            if lm.vocab != vocab {
                bail!("pretrain.from = {}: the model's vocabulary has {} tokens but the tokenizer has {vocab}; start from a model of this tokenizer", from.display(), lm.vocab);
            }
            lm.seq_len = self.model.seq_len.unwrap_or(lm.seq_len);
            lm.validate().context("study field `model.seq_len`")?;
            return Ok(lm);
        }
        let m = &self.model;
        let mut lm = LmConfig::preset(&m.preset).context("study field `model.preset`")?;
        lm.vocab = vocab;
        lm.d_model = m.d_model.unwrap_or(lm.d_model);
        lm.n_layers = m.n_layers.unwrap_or(lm.n_layers);
        lm.n_heads = m.n_heads.unwrap_or(lm.n_heads);
        lm.seq_len = m.seq_len.unwrap_or(lm.seq_len);
        lm.validate().context("study field `model`")?;
        Ok(lm)
    }

    /// The checkpoint `pretrain.from` names (resolved, absolute), when the study starts from one.
    pub fn imported_checkpoint(&self) -> Result<Option<PathBuf>> {
        let Some(from) = &self.pretrain.from else { return Ok(None) };
        let checkpoint = resolve_checkpoint(from).context("study field `pretrain.from`")?;
        Ok(Some(std::fs::canonicalize(&checkpoint).unwrap_or(checkpoint)))
    }

    /// The study's encoder, with a SigLIP directory made absolute so stage records stay valid anywhere.
    pub fn encoder_spec(&self) -> EncoderSpec {
        let source =
            std::fs::canonicalize(&self.encoder).map_or_else(|_| self.encoder.clone(), |p| p.display().to_string());
        EncoderSpec {
            source,
            layer: FeatureLayer::default(),
            resolution: None,
            trainable_blocks: self.encoder_trainable_blocks,
        }
    }

    /// The text run's LR schedule at `seq` positions per sequence.
    pub fn text_schedule(&self, seq: usize) -> WarmupCosine {
        let p = &self.pretrain;
        WarmupCosine {
            peak: p.peak_lr,
            floor: p.min_lr,
            warmup_steps: p.warmup_steps,
            total_steps: steps_for(p.tokens, p.batch_size, seq),
        }
    }

    /// The LR schedule of a cooldown branched at `fraction` of the text run (its steps are the
    /// stage's to count).
    pub fn cooldown_schedule(&self, fraction: f64, seq: usize) -> CooldownSchedule {
        CooldownSchedule {
            text: self.text_schedule(seq),
            fraction,
            fresh_peak: self.cooldown.fresh_peak_lr,
            fresh_warmup_steps: self.cooldown.fresh_warmup_steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smoke() -> StudyConfig {
        let text = include_str!("../../../configs/study/smoke.toml");
        toml::from_str(text).expect("smoke preset parses")
    }

    #[test]
    fn presets_parse_and_validate() {
        for text in [
            include_str!("../../../configs/study/smoke.toml"),
            include_str!("../../../configs/study/mini.toml"),
            include_str!("../../../configs/study/openlm-79m.toml"),
            include_str!("../../../configs/study/openlm-1b.toml"),
        ] {
            let config: StudyConfig = toml::from_str(text).unwrap();
            config.validate().unwrap();
        }
    }

    #[test]
    fn points_are_sweeps_around_the_base_without_duplicates() {
        let mut c = smoke();
        c.grid.fractions = vec![0.0, 0.5, 1.0];
        c.grid.image_token_fractions = vec![0.3, 0.6];
        let points = c.points();
        assert_eq!(points.len(), 4, "{points:?}");
        assert_eq!(points[0], c.grid.base);
        assert!(points.iter().any(|p| p.fraction == 0.0 && p.image_token_fraction == 0.3));
        assert!(points.iter().any(|p| p.fraction == 0.5 && p.image_token_fraction == 0.6));
    }

    fn error_of(c: &StudyConfig) -> String {
        format!("{:#}", c.validate().unwrap_err())
    }

    #[test]
    fn impossible_values_are_refused_naming_the_field() {
        let mut c = smoke();
        c.grid.image_token_fractions = vec![0.2, 1.5];
        assert!(error_of(&c).contains("grid.image_token_fractions[1] = 1.5"), "{}", error_of(&c));

        let mut c = smoke();
        c.grid.fractions = vec![0.3];
        let e = error_of(&c);
        assert!(e.contains("fraction 0.3 has no checkpoint"), "{e}");

        let mut c = smoke();
        c.encoder_trainable_blocks = 2;
        let e = error_of(&c);
        assert!(e.contains("encoder_trainable_blocks = 2 needs a SigLIP directory"), "{e}");

        let mut c = smoke();
        c.pretrain.min_lr = 1.0;
        assert!(error_of(&c).contains("pretrain.min_lr"));

        let mut c = smoke();
        c.finetune.micro_batch_size = Some(0);
        assert!(error_of(&c).contains("finetune.micro_batch_size must be positive"), "{}", error_of(&c));
    }

    #[test]
    fn unknown_keys_are_refused_naming_them() {
        let text = include_str!("../../../configs/study/smoke.toml");
        let old = text.replace("image_token_fractions = []", "image_fractions = [0.6]");
        assert_ne!(old, text);
        let err = toml::from_str::<StudyConfig>(&old).unwrap_err().to_string();
        assert!(err.contains("unknown field `image_fractions`"), "{err}");
    }

    #[test]
    fn device_and_precision_parse_and_bad_values_name_the_field() {
        let text = include_str!("../../../configs/study/smoke.toml");
        let with = |keys: &str| format!("{keys}\n{text}");
        let c: StudyConfig = toml::from_str(&with("device = \"cuda\"\nprecision = \"bf16\"")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.device_choice(), DeviceChoice { device: DeviceKind::Cuda, precision: Precision::Bf16 });
        assert_eq!(smoke().device_choice(), DeviceChoice::default(), "absent keys mean cpu, f32");

        for (keys, field, value) in
            [("device = \"tpu\"", "device", "tpu"), ("precision = \"fp16\"", "precision", "fp16")]
        {
            let err = toml::from_str::<StudyConfig>(&with(keys)).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains(value), "{err}");
        }
        let c: StudyConfig = toml::from_str(&with("precision = \"bf16\"")).unwrap();
        let e = error_of(&c);
        assert!(e.contains("`precision`") && e.contains("precision bf16 needs device cuda"), "{e}");
    }

    #[test]
    fn default_device_keys_leave_the_pinned_config_as_before() {
        let json = serde_json::to_string(&smoke()).unwrap();
        assert!(!json.contains("device") && !json.contains("precision"), "{json}");
        let mut c = smoke();
        c.device = DeviceKind::Cuda;
        assert!(serde_json::to_string(&c).unwrap().contains("\"device\":\"cuda\""));
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key() {
        let text = include_str!("../../../configs/study/smoke.toml").replace("[finetune]", "[finetune]\nepochz = 3");
        let err = toml::from_str::<StudyConfig>(&text).unwrap_err().to_string();
        assert!(err.contains("epochz"), "{err}");
    }
}
