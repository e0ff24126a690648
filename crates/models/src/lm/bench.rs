//! Engine benchmarks on random tokens: full training steps (forward, backward, grad clip, AdamW)
//! of an LM, and multiple-choice scoring as evaluation does it (whole rows against prefix caches).
//! `reference/bench_train.py` and `reference/bench_score.py` are the PyTorch twins; each pair prints
//! the same JSON fields so `scripts/bench.sh` can compare them.

use super::{Lm, LmConfig, LmInput, PrefixCache};
use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::time::Instant;
use vlmix_engine::adamw::{AdamW, AdamWConfig};
use vlmix_engine::cpu::target_log_probs;
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
    /// The first step's loss (before any update: devices agree to ~1e-6 when their kernels do).
    pub first_loss: f64,
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
    let (mut loss, mut first_loss) = (0.0f32, None);
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
        first_loss.get_or_insert(loss);
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
        first_loss: first_loss.unwrap_or(loss) as f64,
        final_loss: loss as f64,
        threads: rayon::current_num_threads(),
        cpu: vlmix_engine::machine::cpu_model(),
        // A GPU machine may have no OpenBLAS; the benchmark of a GPU does not need it.
        blas_core: vlmix_engine::blas::init().map_or_else(|_| "not loaded".into(), |()| vlmix_engine::blas::corename()),
    })
}

/// What [`bench_score`] runs: `items` multiple-choice items of random token ids, each a prompt of
/// `prefix` tokens and `choices` answers of `choice_len` tokens, every answer scored by the sum of
/// its tokens' log-probabilities after the prompt (what evaluation does).
pub struct ScoreOptions {
    pub model: LmConfig,
    pub model_name: String,
    pub items: usize,
    pub prefix: usize,
    pub choices: usize,
    pub choice_len: usize,
}

/// Rows per forward pass, at most: the evaluator's limit (`MAX_ROWS` in vlmix-eval's scorer), so
/// both methods run the shapes evaluation runs.
pub const SCORE_ROWS: usize = 64;

/// What [`bench_score`] reports of one scoring method.
#[derive(Debug, Serialize)]
pub struct ScoreMethod {
    pub items_per_s: f64,
    /// Token positions run through the model per second (each prompt or answer token once per row
    /// it is in).
    pub positions_per_s: f64,
    pub positions: usize,
    /// Forward passes (calls into the model).
    pub passes: usize,
    pub seconds: f64,
    /// Achieved forward GFLOP/s by the count in [`ScoreReport::flops_formula`].
    pub gflops: f64,
}

/// One scoring-benchmark result (field names shared with `reference/bench_score.py`).
#[derive(Debug, Serialize)]
pub struct ScoreReport {
    pub engine: String,
    pub model: String,
    pub items: usize,
    pub prefix: usize,
    pub choices: usize,
    pub choice_len: usize,
    pub rows_per_pass: usize,
    /// Whole rows (prompt + answer, one per choice, as lm-evaluation-harness runs them), batched.
    pub full: ScoreMethod,
    /// Each prompt once into a prefix cache, then only the answers' tokens continuing it.
    pub cached: ScoreMethod,
    /// `cached` items/s over `full` items/s.
    pub speedup: f64,
    /// Largest difference between the two methods' answer scores (sum of log-probabilities): both
    /// must rank the same, so this is float noise.
    pub max_score_diff: f64,
    pub flops_formula: String,
    pub peak_rss_mb: f64,
    pub threads: usize,
    pub cpu: String,
    pub blas_core: String,
}

/// The random items: per item, `prefix` prompt ids then `choices * choice_len` answer ids.
struct Items<'a> {
    opts: &'a ScoreOptions,
    ids: Vec<u32>,
}

impl Items<'_> {
    fn stride(&self) -> usize {
        self.opts.prefix + self.opts.choices * self.opts.choice_len
    }

    fn prompt(&self, item: usize) -> &[u32] {
        let start = item * self.stride();
        &self.ids[start..start + self.opts.prefix]
    }

    fn answer(&self, item: usize, choice: usize) -> &[u32] {
        let start = item * self.stride() + self.opts.prefix + choice * self.opts.choice_len;
        &self.ids[start..start + self.opts.choice_len]
    }
}

