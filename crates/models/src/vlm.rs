//! The vision-language model: projected image features in place of the image slots, one causal LM.
//!
//! Rows come laid out by [`VlmSequence`](vlmix_data::sequence::VlmSequence) into a [`VlmBatch`] (`vlmix_data::vlm_batch`) (the paper: image tokens before
//! the caption, plain causal attention, loss on text only); each image slot's positions take the
//! projector's outputs instead of token embeddings. The LM hands back the gradient at those positions
//! and the projector turns it into its own weight gradients, so one backward trains both. Features
//! come precomputed (feature cache) from the frozen encoder; when the encoder's end trains too (an
//! [`EncoderTail`]), the features pass through it first and the projector's input gradient flows on
//! into it.

use anyhow::{bail, ensure, Result};
use vlmix_engine::layers::BufLen;
use vlmix_engine::params::ParamStore;
use vlmix_engine::{Cpu, Device, LossStats};

use crate::lm::{InjectedEmbeddings, Lm, LmConfig, LmInput, PrefixCache};
use crate::vision::projector::{self, Projector};
use crate::vision::tail::EncoderTail;
use vlmix_data::vlm_batch::VlmBatch;

/// The VLM's own image buffers for `images` images of `image_tokens` tokens shown in `slots` slots:
/// projected and its gradient (`[images * image_tokens, d_model]`), injected and its gradient
/// (`[slots * image_tokens, d_model]`). `project` and `inject` size them from here.
fn image_buffer_lens(d_model: usize, image_tokens: usize, images: usize, slots: usize) -> [BufLen; 4] {
    let (projected, injected) = (images * image_tokens * d_model, slots * image_tokens * d_model);
    [BufLen::saved(projected), BufLen::scratch(projected), BufLen::saved(injected), BufLen::scratch(injected)]
}

/// Every buffer a VLM step holds beside the LM's workspace and the encoder tail's
/// ([`crate::vision::tail::activation_lens`]): the image buffers, then the projector's workspace
/// for the projected rows. What memory plans sum.
pub fn image_activation_lens(
    encoder_width: usize,
    d_model: usize,
    image_tokens: usize,
    images: usize,
    slots: usize,
) -> Vec<BufLen> {
    let mut lens = image_buffer_lens(d_model, image_tokens, images, slots).to_vec();
    lens.extend(projector::activation_lens(encoder_width, d_model, images * image_tokens));
    lens
}

/// The LM's view of a batch: token ids plus projected features at the image positions.
fn lm_input<'a, D: Device>(batch: &'a VlmBatch, positions: &'a [usize], values: &'a D::Buf) -> LmInput<'a, D> {
    let injected = (!positions.is_empty()).then_some(InjectedEmbeddings { rows: positions, values });
    LmInput { batch: batch.batch, seq: batch.seq, tokens: &batch.inputs, injected }
}

/// `buf[..len]`, growing `buf` first when it is shorter (buffers keep their largest size, so batches
/// of varying image counts do not reallocate every step).
fn prefix<'a, D: Device>(dev: &D, buf: &'a mut D::Owned, len: usize) -> &'a mut D::Buf {
    if dev.len(buf) < len {
        *buf = dev.zeros(len);
    }
    dev.slice_mut(buf, 0..len)
}

pub struct Vlm<D: Device = Cpu> {
    pub lm: Lm<D>,
    pub projector: Projector<D>,
    tail: Option<EncoderTail<D>>,
    /// Projected images of the last forward, `[images * n_image_tokens, d_model]` (a prefix).
    projected: D::Owned,
    projected_len: usize,
    d_projected: D::Owned,
    /// The projected images laid over the slots, `[slots * n_image_tokens, d_model]` (a prefix), and
    /// their gradient.
    injected: D::Owned,
    injected_len: usize,
    d_injected: D::Owned,
}

impl<D: Device> Vlm<D> {
    /// A new VLM whose LM and projector parameters are registered in `params` (computing on its device).
    pub fn new(config: LmConfig, encoder_width: usize, params: &mut ParamStore<D>, seed: u64) -> Result<Self> {
        let lm = Lm::new(config.clone(), params, seed)?;
        let projector = Projector::new(encoder_width, config.d_model, params, seed.wrapping_add(1))?;
        Ok(Self::assemble(lm, projector))
    }

