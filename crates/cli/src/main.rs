//! `vlmix`: train vision-language models with image data brought into LM pre-training.
use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "vlmix",
    version,
    about = "Train and study vision-language models that see images during LM pre-training",
    long_about = "Train and study vision-language models that see images during LM pre-training.\n\n\
                  Typical use: `vlmix data prepare`, then `vlmix study configs/study/mini.toml --out runs/mini`;\n\
                  the report lands in runs/mini/report/index.html. Set VLMIX_LOG=info for logs."
)]
struct Cli {
    /// Logs as JSON lines on stderr (for batch use).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare, summarise and check datasets.
    #[command(subcommand)]
    Data(cmd::data::DataCommand),
    /// Encode images with a frozen vision encoder into a safetensors file.
    Encode(cmd::encode::Args),
    /// Describe an image with a trained VLM.
    Describe(cmd::chat::DescribeArgs),
    /// Ask a trained VLM a question about an image.
    Chat(cmd::chat::ChatArgs),
    /// Evaluate a checkpoint: vision-language and text tasks, stable scores, validation bits-per-byte.
    Eval(cmd::eval::Args),
    /// Text-only pre-training of a study config's model, keeping checkpoints at its fractions.
    Pretrain(cmd::stage::PretrainArgs),
    /// Image-text continued pre-training branched from a text checkpoint (or scratch).
    Cooldown(cmd::stage::CooldownArgs),
    /// Instruction fine-tuning of a cooldown checkpoint for N epochs, loss on answers only.
    Finetune(cmd::stage::FinetuneArgs),
    /// Run (or resume) a whole study: pretrain, cooldowns, fine-tunes, evals, report.
    Study(cmd::study::Args),
    /// Redraw the report of a study run directory.
    Report(cmd::study::ReportArgs),
    /// Import a checkpoint of another trainer (open_lm) as a vlmix checkpoint directory.
    #[command(subcommand)]
    Import(cmd::import::ImportCommand),
    /// Export a checkpoint's LM for another trainer (open_lm's Hugging Face layout).
    #[command(subcommand)]
    Export(cmd::export::ExportCommand),
    /// Micro-benchmarks of the engine.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

/// Console logs filtered by `VLMIX_LOG`, plus the counter of SVG renderer warnings that
/// `vlmix data prepare` summarises per source.
fn init_logging(json: bool) {
    use tracing_subscriber::prelude::*;
    use vlmix_ingest::render_warnings::{log_filter, CountingLayer};
    let user = std::env::var("VLMIX_LOG").ok();
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(user.as_deref()))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(None)));
    let console = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let counter = CountingLayer.with_filter(tracing_subscriber::filter::LevelFilter::WARN);
    let registry = tracing_subscriber::registry().with(counter);
    if json {
        registry.with(console.json().with_filter(filter)).init();
    } else {
        registry.with(console.with_filter(filter)).init();
    }
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let result = match cli.command {
        Command::Data(c) => cmd::data::run(c),
        Command::Encode(a) => cmd::encode::run(a),
        Command::Describe(a) => cmd::chat::describe(a),
        Command::Chat(a) => cmd::chat::chat(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Pretrain(a) => cmd::stage::pretrain(a),
        Command::Cooldown(a) => cmd::stage::cooldown(a),
        Command::Finetune(a) => cmd::stage::finetune(a),
        Command::Study(a) => cmd::study::run(a),
        Command::Report(a) => cmd::study::report(a),
        Command::Import(c) => cmd::import::run(c),
        Command::Export(c) => cmd::export::run(c),
        Command::Bench(c) => cmd::bench::run(c),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
