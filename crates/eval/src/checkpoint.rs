//! One checkpoint's whole evaluation, the one path `vlmix eval` and the study's eval nodes share,
//! so a number printed by one is the number the other records.

use anyhow::Result;
use std::path::Path;
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_engine::checkpoint::resolve_checkpoint;
use vlmix_engine::Device;

use crate::bits_per_byte::ValidationSet;
use crate::evaluate::{evaluate_with_progress, EvalOptions, EvalReport};
use crate::model_scorer::{ImageFeatures, ModelScorer};
use crate::task::{Modality, Task};

/// What a checkpoint is scored on.
pub struct CheckpointEval<'a> {
    /// Tasks; a text-only checkpoint (no projector) skips the vision ones.
    pub tasks: &'a [Task],
    pub options: EvalOptions,
    /// Held-out text for bits-per-byte (None: not measured).
    pub validation: Option<&'a ValidationSet>,
}

/// Scores `checkpoint` (a step directory, its `latest` file or a stage directory) on `what`;
/// `images` opens the encoder for the resolved checkpoint and is called only when the model has a
/// projector, so a text model never loads one. `on_item(done, total)` follows the items.
pub fn evaluate_checkpoint<D: Device>(
    dev: D,
    checkpoint: &Path,
    tokenizer: TextTokenizer,
    images: &mut dyn FnMut(&Path) -> Result<ImageFeatures>,
    what: &CheckpointEval,
    on_item: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let checkpoint = resolve_checkpoint(checkpoint)?;
    let mut scorer = ModelScorer::from_checkpoint(dev.clone(), &checkpoint, tokenizer, None)?;
    let vision = scorer.is_vision();
    if vision {
        scorer.attach_images(images(&checkpoint)?)?;
    }
    let (tasks, skipped): (Vec<&Task>, Vec<&Task>) =
        what.tasks.iter().partition(|t| vision || t.modality() == Modality::Text);
    if !skipped.is_empty() {
        let names: Vec<&str> = skipped.iter().map(|t| t.name.as_str()).collect();
        tracing::warn!(
            "{} is a text-only checkpoint: skipping vision tasks {}",
            checkpoint.display(),
            names.join(", ")
        );
    }
    let tasks: Vec<Task> = tasks.into_iter().cloned().collect();
    let mut report = evaluate_with_progress(&mut scorer, &tasks, None, &what.options, on_item)?;
    // The scorer's copy of the weights goes before the validation LM loads its own.
    drop(scorer);
    report.validation = what.validation.map(|v| v.score_checkpoint(dev, &checkpoint)).transpose()?;
    Ok(report)
}
