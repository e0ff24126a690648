//! The training loop every stage shares: batches in, AdamW steps out, resumable at any kill.
//!
//! Per step: fetch a batch, forward + backward (gradient accumulation over micro-batches is the
//! model's business: layers accumulate grads), stop on a non-finite loss *before* touching the
//! weights or any checkpoint, clip, AdamW at the schedule's LR, log metrics. Every `save_every` steps
//! and at each kept step a full checkpoint is written; older unkept checkpoints are pruned only after
//! a newer one is complete, so some complete checkpoint always exists.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use vlmix_data::mixing::achieved_image_fraction;
use vlmix_engine::adamw::AdamW;
use vlmix_engine::checkpoint::{
    latest_checkpoint, load_checkpoint, read_state, save_checkpoint, TrainState, LATEST_FILE, STATE_FILE,
};
use vlmix_engine::grad_clip::clip_grad_norm;
use vlmix_engine::nonfinite::ensure_finite;
use vlmix_engine::params::ParamStore;
use vlmix_engine::Device;

use crate::distributed::{self, World};
use crate::metrics::{MetricsLog, StepMetrics};
use crate::schedule::Schedule;

/// One optimizer step's worth of data, as the model consumes it.
pub trait Trainable {
    type Batch;
    /// Where parameters, gradients and the optimizer state live.
    type Dev: Device;
    fn params(&self) -> &ParamStore<Self::Dev>;
    fn params_mut(&mut self) -> &mut ParamStore<Self::Dev>;
    /// Sequences in a batch (what the data-parallel ranks split).
    fn sequences(batch: &Self::Batch) -> usize;
    /// Forward and backward over the batch's sequences `rows` (this rank's slice; all of them in a
    /// single process), accumulating gradients; returns their part of the batch's mean loss.
    fn forward_backward(&mut self, batch: &Self::Batch, rows: Range<usize>) -> Result<f32>;
}

