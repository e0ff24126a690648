//! What the LM reads: token ids, optionally with some positions given as embedding vectors.

use anyhow::{bail, Result};
use vlmix_engine::{Cpu, Device};

/// Embedding vectors that replace the token embedding at chosen positions.
///
/// This is how the VLM feeds projected image features: the image's rows come before the caption's
/// tokens in each sequence, and the gradient with respect to these vectors flows back to the
/// projector.
pub struct InjectedEmbeddings<'a, D: Device = Cpu> {
    /// Flat positions `b * seq + t`, strictly increasing.
    pub rows: &'a [usize],
    /// `[rows.len(), d_model]`, row-major, on the model's device.
    pub values: &'a D::Buf,
}

impl<D: Device> Clone for InjectedEmbeddings<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D: Device> Copy for InjectedEmbeddings<'_, D> {}

/// One batch of sequences of equal length.
pub struct LmInput<'a, D: Device = Cpu> {
    pub batch: usize,
    pub seq: usize,
    /// `[batch * seq]` token ids; at injected positions the id is ignored (use any valid id, e.g. 0).
    pub tokens: &'a [u32],
    pub injected: Option<InjectedEmbeddings<'a, D>>,
}

impl<D: Device> Clone for LmInput<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D: Device> Copy for LmInput<'_, D> {}

impl<'a, D: Device> LmInput<'a, D> {
    /// Token ids only.
    pub fn tokens(batch: usize, seq: usize, tokens: &'a [u32]) -> Self {
        Self { batch, seq, tokens, injected: None }
    }

    pub fn rows(&self) -> usize {
        self.batch * self.seq
    }

    /// Checks the sizes against the model; ids are checked by the embedding layer.
    pub(crate) fn validate(&self, dev: &D, d_model: usize, max_seq: usize) -> Result<()> {
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
            if dev.len(inj.values) != inj.rows.len() * d_model {
                bail!(
                    "{} injected embedding values for {} positions of width {d_model}",
                    dev.len(inj.values),
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
