//! What the LM reads: token ids, optionally with some positions given as embedding vectors.

use anyhow::{bail, Result};

/// Embedding vectors that replace the token embedding at chosen positions.
///
/// This is how the VLM feeds projected image features: the image's rows come before the caption's
/// tokens in each sequence, and the gradient with respect to these vectors flows back to the
/// projector.
#[derive(Debug, Clone, Copy)]
pub struct InjectedEmbeddings<'a> {
    /// Flat positions `b * seq + t`, strictly increasing.
    pub rows: &'a [usize],
    /// `[rows.len(), d_model]`, row-major.
    pub values: &'a [f32],
}

/// One batch of sequences of equal length.
#[derive(Debug, Clone, Copy)]
pub struct LmInput<'a> {
    pub batch: usize,
    pub seq: usize,
    /// `[batch * seq]` token ids; at injected positions the id is ignored (use any valid id, e.g. 0).
    pub tokens: &'a [u32],
    pub injected: Option<InjectedEmbeddings<'a>>,
}

impl<'a> LmInput<'a> {
    /// Token ids only.
    pub fn tokens(batch: usize, seq: usize, tokens: &'a [u32]) -> Self {
        Self { batch, seq, tokens, injected: None }
    }

    pub fn rows(&self) -> usize {
        self.batch * self.seq
    }

    /// Checks the sizes against the model; ids are checked by the embedding layer.
    pub(crate) fn validate(&self, d_model: usize, max_seq: usize) -> Result<()> {
        if self.batch == 0 || self.seq == 0 {
            bail!("empty batch: batch {} x seq {}", self.batch, self.seq);
        }
        if self.seq > max_seq {
            bail!("sequence length {} exceeds the model's seq_len {max_seq}", self.seq);
        }
        if self.tokens.len() != self.rows() {
            bail!("{} token ids for batch {} x seq {}", self.tokens.len(), self.batch, self.seq);
        }
        if let Some(inj) = &self.injected {
            if inj.values.len() != inj.rows.len() * d_model {
                bail!(
                    "{} injected embedding values for {} positions of width {d_model}",
                    inj.values.len(),
                    inj.rows.len()
                );
            }
            if let Some(w) = inj.rows.windows(2).find(|w| w[0] >= w[1]) {
                bail!("injected positions must be strictly increasing, found {} then {}", w[0], w[1]);
            }
            if let Some(&last) = inj.rows.last() {
                if last >= self.rows() {
                    bail!("injected position {last} is outside the batch of {} positions", self.rows());
                }
            }
        }
        Ok(())
    }
}
