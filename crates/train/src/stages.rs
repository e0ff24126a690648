//! The paper's three training stages as library calls: each sets up model, data, schedule and
//! checkpoints, then runs the shared loop in `dir` (resuming whatever a killed run left there).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use vlmix_data::mixing::{MixConfig, TextStart};
use vlmix_data::packing::TokenDocuments;
use vlmix_data::tokenizer::SpecialTokens;
use vlmix_engine::adamw::{AdamW, AdamWConfig};
use vlmix_engine::checkpoint::{read_state, OPTIMIZER_FILE, STATE_FILE};
use vlmix_engine::device::gib;
use vlmix_engine::params::ParamStore;
use vlmix_engine::Device;
use vlmix_models::lm::{Lm, LmConfig};
use vlmix_models::memory::{MemoryPlan, TrainShape, VisionShape};
use vlmix_models::stage_record::{load_vlm, weights_of, StageRecord};
use vlmix_models::vision::encoder::EncoderSpec;
use vlmix_models::vision::feature_cache::FeatureCache;
use vlmix_models::vision::tail::EncoderTail;
use vlmix_models::vlm::Vlm;

use crate::corpus::ImageCorpus;
use crate::schedule::{steps_for, CooldownSchedule, Schedule, WarmupCosine};
use crate::sources::{InstructSource, MixedSource, TextSource};
use crate::text_model::TextModel;
use crate::trainer::{train, LoopConfig, LoopOutcome, OnStep};
use crate::vision_model::VisionModel;

/// Gradient-norm clipping threshold of every stage (OpenLM's default).
pub const CLIP_NORM: f32 = 1.0;
/// Rolling checkpoints for resumption are written this often (steps).
pub const SAVE_EVERY: u64 = 50;

/// Plans a stage's memory on `dev` before anything is allocated: the micro-batch (`requested`, or
/// the largest that fits in the device's available memory), or an error naming the largest
/// consumers and that memory.
pub fn plan_memory<Dev: Device>(stage: &str, dev: &Dev, shape: &TrainShape, batching: Batching) -> Result<MemoryPlan> {
    let Batching { batch_size: batch, micro_batch_size: requested } = batching;
    let plan = shape
        .plan(batch, requested, dev.available_memory()?)
        .with_context(|| format!("{stage} does not fit in memory"))?;
    tracing::info!(stage, batch, micro_batch = plan.micro_batch, passes = plan.micro_batches, needs = %gib(plan.breakdown.total()), available = %gib(plan.available), "memory plan");
    Ok(plan)
}

/// How a stage batches its sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batching {
    /// Sequences per optimizer step (the global batch).
    pub batch_size: usize,
    /// Sequences per forward/backward pass (gradients accumulate over the passes of a step); chosen
    /// from the memory plan when absent.
    #[serde(default)]
    pub micro_batch_size: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PretrainSpec {
    pub model: LmConfig,
    pub schedule: WarmupCosine,
    #[serde(flatten)]
    pub batching: Batching,
    pub weight_decay: f64,
    /// Fractions of the run whose checkpoints are kept.
    pub keep_fractions: Vec<f64>,
    pub seed: u64,
}

