//! `vlmix bench`: engine throughput on synthetic inputs, each beside a PyTorch twin under
//! `reference/` (`scripts/bench.sh`): training steps, multiple-choice scoring, image encoding.
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use vlmix_data::DataLayout;
use vlmix_device::Opened;
use vlmix_engine::Device;
use vlmix_models::lm::bench::{bench_score, bench_train, BenchOptions, ScoreOptions, ScoreReport};
use vlmix_models::lm::LmConfig;
use vlmix_models::vision::bench::{bench_encode, EncodeOptions};
use vlmix_models::vision::encoder::efficientnet_weights;

use super::device::DeviceArgs;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Full training steps (forward, backward, grad clip, AdamW) of an LM: tokens/s, GFLOP/s, peak RSS.
    Train(TrainArgs),
    /// Multiple-choice scoring as evaluation runs it, two ways on the same random items: whole rows
    /// (prompt + answer, one per choice, as lm-evaluation-harness does) against each prompt once
    /// into a prefix cache and then only the answers (vlmix's scorer): items/s, positions/s.
    Score(ScoreArgs),
    /// EfficientNet-Lite0 forward on synthetic 224x224 inputs, as the feature cache runs it (the
    /// penultimate features, batches of --batch): images/s, GFLOP/s.
    Encode(EncodeArgs),
}

/// What every benchmark takes: its thread count and its output form.
#[derive(Args)]
pub struct RunArgs {
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON line instead of text (the fields of the benchmark's PyTorch twin under
    /// reference/: bench_train.py, bench_score.py, bench_encode.py).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TrainArgs {
    /// Model preset name or TOML file.
    #[arg(long, default_value = "reference")]
    model: String,
    /// Sequences per step (each of the model's seq_len).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[command(flatten)]
    output: RunArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
pub struct ScoreArgs {
    /// Model preset name or TOML file (random weights: speed does not depend on them).
    #[arg(long, default_value = "cpu-small")]
    model: String,
    /// Attention heads, overriding the model's (default: the mini study's 4, as its evals run).
    #[arg(long, default_value_t = 4)]
    n_heads: usize,
    /// Context length, overriding the model's (default: the mini study's 128).
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Multiple-choice items scored by each method.
    #[arg(long, default_value_t = 256)]
    items: usize,
    /// Prompt tokens per item (image tokens + question; EfficientNet-Lite0 gives 49 image tokens).
    #[arg(long, default_value_t = 64)]
    prefix: usize,
    /// Answers per item.
    #[arg(long, default_value_t = 10)]
    choices: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 3)]
    choice_len: usize,
    #[command(flatten)]
    output: RunArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
pub struct EncodeArgs {
    /// EfficientNet-Lite0 weights (.safetensors; default: the ones scripts/fetch-weights.sh fetches,
    /// converted on first use, which reference/bench_encode.py reads too).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Images per forward pass (the feature cache encodes 4 at a time).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Timed images (rounded up to whole batches).
    #[arg(long, default_value_t = 64)]
    images: usize,
    /// Untimed batches first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[command(flatten)]
    output: RunArgs,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Train(args) => train(args),
        BenchCommand::Score(args) => score(args),
        BenchCommand::Encode(args) => encode(args),
    }
}

