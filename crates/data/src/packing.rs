//! Fixed-length training sequences. Text documents are packed back to back with an end-of-text token
//! between them (no padding, no token wasted); an image example becomes one sequence of
//! `[image slots][text tokens][EOS][pad ...]`, the layout the paper uses (single image per sequence,
//! image tokens placed before the caption).
use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::text::shard::TokenShard;
use crate::tokenizer::SpecialTokens;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SequenceKind {
    Text,
    Caption,
    Instruct,
}

/// One training sequence of `seq_len` positions; position `i` reads `inputs[i]` and is trained to predict
/// `targets[i]` where `loss_mask[i]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequence {
    pub kind: SequenceKind,
    /// Index of the image example in its source (caption or instruction set); `None` for text.
    pub example: Option<u64>,
    /// Leading positions that the VLM fills with projected image embeddings (inputs hold `<image>`).
    pub n_image_tokens: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub loss_mask: Vec<bool>,
    /// Text tokens in `inputs` (pads excluded): with `n_image_tokens`, what the mixing ratio counts.
    pub n_text_tokens: usize,
}

/// Random access to tokenized documents (a [`TokenShard`], or anything in memory for tests).
pub trait TokenDocuments {
    fn n_docs(&self) -> usize;
    fn extend_with_doc(&self, d: usize, out: &mut Vec<u32>);
}

impl TokenDocuments for TokenShard {
    fn n_docs(&self) -> usize {
        TokenShard::n_docs(self)
    }
    fn extend_with_doc(&self, d: usize, out: &mut Vec<u32>) {
        TokenShard::extend_with_doc(self, d, out)
    }
}

impl TokenDocuments for crate::text::shard::TokenShards {
    fn n_docs(&self) -> usize {
        crate::text::shard::TokenShards::n_docs(self)
    }
    fn extend_with_doc(&self, d: usize, out: &mut Vec<u32>) {
        crate::text::shard::TokenShards::extend_with_doc(self, d, out)
    }
}

impl TokenDocuments for Vec<Vec<u32>> {
    fn n_docs(&self) -> usize {
        self.len()
    }
    fn extend_with_doc(&self, d: usize, out: &mut Vec<u32>) {
        out.extend_from_slice(&self[d]);
    }
}

/// Where the text stream stands: documents are visited in a seeded random order per epoch, each
/// followed by EOS; `offset` counts the tokens of the current document already consumed (its EOS is
/// at `offset == len`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextCursor {
    pub epoch: u64,
    pub position: u64,
    pub offset: u64,
}

/// Packs documents into text sequences of `seq_len` inputs plus the shifted targets.
pub struct TextPacker<D> {
    docs: D,
    seq_len: usize,
    eos: u32,
    seed: u64,
    pub cursor: TextCursor,
    order: (u64, Vec<u32>),
    doc: Vec<u32>,
}

/// The visiting order of `n` items in `epoch`, reproducible from `seed`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

impl<D: TokenDocuments> TextPacker<D> {
    pub fn new(docs: D, seq_len: usize, eos: u32, seed: u64, cursor: TextCursor) -> Result<Self> {
        anyhow::ensure!(docs.n_docs() > 0, "the text token shard holds no documents");
        anyhow::ensure!(docs.n_docs() <= u32::MAX as usize, "more than 2^32 documents in one shard");
        anyhow::ensure!(seq_len > 0, "sequence length must be positive");
        let order = (cursor.epoch, epoch_order(docs.n_docs(), seed, cursor.epoch));
        anyhow::ensure!(
            cursor.position < docs.n_docs() as u64,
            "saved text cursor points at document {} of a shard with {}: it belongs to other data",
            cursor.position,
            docs.n_docs()
        );
        let mut doc = Vec::new();
        docs.extend_with_doc(order.1[cursor.position as usize] as usize, &mut doc);
        anyhow::ensure!(
            cursor.offset <= doc.len() as u64,
            "saved text cursor offset {} is past its document ({} tokens): it belongs to other data",
            cursor.offset,
            doc.len()
        );
        Ok(Self { docs, seq_len, eos, seed, cursor, order, doc })
    }

    /// Reads `n` stream tokens from `cursor` into `out`, returning the cursor after them.
    fn read(&mut self, mut cursor: TextCursor, n: usize, out: &mut Vec<u32>) -> TextCursor {
        let mut left = n;
        while left > 0 {
            if self.order.0 != cursor.epoch {
                self.order = (cursor.epoch, epoch_order(self.docs.n_docs(), self.seed, cursor.epoch));
            }
            self.doc.clear();
            self.docs.extend_with_doc(self.order.1[cursor.position as usize] as usize, &mut self.doc);
            self.doc.push(self.eos);
            let start = cursor.offset as usize;
            let take = left.min(self.doc.len() - start);
            out.extend_from_slice(&self.doc[start..start + take]);
            left -= take;
            cursor.offset += take as u64;
            if cursor.offset as usize == self.doc.len() {
                cursor = if cursor.position as usize + 1 == self.docs.n_docs() {
                    TextCursor { epoch: cursor.epoch + 1, position: 0, offset: 0 }
                } else {
                    TextCursor { epoch: cursor.epoch, position: cursor.position + 1, offset: 0 }
                };
            }
        }
        cursor
    }