impl PretrainSpec {
    /// Step at which fraction `f` of the run is complete.
    pub fn step_at(&self, fraction: f64) -> u64 {
        (fraction * self.schedule.total_steps as f64).round() as u64
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PretrainOutcome {
    pub run: LoopOutcome,
    /// (fraction, checkpoint directory) for every kept fraction above 0.
    pub checkpoints: Vec<(f64, PathBuf)>,
}

/// Text-only pre-training on `dev` with warmup + cosine over the planned run, keeping fraction
/// checkpoints.
pub fn pretrain<D: TokenDocuments, Dev: Device>(
    dev: Dev,
    spec: &PretrainSpec,
    docs: D,
    special: SpecialTokens,
    dir: &Path,
    on_step: &mut OnStep,
) -> Result<PretrainOutcome> {
    let shape = TrainShape::text(spec.model.clone(), dev.memory());
    let plan = plan_memory("pre-training", &dev, &shape, spec.batching)?;
    StageRecord { model: spec.model.clone(), encoder: None }.write(dir)?;
    let mut params = ParamStore::new(dev);
    let lm = Lm::new(spec.model.clone(), &mut params, spec.seed)?;
    let mut model = TextModel { lm, params, micro_batch: plan.micro_batch };
    let mut optimizer =
        AdamW::new(AdamWConfig { weight_decay: spec.weight_decay, ..AdamWConfig::default() }, &model.params);
    let mut source = TextSource::new(docs, spec.model.seq_len, spec.batching.batch_size, special.eos, spec.seed)?;
    let keep_steps: Vec<u64> = spec.keep_fractions.iter().map(|&f| spec.step_at(f)).filter(|&s| s > 0).collect();
    let config = LoopConfig {
        schedule: Schedule::WarmupCosine(spec.schedule.clone()),
        clip_norm: CLIP_NORM,
        keep_steps,
        save_every: SAVE_EVERY,
        stop_step: None,
    };
    let run = train(&mut model, &mut optimizer, &mut source, &config, dir, on_step)?;
    let checkpoints = spec
        .keep_fractions
        .iter()
        .filter_map(|&f| run.kept.iter().find(|(s, _)| *s == spec.step_at(f)).map(|(_, d)| (f, d.clone())))
        .collect();
    Ok(PretrainOutcome { run, checkpoints })
}

fn one() -> usize {
    1
}

/// Where a cooldown starts: random init (the paper's 0 %) or a text checkpoint's weights.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Start {
    Scratch,
    TextCheckpoint(PathBuf),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CooldownSpec {
    pub model: LmConfig,
    pub start: Start,
    pub schedule: CooldownSchedule,
    /// Tokens to train on: real (non-pad) image and text tokens, or every position with
    /// `count_padding` (an ablation: a more padded mix then sees fewer real tokens).
    pub tokens: u64,
    pub count_padding: bool,
    #[serde(flatten)]
    pub batching: Batching,
    pub weight_decay: f64,
    pub image_token_fraction: f64,
    pub instruction_share: f64,
    /// Image examples per row, at most (1: the paper's one image per sequence).
    #[serde(default = "one")]
    pub images_per_row: usize,
    /// Fill image rows' padding with the text stream (see [`MixConfig::fill_image_rows`]).
    #[serde(default)]
    pub fill_image_rows: bool,
    /// The encoder whose cached features the corpus holds; a trainable tail of it (SigLIP's last
    /// blocks, the patch projection) is created here and trained with the VLM.
    pub encoder: EncoderSpec,
    /// When false only the projector (and encoder tail) trains: the LM is frozen.
    pub train_lm: bool,
    pub seed: u64,
    /// Which text the cooldown reads.
    #[serde(default)]
    pub text_stream: TextStream,
    /// Start the LM's AdamW moments (and their bias-correction counts) from the branch checkpoint's
    /// optimizer state instead of zeros; new parameters (projector, encoder tail) start fresh.
    #[serde(default)]
    pub continue_optimizer: bool,
}

/// The text stream of a cooldown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextStream {
    /// The text corpus from its start, in the cooldown seed's order (a replay of what pre-training
    /// read first).
    #[default]
    Restart,
    /// Pre-training's own stream (the document order of `pretrain_seed`) from the data cursor of the
    /// branch checkpoint: text the model has not seen, as in the paper, where the cooldown replaces
    /// the rest of the text run.
    Continue { pretrain_seed: u64 },
}

/// The text/image mix of a cooldown over `corpus`.
fn mix_config(spec: &CooldownSpec, corpus: &ImageCorpus) -> Result<MixConfig> {
    let text_start = match (&spec.start, spec.text_stream) {
        (Start::TextCheckpoint(checkpoint), TextStream::Continue { pretrain_seed }) => {
            let state = read_state(checkpoint)?;
            let cursor = serde_json::from_value(state.data_cursor).with_context(|| {
                format!(
                    "{}: field `data_cursor` is not a text stream position; branch with a restarted text stream",
                    checkpoint.join(STATE_FILE).display()
                )
            })?;
            Some(TextStart { seed: pretrain_seed, cursor })
        }
        _ => None,
    };
    Ok(MixConfig {
        seq_len: spec.model.seq_len,
        n_image_tokens: corpus.n_image_tokens,
        image_token_fraction: spec.image_token_fraction,
        instruction_share: spec.instruction_share,
        seed: spec.seed,
        log_every: 100,
        text_start,
        images_per_row: spec.images_per_row,
        fill_image_rows: spec.fill_image_rows,
    })
}

/// Steps the cooldown of `spec` needs to read its token budget: a dry run of the sampler counts
/// real tokens, so the schedule spans what the run will read.
fn cooldown_steps<D: TokenDocuments + Clone>(
    spec: &CooldownSpec,
    docs: D,
    corpus: &ImageCorpus,
    special: SpecialTokens,
) -> Result<u64> {
    if spec.count_padding {
        return Ok(steps_for(spec.tokens, spec.batching.batch_size, spec.model.seq_len));
    }
    MixedSource::steps_for_tokens(
        docs,
        corpus,
        mix_config(spec, corpus)?,
        special,
        spec.batching.batch_size,
        spec.tokens,
    )
}

/// Image-text continued pre-training on `dev` branched from `spec.start`, at the requested
/// image-token fraction.
#[allow(clippy::too_many_arguments)] // the stage's inputs, each distinct; a struct would only rename them
pub fn cooldown<D: TokenDocuments + Clone, Dev: Device>(
    dev: Dev,
    spec: &CooldownSpec,
    docs: D,
    corpus: &ImageCorpus,
    cache: &FeatureCache,
    special: SpecialTokens,
    dir: &Path,
    on_step: &mut OnStep,
) -> Result<LoopOutcome> {
    let vision = VisionShape::new(corpus.n_image_tokens, corpus.feature_width, Some(&spec.encoder))?;
    let shape = TrainShape::vlm(spec.model.clone(), vision, dev.memory());
    let plan = plan_memory("cooldown", &dev, &shape, spec.batching)?;
    StageRecord { model: spec.model.clone(), encoder: Some(spec.encoder.clone()) }.write(dir)?;
    let mut params = ParamStore::new(dev);
    let lm = Lm::new(spec.model.clone(), &mut params, spec.seed)?;
    if let Start::TextCheckpoint(checkpoint) = &spec.start {
        params
            .load_safetensors(&weights_of(checkpoint))
            .with_context(|| format!("branching from {}", checkpoint.display()))?;
    }
    if !spec.train_lm {
        let lm_ids: Vec<_> = params.ids().collect();
        for id in lm_ids {
            params.set_trainable(id, false);
        }
    }
    let tail = EncoderTail::open(&spec.encoder, &mut params, spec.seed ^ 0x7a11)?;
    if let Some(tail) = &tail {
        anyhow::ensure!(
            tail.input_width() == corpus.feature_width,
            "the encoder tail takes width {} but the image corpus holds width {}",
            tail.input_width(),
            corpus.feature_width
        );
    }
    let projector_width = tail.as_ref().map_or(corpus.feature_width, EncoderTail::output_width);
    let mut vlm = Vlm::with_new_projector(lm, projector_width, &mut params, spec.seed ^ 0x9e37_79b9)?;
    if let Some(tail) = tail {
        vlm.set_tail(tail)?;
    }
    let mut model = VisionModel { vlm, params, micro_batch: plan.micro_batch };
    let mut optimizer =
        AdamW::new(AdamWConfig { weight_decay: spec.weight_decay, ..AdamWConfig::default() }, &model.params);
    if let (Start::TextCheckpoint(checkpoint), true) = (&spec.start, spec.continue_optimizer) {
        let continued = optimizer
            .continue_from(&checkpoint.join(OPTIMIZER_FILE), &model.params)
            .with_context(|| format!("continuing the optimizer state of {}", checkpoint.display()))?;
        tracing::info!(continued, checkpoint = %checkpoint.display(), "AdamW moments continued");
    }
    let schedule = spec.schedule.over(cooldown_steps(spec, docs.clone(), corpus, special)?);
    let mut source =
        MixedSource::new(docs, corpus, cache, mix_config(spec, corpus)?, special, spec.batching.batch_size)?;
    let total = schedule.total_steps();
    let config =
        LoopConfig { schedule, clip_norm: CLIP_NORM, keep_steps: vec![total], save_every: SAVE_EVERY, stop_step: None };
    let outcome = train(&mut model, &mut optimizer, &mut source, &config, dir, on_step)?;
    tracing::info!(
        achieved = source.achieved_image_fraction(),
        requested = spec.image_token_fraction,
        "cooldown image-token fraction"
    );
    Ok(outcome)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneSpec {
    pub model: LmConfig,
    /// The cooldown checkpoint to fine-tune.
    pub start: PathBuf,
    /// Epochs to train; the LR schedule's warmup and decay span exactly these, so an N-epoch model
    /// is annealed (the paper fine-tunes each epoch count as its own run). Every epoch end is kept.
    pub epochs: u32,
    /// Fine-tune on a seeded random subset of at most this many conversations.
    pub max_examples: Option<usize>,
    #[serde(flatten)]
    pub batching: Batching,
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneOutcome {
    pub run: LoopOutcome,
    /// (epoch, checkpoint directory) at the end of every epoch.
    pub epochs: Vec<(u32, PathBuf)>,
}

/// Instruction fine-tuning: fresh warmup + cosine over all epochs, loss on answers only, keeping
/// every epoch-end model; on `dev`.
pub fn finetune<Dev: Device>(
    dev: Dev,
    spec: &FinetuneSpec,
    corpus: &ImageCorpus,
    cache: &FeatureCache,
    special: SpecialTokens,
    dir: &Path,
    on_step: &mut OnStep,
) -> Result<FinetuneOutcome> {
    let encoder = StageRecord::of_checkpoint(&spec.start)?.encoder;
    let vision = VisionShape::new(corpus.n_image_tokens, corpus.feature_width, encoder.as_ref())?;
    let shape = TrainShape::vlm(spec.model.clone(), vision, dev.memory());
    let plan = plan_memory("fine-tuning", &dev, &shape, spec.batching)?;
    StageRecord { model: spec.model.clone(), encoder: encoder.clone() }.write(dir)?;
    let (vlm, params) = load_vlm(dev, &spec.model, &spec.start)?;
    anyhow::ensure!(
        vlm.encoder_width() == corpus.feature_width,
        "{} takes image features of width {} but the image corpus holds width {}: fine-tune with the encoder the cooldown used",
        spec.start.display(),
        vlm.encoder_width(),
        corpus.feature_width
    );
    let mut model = VisionModel { vlm, params, micro_batch: plan.micro_batch };
    let mut optimizer =
        AdamW::new(AdamWConfig { weight_decay: spec.weight_decay, ..AdamWConfig::default() }, &model.params);
    let mut source = InstructSource::new(
        corpus,
        cache,
        special,
        spec.model.seq_len,
        spec.batching.batch_size,
        spec.max_examples,
        spec.seed,
    )?;
    let per_epoch = source.steps_per_epoch();
    let total = per_epoch * spec.epochs as u64;
    let schedule = Schedule::WarmupCosine(WarmupCosine {
        peak: spec.peak_lr,
        floor: 0.0,
        warmup_steps: spec.warmup_steps.min(total / 2),
        total_steps: total,
    });
    let last_epoch = spec.epochs.max(1);
    let keep_steps: Vec<u64> = (1..=last_epoch as u64).map(|e| e * per_epoch).collect();
    let stop_step = Some(last_epoch as u64 * per_epoch);
    let config = LoopConfig { schedule, clip_norm: CLIP_NORM, keep_steps, save_every: SAVE_EVERY, stop_step };
    let run = train(&mut model, &mut optimizer, &mut source, &config, dir, on_step)?;
    let epochs = run.kept.iter().map(|(step, d)| ((step / per_epoch) as u32, d.clone())).collect();
    Ok(FinetuneOutcome { run, epochs })
}
