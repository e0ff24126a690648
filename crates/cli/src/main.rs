//! `vlmix`: train vision-language models with image data brought into LM pre-training.
use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(name = "vlmix", version, about = "Train and study vision-language models that see images during LM pre-training", long_about = None)]
struct Cli {
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
    /// Micro-benchmarks of the engine.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

fn main() {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_env("VLMIX_LOG")).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(c) => cmd::data::run(c),
        Command::Encode(a) => cmd::encode::run(a),
        Command::Describe(a) => cmd::chat::describe(a),
        Command::Chat(a) => cmd::chat::chat(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Bench(c) => cmd::bench::run(c),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
