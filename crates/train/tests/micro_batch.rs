//! Micro-batching changes how a step is computed, not what it computes: the same 5 steps with
//! micro-batches of 16, 4 and 1 sequences end at the same parameters and losses (to float
//! rounding), also when fine-tuning masks leave sequences with very different numbers of trained
//! tokens (and one with none), and for the VLM with images in some sequences. A model that cannot
//! fit fails before training, with the numbers.

use anyhow::Result;
use vlmix_data::tokenizer::SpecialTokens;
use vlmix_data::vlm_batch::{ImageSlot, VlmBatch};
use vlmix_engine::adamw::{AdamW, AdamWConfig};
use vlmix_engine::params::ParamStore;
use vlmix_models::lm::{Lm, LmConfig};
use vlmix_models::vlm::Vlm;
use vlmix_train::schedule::{Schedule, WarmupCosine};
use vlmix_train::stages::{pretrain, Batching, PretrainSpec};
use vlmix_train::text_model::{TextModel, TokenBatch};
use vlmix_train::trainer::{train, BatchSource, LoopConfig, Trainable};
use vlmix_train::vision_model::VisionModel;

const BATCH: usize = 16;
const SEQ: usize = 24;
const IMAGE_TOKENS: usize = 4;
const FEATURE_WIDTH: usize = 8;
const TOLERANCE: f64 = 1e-5;

/// Deterministic batches; sequence `b` trains on a span whose length varies from 0 to most of it,
/// like answer-only fine-tuning.
struct Masked {
    next: u64,
    vocab: usize,
}

impl Masked {
    fn tokens(&mut self) -> TokenBatch {
        let n = BATCH * SEQ;
        let stream: Vec<u32> =
            (0..=n).map(|i| ((self.next as usize * 131 + i * 17 + i * i / 3) % self.vocab) as u32).collect();
        let mut loss_mask = vec![0.0; n];
        for b in 0..BATCH {
            // Sequence 5 trains on nothing; the others on spans of 1..=20 positions.
            let span = if b == 5 { 0 } else { 1 + (b * 7 + self.next as usize * 3) % 20 };
            loss_mask[b * SEQ + SEQ - span..(b + 1) * SEQ].fill(1.0);
        }
        self.next += 1;
        TokenBatch { batch: BATCH, seq: SEQ, inputs: stream[..n].to_vec(), targets: stream[1..].to_vec(), loss_mask }
    }
}

impl BatchSource for Masked {
    type Batch = TokenBatch;
    fn next_batch(&mut self) -> Result<TokenBatch> {
        Ok(self.tokens())
    }
    fn token_counts(&self, b: &TokenBatch) -> (u64, u64) {
        (0, (b.batch * b.seq) as u64)
    }
    fn cursor(&self) -> serde_json::Value {
        serde_json::json!(self.next)
    }
    fn restore(&mut self, cursor: &serde_json::Value) -> Result<()> {
        self.next = cursor.as_u64().unwrap();
        Ok(())
    }
}

/// The same stream as VLM batches: every third sequence starts with an image (features, no loss on
/// its positions).
struct WithImages(Masked);

impl BatchSource for WithImages {
    type Batch = VlmBatch;
    fn next_batch(&mut self) -> Result<VlmBatch> {
        let step = self.0.next as usize;
        let t = self.0.tokens();
        let mut batch = VlmBatch {
            batch: t.batch,
            seq: t.seq,
            inputs: t.inputs,
            targets: t.targets,
            loss_mask: t.loss_mask,
            n_image_tokens: IMAGE_TOKENS,
            ..Default::default()
        };
        for b in (0..BATCH).filter(|b| b % 3 == 1) {
            batch.slots.push(ImageSlot { at: b * SEQ, image: batch.slots.len() });
            batch.loss_mask[b * SEQ..b * SEQ + IMAGE_TOKENS].fill(0.0);
            batch.features.extend(
                (0..IMAGE_TOKENS * FEATURE_WIDTH).map(|i| (((b + step) * 37 + i * 11) % 23) as f32 / 23.0 - 0.5),
            );
        }
        Ok(batch)
    }
    fn token_counts(&self, b: &VlmBatch) -> (u64, u64) {
        ((b.slots.len() * IMAGE_TOKENS) as u64, (b.batch * b.seq) as u64)
    }
    fn cursor(&self) -> serde_json::Value {
        self.0.cursor()
    }
    fn restore(&mut self, cursor: &serde_json::Value) -> Result<()> {
        self.0.restore(cursor)
    }
}

fn config() -> LmConfig {
    LmConfig { seq_len: SEQ, ..LmConfig::preset("tiny").unwrap() }
}

fn loop_config() -> LoopConfig {
    let schedule = Schedule::WarmupCosine(WarmupCosine { peak: 3e-3, floor: 3e-5, warmup_steps: 2, total_steps: 5 });
    LoopConfig { schedule, clip_norm: 1.0, keep_steps: vec![], save_every: 100, stop_step: None }
}

