//! `vlmix eval`: the paper's evaluation (vision-language and text tasks, stable scores, validation
//! bits-per-byte) on any checkpoint, or on the user's own JSONL task files, through the same
//! `evaluate_checkpoint` as the study's eval nodes.
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;
use vlmix_data::text::shard::TokenShards;
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_data::DataLayout;
use vlmix_device::Opened;
use vlmix_engine::checkpoint::resolve_checkpoint;
use vlmix_engine::Device;
use vlmix_eval::{
    evaluate_checkpoint, load_tasks, load_text_documents, CheckpointEval, EvalOptions, EvalReport, ImageFeatures,
    ItemLimit, Modality, ModelScorer, ValidationSet, YesNoMode, VALIDATION_SEQUENCES,
};
use vlmix_models::stage_record::StageRecord;
use vlmix_models::vision::encoder::{open_encoder, EncoderSpec, FeatureLayer, EFFICIENTNET_NAME};
use vlmix_models::vision::feature_cache::CACHE_SUBDIR;

use super::device::DeviceArgs;

/// Which checkpoint to load and how its images are encoded (shared with `describe` and `chat`).
#[derive(clap::Args)]
pub struct ModelArgs {
    /// Prepared data directory holding tokenizer/ and eval/ (default $VLMIX_HOME/prepared).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Image encoder the model was trained with: efficientnet-lite0 (default), an EfficientNet
    /// .pth/.safetensors file, a Hugging Face SigLIP directory, or patch. Not needed for checkpoints
    /// of vlmix's image stages, which record their encoder (encoder.json) and are read with it.
    #[arg(long)]
    pub encoder: Option<String>,
    /// Encoder feature layer: penultimate or last.
    #[arg(long, default_value = "penultimate")]
    pub layer: String,
    /// Encoder input size in pixels (EfficientNet default 224, patch default 64).
    #[arg(long)]
    pub resolution: Option<u32>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl ModelArgs {
    pub fn layout(&self) -> Result<DataLayout> {
        DataLayout::from_env(self.data.as_deref())
    }

    /// The checkpoint's recorded encoder, else the one the flags describe.
    fn encoder_spec(&self, checkpoint: &Path) -> Result<EncoderSpec> {
        let recorded =
            vlmix_models::stage_record::StageRecord::of_checkpoint(&resolve_checkpoint(checkpoint)?)?.encoder;
        match (recorded, &self.encoder) {
            (Some(recorded), Some(given)) if Path::new(given) != Path::new(&recorded.source) => {
                bail!(
                    "{} was trained with encoder {:?}, not --encoder {given:?}",
                    checkpoint.display(),
                    recorded.source
                )
            }
            (Some(recorded), _) => Ok(recorded),
            (None, given) => Ok(EncoderSpec {
                source: given.clone().unwrap_or_else(|| EFFICIENTNET_NAME.to_string()),
                layer: FeatureLayer::parse(&self.layer)?,
                resolution: self.resolution,
                trainable_blocks: 0,
            }),
        }
    }

    /// The `--device` / `--precision` choice, opened (before the checkpoint is read, so a missing
    /// GPU fails at once).
    pub fn open_device(&self) -> Result<Opened> {
        self.device.choice().open()
    }

    /// The prepared tokenizer.
    fn tokenizer(&self, layout: &DataLayout) -> Result<TextTokenizer> {
        let path = layout.tokenizer_json();
        if !path.is_file() {
            bail!("no tokenizer at {}: run `vlmix data prepare` (or pass --data DIR)", path.display());
        }
        TextTokenizer::load(&path)
    }

    /// The encoder `checkpoint` was trained with, over the feature cache.
    fn image_features(&self, checkpoint: &Path, layout: &DataLayout) -> Result<ImageFeatures> {
        let encoder = open_encoder(&self.encoder_spec(checkpoint)?, &layout.home)?;
        ImageFeatures::open(encoder, &layout.home.join(CACHE_SUBDIR))
    }

    /// Loads the checkpoint onto `dev` with the prepared tokenizer; a VLM also gets its encoder and
    /// feature cache.
    pub fn open_scorer<D: Device>(&self, dev: D, checkpoint: &Path) -> Result<ModelScorer<D>> {
        let layout = self.layout()?;
        let mut scorer = ModelScorer::from_checkpoint(dev, checkpoint, self.tokenizer(&layout)?, None)?;
        if scorer.is_vision() {
            scorer.attach_images(self.image_features(checkpoint, &layout)?)?;
        }
        Ok(scorer)
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (`<stage>/checkpoints/step-N`), its `latest` file, or a stage directory (its
    /// latest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Task files (JSONL); default: every file in the prepared data's eval/vl and eval/text.
    #[arg(long, num_args = 1..)]
    tasks: Vec<PathBuf>,
    /// Evaluate only the first N items of each task.
    #[arg(long)]
    limit: Option<usize>,
    /// JSONL documents (`{"text": ...}`) for validation bits-per-byte (default: the prepared text
    /// validation split, the one a study without `[data.text]` scores).
    #[arg(long)]
    validation: Option<PathBuf>,
    /// Packed validation sequences to score (the study scores 32).
    #[arg(long, default_value_t = VALIDATION_SEQUENCES)]
    validation_sequences: usize,
    /// Skip validation bits-per-byte.
    #[arg(long, conflicts_with_all = ["validation"])]
    no_validation: bool,
    /// How yes/no questions are answered: rank (compare " yes" and " no") or generate.
    #[arg(long, default_value = "rank", value_parser = ["rank", "generate"])]
    yes_no: String,
    /// Write the full report (every item's prediction) as JSON here, and every item's prompt, gold
    /// answer and log-likelihoods beside it (`<out stem>.samples.jsonl`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

/// Every `.jsonl` file directly in `dir`, sorted.
fn jsonl_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| {
        format!("listing eval tasks in {}: run `vlmix data prepare` (or pass --tasks)", dir.display())
    })? {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "jsonl") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

pub fn run(args: Args) -> Result<()> {
    vlmix_device::on_device!(args.model.open_device()?, dev => run_on(dev, &args))
}

fn run_on<D: Device>(dev: D, args: &Args) -> Result<()> {
    let layout = args.model.layout()?;
    let task_files = if args.tasks.is_empty() {
        let mut files = jsonl_files(&layout.eval_vl_dir())?;
        files.extend(jsonl_files(&layout.eval_text_dir())?);
        if files.is_empty() {
            bail!("no task files in {} or {}", layout.eval_vl_dir().display(), layout.eval_text_dir().display());
        }
        files
    } else {
        args.tasks.clone()
    };
    let tasks = load_tasks(&task_files)?;
    let tokenizer = args.model.tokenizer(&layout)?;
    let validation = validation_set(args, &layout, &tokenizer)?;
    let what = CheckpointEval {
        tasks: &tasks,
        options: EvalOptions {
            limit: ItemLimit::all(args.limit),
            yes_no: if args.yes_no == "generate" { YesNoMode::Generate } else { YesNoMode::Rank },
            ..EvalOptions::default()
        },
        validation: validation.as_ref(),
    };

    let start = Instant::now();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} eval [{bar:30}] {pos}/{len} items ({per_sec}, ETA {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    let report = evaluate_checkpoint(
        dev,
        &args.checkpoint,
        tokenizer,
        &mut |checkpoint| args.model.image_features(checkpoint, &layout),
        &what,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64)
        },
    );
    bar.finish_and_clear();
    let report = report?;
    let items: usize = report.tasks.iter().map(|t| t.n_items).sum();
    let seconds = start.elapsed().as_secs_f64();

    if let Some(out) = &args.out {
        report.write_json(out)?;
        report.write_samples(&out.with_extension("samples.jsonl"))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("serialising eval report")?);
    } else {
        print_table(&report);
        println!("{items} items{} in {seconds:.1} s", if report.validation.is_some() { " and validation" } else { "" });
        if let Some(out) = &args.out {
            println!("report written to {}", out.display());
        }
    }
    Ok(())
}

/// The validation set to score, if any: the `--validation` documents, or the prepared split's token
/// shards when they exist, packed at the checkpoint's window.
fn validation_set(args: &Args, layout: &DataLayout, tokenizer: &TextTokenizer) -> Result<Option<ValidationSet>> {
    if args.no_validation {
        return Ok(None);
    }
    let seq = StageRecord::of_checkpoint(&resolve_checkpoint(&args.checkpoint)?)?.model.seq_len;
    let sequences = args.validation_sequences;
    if let Some(path) = &args.validation {
        let docs: Vec<Vec<u32>> = load_text_documents(path)?
            .iter()
            .map(|doc| tokenizer.encode(doc))
            .collect::<Result<_>>()
            .with_context(|| format!("tokenizing {}", path.display()))?;
        let set = ValidationSet::new(docs, seq, sequences, tokenizer);
        return set.with_context(|| format!("validation documents {}", path.display())).map(Some);
    }
    let prepared = layout.text_tokens("validation");
    if !prepared.is_file() {
        eprintln!("eval: no validation split at {}: skipping bits-per-byte", prepared.display());
        return Ok(None);
    }
    ValidationSet::new(TokenShards::open(&[prepared], tokenizer.vocab_size())?, seq, sequences, tokenizer).map(Some)
}

/// One line per task: the accuracy with its 95 % interval over items, chance and the majority-class
/// baseline, and for vision tasks the blind control (same items, blank image) with the vision gain's
/// paired interval: a model "sees" on a task only when that interval excludes 0.
fn print_table(report: &EvalReport) {
    let width = report.tasks.iter().map(|t| t.task.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<width$}  {:<6}  {:>5}  {:>22}  {:>6}  {:>8}  {:>7}  {:>6}  {:>24}  {:>8}",
        "task",
        "kind",
        "n",
        "accuracy [95% CI]",
        "chance",
        "majority",
        "stable",
        "blind",
        "vision gain [95% CI]",
        "no image"
    );
    for t in &report.tasks {
        let kind = match t.modality {
            Modality::Vision => "vision",
            Modality::Text => "text",
        };
        let accuracy = format!("{:.3} [{:.3}, {:.3}]", t.accuracy, t.ci.lo, t.ci.hi);
        let (blind, gain) = match &t.blind {
            Some(b) => (
                format!("{:.3}", b.accuracy),
                format!(
                    "{:+.3} [{:+.3}, {:+.3}]{}",
                    b.vision_gain,
                    b.gain_ci.lo,
                    b.gain_ci.hi,
                    if b.sees { " sees" } else { "" }
                ),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        let no_image = t.no_image.as_ref().map_or("-".to_string(), |c| format!("{:.3}", c.accuracy));
        println!(
            "{:<width$}  {kind:<6}  {:>5}  {accuracy:>22}  {:>6.3}  {:>8.3}  {:>+7.3}  {blind:>6}  {gain:>24}  {no_image:>8}",
            t.task, t.n_items, t.chance, t.majority, t.stable_score
        );
    }
    let show = |score: Option<f64>| score.map_or("-".to_string(), |s| format!("{s:+.4}"));
    println!("vision stable score: {}", show(report.vision_stable_score));
    println!("text stable score:   {}", show(report.text_stable_score));
    if let Some(v) = &report.validation {
        println!(
            "validation bits-per-byte: {:.4} ({} sequences, {} tokens, {} bytes)",
            v.bits_per_byte,
            v.sequence_nats.len(),
            v.tokens,
            v.bytes
        );
    }
}
