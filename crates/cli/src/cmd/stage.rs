//! `vlmix pretrain | cooldown | finetune`: one stage of a study config, run on its own in a directory
//! (resumable like every study node). The study command runs the same library calls for its grid.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use vlmix_data::mixing::check_fraction;
use vlmix_data::DataLayout;
use vlmix_device::on_device;
use vlmix_engine::checkpoint::resolve_checkpoint;
use vlmix_engine::Device;
use vlmix_study::config::{GridPoint, StudyConfig};
use vlmix_study::data_config::{ImagesConfig, InstructConfig, TextConfig};
use vlmix_study::outputs::NodeOutputs;
use vlmix_study::runner::StudyRunner;
use vlmix_train::stages::Start;

use super::device::DeviceArgs;

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
    #[command(flatten)]
    pub data_flags: DataFlags,
    /// Overrides the config's `device` / `precision`.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The study config's `[data]` entries as flags; each given flag replaces its entry.
#[derive(clap::Args)]
pub struct DataFlags {
    /// Hugging Face tokenizer.json (`data.tokenizer`).
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Pre-training text: JSONL / JSONL.zst files, globs or brace ranges, or .tokens shards (`data.text.files`).
    #[arg(long = "text", value_name = "PATTERN")]
    pub text: Vec<String>,
    /// Validation text, same forms (default: one document in 100 of --text held out).
    #[arg(long = "validation-text", value_name = "PATTERN")]
    pub validation_text: Vec<String>,
    /// JSON field holding the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Image-caption WebDataset shards: paths, globs or brace ranges like 'shards/{00000..00127}.tar'.
    #[arg(long = "images", value_name = "PATTERN")]
    pub images: Vec<String>,
    /// Caption key: txt (any member extension), json:FIELD, or auto.
    #[arg(long, default_value = "auto")]
    pub caption: String,
    /// Shuffle buffer of the shard stream, in samples.
    #[arg(long, default_value_t = 1000)]
    pub shuffle_buffer: usize,
    /// LLaVA instruction JSON (`data.instruct.file`).
    #[arg(long)]
    pub instruct: Option<String>,
    /// Image folder of the LLaVA JSON (default: the JSON's folder).
    #[arg(long)]
    pub image_root: Option<String>,
    /// What to do with unreadable records: fail or skip (logged and counted).
    #[arg(long)]
    pub on_bad_record: Option<String>,
}

impl DataFlags {
    /// Writes the given flags over the config's `[data]` entries and checks the result.
    fn apply(&self, config: &mut StudyConfig) -> Result<()> {
        let data = &mut config.data;
        if let Some(tokenizer) = &self.tokenizer {
            data.tokenizer = Some(tokenizer.clone());
        }
        if !self.text.is_empty() {
            data.text = Some(TextConfig {
                files: self.text.clone(),
                validation_files: self.validation_text.clone(),
                text_field: self.text_field.clone(),
            });
        } else if !self.validation_text.is_empty() {
            bail!("--validation-text goes with --text");
        }
        if !self.images.is_empty() {
            data.images = Some(ImagesConfig {
                shards: self.images.clone(),
                caption: self.caption.clone(),
                shuffle_buffer: self.shuffle_buffer,
            });
        }
        if let Some(file) = &self.instruct {
            data.instruct = Some(InstructConfig { file: file.clone(), image_root: self.image_root.clone() });
        } else if self.image_root.is_some() {
            bail!("--image-root goes with --instruct");
        }
        if let Some(policy) = &self.on_bad_record {
            data.on_bad_record = policy.parse()?;
        }
        data.validate()
    }
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
    /// Requested fraction of image tokens among all cooldown tokens.
    #[arg(long, alias = "image-fraction")]
    pub image_token_fraction: f64,
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

/// The stage a command runs, with what its flags resolved.
enum Stage {
    Pretrain,
    Cooldown { point: GridPoint, start: Start, seed: u64 },
    Finetune { from: PathBuf, seed: u64, epochs: u32 },
}

/// Runs `stage` in `--out` on the device the flags (or else the config) choose, opened before any
/// data is read, and prints the stage's outputs.
fn run_stage(common: &Common, config: &StudyConfig, stage: Stage) -> Result<()> {
    let layout = DataLayout::from_env(common.data.as_deref())?;
    let mut config = config.clone();
    common.data_flags.apply(&mut config)?;
    config.override_micro_batch_size(common.micro_batch_size);
    let choice = common.device.choice_over(config.device_choice());
    (config.device, config.precision) = (choice.device, choice.precision);
    let outputs = on_device!(choice.open()?, dev => run_on(dev, common, &config, layout, stage))?;
    println!("{}", serde_json::to_string_pretty(&outputs)?);
    Ok(())
}

fn run_on<D: Device>(
    dev: D,
    common: &Common,
    config: &StudyConfig,
    layout: DataLayout,
    stage: Stage,
) -> Result<NodeOutputs> {
    let mut r = StudyRunner::new(config, layout, common.quiet, dev)?;
    r.progress.start_node("stage", 0);
    let out = &common.out;
    Ok(match stage {
        Stage::Pretrain => NodeOutputs::Pretrain(r.pretrain(out, out)?),
        Stage::Cooldown { point, start, seed } => NodeOutputs::Cooldown(r.cooldown(&point, start, seed, out, out)?),
        Stage::Finetune { from, seed, epochs } => NodeOutputs::Finetune(r.finetune(from, seed, epochs, out, out)?),
    })
}

pub fn pretrain(args: PretrainArgs) -> Result<()> {
    let config = StudyConfig::load(&args.common.config)?;
    run_stage(&args.common, &config, Stage::Pretrain)
}

pub fn cooldown(args: CooldownArgs) -> Result<()> {
    let config = StudyConfig::load(&args.common.config)?;
    for (field, v) in [
        ("--fraction", args.fraction),
        ("--image-token-fraction", args.image_token_fraction),
        ("--instruction-share", args.instruction_share),
    ] {
        check_fraction(field, v)?;
    }
    let start = if args.from == "scratch" {
        Start::Scratch
    } else {
        Start::TextCheckpoint(resolve_checkpoint(Path::new(&args.from))?)
    };
    if matches!(start, Start::Scratch) != (args.fraction == 0.0) {
        bail!("--from scratch goes with --fraction 0 (and a checkpoint with a fraction above 0)");
    }
    let point = GridPoint {
        fraction: args.fraction,
        image_token_fraction: args.image_token_fraction,
        instruction_share: args.instruction_share,
    };
    run_stage(&args.common, &config, Stage::Cooldown { point, start, seed: args.seed })
}

pub fn finetune(args: FinetuneArgs) -> Result<()> {
    let mut config = StudyConfig::load(&args.common.config)?;
    if let Some(epochs) = args.epochs {
        config.finetune.epochs = epochs;
        config.finetune.compare_epoch = config.finetune.compare_epoch.min(epochs);
    }
    let from = resolve_checkpoint(&args.from)?;
    let epochs = config.finetune.epochs;
    run_stage(&args.common, &config, Stage::Finetune { from, seed: args.seed, epochs })
}
