//! `--dry-run`: the plan with each stage's memory plan (micro-batch, breakdown, the device's
//! available memory) and an estimated time per node from a probe run here and now.
//!
//! The probe never runs the global batch: it times one micro-batch of the full model when that step
//! is cheap, and otherwise one sequence of a one-layer copy at a shorter sequence (same width, heads
//! and vocabulary), scaled to the full step by training FLOPs, so even the 1.4B preset probes in
//! seconds and in a few GiB.

use std::time::Instant;

use anyhow::{Context, Result};
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_data::DataLayout;
use vlmix_engine::adamw::{AdamW, AdamWConfig};
use vlmix_engine::cpu::simd;
use vlmix_engine::device::gib;
use vlmix_engine::params::ParamStore;
use vlmix_engine::Device;
use vlmix_models::lm::{Lm, LmConfig, LmInput};
use vlmix_models::memory::{Breakdown, TrainShape, VisionShape, USABLE_FRACTION};
use vlmix_models::vision::encoder::{open_encoder, ImageEncoder};
use vlmix_models::vision::feature_cache::{FeatureCache, CACHE_SUBDIR};

use crate::config::StudyConfig;
use crate::plan::{NodeKind, Plan};
use vlmix_train::schedule::steps_for;
use vlmix_train::stages::Batching;

/// Largest step (training FLOPs) the probe runs on the full model; beyond it, a reduced copy.
const FULL_PROBE_FLOPS: f64 = 1e11;
/// Sequence length of the reduced probe.
const REDUCED_PROBE_SEQ: usize = 512;

/// Cost of a node's position relative to a pre-training position (the probe's), measured on the
/// `mini` runs of sessions 5 (Xeon) and 6 (Zen 3), per node against the same run's pre-training:
/// cooldowns 1.30 / 1.21 (image features through the projector, image-token blocks), fine-tuning
/// 1.04 / 0.98, evals 0.78 / 0.62 of the eval position count below, the text baseline 1.03 / 0.91.
/// Since then training projects only loss rows to the vocabulary, image rows are filled with text,
/// scoring runs only the continuation's queries and all rows of a pass at once. Refit in session 9
/// (Zen 3, new binary, the median probe reading ~7,000 positions/s): the 30 % cooldown 70.9 s,
/// a one-epoch fine-tune 19.8 s, an eval node 17-20 s, the text baseline 9.8 s.
const COOLDOWN_POSITION_COST: f64 = 0.85;
const FINETUNE_POSITION_COST: f64 = 0.6;
const EVAL_POSITION_COST: f64 = 0.42;
const TEXT_EVAL_POSITION_COST: f64 = 0.57;
/// An image encoded while building the corpus costs this many of the encoder probe's images
/// (decode, resize, hashing, real pictures vs the probe's noise). Zen 3: 214 s for 11.4k images
/// where `vlmix bench encode` gave 92.8 images/s (1.75; session 6), 156 s for 8.5k where the dry
/// run's one-batch probe gave 61.6 (1.14; session 8), 120 s for 8.6k at the median probe's ~75
/// (1.05; session 9).
const CORPUS_ENCODE_COST: f64 = 1.1;

/// What the probes measured on this machine.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    /// Training positions (forward + backward) per second.
    pub positions_per_s: f64,
    /// One AdamW step.
    pub optimizer_s: f64,
    /// One image through the frozen encoder (batches of 4).
    pub encode_image_s: f64,
}

/// The work of one node: training-equivalent positions and optimizer steps, or images to encode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Work {
    Pretrain { positions: u64, steps: u64 },
    Cooldown { positions: u64, steps: u64 },
    Finetune { positions: u64, steps: u64 },
    Eval { positions: u64 },
    TextEval { positions: u64 },
    Corpus { images_to_encode: u64 },
}

impl Work {
    pub fn positions(&self) -> u64 {
        match *self {
            Work::Pretrain { positions, .. }
            | Work::Cooldown { positions, .. }
            | Work::Finetune { positions, .. }
            | Work::Eval { positions }
            | Work::TextEval { positions } => positions,
            Work::Corpus { .. } => 0,
        }
    }