    /// Adds a fresh projector to an LM whose parameters are already in `params` (a text checkpoint).
    pub fn with_new_projector(lm: Lm<D>, encoder_width: usize, params: &mut ParamStore<D>, seed: u64) -> Result<Self> {
        let projector = Projector::new(encoder_width, lm.config().d_model, params, seed)?;
        Ok(Self::assemble(lm, projector))
    }

    fn assemble(lm: Lm<D>, projector: Projector<D>) -> Self {
        let dev = lm.device().clone();
        Self {
            lm,
            projector,
            tail: None,
            projected: dev.zeros(0),
            projected_len: 0,
            d_projected: dev.zeros(0),
            injected: dev.zeros(0),
            injected_len: 0,
            d_injected: dev.zeros(0),
        }
    }

    /// Puts a trainable encoder tail (its parameters already in the store) before the projector.
    pub fn set_tail(&mut self, tail: EncoderTail<D>) -> Result<()> {
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
        params: &ParamStore<D>,
        features: &D::Buf,
        images: usize,
        train: bool,
        out: &mut D::Buf,
    ) -> Result<()> {
        match &mut self.tail {
            Some(tail) => {
                let tail_out = tail.forward(params, features, images, train)?;
                self.projector.forward(params, tail_out, out)
            }
            None => self.projector.forward(params, features, out),
        }
    }

    /// Projects the batch's images (`self.projected`) and lays them over their slots (`self.injected`);
    /// returns the image positions.
    fn project(&mut self, params: &ParamStore<D>, batch: &VlmBatch, train: bool) -> Result<Vec<usize>> {
        let images = batch.images()?;
        let want = images * batch.n_image_tokens * self.encoder_width();
        ensure!(
            batch.features.len() == want,
            "batch has {} feature values for {images} images of {} tokens x width {} (expected {want})",
            batch.features.len(),
            batch.n_image_tokens,
            self.encoder_width()
        );
        let dev = self.lm.device().clone();
        let mut projected = std::mem::replace(&mut self.projected, dev.zeros(0));
        let d = self.lm.config().d_model;
        self.projected_len = image_buffer_lens(d, batch.n_image_tokens, images, batch.slots.len())[0].len;
        let out = prefix(&dev, &mut projected, self.projected_len);
        if images > 0 {
            self.project_features(params, &dev.on_device(&batch.features), images, train, &mut *out)?;
        }
        let positions = self.inject(batch, out)?;
        self.projected = projected;
        Ok(positions)
    }

    /// Lays `projected` images (`[images * n_image_tokens, d_model]`) over the batch's slots.
    fn inject(&mut self, batch: &VlmBatch, projected: &D::Buf) -> Result<Vec<usize>> {
        let (dev, d) = (self.lm.device(), self.lm.config().d_model);
        let images = batch.images()?;
        let got = dev.len(projected);
        ensure!(
            got == images * batch.n_image_tokens * d,
            "{got} projected values for {images} images of {} tokens x width {d}",
            batch.n_image_tokens
        );
        let rows: Vec<usize> = batch
            .slots
            .iter()
            .flat_map(|slot| slot.image * batch.n_image_tokens..(slot.image + 1) * batch.n_image_tokens)
            .collect();
        self.injected_len = image_buffer_lens(d, batch.n_image_tokens, images, batch.slots.len())[2].len;
        dev.gather_rows(projected, &rows, prefix(dev, &mut self.injected, self.injected_len));
        Ok(batch.image_positions())
    }

    /// Sums the gradient at every slot into its image's (`d_projected`, `[images * n_image_tokens, d_model]`).
    fn gather_slot_gradients(&mut self, batch: &VlmBatch) {
        let dev = self.lm.device();
        let block = batch.n_image_tokens * self.lm.config().d_model;
        let d_projected = prefix(dev, &mut self.d_projected, self.projected_len);
        let mut seen = vec![false; self.projected_len.checked_div(block).unwrap_or(0)];
        for (k, slot) in batch.slots.iter().enumerate() {
            let from = dev.slice(&self.d_injected, k * block..(k + 1) * block);
            let to = dev.slice_mut(&mut *d_projected, slot.image * block..(slot.image + 1) * block);
            if std::mem::replace(&mut seen[slot.image], true) {
                dev.add_assign(to, from);
            } else {
                dev.copy(from, to);
            }
        }
    }

    /// Forward + backward; accumulates gradients of the LM, the projector and the encoder tail.
    /// Returns the loss.
    pub fn forward_backward(&mut self, params: &mut ParamStore<D>, batch: &VlmBatch) -> Result<LossStats> {
        self.forward_backward_scaled(params, batch, 1.0)
    }

