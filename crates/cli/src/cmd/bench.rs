//! `vlmix bench train`: training-step throughput of the engine on an LM preset.
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vlmix_engine::device_choice::Opened;
use vlmix_engine::Device;
use vlmix_models::lm::bench::{bench_train, BenchOptions};
use vlmix_models::lm::LmConfig;

use super::device::DeviceArgs;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Full training steps (forward, backward, grad clip, AdamW) of an LM: tokens/s, GFLOP/s, peak RSS.
    Train(TrainArgs),
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
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON line instead of text (same fields as reference/bench_train.py).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Train(args) => train(args),
    }
}

fn train(args: TrainArgs) -> Result<()> {
    if let Some(threads) = args.threads {
        // Read once when the engine's thread pool starts, which has not happened yet.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let model = LmConfig::load(&args.model)?;
    let opts =
        BenchOptions { model, model_name: args.model, batch: args.batch, steps: args.steps, warmup: args.warmup };
    let (report, gpu) = match args.device.choice().open()? {
        Opened::Cpu(cpu) => (bench_train(cpu, &opts)?, None),
        Opened::Cuda(cuda) => {
            let report = bench_train(cuda.clone(), &opts)?;
            cuda.synchronize();
            // The pool keeps freed memory, so what the driver reports in use is the run's peak
            // (plus the context's own few hundred MiB).
            let peak_mb = cuda.memory_used().0 as f64 / (1u64 << 20) as f64;
            (report, Some((cuda.describe(), peak_mb)))
        }
    };
    if args.json {
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