    /// Estimated seconds at `rates`.
    pub fn seconds(&self, rates: &Rates) -> f64 {
        let train = |positions: u64, steps: u64, cost: f64| {
            positions as f64 * cost / rates.positions_per_s + steps as f64 * rates.optimizer_s
        };
        match *self {
            Work::Pretrain { positions, steps } => train(positions, steps, 1.0),
            Work::Cooldown { positions, steps } => train(positions, steps, COOLDOWN_POSITION_COST),
            Work::Finetune { positions, steps } => train(positions, steps, FINETUNE_POSITION_COST),
            Work::Eval { positions } => train(positions, 0, EVAL_POSITION_COST),
            Work::TextEval { positions } => train(positions, 0, TEXT_EVAL_POSITION_COST),
            Work::Corpus { images_to_encode } => images_to_encode as f64 * CORPUS_ENCODE_COST * rates.encode_image_s,
        }
    }
}

/// Timed repetitions of each probed operation, after one untimed warm-up; the median is kept. One
/// timing swung by 1.5x between two quiet dry runs on the same 2-core machine (5,964 vs 8,926
/// positions/s), which moved mini's estimate from 19.8 to 31 minutes.
const PROBE_REPEATS: usize = 5;

/// The median of [`PROBE_REPEATS`] timings of `op` (seconds), after one untimed call.
fn median_time(mut op: impl FnMut() -> Result<()>) -> Result<f64> {
    op()?;
    let mut times = Vec::with_capacity(PROBE_REPEATS);
    for _ in 0..PROBE_REPEATS {
        let start = Instant::now();
        op()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[PROBE_REPEATS / 2])
}

/// Times batches of `batch` images through `encoder`: seconds per image.
fn probe_encoder(encoder: &dyn ImageEncoder, batch: usize) -> Result<f64> {
    let (h, w) = encoder.preprocess().output_size();
    let pixels: Vec<f32> =
        (0..batch * 3 * h as usize * w as usize).map(|i| ((i * 2_654_435_761) % 256) as f32 / 128.0 - 1.0).collect();
    Ok(median_time(|| encoder.encode(&pixels, batch).map(drop))? / batch as f64)
}

/// Time of one training step's parts, for the full model.
pub struct Probe {
    /// Forward + backward of one micro-batch.
    pub forward_backward_secs: f64,
    /// One AdamW step over all parameters.
    pub optimizer_secs: f64,
    /// How it was measured, for the printout.
    pub how: String,
}

fn step_flops(model: &LmConfig, sequences: usize) -> f64 {
    model.train_flops_per_token(model.seq_len) * (sequences * model.seq_len) as f64
}

/// Times forward + backward of `micro` sequences of `model` (or of the reduced copy, scaled) and
/// AdamW steps on `dev`: the median of a few, each after one untimed warm-up (the first AdamW step
/// touches its fresh moment buffers: timed, it read 0.07 s for a ~3 ms step and added 7 minutes to
/// mini).
pub fn probe<D: Device>(dev: &D, model: &LmConfig, micro: usize) -> Result<Probe> {
    let full = step_flops(model, micro) <= FULL_PROBE_FLOPS;
    let (probed, batch) = if full {
        (model.clone(), micro)
    } else {
        (LmConfig { n_layers: 1, seq_len: model.seq_len.min(REDUCED_PROBE_SEQ), ..model.clone() }, 1)
    };
    // The probe allocates like a run does, so it is planned like one.
    TrainShape::text(probed.clone(), dev.memory())
        .plan(batch, Some(batch), dev.available_memory()?)
        .context("the throughput probe does not fit in memory")?;
    let mut params = ParamStore::new(dev.clone());
    let mut lm = Lm::new(probed.clone(), &mut params, 0)?;
    let mut optimizer = AdamW::new(AdamWConfig::default(), &params);
    let n = batch * probed.seq_len;
    let tokens: Vec<u32> = (0..n).map(|i| (i * 7919 % probed.vocab) as u32).collect();
    let mask = vec![1.0; n];
    let fb = median_time(|| {
        params.zero_grad();
        lm.forward_backward(&mut params, &LmInput::tokens(batch, probed.seq_len, &tokens), &tokens, &mask, 1.0, None)?;
        dev.synchronize();
        Ok(())
    })?;
    let opt = median_time(|| {
        optimizer.step(&mut params, 1e-4);
        dev.synchronize();
        Ok(())
    })?;
    let param_scale = model.param_count().total as f64 / probed.param_count().total as f64;
    Ok(if full {
        Probe {
            forward_backward_secs: fb,
            optimizer_secs: opt,
            how: format!("median of {PROBE_REPEATS} micro-batches of {micro} sequences of the full model"),
        }
    } else {
        Probe {
            forward_backward_secs: fb * step_flops(model, micro) / step_flops(&probed, 1),
            optimizer_secs: opt * param_scale,
            how: format!(
                "median of {PROBE_REPEATS} sequences of {} positions through a 1-layer copy, scaled by training FLOPs (6N + 12LTd) to {micro} x {} positions through {} layers; AdamW scaled by parameter count",
                probed.seq_len, model.seq_len, model.n_layers
            ),
        }
    })
}