/// Forward FLOPs of positions `from..to` of one sequence (0-based, each attending to itself and
/// every earlier position) and of `scored` output rows: PaLM's forward count, `2 N` per position
/// (N = the blocks' parameters) plus `4 L d` per key attended, and `2 V d` per scored position
/// (only scored positions are projected to the vocabulary).
fn forward_flops(config: &LmConfig, from: usize, to: usize, scored: usize) -> f64 {
    let (n, l, d) = (config.param_count().blocks as f64, config.n_layers as f64, config.d_model as f64);
    let keys: f64 = (from + 1..=to).map(|k| k as f64).sum();
    2.0 * n * (to - from) as f64 + 4.0 * l * d * keys + 2.0 * (config.vocab * config.d_model * scored) as f64
}

/// Counts of one method's run.
#[derive(Default)]
struct Work {
    positions: usize,
    passes: usize,
    flops: f64,
}

/// Scores every answer of `items` as whole rows, [`SCORE_ROWS`] rows a pass; returns the scores
/// (item-major) and the work done.
fn score_full<D: Device>(
    lm: &mut Lm<D>,
    params: &ParamStore<D>,
    data: &Items,
    items: std::ops::Range<usize>,
) -> Result<(Vec<f64>, Work)> {
    let o = data.opts;
    let (vocab, seq) = (lm.config().vocab, o.prefix + o.choice_len - 1);
    let rows: Vec<(usize, usize)> = items.flat_map(|i| (0..o.choices).map(move |k| (i, k))).collect();
    let (mut scores, mut work) = (Vec::with_capacity(rows.len()), Work::default());
    for pass in rows.chunks(SCORE_ROWS) {
        let mut tokens = Vec::with_capacity(pass.len() * seq);
        let mut positions = Vec::with_capacity(pass.len() * o.choice_len);
        for (r, &(i, k)) in pass.iter().enumerate() {
            tokens.extend_from_slice(data.prompt(i));
            tokens.extend_from_slice(&data.answer(i, k)[..o.choice_len - 1]);
            positions.extend((0..o.choice_len).map(|j| r * seq + o.prefix - 1 + j));
        }
        let input = LmInput::tokens(pass.len(), seq, &tokens);
        let picks: Vec<(usize, u32)> = pass
            .iter()
            .enumerate()
            .flat_map(|(r, &(i, k))| (0..o.choice_len).map(move |j| (r * o.choice_len + j, data.answer(i, k)[j])))
            .collect();
        let logits = params.device().to_host(lm.logits_at(params, &input, &positions)?);
        let scored = target_log_probs(&logits, vocab, &picks);
        scores.extend(scored.chunks(o.choice_len).map(|answer| answer.iter().map(|s| s.0).sum::<f64>()));
        work.positions += pass.len() * seq;
        work.passes += 1;
        work.flops += pass.len() as f64 * forward_flops(lm.config(), 0, seq, o.choice_len);
    }
    Ok((scores, work))
}

/// Scores every answer of `items` as the evaluator does: [`SCORE_ROWS`] prompts a pass into prefix
/// caches (their last logits score every answer's first token), then the rest of each answer as
/// rows continuing its prompt's cache, [`SCORE_ROWS`] rows a pass.
fn score_cached<D: Device>(
    lm: &mut Lm<D>,
    params: &ParamStore<D>,
    data: &Items,
    items: std::ops::Range<usize>,
) -> Result<(Vec<f64>, Work)> {
    let o = data.opts;
    let (vocab, width) = (lm.config().vocab, o.choice_len - 1);
    let items: Vec<usize> = items.collect();
    let (mut scores, mut work) = (Vec::with_capacity(items.len() * o.choices), Work::default());
    for group in items.chunks(SCORE_ROWS) {
        let tokens: Vec<u32> = group.iter().flat_map(|&i| data.prompt(i).to_vec()).collect();
        let last: Vec<usize> = (0..group.len()).map(|r| r * o.prefix + o.prefix - 1).collect();
        let input = LmInput::tokens(group.len(), o.prefix, &tokens);
        let (caches, logits) = lm.prefix_caches(params, &input, &vec![o.prefix; group.len()], &last)?;
        let picks: Vec<(usize, u32)> = group
            .iter()
            .enumerate()
            .flat_map(|(r, &i)| (0..o.choices).map(move |k| (r, data.answer(i, k)[0])))
            .collect();
        let first = scores.len();
        scores.extend(target_log_probs(&params.device().to_host(logits), vocab, &picks).iter().map(|s| s.0));
        work.positions += group.len() * o.prefix;
        work.passes += 1;
        work.flops += group.len() as f64 * forward_flops(lm.config(), 0, o.prefix, 1);
        if width == 0 {
            continue;
        }
        let rows: Vec<(usize, usize)> = (0..group.len()).flat_map(|r| (0..o.choices).map(move |k| (r, k))).collect();
        for pass in rows.chunks(SCORE_ROWS) {
            let tokens: Vec<u32> = pass.iter().flat_map(|&(r, k)| data.answer(group[r], k)[..width].to_vec()).collect();
            let positions: Vec<usize> = (0..pass.len() * width).collect();
            let prefixes: Vec<&PrefixCache<D>> = pass.iter().map(|&(r, _)| &caches[r]).collect();
            let input = LmInput::tokens(pass.len(), width, &tokens);
            let picks: Vec<(usize, u32)> = pass
                .iter()
                .enumerate()
                .flat_map(|(n, &(r, k))| (0..width).map(move |j| (n * width + j, data.answer(group[r], k)[j + 1])))
                .collect();
            let logits = params.device().to_host(lm.logits_continuing(params, &input, &prefixes, &positions)?);
            let scored = target_log_probs(&logits, vocab, &picks);
            for (&(r, k), answer) in pass.iter().zip(scored.chunks(width)) {
                scores[first + r * o.choices + k] += answer.iter().map(|s| s.0).sum::<f64>();
            }
            work.positions += pass.len() * width;
            work.passes += 1;
            work.flops += pass.len() as f64 * forward_flops(lm.config(), o.prefix, o.prefix + width, width);
        }
    }
    Ok((scores, work))
}

