//! The VLM sequence: the one place that lays out rows of image slots and text, for training's packing,
//! the VLM's batches and every scorer.
//!
//! A row is a stream of tokens; an image example in it is `[image slots][text][EOS]` (the paper's
//! layout: image tokens before the caption). Position `i` reads `stream[i]` and is trained to predict
//! `stream[i + 1]` where that token is trained text: never an image slot or a pad; every caption
//! token, only the answers of a conversation, and the EOS that closes an example (the model learns to
//! stop). So the last image slot predicts the first text token, and nothing is predicted from an EOS
//! into the next example's image slots.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// Ids of the special tokens in one tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    pub eos: u32,
    pub pad: u32,
    pub image: u32,
}

/// The text that follows an image: token ids with, per token, whether the model is trained to produce it
/// (all caption tokens; only the assistant's answers in instruction conversations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageText {
    pub tokens: Vec<u32>,
    pub loss: Vec<bool>,
}

impl ImageText {
    pub fn caption(tokens: Vec<u32>) -> Self {
        let loss = vec![true; tokens.len()];
        Self { tokens, loss }
    }
}

/// One row: position `i` reads `inputs[i]` and is trained to predict `targets[i]` where `loss_mask[i]`;
/// image `k` fills the `n_image_tokens` positions from `images[k]` (increasing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VlmRow {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub loss_mask: Vec<bool>,
    pub images: Vec<usize>,
}

impl VlmRow {
    /// `n_inputs` positions over `stream`, each predicting the next stream token; targets past the
    /// stream's end are `pad`, untrained.
    fn shifted(stream: &[u32], trained: &[bool], n_inputs: usize, pad: u32, images: Vec<usize>) -> Self {
        let target = |i: usize| stream.get(i + 1).map_or((pad, false), |&t| (t, trained[i + 1]));
        let (targets, loss_mask) = (0..n_inputs).map(target).unzip();
        Self { inputs: stream[..n_inputs].to_vec(), targets, loss_mask, images }
    }

    /// Packed text: `window[i]` predicts `window[i + 1]` at every position.
    pub fn text(window: &[u32]) -> Self {
        let n = window.len() - 1;
        Self {
            inputs: window[..n].to_vec(),
            targets: window[1..].to_vec(),
            loss_mask: vec![true; n],
            images: Vec::new(),
        }
    }
}

/// Rows of one model: `seq_len` positions, images of `n_image_tokens` slots each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlmSequence {
    seq_len: usize,
    n_image_tokens: usize,
    special: SpecialTokens,
}

