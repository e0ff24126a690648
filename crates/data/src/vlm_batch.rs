//! A VLM batch as plain data: rows laid out by [`VlmSequence`](crate::sequence::VlmSequence) (token ids, targets, loss mask) and
//! the slots where each image's cached features go. The samplers and the scorer build it here;
//! the VLM (`vlmix_models::vlm`) consumes it, so data needs nothing of the model to write it.

use std::ops::Range;

use anyhow::{bail, Result};

use crate::packing::Sequence;
use crate::sequence::VlmRow;

/// Where one image goes in a batch: `n_image_tokens` positions from flat position `at` (`b * seq + t`),
/// filled with the features of image `image`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageSlot {
    pub at: usize,
    pub image: usize,
}

/// A batch of rows (laid out by [`VlmSequence`](crate::sequence::VlmSequence)) with their images.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VlmBatch {
    pub batch: usize,
    pub seq: usize,
    /// `[batch * seq]`; ids at image positions are ignored.
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub loss_mask: Vec<f32>,
    pub n_image_tokens: usize,
    /// Increasing `at`; several slots may show the same image (a scorer's choices).
    pub slots: Vec<ImageSlot>,
    /// `[images, n_image_tokens, feature width]` cached encoder features.
    pub features: Vec<f32>,
    /// Per row, its real tokens as the sampler counted them ([`push_sequence`](Self::push_sequence));
    /// empty when rows came without counts (a scorer's).
    pub row_tokens: Vec<RowTokens>,
}

/// Real tokens of one sampled row: image slots, and text with each example's EOS (pads excluded),
/// what the mixing sampler weighs, budgets count and the achieved image fraction divides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowTokens {
    pub image: usize,
    pub text: usize,
}

impl VlmBatch {
    /// An empty batch of rows of `seq` positions.
    pub fn new(seq: usize, n_image_tokens: usize) -> Self {
        Self { seq, n_image_tokens, ..Default::default() }
    }

    /// Adds the features of one image (`[n_image_tokens, width]`, as every image of the batch); returns
    /// its index for [`push_row`](Self::push_row).
    pub fn push_image(&mut self, features: &[f32]) -> usize {
        let index = self.features.len().checked_div(features.len()).unwrap_or(0);
        self.features.extend_from_slice(features);
        index
    }

    /// Appends the sampled `sequence` as [`push_row`](Self::push_row) does, keeping its token counts.
    pub fn push_sequence(&mut self, sequence: &Sequence, images: &[usize], pad: u32) -> Result<()> {
        self.push_row(&sequence.row, images, pad)?;
        self.row_tokens.push(RowTokens { image: sequence.n_image_tokens, text: sequence.n_text_tokens });
        Ok(())
    }

    /// (image tokens, all tokens) of the rows pushed with their counts.
    pub fn token_counts(&self) -> (u64, u64) {
        let image: usize = self.row_tokens.iter().map(|t| t.image).sum();
        let text: usize = self.row_tokens.iter().map(|t| t.text).sum();
        (image as u64, (image + text) as u64)
    }

    /// Appends `row`, padded to `seq` with `pad`; its `k`-th image shows image `images[k]`.
    pub fn push_row(&mut self, row: &VlmRow, images: &[usize], pad: u32) -> Result<()> {
        let n = row.inputs.len();
        if n > self.seq || row.images.len() != images.len() {
            bail!(
                "a row of {n} positions and {} images does not fit a batch of {} positions with {} images given",
                row.images.len(),
                self.seq,
                images.len()
            );
        }
        let base = self.batch * self.seq;
        self.slots.extend(row.images.iter().zip(images).map(|(&t, &image)| ImageSlot { at: base + t, image }));
        self.inputs.extend_from_slice(&row.inputs);
        self.inputs.resize(base + self.seq, pad);
        self.targets.extend_from_slice(&row.targets);
        self.targets.resize(base + self.seq, pad);
        self.loss_mask.extend(row.loss_mask.iter().map(|&m| if m { 1.0 } else { 0.0 }));
        self.loss_mask.resize(base + self.seq, 0.0);
        self.batch += 1;
        Ok(())
    }
}