    /// As [`forward_backward`](Self::forward_backward), adding `grad_scale * dloss/dp` (one
    /// micro-batch's share of a larger batch).
    pub fn forward_backward_scaled(
        &mut self,
        params: &mut ParamStore<D>,
        batch: &VlmBatch,
        grad_scale: f32,
    ) -> Result<LossStats> {
        let positions = self.project(params, batch, true)?;
        let dev = self.lm.device().clone();
        let input = lm_input(batch, &positions, dev.slice(&self.injected, 0..self.injected_len));
        let d_injected = prefix(&dev, &mut self.d_injected, self.injected_len);
        let d_injected = input.injected.is_some().then_some(d_injected);
        let stats =
            self.lm.forward_backward(params, &input, &batch.targets, &batch.loss_mask, grad_scale, d_injected)?;
        if positions.is_empty() {
            return Ok(stats);
        }
        self.gather_slot_gradients(batch);
        let images = batch.images()?;
        let features = dev.on_device(&batch.features);
        let d_projected = dev.slice(&self.d_projected, 0..self.projected_len);
        match &mut self.tail {
            Some(tail) => {
                let (tail_out, d_tail_out) = tail.output_and_gradient();
                self.projector.backward(params, tail_out, d_projected, Some(d_tail_out))?;
                tail.backward(params, &features, images)?;
            }
            None => self.projector.backward(params, &features, d_projected, None)?,
        }
        Ok(stats)
    }

    /// `-log p(target)` at every position (forward only), for evaluation.
    pub fn token_nll(&mut self, params: &ParamStore<D>, batch: &VlmBatch) -> Result<&D::Buf> {
        let positions = self.project(params, batch, false)?;
        let injected = self.lm.device().slice(&self.injected, 0..self.injected_len);
        self.lm.token_nll(params, &lm_input(batch, &positions, injected), &batch.targets)
    }

    /// Logits `[batch * seq, vocab]` (forward only), for generation.
    pub fn logits(&mut self, params: &ParamStore<D>, batch: &VlmBatch) -> Result<&D::Buf> {
        let positions = self.project(params, batch, false)?;
        let injected = self.lm.device().slice(&self.injected, 0..self.injected_len);
        self.lm.logits(params, &lm_input(batch, &positions, injected))
    }