impl VlmSequence {
    /// The image-fit rule, defined here only: a row holds one image, at least one text token and the EOS.
    pub fn new(seq_len: usize, n_image_tokens: usize, special: SpecialTokens) -> Result<Self> {
        ensure!(
            seq_len >= n_image_tokens + 2,
            "sequence length {seq_len} leaves no room for text after {n_image_tokens} image tokens"
        );
        Ok(Self { seq_len, n_image_tokens, special })
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    pub fn n_image_tokens(&self) -> usize {
        self.n_image_tokens
    }

    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    /// Text tokens an example of `text` puts in a row of its own (cut to fit), its EOS included.
    pub fn packed_text_tokens(&self, text: &ImageText) -> usize {
        text.tokens.len().min(self.seq_len - self.n_image_tokens - 1) + 1
    }

    /// An empty row to pack image examples into.
    pub fn row(&self) -> ImageRow {
        ImageRow {
            layout: *self,
            stream: Vec::with_capacity(self.seq_len + 1),
            trained: Vec::new(),
            images: Vec::new(),
        }
    }

    /// A scoring row: the image (if any), `context`, then `continuation` trained; neither EOS nor pads,
    /// and the last continuation token is a target only. The caller cuts `context` to fit.
    pub fn scoring_row(&self, image: bool, context: &[u32], continuation: &[u32]) -> VlmRow {
        let (stream, trained, images) = self.prefix(image, context, continuation);
        VlmRow::shifted(&stream, &trained, stream.len() - 1, self.special.pad, images)
    }

    /// A generation row: the image (if any) then `context`; the last position predicts the next token.
    pub fn prompt_row(&self, image: bool, context: &[u32]) -> VlmRow {
        let (stream, trained, images) = self.prefix(image, context, &[]);
        VlmRow::shifted(&stream, &trained, stream.len(), self.special.pad, images)
    }

    fn prefix(&self, image: bool, context: &[u32], continuation: &[u32]) -> (Vec<u32>, Vec<bool>, Vec<usize>) {
        let n_image = if image { self.n_image_tokens } else { 0 };
        let mut stream = vec![self.special.image; n_image];
        stream.extend_from_slice(context);
        stream.extend_from_slice(continuation);
        let mut trained = vec![false; n_image + context.len()];
        trained.resize(stream.len(), true);
        (stream, trained, if image { vec![0] } else { Vec::new() })
    }
}

/// A training row being packed with image examples, back to back, then padded to `seq_len`.
pub struct ImageRow {
    layout: VlmSequence,
    stream: Vec<u32>,
    trained: Vec<bool>,
    images: Vec<usize>,
}

impl ImageRow {
    /// Appends `[image slots][text][EOS]` when the whole example fits in what is left of the row; the
    /// first example of a row always goes in, its text cut to fit. Returns whether it went in.
    pub fn push(&mut self, text: &ImageText) -> bool {
        let n = self.layout.n_image_tokens;
        let n_text = if self.images.is_empty() {
            self.layout.packed_text_tokens(text) - 1
        } else if self.stream.len() + n + text.tokens.len() < self.layout.seq_len {
            text.tokens.len()
        } else {
            return false;
        };
        self.images.push(self.stream.len());
        self.stream.resize(self.stream.len() + n, self.layout.special.image);
        self.trained.resize(self.trained.len() + n, false);
        self.stream.extend_from_slice(&text.tokens[..n_text]);
        self.trained.extend_from_slice(&text.loss[..n_text]);
        self.stream.push(self.layout.special.eos);
        self.trained.push(true);
        true
    }

    /// Image tokens in the row.
    pub fn image_tokens(&self) -> usize {
        self.images.len() * self.layout.n_image_tokens
    }

    /// Text tokens in the row's inputs (EOS included, pads not).
    pub fn text_tokens(&self) -> usize {
        self.stream.len().min(self.layout.seq_len) - self.image_tokens()
    }

    /// Input positions left after the row's examples.
    pub fn room(&self) -> usize {
        self.layout.seq_len.saturating_sub(self.stream.len())
    }

    /// Appends text-stream tokens after the row's examples, every one trained as in packed text (the
    /// EOS before them predicts the first); at most [`room`](Self::room) of them plus one that is
    /// only the last position's target.
    pub fn fill(&mut self, tokens: &[u32]) {
        assert!(self.stream.len() + tokens.len() <= self.layout.seq_len + 1, "text fill past the row's end");
        self.stream.extend_from_slice(tokens);
        self.trained.resize(self.stream.len(), true);
    }

