//! Activation and gradient buffers of one LM, sized for a batch shape and reused every step.

use super::config::LmConfig;
use super::layers::LmLayers;
use vlmix_engine::layers::{AttentionActs, AttentionScratch, NormActs, SwiGluActs, SwiGluScratch};
use vlmix_engine::Device;

/// Per block: what the forward saves for the backward.
pub struct BlockActs<D: Device> {
    /// Residual stream after attention (`x + attn(norm(x))`), input of `ffn_norm`.
    pub h: D::Owned,
    pub attention_norm_out: D::Owned,
    pub attention_norm: NormActs<D>,
    pub attention: AttentionActs<D>,
    pub ffn_norm_out: D::Owned,
    pub ffn_norm: NormActs<D>,
    pub feed_forward: SwiGluActs<D>,
}

pub struct Workspace<D: Device> {
    pub max_batch: usize,
    pub max_seq: usize,
    /// Token embeddings before the post-embedding norm (empty without one).
    pub embedded: D::Owned,
    pub post_embed_norm: NormActs<D>,
    /// Residual stream entering block `i` (`n_layers + 1` of them; the last feeds the final norm).
    pub residual: Vec<D::Owned>,
    pub blocks: Vec<BlockActs<D>>,
    pub final_norm_out: D::Owned,
    pub final_norm: NormActs<D>,
    /// `[rows, vocab]`; overwritten by the loss gradient in a training step.
    pub logits: D::Owned,
    /// Per-position NLL from the loss.
    pub nll: D::Owned,
    /// Backward: gradient flowing along the residual stream, and two temporaries.
    pub d_residual: D::Owned,
    pub d_branch: D::Owned,
    pub d_norm: D::Owned,
    pub attention_scratch: AttentionScratch<D>,
    pub ffn_scratch: SwiGluScratch<D>,
}

impl<D: Device> Workspace<D> {
    pub fn new(dev: &D, config: &LmConfig, layers: &LmLayers, max_batch: usize, max_seq: usize) -> Self {
        let rows = max_batch * max_seq;
        let d = config.d_model;
        let mut blocks: Vec<BlockActs<D>> = (0..config.n_layers)
            .map(|_| BlockActs {
                h: dev.zeros(rows * d),
                attention_norm_out: dev.zeros(rows * d),
                attention_norm: layers.norm.acts(dev, rows),
                attention: layers.attention.acts(dev, max_batch, max_seq),
                ffn_norm_out: dev.zeros(rows * d),
                ffn_norm: layers.norm.acts(dev, rows),
                feed_forward: layers.feed_forward.acts(dev, rows),
            })
            .collect();
        if let Some(freqs) = &config.rope_inv_freq {
            blocks.iter_mut().for_each(|b| b.attention.set_rope_inv_freq(dev, freqs));
        }
        let post_rows = if config.post_embed_norm { rows } else { 0 };
        Self {
            max_batch,
            max_seq,
            embedded: dev.zeros(post_rows * d),
            post_embed_norm: layers.norm.acts(dev, post_rows),
            residual: (0..=config.n_layers).map(|_| dev.zeros(rows * d)).collect(),
            blocks,
            final_norm_out: dev.zeros(rows * d),
            final_norm: layers.norm.acts(dev, rows),
            logits: dev.zeros(rows * config.vocab),
            nll: dev.zeros(rows),
            d_residual: dev.zeros(rows * d),
            d_branch: dev.zeros(rows * d),
            d_norm: dev.zeros(rows * d),
            attention_scratch: layers.attention.scratch(dev, rows),
            ffn_scratch: layers.feed_forward.scratch(dev, rows),
        }
    }

    pub fn fits(&self, batch: usize, seq: usize) -> bool {
        batch <= self.max_batch && seq <= self.max_seq
    }
}