impl VlmBatch {
    /// Images the slots show (every image is shown at least once), checking that each slot lies
    /// inside its row and after the previous one.
    pub fn images(&self) -> Result<usize> {
        let mut free = 0;
        for slot in &self.slots {
            let (row, t) = (slot.at.checked_div(self.seq).unwrap_or(usize::MAX), slot.at % self.seq.max(1));
            if slot.at < free || row >= self.batch || t + self.n_image_tokens > self.seq {
                bail!(
                    "image slot at position {t} of row {row} overlaps the previous image or leaves the batch of {} rows of {} positions",
                    self.batch,
                    self.seq
                );
            }
            free = slot.at + self.n_image_tokens;
        }
        Ok(self.slots.iter().map(|s| s.image + 1).max().unwrap_or(0))
    }

    /// Flat positions that take projected features, slot after slot.
    pub fn image_positions(&self) -> Vec<usize> {
        self.slots.iter().flat_map(|s| s.at..s.at + self.n_image_tokens).collect()
    }

    /// Rows `range` as a batch of their own (a micro-batch), with the images they show.
    pub fn sequences(&self, range: Range<usize>) -> Result<VlmBatch> {
        if range.start >= range.end || range.end > self.batch {
            bail!("sequences {range:?} are not a non-empty part of a batch of {}", self.batch);
        }
        let rows = range.start * self.seq..range.end * self.seq;
        let per_image = self.features.len().checked_div(self.images()?).unwrap_or(0);
        let mut part = VlmBatch {
            batch: range.len(),
            seq: self.seq,
            inputs: self.inputs[rows.clone()].to_vec(),
            targets: self.targets[rows.clone()].to_vec(),
            loss_mask: self.loss_mask[rows.clone()].to_vec(),
            n_image_tokens: self.n_image_tokens,
            row_tokens: self.row_tokens.get(range.clone()).map_or_else(Vec::new, <[RowTokens]>::to_vec),
            ..Default::default()
        };
        let mut renamed: Vec<(usize, usize)> = Vec::new();
        for slot in self.slots.iter().filter(|s| rows.contains(&s.at)) {
            let image = match renamed.iter().find(|(old, _)| *old == slot.image) {
                Some(&(_, new)) => new,
                None => {
                    let block = &self.features[slot.image * per_image..(slot.image + 1) * per_image];
                    let new = part.push_image(block);
                    renamed.push((slot.image, new));
                    new
                }
            };
            part.slots.push(ImageSlot { at: slot.at - rows.start, image });
        }
        Ok(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::SequenceKind;
    use crate::sequence::{ImageText, SpecialTokens, VlmSequence};

    #[test]
    fn sampled_rows_carry_their_counts_into_micro_batches() {
        let special = SpecialTokens { eos: 0, pad: 1, image: 2 };
        let layout = VlmSequence::new(10, 4, special).unwrap();
        let mut batch = VlmBatch::new(10, 4);
        for (k, len) in [3, 1].into_iter().enumerate() {
            let text = ImageText::caption((50..50 + len).collect());
            let sequence = Sequence::image(SequenceKind::Caption, k as u64, &text, &layout);
            let image = batch.push_image(&[0.0; 4]);
            batch.push_sequence(&sequence, &[image], special.pad).unwrap();
        }
        // Four image slots per row; text with the EOS: 3 + 1 and 1 + 1. Pads are not counted.
        assert_eq!(batch.row_tokens, [RowTokens { image: 4, text: 4 }, RowTokens { image: 4, text: 2 }]);
        assert_eq!(batch.token_counts(), (8, 14));
        assert_eq!(batch.sequences(1..2).unwrap().token_counts(), (4, 6));
    }
}
