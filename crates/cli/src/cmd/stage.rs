//! `vlmix pretrain | cooldown | finetune`: one stage of a study config, run on its own in a directory
//! (resumable like every study node). The study command runs the same library calls for its grid.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use vlmix_data::DataLayout;
use vlmix_engine::checkpoint::resolve_checkpoint;
use vlmix_study::config::{GridPoint, StudyConfig};
use vlmix_study::runner::StudyRunner;
use vlmix_train::stages::Start;

#[derive(clap::Args)]
pub struct Common {
    /// Study config whose model, budgets and learning rates the stage uses.
    #[arg(long)]
    pub config: PathBuf,
    /// Output directory of the stage (rerun to resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Prepared data directory (default: $VLMIX_HOME/prepared).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Sequences per forward/backward pass (overrides the stage's `micro_batch_size`; default: the
    /// largest that fits in this machine's memory). The batch stays the config's `batch_size`.
    #[arg(long)]
    pub micro_batch_size: Option<usize>,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::Args)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args)]
pub struct CooldownArgs {
    #[command(flatten)]
    pub common: Common,
    /// A pre-training checkpoint (`.../checkpoints/step-N`, the `latest` file, or a stage directory for
    /// its latest checkpoint), or `scratch`.
    #[arg(long)]
    pub from: String,
    /// Fraction of the text run the checkpoint sits at (0 = scratch, 1 = fully trained): picks the
    /// continued schedule (interior) or a fresh warmup (0 or 1).
    #[arg(long)]
    pub fraction: f64,
    /// Fraction of image tokens among all cooldown tokens.
    #[arg(long)]
    pub image_fraction: f64,
    /// Share of instruction data inside the image part.
    #[arg(long, default_value_t = 0.0)]
    pub instruction_share: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(clap::Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub common: Common,
    /// The cooldown checkpoint to fine-tune (`.../checkpoints/step-N`, the `latest` file, or the
    /// cooldown's stage directory).
    #[arg(long)]
    pub from: PathBuf,
    /// Epochs (overrides the config's `finetune.epochs`).
    #[arg(long)]
    pub epochs: Option<u32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn with_runner(common: &Common, config: &StudyConfig, run: impl FnOnce(&mut StudyRunner) -> Result<serde_json::Value>) -> Result<()> {
    let layout = DataLayout::from_env(common.data.as_deref())?;
    let mut runner = StudyRunner::new(config, layout, common.quiet)?;
    runner.progress.start_node("stage", 0);
    let outputs = run(&mut runner)?;
    println!("{}", serde_json::to_string_pretty(&outputs)?);
    Ok(())
}

pub fn pretrain(args: PretrainArgs) -> Result<()> {
    let mut config = StudyConfig::load(&args.common.config)?;
    config.pretrain.micro_batch_size = args.common.micro_batch_size.or(config.pretrain.micro_batch_size);
    let out = args.common.out.clone();
    with_runner(&args.common, &config, |r| r.pretrain(&out, &out))
}

pub fn cooldown(args: CooldownArgs) -> Result<()> {
    let mut config = StudyConfig::load(&args.common.config)?;
    config.cooldown.micro_batch_size = args.common.micro_batch_size.or(config.cooldown.micro_batch_size);
    for (field, v) in [("--fraction", args.fraction), ("--image-fraction", args.image_fraction), ("--instruction-share", args.instruction_share)] {
        if !(0.0..=1.0).contains(&v) {
            bail!("{field} {v} is outside [0, 1]");
        }
    }
    let start = if args.from == "scratch" { Start::Scratch } else { Start::TextCheckpoint(resolve_checkpoint(Path::new(&args.from))?) };
    if matches!(start, Start::Scratch) != (args.fraction == 0.0) {
        bail!("--from scratch goes with --fraction 0 (and a checkpoint with a fraction above 0)");
    }
    let point = GridPoint { fraction: args.fraction, image_fraction: args.image_fraction, instruction_share: args.instruction_share };
    let out = args.common.out.clone();
    with_runner(&args.common, &config, |r| r.cooldown(&point, start, args.seed, &out, &out))
}

pub fn finetune(args: FinetuneArgs) -> Result<()> {
    let mut config = StudyConfig::load(&args.common.config)?;
    config.finetune.micro_batch_size = args.common.micro_batch_size.or(config.finetune.micro_batch_size);
    if let Some(epochs) = args.epochs {
        config.finetune.epochs = epochs;
        config.finetune.compare_epoch = config.finetune.compare_epoch.min(epochs);
    }
    let out = args.common.out.clone();
    let from = resolve_checkpoint(&args.from)?;
    let epochs = config.finetune.epochs;
    with_runner(&args.common, &config, |r| r.finetune(from, args.seed, epochs, &out, &out))
}