/// Trains 5 steps and returns (parameters by name, loss of each step).
fn run<M: Trainable<Dev = vlmix_engine::Cpu>, S: BatchSource<Batch = M::Batch>>(
    mut model: M,
    mut source: S,
) -> (Vec<(String, Vec<f32>)>, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let mut optimizer = AdamW::new(AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() }, model.params());
    let mut losses = Vec::new();
    train(&mut model, &mut optimizer, &mut source, &loop_config(), dir.path(), &mut |_, _, m| losses.push(m.loss))
        .unwrap();
    let params = model.params();
    (params.ids().map(|id| (params.info(id).name.clone(), params.value(id).to_vec())).collect(), losses)
}

/// Largest relative difference between two runs: of each parameter tensor (`|a - b| / |a|`, L2
/// norms; single elements that pass near zero, or whose gradient is at rounding level and so gets a
/// full-size first Adam step of either sign, have no relative precision of their own), and of each
/// step's loss.
fn worst_relative(a: &(Vec<(String, Vec<f32>)>, Vec<f64>), b: &(Vec<(String, Vec<f32>)>, Vec<f64>)) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for ((name, x), (_, y)) in a.0.iter().zip(&b.0) {
        let norm = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let diff = x.iter().zip(y).map(|(&v, &w)| (v as f64 - w as f64).powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 && diff / norm > worst.0 {
            worst = (diff / norm, name.clone());
        }
    }
    for (step, (&x, &y)) in a.1.iter().zip(&b.1).enumerate() {
        let r = if x == y { 0.0 } else { (x - y).abs() / x.abs().max(y.abs()) };
        if r > worst.0 {
            worst = (r, format!("loss of step {step}: {x} vs {y}"));
        }
    }
    worst
}

fn text_run(micro_batch: usize) -> (Vec<(String, Vec<f32>)>, Vec<f64>) {
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let lm = Lm::new(config(), &mut params, 11).unwrap();
    let vocab = config().vocab;
    run(TextModel { lm, params, micro_batch }, Masked { next: 0, vocab })
}

fn vlm_run(micro_batch: usize) -> (Vec<(String, Vec<f32>)>, Vec<f64>) {
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let vlm = Vlm::new(config(), FEATURE_WIDTH, &mut params, 11).unwrap();
    let vocab = config().vocab;
    run(VisionModel { vlm, params, micro_batch }, WithImages(Masked { next: 0, vocab }))
}

#[test]
fn text_steps_do_not_depend_on_the_micro_batch() {
    let whole = text_run(BATCH);
    assert_eq!(whole.1.len(), 5);
    for micro in [4, 1, 3] {
        let (worst, at) = worst_relative(&whole, &text_run(micro));
        eprintln!("text, micro-batch {micro}: worst relative difference {worst:.2e} ({at})");
        assert!(worst <= TOLERANCE, "micro-batch {micro}: {worst:.2e} at {at}");
    }
}

#[test]
fn vlm_steps_do_not_depend_on_the_micro_batch() {
    let whole = vlm_run(BATCH);
    for micro in [4, 1, 3] {
        let (worst, at) = worst_relative(&whole, &vlm_run(micro));
        eprintln!("vlm, micro-batch {micro}: worst relative difference {worst:.2e} ({at})");
        assert!(worst <= TOLERANCE, "micro-batch {micro}: {worst:.2e} at {at}");
    }
}

#[test]
fn a_model_that_cannot_fit_fails_before_training_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    // ~200 layers of width 65536: terabytes of weights, and its activations do not fit either.
    let model = LmConfig { d_model: 65536, n_layers: 200, n_heads: 512, ..LmConfig::preset("openlm-1b").unwrap() };
    let spec = PretrainSpec {
        model,
        schedule: WarmupCosine { peak: 1e-3, floor: 0.0, warmup_steps: 1, total_steps: 5 },
        batching: Batching { batch_size: 256, micro_batch_size: None },
        weight_decay: 0.0,
        keep_fractions: vec![1.0],
        seed: 0,
    };
    let docs: Vec<Vec<u32>> = vec![(3..100).collect()];
    let special = SpecialTokens { eos: 0, pad: 1, image: 2 };
    let err = format!(
        "{:#}",
        pretrain(vlmix_engine::Cpu::new().unwrap(), &spec, docs, special, dir.path(), &mut |_, _, _| panic!(
            "no step may run"
        ))
        .expect_err("refused")
    );
    assert!(
        err.contains("pre-training does not fit in memory: needs")
            && err.contains("at micro-batch 1 for optimizer state"),
        "{err}"
    );
    assert!(err.contains("GiB available (MemAvailable"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written before the refusal");
}