    /// The row, padded to `seq_len`.
    pub fn finish(mut self) -> VlmRow {
        let seq_len = self.layout.seq_len;
        self.stream.resize(seq_len + 1, self.layout.special.pad);
        self.trained.resize(seq_len + 1, false);
        VlmRow::shifted(&self.stream, &self.trained, seq_len, self.layout.special.pad, self.images)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECIAL: SpecialTokens = SpecialTokens { eos: 0, pad: 1, image: 2 };

    fn one(text: ImageText, seq_len: usize, n_image: usize) -> VlmRow {
        let mut row = VlmSequence::new(seq_len, n_image, SPECIAL).unwrap().row();
        assert!(row.push(&text));
        row.finish()
    }

    #[test]
    fn caption_row_masks_image_slots_eos_target_and_pads() {
        let row = one(ImageText::caption(vec![50, 51, 52]), 10, 4);
        assert_eq!(row.inputs, [2, 2, 2, 2, 50, 51, 52, 0, 1, 1]);
        assert_eq!(row.targets, [2, 2, 2, 50, 51, 52, 0, 1, 1, 1]);
        assert_eq!(row.loss_mask, [false, false, false, true, true, true, true, false, false, false]);
        assert_eq!(row.images, [0]);
    }

    #[test]
    fn long_text_is_cut_but_keeps_eos() {
        let row = one(ImageText::caption((100..120).collect()), 8, 3);
        assert_eq!(row.inputs, [2, 2, 2, 100, 101, 102, 103, 0]);
        assert_eq!(row.loss_mask, [false, false, true, true, true, true, true, false]);
    }

    #[test]
    fn instruction_loss_follows_the_answer_mask() {
        let text = ImageText { tokens: vec![60, 61, 70, 71], loss: vec![false, false, true, true] };
        let row = one(text, 8, 2);
        assert_eq!(row.inputs, [2, 2, 60, 61, 70, 71, 0, 1]);
        assert_eq!(row.loss_mask, [false, false, false, true, true, true, false, false]);
    }

    #[test]
    fn packed_examples_each_train_only_their_own_text() {
        let layout = VlmSequence::new(12, 2, SPECIAL).unwrap();
        let mut row = layout.row();
        assert!(row.push(&ImageText::caption(vec![50, 51])));
        assert!(row.push(&ImageText::caption(vec![60])));
        assert!(!row.push(&ImageText::caption(vec![70, 71])), "needs 5 positions, 3 are left");
        assert_eq!((row.image_tokens(), row.text_tokens()), (4, 5));
        let row = row.finish();
        assert_eq!(row.inputs, [2, 2, 50, 51, 0, 2, 2, 60, 0, 1, 1, 1]);
        assert_eq!(row.loss_mask, [false, true, true, true, false, false, true, true, false, false, false, false]);
        assert_eq!(row.images, [0, 5]);
    }

    #[test]
    fn text_fill_trains_every_token_after_the_examples_eos() {
        let layout = VlmSequence::new(8, 2, SPECIAL).unwrap();
        let mut row = layout.row();
        assert!(row.push(&ImageText::caption(vec![50])));
        assert_eq!(row.room(), 4);
        row.fill(&[80, 81, 82, 83, 84]); // four inputs and the last position's target
        assert_eq!((row.image_tokens(), row.text_tokens(), row.room()), (2, 6, 0));
        let row = row.finish();
        assert_eq!(row.inputs, [2, 2, 50, 0, 80, 81, 82, 83]);
        assert_eq!(row.targets, [2, 50, 0, 80, 81, 82, 83, 84]);
        assert_eq!(row.loss_mask, [false, true, true, true, true, true, true, true]);

        let mut partial = layout.row();
        assert!(partial.push(&ImageText::caption(vec![50])));
        partial.fill(&[80, 81]);
        let partial = partial.finish();
        assert_eq!(partial.inputs, [2, 2, 50, 0, 80, 81, 1, 1]);
        assert_eq!(partial.loss_mask, [false, true, true, true, true, false, false, false]);
    }

    #[test]
    fn the_fit_rule_wants_one_text_token_and_eos_after_the_image() {
        assert!(VlmSequence::new(5, 3, SPECIAL).is_ok());
        assert!(VlmSequence::new(4, 3, SPECIAL).is_err());
    }

    #[test]
    fn scoring_and_prompt_rows_put_the_image_first() {
        let layout = VlmSequence::new(16, 3, SPECIAL).unwrap();
        let row = layout.scoring_row(true, &[40, 41], &[50, 51]);
        assert_eq!(row.inputs, [2, 2, 2, 40, 41, 50]);
        assert_eq!(row.targets, [2, 2, 40, 41, 50, 51]);
        assert_eq!(row.loss_mask, [false, false, false, false, true, true]);
        let prompt = layout.prompt_row(true, &[40, 41]);
        assert_eq!(prompt.inputs, [2, 2, 2, 40, 41]);
        assert_eq!(prompt.images, [0]);
        assert_eq!(layout.scoring_row(false, &[0, 40], &[50]).inputs, [0, 40]);
    }
}
