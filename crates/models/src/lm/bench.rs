//! The engine benchmark: full training steps (forward, backward, grad clip, AdamW) of an LM on
//! random tokens, timed after warm-up. `reference/bench_train.py` is the PyTorch twin; both
//! print the same JSON fields so `scripts/bench.sh` can compare them.

use super::{Lm, LmConfig, LmInput};
use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::time::Instant;
use vlmix_engine::adamw::{AdamW, AdamWConfig};
use vlmix_engine::grad_clip::clip_grad_norm;
use vlmix_engine::nonfinite::ensure_finite;
use vlmix_engine::params::ParamStore;
use vlmix_engine::Device;

pub struct BenchOptions {
    pub model: LmConfig,
    pub model_name: String,
    pub batch: usize,
    pub steps: usize,
    pub warmup: usize,
}

/// One benchmark result (field names shared with `reference/bench_train.py`).
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub engine: String,
    pub model: String,
    pub batch: usize,
    pub seq: usize,
    pub tokens_per_s: f64,
    /// Achieved training GFLOP/s by PaLM's count (see `flops_formula`).
    pub gflops: f64,
    pub flops_per_token: f64,
    pub flops_formula: String,
    pub peak_rss_mb: f64,
    pub step_ms: f64,
    /// Mean milliseconds per step in forward+backward, gradient clipping and AdamW.
    pub forward_backward_ms: f64,
    pub clip_ms: f64,
    pub optimizer_ms: f64,
    pub steps: usize,
    pub warmup: usize,
    pub final_loss: f64,
    pub threads: usize,
    pub cpu: String,
    pub blas_core: String,
}

impl BenchReport {
    /// One JSON object on one line.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mb() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("/proc/self/status has no VmHWM line")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("parsing VmHWM")?;
    Ok(kb / 1024.0)
}

/// Runs the benchmark on `dev` (the report's thread, CPU and BLAS fields describe the host; each
/// step ends by waiting for the device, so asynchronous devices are timed to completion).
pub fn bench_train<D: Device>(dev: D, opts: &BenchOptions) -> Result<BenchReport> {
    let config = &opts.model;
    let seq = config.seq_len;
    let mut params = ParamStore::new(dev);
    let mut lm = Lm::new(config.clone(), &mut params, 0)?;
    let mut opt = AdamW::new(AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }, &params);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let tokens: Vec<u32> = (0..opts.batch * (seq + 1)).map(|_| rng.gen_range(0..config.vocab as u32)).collect();
    let inputs: Vec<u32> = tokens.chunks(seq + 1).flat_map(|r| r[..seq].to_vec()).collect();
    let targets: Vec<u32> = tokens.chunks(seq + 1).flat_map(|r| r[1..].to_vec()).collect();
    let mask = vec![1.0f32; opts.batch * seq];
    let input = LmInput::tokens(opts.batch, seq, &inputs);

    let (mut fb, mut clip, mut optim) = (0.0f64, 0.0f64, 0.0f64);
    let mut loss = 0.0f32;
    let mut start = Instant::now();
    for step in 0..opts.warmup + opts.steps {
        if step == opts.warmup {
            (fb, clip, optim) = (0.0, 0.0, 0.0);
            start = Instant::now();
        }
        let t0 = Instant::now();
        params.zero_grad();
        loss = lm.forward_backward(&mut params, &input, &targets, &mask, 1.0, None)?.loss;
        ensure_finite("loss", loss, step as u64)?;
        let t1 = Instant::now();
        clip_grad_norm(&mut params, 1.0);
        let t2 = Instant::now();
        opt.step(&mut params, 1e-3);
        params.device().synchronize();
        let t3 = Instant::now();
        fb += (t1 - t0).as_secs_f64();
        clip += (t2 - t1).as_secs_f64();
        optim += (t3 - t2).as_secs_f64();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let steps = opts.steps.max(1) as f64;
    let tokens_per_s = (opts.batch * seq) as f64 * steps / elapsed;
    let flops_per_token = config.train_flops_per_token(seq);
    Ok(BenchReport {
        engine: "vlmix".into(),
        model: opts.model_name.clone(),
        batch: opts.batch,
        seq,
        tokens_per_s,
        gflops: tokens_per_s * flops_per_token / 1e9,
        flops_per_token,
        flops_formula: "PaLM: 6*N + 12*L*T*d per token, N = parameters except the input embedding".into(),
        peak_rss_mb: peak_rss_mb()?,
        step_ms: 1000.0 * elapsed / steps,
        forward_backward_ms: 1000.0 * fb / steps,
        clip_ms: 1000.0 * clip / steps,
        optimizer_ms: 1000.0 * optim / steps,
        steps: opts.steps,
        warmup: opts.warmup,
        final_loss: loss as f64,
        threads: rayon::current_num_threads(),
        cpu: vlmix_engine::machine::cpu_model(),
        // A GPU machine may have no OpenBLAS; the benchmark of a GPU does not need it.
        blas_core: vlmix_engine::blas::init().map_or_else(|_| "not loaded".into(), |()| vlmix_engine::blas::corename()),
    })
}