/// Seconds as the largest sensible unit: "45 s", "12.5 min", "3.2 h", "41 d".
fn duration(secs: f64) -> String {
    match secs {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.0} d", s / 86_400.0),
    }
}

fn print_breakdown(b: &Breakdown) {
    for part in &b.parts {
        println!("    {:<46} {:>11}", part.name, gib(part.bytes));
    }
    println!("    {:<46} {:>11}", "total", gib(b.total()));
}

/// Prints the plan, each stage's memory plan and the estimated node times, probed on `dev`.
pub fn print_estimate<D: Device>(dev: &D, config: &StudyConfig, plan: &Plan, layout: &DataLayout) -> Result<()> {
    let vocab = TextTokenizer::load(&layout.tokenizer_json())
        .map(|t| t.vocab_size())
        .unwrap_or(LmConfig::preset(&config.model.preset)?.vocab);
    let model = config.model_config(vocab)?;
    let seq = model.seq_len;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cpu: {} ({threads} threads)", vlmix_engine::machine::cpu_model());
    println!("simd: {} (detected {}; {} forces a level)", simd::level().name(), simd::detected().name(), simd::ENV);
    println!(
        "model: d_model {} layers {} heads {} seq {} vocab {} ({:.2}M parameters), f32 weights; device {}, {} products",
        model.d_model,
        model.n_layers,
        model.n_heads,
        seq,
        model.vocab,
        model.param_count().total as f64 / 1e6,
        config.device,
        config.precision
    );

    let available = dev.available_memory()?;
    let device = dev.memory();
    println!(
        "\nmemory: {} available ({}); a plan may use {:.0}% of it",
        gib(available),
        device.available_from,
        USABLE_FRACTION * 100.0
    );
    let text = TrainShape::text(model.clone(), device);
    let spec = config.encoder_spec();
    let encoder = open_encoder(&spec, &layout.home);
    let vision = encoder
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .and_then(|e| VisionShape::new(e.tokens(), e.width(), Some(&spec)));
    let stages = [
        ("pretrain", Ok(text.clone()), config.pretrain.batching()),
        ("cooldown", vision.as_ref().map(|v| TrainShape::vlm(model.clone(), *v, device)), config.cooldown.batching()),
        ("finetune", vision.as_ref().map(|v| TrainShape::vlm(model.clone(), *v, device)), config.finetune.batching()),
    ];
    let mut micro = [1usize; 3];
    let mut all_fit = true;
    for (i, (stage, shape, batching)) in stages.iter().enumerate() {
        let Batching { batch_size: batch, micro_batch_size: requested } = *batching;
        let shape = match shape {
            Ok(shape) => shape,
            Err(e) => {
                println!("  {stage}: not planned: the encoder is not available ({e:#})");
                continue;
            }
        };
        match shape.plan(batch, requested, available) {
            Ok(p) => {
                micro[i] = p.micro_batch;
                let how = if requested.is_some() { "as configured" } else { "the largest that fits" };
                println!(
                    "  {stage}: batch {batch} = {} passes of micro-batch {} ({how}), needs {}",
                    p.micro_batches,
                    p.micro_batch,
                    gib(p.breakdown.total())
                );
                print_breakdown(&p.breakdown);
            }
            Err(e) => {
                all_fit = false;
                println!("  {stage}: DOES NOT FIT: {e:#}");
                print_breakdown(&shape.breakdown(batch, requested.unwrap_or(1).min(batch)));
            }
        }
    }

    let probe = probe(dev, &model, micro[0])?;
    let rate = (micro[0] * seq) as f64 / probe.forward_backward_secs;
    let encode_image_s = match &encoder {
        Ok(encoder) => probe_encoder(encoder.as_ref(), 4)?,
        Err(_) => 0.0,
    };
    let rates = Rates { positions_per_s: rate, optimizer_s: probe.optimizer_secs, encode_image_s };
    println!("\ntime: {}", probe.how);
    println!(
        "  forward + backward {rate:.0} positions/s, AdamW step {:.2} s, encoder {:.1} images/s",
        probe.optimizer_secs,
        1.0 / encode_image_s.max(1e-9)
    );
    if !all_fit {
        println!("  (a stage above does not fit here: its times are for a machine like this one with enough memory)");
    }
    println!();
    // Fine-tuning and evaluation sizes depend on the data; these are upper-bound style guesses.
    let finetune_positions_per_epoch = config.finetune.max_examples.unwrap_or(20_000) as u64 * seq as u64;
    // Scoring runs an item's prompt (image included; ~half a window) once into a prefix cache, then
    // ~16 continuation tokens (its choices, or a short answer); the blind pass repeats the prompt
    // only where it differs between items (~a quarter). A forward-only position costs
    // `EVAL_POSITION_COST` training positions: no backward, but the continuation rows are a few
    // tokens wide (small products) and every scored token takes the vocabulary softmax.
    let items = config.eval.item_limit();
    let (vision_items, text_items) = (items.vision.unwrap_or(0) as u64, items.text.unwrap_or(0) as u64);
    let item_positions = seq as u64 / 2 + 16;
    let text_eval_positions = config.eval.text_tasks.len() as u64 * text_items * item_positions;
    let eval_positions =
        config.eval.vision_tasks.len() as u64 * vision_items * item_positions * 5 / 4 + text_eval_positions;
    let positions_per_step = |batch: usize| (batch * seq) as u64;
    // A cold corpus encodes the caption images (the instruction images are the same files in the
    // presets) and the eval images; whatever the cache holds already is assumed to be among them.
    let cached = match &encoder {
        Ok(encoder) => FeatureCache::open(&layout.home.join(CACHE_SUBDIR), encoder.as_ref())?.len() as u64,
        Err(_) => 0,
    };
    let eval_images = config.eval.vision_tasks.len() as u64 * vision_items + 1;
    let images_to_encode = (config.max_images.unwrap_or(0) as u64 + eval_images).saturating_sub(cached);
    println!("{:<48} {:>14} {:>12}", "node", "positions", "est. time");
    let mut total = 0.0;
    for node in &plan.nodes {
        let work = match &node.kind {
            NodeKind::ImageCorpus => Work::Corpus { images_to_encode },
            NodeKind::Pretrain => {
                let steps = steps_for(config.pretrain.tokens, config.pretrain.batch_size, seq);
                Work::Pretrain { positions: steps * positions_per_step(config.pretrain.batch_size), steps }
            }
            NodeKind::Cooldown { .. } => {
                let steps = steps_for(config.cooldown.tokens, config.cooldown.batch_size, seq);
                Work::Cooldown { positions: steps * positions_per_step(config.cooldown.batch_size), steps }
            }
            NodeKind::Finetune { epochs, .. } => {
                let positions = *epochs as u64 * finetune_positions_per_epoch;
                Work::Finetune { positions, steps: positions.div_ceil(positions_per_step(config.finetune.batch_size)) }
            }
            NodeKind::Eval { .. } => Work::Eval { positions: eval_positions },
            NodeKind::EvalTextBaseline => Work::TextEval { positions: text_eval_positions },
        };
        let (positions, secs) = (work.positions(), work.seconds(&rates));
        total += secs;
        println!("{:<48} {:>14} {:>12}", node.id, positions, duration(secs));
    }
    println!(
        "\n{} nodes, estimated {} on this device ({images_to_encode} images to encode; {cached} in the feature cache)",
        plan.nodes.len(),
        duration(total)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_times_follow_the_measured_costs() {
        // Zen 3, session 6's mini: pre-training ran 6,633 positions/s.
        let rates = Rates { positions_per_s: 6633.0, optimizer_s: 0.02, encode_image_s: 1.0 / 92.8 };
        let secs = |work: Work| (work.seconds(&rates) * 10.0).round() / 10.0;
        assert_eq!(secs(Work::Pretrain { positions: 1_499_136, steps: 732 }), 240.7);
        assert_eq!(secs(Work::Cooldown { positions: 548_864, steps: 268 }), 75.7);
        assert_eq!(secs(Work::Finetune { positions: 460_800, steps: 225 }), 46.2);
        assert_eq!(secs(Work::Eval { positions: 300_000 }), 19.0);
        assert_eq!(secs(Work::TextEval { positions: 120_000 }), 10.3);
        assert_eq!(secs(Work::Corpus { images_to_encode: 12_000 }), 142.2);
        assert_eq!(Work::Corpus { images_to_encode: 12_000 }.positions(), 0);
    }
}
