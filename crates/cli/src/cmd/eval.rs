//! `vlmix eval`: the paper's evaluation (vision-language and text tasks, stable scores, validation
//! bits-per-byte) on any checkpoint, or on the user's own JSONL task files.
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_data::DataLayout;
use vlmix_device::Opened;
use vlmix_engine::checkpoint::resolve_checkpoint;
use vlmix_engine::Device;
use vlmix_eval::{
    bits_per_byte, evaluate_with_progress, load_tasks, load_text_documents, EvalOptions, EvalReport, ImageFeatures,
    ItemLimit, Modality, ModelScorer, Task, YesNoMode,
};
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

    /// Loads the checkpoint onto `dev` with the prepared tokenizer; a VLM also gets its encoder and
    /// feature cache.
    pub fn open_scorer<D: Device>(&self, dev: D, checkpoint: &Path) -> Result<ModelScorer<D>> {
        let layout = self.layout()?;
        let tokenizer_path = layout.tokenizer_json();
        if !tokenizer_path.is_file() {
            bail!("no tokenizer at {}: run `vlmix data prepare` (or pass --data DIR)", tokenizer_path.display());
        }
        let tokenizer = TextTokenizer::load(&tokenizer_path)?;
        let mut scorer = ModelScorer::from_checkpoint(dev, checkpoint, tokenizer, None)?;
        if scorer.is_vision() {
            let spec = self.encoder_spec(checkpoint)?;
            let encoder = open_encoder(&spec, &layout.home)?;
            scorer.attach_images(ImageFeatures::open(encoder, &layout.home.join(CACHE_SUBDIR))?)?;
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
    /// Documents for validation bits-per-byte (default: the prepared text validation split).
    #[arg(long)]
    validation: Option<PathBuf>,
    /// Use only the first N validation documents.
    #[arg(long)]
    validation_docs: Option<usize>,
    /// Skip validation bits-per-byte.
    #[arg(long, conflicts_with_all = ["validation", "validation_docs"])]
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
    let mut tasks = load_tasks(&task_files)?;
    let mut scorer = args.model.open_scorer(dev, &args.checkpoint)?;
    if !scorer.is_vision() {
        let skipped: Vec<String> =
            tasks.iter().filter(|t| t.modality() == Modality::Vision).map(|t| t.name.clone()).collect();
        if !skipped.is_empty() {
            eprintln!(
                "eval: {} is a text-only checkpoint (no projector): skipping vision tasks {}",
                args.checkpoint.display(),
                skipped.join(", ")
            );
        }
        tasks.retain(|t| t.modality() == Modality::Text);
    }
    let options = EvalOptions {
        limit: ItemLimit::all(args.limit),
        yes_no: if args.yes_no == "generate" { YesNoMode::Generate } else { YesNoMode::Rank },
        ..EvalOptions::default()
    };

    let start = Instant::now();
    let validation = match validation_file(args, &layout) {
        Some(path) => {
            let mut docs = load_text_documents(&path)?;
            docs.truncate(args.validation_docs.unwrap_or(usize::MAX));
            let spinner = ProgressBar::new_spinner()
                .with_message(format!("validation bits-per-byte over {} documents", docs.len()));
            spinner.enable_steady_tick(std::time::Duration::from_millis(200));
            let result =
                bits_per_byte(&mut scorer, &docs).with_context(|| format!("bits-per-byte on {}", path.display()));
            spinner.finish_and_clear();
            Some(result?)
        }
        None => None,
    };
    let validation_s = start.elapsed().as_secs_f64();

    let items_start = Instant::now();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} eval [{bar:30}] {pos}/{len} items ({per_sec}, ETA {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    let total: usize = tasks.iter().map(|t| options.work(t)).sum();
    bar.set_length(total as u64);
    let mut results = Vec::with_capacity(tasks.len());
    for task in &tasks {
        let done_before = bar.position();
        let one = evaluate_with_progress(&mut scorer, std::slice::from_ref(task), None, &options, &mut |done, _| {
            bar.set_position(done_before + done as u64)
        });
        match one {
            Ok(report) => results.extend(report.tasks),
            Err(err) => {
                bar.abandon();
                return Err(err.context(format!("task file {}", task.source.display())));
            }
        }
    }
    bar.finish_and_clear();
    let report = EvalReport::new(results, validation);
    let items: usize = report.tasks.iter().map(|t| t.n_items).sum();
    let items_s = items_start.elapsed().as_secs_f64();

    if let Some(out) = &args.out {
        report.write_json(out)?;
        report.write_samples(&out.with_extension("samples.jsonl"))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("serialising eval report")?);
    } else {
        print_table(&report, &tasks);
        println!(
            "{items} items in {items_s:.1} s ({:.1} items/s){}",
            items as f64 / items_s.max(1e-9),
            if report.validation.is_some() { format!("; validation {validation_s:.1} s") } else { String::new() }
        );
        if let Some(out) = &args.out {
            println!("report written to {}", out.display());
        }
    }
    Ok(())
}

/// The validation documents to score, if any: the flag, or the prepared split when it exists.
fn validation_file(args: &Args, layout: &DataLayout) -> Option<PathBuf> {
    if args.no_validation {
        return None;
    }
    if let Some(path) = &args.validation {
        return Some(path.clone());
    }
    let prepared = layout.text_documents("validation");
    if prepared.is_file() {
        Some(prepared)
    } else {
        eprintln!("eval: no validation split at {}: skipping bits-per-byte", prepared.display());
        None
    }
}

/// One line per task: the accuracy with its 95 % interval over items, chance and the majority-class
/// baseline, and for vision tasks the blind control (same items, blank image) with the vision gain's
/// paired interval: a model "sees" on a task only when that interval excludes 0.
fn print_table(report: &EvalReport, tasks: &[Task]) {
    let width = tasks.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
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
            "validation bits-per-byte: {:.4} ({} documents, {} tokens, {} bytes)",
            v.bits_per_byte, v.documents, v.tokens, v.bytes
        );
    }
}