/// A deterministic, resumable stream of batches.
pub trait BatchSource {
    type Batch;
    fn next_batch(&mut self) -> Result<Self::Batch>;
    /// Tokens in a batch: (image tokens, all tokens), pads excluded.
    fn token_counts(&self, batch: &Self::Batch) -> (u64, u64);
    fn cursor(&self) -> serde_json::Value;
    fn restore(&mut self, cursor: &serde_json::Value) -> Result<()>;
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoopConfig {
    pub schedule: Schedule,
    pub clip_norm: f32,
    /// Steps after which a checkpoint is kept for good (e.g. the pre-training fractions).
    pub keep_steps: Vec<u64>,
    /// Interval of rolling checkpoints that only serve resumption.
    pub save_every: u64,
    /// Stop here instead of at the schedule's end (a fine-tune whose later epochs nobody evaluates):
    /// the steps taken are exactly those of the full run, since the LR still follows the whole schedule.
    pub stop_step: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoopOutcome {
    pub steps: u64,
    pub tokens: u64,
    pub image_tokens: u64,
    pub final_loss: f64,
    /// Kept step -> checkpoint directory.
    pub kept: Vec<(u64, PathBuf)>,
}

/// Progress callback: (step, total steps, metrics of the step just taken).
pub type OnStep<'a> = dyn FnMut(u64, u64, &StepMetrics) + 'a;

#[derive(Default, Serialize, Deserialize)]
struct Counters {
    tokens: u64,
    image_tokens: u64,
}

/// Trains from the latest checkpoint under `dir/checkpoints` (or from scratch) to the schedule's end
/// (or `stop_step`).
/// In a data-parallel job (`distributed`) every rank runs this loop on the same batches, gradients
/// and loss are summed over ranks before clipping, and rank 0 alone writes metrics and checkpoints;
/// a rank that fails aborts them all.
pub fn train<M, S>(
    model: &mut M,
    optimizer: &mut AdamW<M::Dev>,
    source: &mut S,
    config: &LoopConfig,
    dir: &Path,
    on_step: &mut OnStep,
) -> Result<LoopOutcome>
where
    M: Trainable,
    S: BatchSource<Batch = M::Batch>,
{
    let world = distributed::world()?;
    let result = train_ranks(&world, model, optimizer, source, config, dir, on_step);
    match result {
        Err(e) if world.size > 1 => distributed::abort(&world, &e),
        other => other,
    }
}

fn train_ranks<M, S>(
    world: &World,
    model: &mut M,
    optimizer: &mut AdamW<M::Dev>,
    source: &mut S,
    config: &LoopConfig,
    dir: &Path,
    on_step: &mut OnStep,
) -> Result<LoopOutcome>
where
    M: Trainable,
    S: BatchSource<Batch = M::Batch>,
{
    let ckpt_root = dir.join("checkpoints");
    let (mut step, mut counters) = match resume(world, &ckpt_root, model, optimizer, source)? {
        Some((step, counters, dir)) => {
            tracing::info!(step, checkpoint = %dir.display(), "resuming");
            (step, counters)
        }
        None => (0, Counters::default()),
    };
    let total = config.stop_step.map_or(config.schedule.total_steps(), |s| s.min(config.schedule.total_steps()));
    let mut log = if world.is_leader() { Some(MetricsLog::open(&dir.join("metrics.jsonl"), step)?) } else { None };
    let mut scratch = Vec::new();
    let mut last_loss = f64::NAN;
    while step < total {
        let started = Instant::now();
        let batch = source.next_batch()?;
        let (image_tokens, tokens) = source.token_counts(&batch);
        model.params_mut().zero_grad();
        let rows = world.shard(M::sequences(&batch));
        let mut loss = model.forward_backward(&batch, rows)?;
        if world.size > 1 {
            loss = sum_over_ranks(world, model.params_mut(), loss, &mut scratch)?;
        }
        ensure_finite("loss", loss, step)?;
        let grad_norm = clip_grad_norm(model.params_mut(), config.clip_norm);
        ensure_finite("gradient norm", grad_norm, step)?;
        let lr = config.schedule.lr(step);
        optimizer.step(model.params_mut(), lr);
        step += 1;
        counters.tokens += tokens;
        counters.image_tokens += image_tokens;
        last_loss = loss as f64;
        let metrics = StepMetrics {
            step: step - 1,
            tokens: counters.tokens,
            loss: last_loss,
            lr,
            achieved_image_fraction: achieved_image_fraction(image_tokens, tokens),
            tokens_per_s: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
            grad_norm: grad_norm as f64,
        };
        if let Some(log) = &mut log {
            log.write(&metrics)?;
        }
        on_step(step, total, &metrics);
        let keep = config.keep_steps.contains(&step);
        if world.is_leader() && (keep || step % config.save_every.max(1) == 0 || step == total) {
            let state = TrainState {
                step,
                schedule: serde_json::to_value(&config.schedule)?,
                counters: serde_json::to_value(&counters)?,
                data_cursor: source.cursor(),
            };
            save_checkpoint(&ckpt_root, &state, model.params(), optimizer)?;
            prune(&ckpt_root, &config.keep_steps)?;
        }
    }
    if world.size > 1 {
        // The other ranks read rank 0's checkpoints once this returns.
        distributed::all_reduce_sum(world, &mut [0.0], &mut scratch)?;
    }
    let kept = config.keep_steps.iter().filter_map(|&s| step_dir(&ckpt_root, s).map(|d| (s, d))).collect();
    Ok(LoopOutcome {
        steps: step,
        tokens: counters.tokens,
        image_tokens: counters.image_tokens,
        final_loss: last_loss,
        kept,
    })
}

/// Sums every gradient and the loss over the ranks in one all-reduce (through host memory, as
/// MPI on the CPU needs); returns the summed loss.
fn sum_over_ranks<D: Device>(
    world: &World,
    params: &mut ParamStore<D>,
    loss: f32,
    scratch: &mut Vec<f32>,
) -> Result<f32> {
    let ids: Vec<_> = params.ids().collect();
    let mut flat = Vec::with_capacity(params.numel(false) + 1);
    for &id in &ids {
        flat.extend_from_slice(&params.device().to_host(params.grad(id)));
    }
    flat.push(loss);
    distributed::all_reduce_sum(world, &mut flat, scratch)?;
    let mut at = 0;
    for &id in &ids {
        let n = params.info(id).numel();
        let dev = params.device().clone();
        dev.upload_into(&flat[at..at + n], params.grad_mut(id));
        at += n;
    }
    Ok(flat[at])
}

/// Prefix a damaged checkpoint directory is renamed to, so neither `latest` nor pruning sees it again.
pub const DAMAGED_PREFIX: &str = "damaged-";

/// Where training resumes: the newest checkpoint that reads back whole, `latest` first, then the
/// other complete step directories, newest first. A damaged one (a truncated `state.json`, a tensor
/// cut short) is reported naming its file and set aside as `damaged-<name>` (by rank 0), so the node
/// reruns from the checkpoint before it, or from the start when there is none.
fn resume<M, S>(
    world: &World,
    root: &Path,
    model: &mut M,
    optimizer: &mut AdamW<M::Dev>,
    source: &mut S,
) -> Result<Option<(u64, Counters, PathBuf)>>
where
    M: Trainable,
    S: BatchSource<Batch = M::Batch>,
{
    let mut candidates = Vec::new();
    match latest_checkpoint(root) {
        Ok(Some(dir)) => candidates.push(dir),
        Ok(None) => {}
        Err(e) => tracing::warn!("{e:#}; looking for an earlier checkpoint"),
    }
    for dir in step_dirs_newest_first(root)? {
        if !candidates.contains(&dir) {
            candidates.push(dir);
        }
    }
    let mut restored_any = false;
    let mut damaged = Vec::new();
    for dir in candidates {
        match restore(&dir, model, optimizer, source, &mut restored_any) {
            Ok((step, counters)) => {
                if !damaged.is_empty() && world.is_leader() {
                    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    vlmix_atomic_file::write_atomic(&root.join(LATEST_FILE), name.as_bytes())?;
                }
                return Ok(Some((step, counters, dir)));
            }
            Err(e) => {
                tracing::warn!("damaged checkpoint: {e:#}; setting it aside and trying an earlier one");
                let e = format!("{e:#}");
                if world.is_leader() {
                    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let aside = root.join(format!("{DAMAGED_PREFIX}{name}"));
                    std::fs::rename(&dir, &aside)
                        .with_context(|| format!("setting damaged {} aside as {}", dir.display(), aside.display()))?;
                }
                damaged.push(e);
            }
        }
    }
    if damaged.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        !restored_any,
        "no checkpoint under {} reads back whole ({}), and one was half restored into this process's model; rerun the node (it then starts from the beginning)",
        root.display(),
        damaged.join("; ")
    );
    tracing::warn!(
        "no usable checkpoint under {} ({}): the node starts from the beginning",
        root.display(),
        damaged.join("; ")
    );
    Ok(None)
}

/// Restores one checkpoint into the model, optimizer and data source.
fn restore<M, S>(
    dir: &Path,
    model: &mut M,
    optimizer: &mut AdamW<M::Dev>,
    source: &mut S,
    restored_any: &mut bool,
) -> Result<(u64, Counters)>
where
    M: Trainable,
    S: BatchSource<Batch = M::Batch>,
{
    // What can be checked without touching the model comes first.
    let counters = serde_json::from_value(read_state(dir)?.counters).with_context(|| {
        format!(
            "{}: field `counters` is not this trainer's token counters; refusing to resume with wrong totals",
            dir.join(STATE_FILE).display()
        )
    })?;
    // Nothing is half-loaded when this fails; after it, the model holds the checkpoint's weights.
    let state = load_checkpoint(dir, model.params_mut(), optimizer)?;
    *restored_any = true;
    source.restore(&state.data_cursor).with_context(|| format!("restoring data cursor from {}", dir.display()))?;
    Ok((state.step, counters))
}

/// Complete step directories (`step-NNNNNNNN`, `step-NNNNNNNN-rK`), newest first.
fn step_dirs_newest_first(root: &Path) -> Result<Vec<PathBuf>> {
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut dirs: Vec<((u64, u64), PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("step-") else { continue };
        let (step, retry) = rest.split_once("-r").unwrap_or((rest, "0"));
        if let (Ok(step), Ok(retry)) = (step.parse::<u64>(), retry.parse::<u64>()) {
            dirs.push(((step, retry), entry.path()));
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    Ok(dirs.into_iter().map(|(_, d)| d).collect())
}

fn step_dir(root: &Path, step: u64) -> Option<PathBuf> {
    let dir = root.join(format!("step-{step:08}"));
    dir.is_dir().then_some(dir)
}

/// Removes complete checkpoints that are neither kept nor the latest.
fn prune(root: &Path, keep_steps: &[u64]) -> Result<()> {
    let latest = std::fs::read_to_string(root.join(LATEST_FILE)).unwrap_or_default();
    for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(step) = name.strip_prefix("step-").and_then(|s| s.get(..8)).and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        if name != latest.trim() && !keep_steps.contains(&step) {
            std::fs::remove_dir_all(root.join(&name))
                .with_context(|| format!("pruning {}", root.join(&name).display()))?;
        }
    }
    Ok(())
}