    /// The next text sequence; the stream advances by `seq_len` (its last target is the next input).
    pub fn next_sequence(&mut self) -> Sequence {
        let mut window = Vec::with_capacity(self.seq_len + 1);
        let after_inputs = self.read(self.cursor, self.seq_len, &mut window);
        self.read(after_inputs, 1, &mut window);
        self.cursor = after_inputs;
        Sequence {
            kind: SequenceKind::Text,
            example: None,
            n_image_tokens: 0,
            inputs: window[..self.seq_len].to_vec(),
            targets: window[1..].to_vec(),
            loss_mask: vec![true; self.seq_len],
            n_text_tokens: self.seq_len,
        }
    }
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

    /// Text tokens the sequence will hold (truncated to fit, plus EOS).
    pub fn packed_text_tokens(&self, seq_len: usize, n_image_tokens: usize) -> usize {
        self.tokens.len().min(seq_len - n_image_tokens - 1) + 1
    }
}

/// `[image slots][text][EOS][pad ...]`: the last image slot predicts the first text token; EOS is
/// predicted (the model learns to stop); nothing is predicted from EOS or pads.
pub fn pack_image_sequence(
    kind: SequenceKind,
    example: u64,
    text: &ImageText,
    seq_len: usize,
    n_image_tokens: usize,
    special: SpecialTokens,
) -> Sequence {
    let n_text = text.packed_text_tokens(seq_len, n_image_tokens) - 1;
    let mut inputs = vec![special.image; n_image_tokens];
    let mut trained = vec![false; n_image_tokens];
    inputs.extend_from_slice(&text.tokens[..n_text]);
    trained.extend_from_slice(&text.loss[..n_text]);
    inputs.push(special.eos);
    trained.push(true);
    let real = inputs.len();
    inputs.resize(seq_len, special.pad);
    trained.resize(seq_len, false);
    let mut targets: Vec<u32> = inputs[1..].to_vec();
    targets.push(special.pad);
    let mut loss_mask: Vec<bool> = trained[1..].to_vec();
    loss_mask.push(false);
    Sequence {
        kind,
        example: Some(example),
        n_image_tokens,
        inputs,
        targets,
        loss_mask,
        n_text_tokens: real - n_image_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECIAL: SpecialTokens = SpecialTokens { eos: 0, pad: 1, image: 2 };

    #[test]
    fn text_stream_is_every_document_once_per_epoch_with_eos_between() {
        let docs: Vec<Vec<u32>> = vec![vec![10, 11, 12], vec![20], vec![30, 31], vec![]];
        let stream_len = 3 + 1 + 2 + 4; // tokens (the last document is empty) + one EOS per document
        let mut packer = TextPacker::new(docs.clone(), 5, 0, 7, TextCursor::default()).unwrap();
        let mut stream = Vec::new();
        for _ in 0..2 {
            let seq = packer.next_sequence();
            assert_eq!(seq.inputs[1..], seq.targets[..4]);
            stream.extend_from_slice(&seq.inputs);
        }
        assert_eq!(stream.len(), stream_len);
        assert_eq!(packer.cursor, TextCursor { epoch: 1, position: 0, offset: 0 });
        let order = epoch_order(4, 7, 0);
        let expected: Vec<u32> = order.iter().flat_map(|&d| docs[d as usize].iter().copied().chain([0])).collect();
        assert_eq!(stream, expected);
        let next_epoch = packer.next_sequence();
        assert_ne!(epoch_order(4, 7, 1), order, "epochs are reshuffled");
        assert_eq!(next_epoch.inputs.len(), 5);
    }

    #[test]
    fn caption_sequence_layout_masks_image_slots_eos_target_and_pads() {
        let seq = pack_image_sequence(SequenceKind::Caption, 3, &ImageText::caption(vec![50, 51, 52]), 10, 4, SPECIAL);
        assert_eq!(seq.inputs, [2, 2, 2, 2, 50, 51, 52, 0, 1, 1]);
        assert_eq!(seq.targets, [2, 2, 2, 50, 51, 52, 0, 1, 1, 1]);
        assert_eq!(seq.loss_mask, [false, false, false, true, true, true, true, false, false, false]);
        assert_eq!(seq.n_text_tokens, 4);
    }

    #[test]
    fn long_text_is_truncated_but_keeps_eos() {
        let seq =
            pack_image_sequence(SequenceKind::Caption, 0, &ImageText::caption((100..120).collect()), 8, 3, SPECIAL);
        assert_eq!(seq.inputs, [2, 2, 2, 100, 101, 102, 103, 0]);
        assert_eq!(seq.n_text_tokens, 5);
        assert_eq!(seq.loss_mask, [false, false, true, true, true, true, true, false]);
    }

    #[test]
    fn instruction_loss_follows_the_answer_mask() {
        let text = ImageText { tokens: vec![60, 61, 70, 71], loss: vec![false, false, true, true] };
        let seq = pack_image_sequence(SequenceKind::Instruct, 0, &text, 8, 2, SPECIAL);
        assert_eq!(seq.inputs, [2, 2, 60, 61, 70, 71, 0, 1]);
        assert_eq!(seq.loss_mask, [false, false, false, true, true, true, false, false]);
    }
}