    /// [`Lm::prefix_caches`] over `batch` (each row a sequence's first `lens[r]` positions, logits
    /// at `rows`), with the images already through [`project_features`](Self::project_features)
    /// (`[images * n_image_tokens, d_model]`; the batch's `features` are not read): a scorer asking
    /// many rows about one image projects it once.
    pub fn prefix_caches_of_projected(
        &mut self,
        params: &ParamStore<D>,
        batch: &VlmBatch,
        projected: &D::Buf,
        lens: &[usize],
        rows: &[usize],
    ) -> Result<(Vec<PrefixCache<D>>, &D::Buf)> {
        let positions = self.inject(batch, projected)?;
        let injected = self.lm.device().slice(&self.injected, 0..self.injected_len);
        self.lm.prefix_caches(params, &lm_input(batch, &positions, injected), lens, rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap_count::{held, on_own_pool};
    use crate::memory::{TailShape, TrainShape, VisionShape};
    use crate::vision::encoder::{EncoderSpec, FeatureLayer, PATCH_NAME};
    use crate::vision::siglip;
    use std::path::Path;
    use vlmix_data::sequence::{ImageText, SpecialTokens, VlmRow, VlmSequence};

    /// `rows` rows of `seq` positions, each showing an image of its own (with `images`) or plain text.
    fn batch(rows: usize, seq: usize, tokens: usize, width: usize, images: bool) -> VlmBatch {
        let special = SpecialTokens { eos: 0, pad: 1, image: 2 };
        let layout = VlmSequence::new(seq, tokens, special).unwrap();
        let mut batch = VlmBatch::new(seq, tokens);
        for r in 0..rows {
            let text = ImageText::caption((10..11 + seq as u32).collect());
            let row = if images {
                let mut row = layout.row();
                assert!(row.push(&text));
                row.finish()
            } else {
                VlmRow::text(&text.tokens[..seq + 1])
            };
            let shown: Vec<usize> =
                if images { vec![batch.push_image(&vec![0.1 * r as f32; tokens * width])] } else { vec![] };
            batch.push_row(&row, &shown, special.pad).unwrap();
        }
        batch
    }

    #[test]
    fn a_step_holds_the_image_buffers_the_plan_counts() {
        on_own_pool(image_step_holds_the_image_buffers_the_plan_counts);
    }

    fn image_step_holds_the_image_buffers_the_plan_counts() {
        let dev = Cpu::new().unwrap();
        let (seq, tokens, width, rows) = (24, 4, 12, 3);
        let config = LmConfig { seq_len: seq, ..LmConfig::preset("tiny").unwrap() };
        let mut params = ParamStore::new(dev);
        let mut vlm = Vlm::new(config.clone(), width, &mut params, 7).unwrap();
        // A text step first: the LM's workspace and the gradients exist before the measured step.
        vlm.forward_backward(&mut params, &batch(rows, seq, tokens, width, false)).unwrap();
        let images = batch(rows, seq, tokens, width, true);
        let before = held();
        vlm.forward_backward(&mut params, &images).unwrap();
        let kept = (held() - before) as u64;
        let listed: u64 =
            image_activation_lens(width, config.d_model, tokens, rows, rows).iter().map(|l| 4 * l.len as u64).sum();
        assert!(listed > 0);
        assert_eq!(kept, listed);
        // The plan's part is that list (no encoder tail here).
        let vision = VisionShape { image_tokens: tokens, feature_width: width, tail: None };
        let plan = TrainShape::vlm(config, vision, dev.memory()).breakdown(rows, rows);
        let part = plan.parts.iter().find(|p| p.name.starts_with("projector")).unwrap();
        assert_eq!(part.bytes, listed);
    }

    /// A VLM with the tail `spec` asks for: the heap bytes one step of `rows` images keeps (after a
    /// text step) are the plan's projector-and-tail part, made from the spec alone.
    fn assert_a_tail_step_holds_what_the_plan_counts(spec: &EncoderSpec, rows: usize) {
        let dev = Cpu::new().unwrap();
        let mut params = ParamStore::new(dev);
        let tail = EncoderTail::open(spec, &mut params, 5).unwrap().expect("the spec has a tail");
        let (width, tokens) = (tail.input_width(), tail.tokens());
        let seq = tokens + 8;
        let config = LmConfig { seq_len: seq, ..LmConfig::preset("tiny").unwrap() };
        let lm = Lm::new(config.clone(), &mut params, 3).unwrap();
        let mut vlm = Vlm::with_new_projector(lm, tail.output_width(), &mut params, 4).unwrap();
        vlm.set_tail(tail).unwrap();
        vlm.forward_backward(&mut params, &batch(rows, seq, tokens, width, false)).unwrap();
        let images = batch(rows, seq, tokens, width, true);
        let before = held();
        vlm.forward_backward(&mut params, &images).unwrap();
        // Less the `Vec` of per-block structs in a SigLIP tape (bookkeeping, not buffers).
        let bookkeeping = siglip::tape_bookkeeping(spec.trainable_blocks) as i64;
        let kept = (held() - before - bookkeeping) as u64;
        let tail = TailShape::of(spec, width).unwrap();
        let vision = VisionShape { image_tokens: tokens, feature_width: width, tail };
        let plan = TrainShape::vlm(config, vision, dev.memory()).breakdown(rows, rows);
        let part = plan.parts.iter().find(|p| p.name.starts_with("projector")).unwrap();
        assert!(part.bytes > 0);
        assert_eq!(kept, part.bytes, "{spec:?}");
        // A later step of fewer images allocates nothing.
        let before = held();
        vlm.forward_backward(&mut params, &batch(rows - 1, seq, tokens, width, true)).unwrap();
        assert_eq!(held(), before, "{spec:?}");
    }

    #[test]
    fn a_step_holds_the_tail_buffers_the_plan_counts() {
        let siglip = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/siglip_tiny").display().to_string();
        for (layer, blocks) in [(FeatureLayer::Last, 2), (FeatureLayer::Penultimate, 1)] {
            let spec = EncoderSpec { source: siglip.clone(), layer, resolution: None, trainable_blocks: blocks };
            on_own_pool(|| assert_a_tail_step_holds_what_the_plan_counts(&spec, 3));
        }
        let patch = EncoderSpec {
            source: PATCH_NAME.into(),
            layer: FeatureLayer::Last,
            resolution: Some(16),
            trainable_blocks: 0,
        };
        on_own_pool(|| assert_a_tail_step_holds_what_the_plan_counts(&patch, 3));
    }
}
