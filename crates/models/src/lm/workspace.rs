//! Activation and gradient buffers of one LM, sized for a batch shape and reused every step.

use super::config::LmConfig;
use super::layers::LmLayers;
use vlmix_engine::layers::{AttentionActs, AttentionScratch, NormActs, SwiGluActs, SwiGluScratch};
use vlmix_engine::Cpu;

/// Per block: what the forward saves for the backward.
pub struct BlockActs {
    /// Residual stream after attention (`x + attn(norm(x))`), input of `ffn_norm`.
    pub h: Vec<f32>,
    pub attention_norm_out: Vec<f32>,
    pub attention_norm: NormActs<Cpu>,
    pub attention: AttentionActs<Cpu>,
    pub ffn_norm_out: Vec<f32>,
    pub ffn_norm: NormActs<Cpu>,
    pub feed_forward: SwiGluActs<Cpu>,
}

pub struct Workspace {
    pub max_batch: usize,
    pub max_seq: usize,
    /// Token embeddings before the post-embedding norm (empty without one).
    pub embedded: Vec<f32>,
    pub post_embed_norm: NormActs<Cpu>,
    /// Residual stream entering block `i` (`n_layers + 1` of them; the last feeds the final norm).
    pub residual: Vec<Vec<f32>>,
    pub blocks: Vec<BlockActs>,
    pub final_norm_out: Vec<f32>,
    pub final_norm: NormActs<Cpu>,
    /// `[rows, vocab]`; overwritten by the loss gradient in a training step.
    pub logits: Vec<f32>,
    /// Per-position NLL from the loss.
    pub nll: Vec<f32>,
    /// Backward: gradient flowing along the residual stream, and two temporaries.
    pub d_residual: Vec<f32>,
    pub d_branch: Vec<f32>,
    pub d_norm: Vec<f32>,
    pub attention_scratch: AttentionScratch<Cpu>,
    pub ffn_scratch: SwiGluScratch<Cpu>,
}

impl Workspace {
    pub fn new(dev: &Cpu, config: &LmConfig, layers: &LmLayers, max_batch: usize, max_seq: usize) -> Self {
        let rows = max_batch * max_seq;
        let d = config.d_model;
        let mut blocks: Vec<BlockActs> = (0..config.n_layers)
            .map(|_| BlockActs {
                h: vec![0.0; rows * d],
                attention_norm_out: vec![0.0; rows * d],
                attention_norm: layers.norm.acts(dev, rows),
                attention: layers.attention.acts(dev, max_batch, max_seq),
                ffn_norm_out: vec![0.0; rows * d],
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
            embedded: vec![0.0; post_rows * d],
            post_embed_norm: layers.norm.acts(dev, post_rows),
            residual: (0..=config.n_layers).map(|_| vec![0.0; rows * d]).collect(),
            blocks,
            final_norm_out: vec![0.0; rows * d],
            final_norm: layers.norm.acts(dev, rows),
            logits: vec![0.0; rows * config.vocab],
            nll: vec![0.0; rows],
            d_residual: vec![0.0; rows * d],
            d_branch: vec![0.0; rows * d],
            d_norm: vec![0.0; rows * d],
            attention_scratch: layers.attention.scratch(dev, rows),
            ffn_scratch: layers.feed_forward.scratch(dev, rows),
        }
    }

    pub fn fits(&self, batch: usize, seq: usize) -> bool {
        batch <= self.max_batch && seq <= self.max_seq
    }
}