/// Sets the engine's thread count; must run before anything starts its thread pool.
fn set_threads(threads: Option<usize>) {
    if let Some(threads) = threads {
        // Read once when the engine's thread pool starts, which has not happened yet.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

fn train(args: TrainArgs) -> Result<()> {
    set_threads(args.output.threads);
    let model = LmConfig::load(&args.model)?;
    let opts =
        BenchOptions { model, model_name: args.model, batch: args.batch, steps: args.steps, warmup: args.warmup };
    let (report, gpu) = match args.device.choice().open()? {
        Opened::Cpu(cpu) => (bench_train(cpu, &opts)?, None),
        Opened::Cuda(cuda) => {
            cuda.reset_peak_memory();
            let report = bench_train(cuda.clone(), &opts)?;
            cuda.synchronize();
            // The pool's high-water mark, as PyTorch's max_memory_allocated; without a pool, what
            // the driver reports in use (the context's few hundred MiB more).
            let peak = cuda.peak_memory().unwrap_or_else(|| cuda.memory_used().0 as u64);
            (report, Some((cuda.describe(), peak as f64 / (1u64 << 20) as f64)))
        }
    };
    if args.output.json {
        let mut line = serde_json::to_value(&report).context("serialising the benchmark report")?;
        line["device"] = gpu.as_ref().map_or("cpu".into(), |(name, _)| name.clone()).into();
        if let Some((_, peak_mb)) = gpu {
            line["peak_gpu_mb"] = peak_mb.into();
        }
        println!("{line}");
        return Ok(());
    }
    match &gpu {
        Some((name, peak_mb)) => println!(
            "model {} (batch {} x seq {}) on {name}, {peak_mb:.0} MiB of GPU memory in use",
            report.model, report.batch, report.seq
        ),
        None => println!(
            "model {} (batch {} x seq {}), {} threads, BLAS core {}, CPU {}",
            report.model, report.batch, report.seq, report.threads, report.blas_core, report.cpu
        ),
    }
    println!("tokens/s      {:10.1}", report.tokens_per_s);
    println!(
        "GFLOP/s       {:10.1}   ({}; {:.3} GFLOP/token)",
        report.gflops,
        report.flops_formula,
        report.flops_per_token / 1e9
    );
    println!(
        "step          {:10.1} ms  (forward+backward {:.1}, clip {:.1}, AdamW {:.1})",
        report.step_ms, report.forward_backward_ms, report.clip_ms, report.optimizer_ms
    );
    println!("peak RSS      {:10.1} MiB", report.peak_rss_mb);
    println!("final loss    {:10.4}", report.final_loss);
    Ok(())
}

fn score(args: ScoreArgs) -> Result<()> {
    set_threads(args.output.threads);
    let mut model = LmConfig::load(&args.model)?;
    model.n_heads = args.n_heads;
    model.seq_len = args.seq_len;
    model.validate().context("--n-heads / --seq-len")?;
    let opts = ScoreOptions {
        model,
        model_name: format!("{} (n_heads {}, seq_len {})", args.model, args.n_heads, args.seq_len),
        items: args.items,
        prefix: args.prefix,
        choices: args.choices,
        choice_len: args.choice_len,
    };
    let (report, device) = match args.device.choice().open()? {
        Opened::Cpu(cpu) => (bench_score(cpu, &opts)?, "cpu".to_string()),
        Opened::Cuda(cuda) => (bench_score(cuda.clone(), &opts)?, cuda.describe()),
    };
    if args.output.json {
        let mut line = serde_json::to_value(&report).context("serialising the benchmark report")?;
        line["device"] = device.into();
        println!("{line}");
        return Ok(());
    }
    print_score(&report, &device);
    Ok(())
}

fn print_score(r: &ScoreReport, device: &str) {
    println!(
        "model {}, {} items of a {}-token prompt and {} answers of {} tokens, {} rows a pass",
        r.model, r.items, r.prefix, r.choices, r.choice_len, r.rows_per_pass
    );
    println!("on {device}, {} threads, BLAS core {}, CPU {}", r.threads, r.blas_core, r.cpu);
    println!("{:28} {:>9} {:>12} {:>10} {:>7} {:>8}", "", "items/s", "positions/s", "positions", "passes", "GFLOP/s");
    for (name, m) in [("whole rows", &r.full), ("prefix cache + continuations", &r.cached)] {
        println!(
            "{name:28} {:9.1} {:12.0} {:10} {:7} {:8.1}",
            m.items_per_s, m.positions_per_s, m.positions, m.passes, m.gflops
        );
    }
    println!("prefix cache / whole rows: {:.2}x items/s; largest score difference {:.2e}", r.speedup, r.max_score_diff);
    println!("GFLOP/s count: {}", r.flops_formula);
    println!("peak RSS {:.1} MiB", r.peak_rss_mb);
}

fn encode(args: EncodeArgs) -> Result<()> {
    set_threads(args.output.threads);
    let weights = match args.weights {
        Some(path) => path,
        None => efficientnet_weights(&DataLayout::from_env(None)?.home)?,
    };
    let report =
        bench_encode(&weights, &EncodeOptions { batch: args.batch, images: args.images, warmup: args.warmup })?;
    if args.output.json {
        println!("{}", serde_json::to_string(&report).context("serialising the benchmark report")?);
        return Ok(());
    }
    println!(
        "{} ({}), {} px, {} features of {} ({} layer), batch {}, {} threads, BLAS core {}, CPU {}",
        report.encoder,
        weights.display(),
        report.resolution,
        report.tokens,
        report.width,
        report.layer,
        report.batch,
        report.threads,
        report.blas_core,
        report.cpu
    );
    println!("images/s      {:10.1}", report.images_per_s);
    println!(
        "GFLOP/s       {:10.1}   ({:.3} GFLOP/image: 2 per multiply-add of every convolution)",
        report.gflops,
        report.flops_per_image / 1e9
    );
    println!("batch         {:10.1} ms", report.batch_ms);
    println!("peak RSS      {:10.1} MiB", report.peak_rss_mb);
    Ok(())
}
