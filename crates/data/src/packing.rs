//! Fixed-length training sequences. Text documents are packed back to back with an end-of-text token
//! between them (no padding, no token wasted); image examples become rows laid out by
//! [`VlmSequence`]: `[image slots][text tokens][EOS]`, one per row as in the paper or several back to
//! back, then pads.
use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::sequence::{ImageText, VlmRow, VlmSequence};

use crate::text::shard::TokenShard;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SequenceKind {
    Text,
    Caption,
    Instruct,
}

/// One training sequence of `seq_len` positions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequence {
    pub kind: SequenceKind,
    /// Indices of the row's image examples in their source (caption or instruction set), one per
    /// image of `row` in order; empty for text.
    pub examples: Vec<u64>,
    pub row: VlmRow,
    /// Positions the VLM fills with projected image embeddings (inputs hold `<image>`).
    pub n_image_tokens: usize,
    /// Text tokens in the row (pads excluded): with `n_image_tokens`, what the mixing ratio counts.
    pub n_text_tokens: usize,
}

impl Sequence {
    /// A row holding the image example `example` of `kind` alone (its text cut to fit).
    pub fn image(kind: SequenceKind, example: u64, text: &ImageText, layout: &VlmSequence) -> Self {
        let mut row = layout.row();
        row.push(text);
        let (n_image_tokens, n_text_tokens) = (row.image_tokens(), row.text_tokens());
        Self { kind, examples: vec![example], row: row.finish(), n_image_tokens, n_text_tokens }
    }
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

    /// `n` stream tokens from `cursor`, and with `with_next` the token after them (a last target that
    /// is also the next input); returns them and the cursor after the `n`. The packer's own cursor
    /// stays where it is.
    pub fn peek(&mut self, cursor: TextCursor, n: usize, with_next: bool) -> (Vec<u32>, TextCursor) {
        let mut tokens = Vec::with_capacity(n + 1);
        let after = self.read(cursor, n, &mut tokens);
        if with_next {
            self.read(after, 1, &mut tokens);
        }
        (tokens, after)
    }

    /// The next text sequence; the stream advances by `seq_len` (its last target is the next input).
    pub fn next_sequence(&mut self) -> Sequence {
        let (window, after_inputs) = self.peek(self.cursor, self.seq_len, true);
        self.cursor = after_inputs;
        Sequence {
            kind: SequenceKind::Text,
            examples: Vec::new(),
            row: VlmRow::text(&window),
            n_image_tokens: 0,
            n_text_tokens: self.seq_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stream_is_every_document_once_per_epoch_with_eos_between() {
        let docs: Vec<Vec<u32>> = vec![vec![10, 11, 12], vec![20], vec![30, 31], vec![]];
        let stream_len = 3 + 1 + 2 + 4; // tokens (the last document is empty) + one EOS per document
        let mut packer = TextPacker::new(docs.clone(), 5, 0, 7, TextCursor::default()).unwrap();
        let mut stream = Vec::new();
        for _ in 0..2 {
            let seq = packer.next_sequence();
            assert_eq!(seq.row.inputs[1..], seq.row.targets[..4]);
            stream.extend_from_slice(&seq.row.inputs);
        }
        assert_eq!(stream.len(), stream_len);
        assert_eq!(packer.cursor, TextCursor { epoch: 1, position: 0, offset: 0 });
        let order = epoch_order(4, 7, 0);
        let expected: Vec<u32> = order.iter().flat_map(|&d| docs[d as usize].iter().copied().chain([0])).collect();
        assert_eq!(stream, expected);
        let next_epoch = packer.next_sequence();
        assert_ne!(epoch_order(4, 7, 1), order, "epochs are reshuffled");
        assert_eq!(next_epoch.row.inputs.len(), 5);
    }
}
