//! The vision-language model: projected image features placed before the text, one causal LM.
//!
//! Each image sequence starts with `n_image_tokens` positions whose inputs are the projector's
//! outputs instead of token embeddings (the paper: image tokens before the caption, plain causal
//! attention, loss on text only — the caller's loss mask is zero on image positions). The LM hands
//! back the gradient at those positions and the projector turns it into its own weight gradients,
//! so one backward trains both. Features come precomputed (feature cache) from the frozen encoder;
//! when the encoder's end trains too (an [`EncoderTail`]), the features pass through it first and
//! the projector's input gradient flows on into it.

use std::ops::Range;

use anyhow::{bail, Result};
use vlmix_engine::params::ParamStore;
use vlmix_engine::LossStats;

use crate::lm::{InjectedEmbeddings, Lm, LmConfig, LmInput};
use crate::vision::projector::Projector;
use crate::vision::tail::EncoderTail;

/// A batch of sequences, some of which start with an image.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VlmBatch {
    pub batch: usize,
    pub seq: usize,
    /// `[batch * seq]`; ids at image positions are ignored.
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub loss_mask: Vec<f32>,
    /// Sequences (in increasing order) whose first `n_image_tokens` positions are image tokens.
    pub image_sequences: Vec<usize>,
    pub n_image_tokens: usize,
    /// `[image_sequences.len() * n_image_tokens, feature width]` cached encoder features.
    pub features: Vec<f32>,
}

impl VlmBatch {
    /// Flat positions (`b * seq + t`) that take projected features.
    fn image_positions(&self) -> Vec<usize> {
        self.image_sequences.iter().flat_map(|&b| (0..self.n_image_tokens).map(move |t| b * self.seq + t)).collect()
    }

    fn validate(&self, encoder_width: usize) -> Result<()> {
        let want = self.image_sequences.len() * self.n_image_tokens * encoder_width;
        if self.features.len() != want {
            bail!(
                "batch has {} feature values for {} images of {} tokens x width {encoder_width} (expected {want})",
                self.features.len(),
                self.image_sequences.len(),
                self.n_image_tokens
            );
        }
        if self.n_image_tokens > self.seq {
            bail!("{} image tokens do not fit a sequence of {}", self.n_image_tokens, self.seq);
        }
        if let Some(&b) = self.image_sequences.iter().find(|&&b| b >= self.batch) {
            bail!("image sequence {b} is outside the batch of {}", self.batch);
        }
        Ok(())
    }

    /// Sequences `range` as a batch of their own (a micro-batch), with their images' features.
    pub fn sequences(&self, range: Range<usize>) -> Result<VlmBatch> {
        if range.start >= range.end || range.end > self.batch {
            bail!("sequences {range:?} are not a non-empty part of a batch of {}", self.batch);
        }
        let rows = range.start * self.seq..range.end * self.seq;
        // Image sequences are increasing and their features stored in that order: one block.
        let first = self.image_sequences.partition_point(|&b| b < range.start);
        let end = self.image_sequences.partition_point(|&b| b < range.end);
        let per_image = self.features.len().checked_div(self.image_sequences.len()).unwrap_or(0);
        Ok(VlmBatch {
            batch: range.len(),
            seq: self.seq,
            inputs: self.inputs[rows.clone()].to_vec(),
            targets: self.targets[rows.clone()].to_vec(),
            loss_mask: self.loss_mask[rows].to_vec(),
            image_sequences: self.image_sequences[first..end].iter().map(|&b| b - range.start).collect(),
            n_image_tokens: self.n_image_tokens,
            features: self.features[first * per_image..end * per_image].to_vec(),
        })
    }
}

/// The LM's view of a batch: token ids plus projected features at the image positions.
fn lm_input<'a>(batch: &'a VlmBatch, positions: &'a [usize], projected: &'a [f32]) -> LmInput<'a> {
    let injected = (!positions.is_empty()).then_some(InjectedEmbeddings { rows: positions, values: projected });
    LmInput { batch: batch.batch, seq: batch.seq, tokens: &batch.inputs, injected }
}

pub struct Vlm {
    pub lm: Lm,
    pub projector: Projector,
    tail: Option<EncoderTail>,
    /// The tail's output of the last forward (the projector's input), when there is a tail.
    tail_out: Vec<f32>,
    /// Projected features of the last forward, `[image positions, d_model]`.
    projected: Vec<f32>,
    d_projected: Vec<f32>,
}

impl Vlm {
    /// A new VLM whose LM and projector parameters are registered in `params`.
    pub fn new(config: LmConfig, encoder_width: usize, params: &mut ParamStore, seed: u64) -> Result<Self> {
        let lm = Lm::new(config.clone(), params, seed)?;
        let projector = Projector::new(encoder_width, config.d_model, params, seed.wrapping_add(1))?;
        Ok(Self::assemble(lm, projector))
    }

