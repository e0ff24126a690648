//! `vlmix describe` and `vlmix chat`: generation conditioned on an image, streamed as it is produced.
//!
//! `describe` asks for the caption position right after the image (how cooldown captions are laid
//! out); `chat` frames the question with the eval template, as instruction data is framed.
use crate::cmd::eval::ModelArgs;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use vlmix_device::on_device;
use vlmix_engine::Device;
use vlmix_eval::prompt::VlTemplate;
use vlmix_eval::{Decoding, ImageRef, ModelScorer};

/// Decoding flags shared by both commands.
#[derive(clap::Args)]
pub struct DecodingArgs {
    /// Sampling temperature; 0 (the default) decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only among the K most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many tokens (generation also stops at end-of-text or a newline).
    #[arg(long, default_value_t = 48)]
    max_tokens: usize,
}

impl DecodingArgs {
    fn decoding(&self) -> Decoding {
        Decoding { max_tokens: self.max_tokens, temperature: self.temperature, top_k: self.top_k, seed: self.seed }
    }
}

#[derive(clap::Args)]
pub struct DescribeArgs {
    /// Image file (PNG, JPEG, WebP).
    image: PathBuf,
    /// Checkpoint directory (`<stage>/checkpoints/step-N`), its `latest` file, or a stage directory (its
    /// latest checkpoint).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    decoding: DecodingArgs,
    #[command(flatten)]
    model_args: ModelArgs,
}

#[derive(clap::Args)]
pub struct ChatArgs {
    /// The question.
    question: String,
    /// Checkpoint directory (`<stage>/checkpoints/step-N`), its `latest` file, or a stage directory (its
    /// latest checkpoint).
    #[arg(long)]
    model: PathBuf,
    /// Image the question is about (a text-only model answers without one).
    #[arg(long)]
    image: Option<PathBuf>,
    #[command(flatten)]
    decoding: DecodingArgs,
    #[command(flatten)]
    model_args: ModelArgs,
}

fn image_ref(path: &Path) -> Result<ImageRef> {
    if !path.is_file() {
        bail!("{}: no such image file", path.display());
    }
    Ok(ImageRef { key: path.display().to_string(), path: path.to_path_buf() })
}

/// Generates and prints each piece of text as soon as it exists.
fn stream<D: Device>(
    scorer: &mut ModelScorer<D>,
    image: Option<&ImageRef>,
    prompt: &str,
    decoding: &Decoding,
) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    scorer.generate_with(image, prompt, decoding, &mut |piece| {
        if write_error.is_none() {
            write_error = stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush()).err();
        }
    })?;
    if let Some(err) = write_error {
        return Err(err).context("writing to stdout");
    }
    writeln!(stdout).context("writing to stdout")
}

pub fn describe(args: DescribeArgs) -> Result<()> {
    let image = image_ref(&args.image)?;
    on_device!(args.model_args.open_device()?, dev => describe_on(dev, &args, &image))
}

fn describe_on<D: Device>(dev: D, args: &DescribeArgs, image: &ImageRef) -> Result<()> {
    let mut scorer = args.model_args.open_scorer(dev, &args.model)?;
    if !scorer.is_vision() {
        bail!("{} is a text-only checkpoint (no projector): it cannot describe images", args.model.display());
    }
    stream(&mut scorer, Some(image), "", &args.decoding.decoding())
}

pub fn chat(args: ChatArgs) -> Result<()> {
    let image = args.image.as_deref().map(image_ref).transpose()?;
    on_device!(args.model_args.open_device()?, dev => chat_on(dev, &args, image.as_ref()))
}

fn chat_on<D: Device>(dev: D, args: &ChatArgs, image: Option<&ImageRef>) -> Result<()> {
    let mut scorer = args.model_args.open_scorer(dev, &args.model)?;
    if let (Some(image), false) = (image, scorer.is_vision()) {
        bail!(
            "{} is a text-only checkpoint (no projector): it cannot look at {}",
            args.model.display(),
            image.path.display()
        );
    }
    let prompt = VlTemplate::default().render(args.question.trim());
    stream(&mut scorer, image, &prompt, &args.decoding.decoding())
}
