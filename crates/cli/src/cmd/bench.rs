//! `vlmix bench train`: training-step throughput of the engine on an LM preset.
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vlmix_models::lm::bench::{bench_train, BenchOptions};
use vlmix_models::lm::LmConfig;

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
    let report = bench_train(vlmix_engine::Cpu::new()?, &BenchOptions {
        model,
        model_name: args.model,
        batch: args.batch,
        steps: args.steps,
        warmup: args.warmup,
    })?;
    if args.json {
        println!("{}", serde_json_line(&report)?);
        return Ok(());
    }
    println!(
        "model {} (batch {} x seq {}), {} threads, BLAS core {}, CPU {}",
        report.model, report.batch, report.seq, report.threads, report.blas_core, report.cpu
    );
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

fn serde_json_line(report: &vlmix_models::lm::bench::BenchReport) -> Result<String> {
    report.to_json().context("serialising the benchmark report")
}