    /// Adds a fresh projector to an LM whose parameters are already in `params` (a text checkpoint).
    pub fn with_new_projector(lm: Lm, encoder_width: usize, params: &mut ParamStore, seed: u64) -> Result<Self> {
        let projector = Projector::new(encoder_width, lm.config().d_model, params, seed)?;
        Ok(Self::assemble(lm, projector))
    }

    /// Both parts already registered in `params` (a VLM checkpoint loaded into the store).
    pub fn from_parts(lm: Lm, params: &ParamStore) -> Result<Self> {
        let projector = Projector::from_store(params)?;
        if projector.d_model() != lm.config().d_model {
            bail!("projector outputs width {} but the LM's d_model is {}", projector.d_model(), lm.config().d_model);
        }
        Ok(Self::assemble(lm, projector))
    }

    fn assemble(lm: Lm, projector: Projector) -> Self {
        Self { lm, projector, tail: None, tail_out: Vec::new(), projected: Vec::new(), d_projected: Vec::new() }
    }

    /// Puts a trainable encoder tail (its parameters already in the store) before the projector.
    pub fn set_tail(&mut self, tail: EncoderTail) -> Result<()> {
        if tail.output_width() != self.projector.encoder_width() {
            bail!(
                "encoder tail outputs width {} but the projector takes {}",
                tail.output_width(),
                self.projector.encoder_width()
            );
        }
        self.tail = Some(tail);
        Ok(())
    }

    /// Width of the features a batch carries (the cached encoder output).
    pub fn encoder_width(&self) -> usize {
        self.tail.as_ref().map_or(self.projector.encoder_width(), EncoderTail::input_width)
    }

    /// Image features (`[images, tokens, encoder_width]`) through the tail, if any, and the projector
    /// into `out` (`[images * tokens, d_model]`); with `train`, keeps what backward needs.
    pub fn project_features(
        &mut self,
        params: &ParamStore,
        features: &[f32],
        images: usize,
        train: bool,
        out: &mut [f32],
    ) -> Result<()> {
        match &mut self.tail {
            Some(tail) => {
                self.tail_out = tail.forward(params, features, images, train)?;
                self.projector.forward(params, &self.tail_out, out)
            }
            None => self.projector.forward(params, features, out),
        }
    }

    fn project(&mut self, params: &ParamStore, batch: &VlmBatch, train: bool) -> Result<Vec<usize>> {
        batch.validate(self.encoder_width())?;
        let positions = batch.image_positions();
        let mut projected = std::mem::take(&mut self.projected);
        projected.resize(positions.len() * self.lm.config().d_model, 0.0);
        if !positions.is_empty() {
            self.project_features(params, &batch.features, batch.image_sequences.len(), train, &mut projected)?;
        }
        self.projected = projected;
        Ok(positions)
    }

    /// Forward + backward; accumulates gradients of the LM, the projector and the encoder tail.
    /// Returns the loss.
    pub fn forward_backward(&mut self, params: &mut ParamStore, batch: &VlmBatch) -> Result<LossStats> {
        self.forward_backward_scaled(params, batch, 1.0)
    }

    /// As [`forward_backward`](Self::forward_backward), adding `grad_scale * dloss/dp` (one
    /// micro-batch's share of a larger batch).
    pub fn forward_backward_scaled(
        &mut self,
        params: &mut ParamStore,
        batch: &VlmBatch,
        grad_scale: f32,
    ) -> Result<LossStats> {
        let positions = self.project(params, batch, true)?;
        let input = lm_input(batch, &positions, &self.projected);
        self.d_projected.resize(self.projected.len(), 0.0);
        let d_injected = input.injected.is_some().then_some(&mut self.d_projected[..]);
        let stats =
            self.lm.forward_backward(params, &input, &batch.targets, &batch.loss_mask, grad_scale, d_injected)?;
        if positions.is_empty() {
            return Ok(stats);
        }
        match &mut self.tail {
            Some(tail) => {
                let mut d_tail_out = vec![0.0; self.tail_out.len()];
                self.projector.backward(params, &self.tail_out, &self.d_projected, Some(&mut d_tail_out))?;
                tail.backward(params, &batch.features, batch.image_sequences.len(), &d_tail_out)?;
            }
            None => self.projector.backward(params, &batch.features, &self.d_projected, None)?,
        }
        Ok(stats)
    }

    /// `-log p(target)` at every position (forward only), for evaluation.
    pub fn token_nll(&mut self, params: &ParamStore, batch: &VlmBatch) -> Result<&[f32]> {
        let positions = self.project(params, batch, false)?;
        let input = lm_input(batch, &positions, &self.projected);
        self.lm.token_nll(params, &input, &batch.targets)
    }

    /// Logits `[batch * seq, vocab]` (forward only), for generation.
    pub fn logits(&mut self, params: &ParamStore, batch: &VlmBatch) -> Result<&[f32]> {
        let positions = self.project(params, batch, false)?;
        let input = lm_input(batch, &positions, &self.projected);
        self.lm.logits(params, &input)
    }
}