/// Runs the scoring benchmark on `dev`: one item through each method untimed (allocations, BLAS
/// start-up), then all items through whole rows, then all through prefix caches.
pub fn bench_score<D: Device>(dev: D, opts: &ScoreOptions) -> Result<ScoreReport> {
    let config = &opts.model;
    anyhow::ensure!(
        opts.items > 0 && opts.prefix > 0 && opts.choices > 0 && opts.choice_len > 0,
        "items, prefix, choices and choice length must all be at least 1"
    );
    anyhow::ensure!(
        opts.prefix + opts.choice_len - 1 <= config.seq_len,
        "a prompt of {} tokens and answers of {} do not fit the model's seq_len {}",
        opts.prefix,
        opts.choice_len,
        config.seq_len
    );
    let mut params = ParamStore::new(dev);
    let mut lm = Lm::new(config.clone(), &mut params, 0)?;
    lm.reserve(SCORE_ROWS, opts.prefix + opts.choice_len - 1)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let stride = opts.prefix + opts.choices * opts.choice_len;
    let data = Items { opts, ids: (0..opts.items * stride).map(|_| rng.gen_range(0..config.vocab as u32)).collect() };
    score_full(&mut lm, &params, &data, 0..1)?;
    score_cached(&mut lm, &params, &data, 0..1)?;
    let mut timed = |cached: bool| -> Result<(Vec<f64>, ScoreMethod)> {
        let start = Instant::now();
        let (scores, work) = if cached {
            score_cached(&mut lm, &params, &data, 0..opts.items)?
        } else {
            score_full(&mut lm, &params, &data, 0..opts.items)?
        };
        params.device().synchronize();
        let seconds = start.elapsed().as_secs_f64();
        let method = ScoreMethod {
            items_per_s: opts.items as f64 / seconds,
            positions_per_s: work.positions as f64 / seconds,
            positions: work.positions,
            passes: work.passes,
            seconds,
            gflops: work.flops / seconds / 1e9,
        };
        Ok((scores, method))
    };
    let (full_scores, full) = timed(false)?;
    let (cached_scores, cached) = timed(true)?;
    let max_score_diff = full_scores.iter().zip(&cached_scores).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    Ok(ScoreReport {
        engine: "vlmix".into(),
        model: opts.model_name.clone(),
        items: opts.items,
        prefix: opts.prefix,
        choices: opts.choices,
        choice_len: opts.choice_len,
        rows_per_pass: SCORE_ROWS,
        speedup: cached.items_per_s / full.items_per_s,
        full,
        cached,
        max_score_diff,
        flops_formula: "PaLM forward: 2*N_blocks per position + 4*L*d per key attended + 2*V*d per scored position"
            .into(),
        peak_rss_mb: peak_rss_mb()?,
        threads: rayon::current_num_threads(),
        cpu: vlmix_engine::machine::cpu_model(),
        blas_core: vlmix_engine::blas::init().map_or_else(|_| "not loaded".into(), |()| vlmix_engine::blas::corename()),
    })
}
