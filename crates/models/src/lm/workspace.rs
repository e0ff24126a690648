//! Activation and gradient buffers of one LM, sized for a batch shape and reused every step.
//!
//! [`activation_lens`] lists every buffer [`Workspace::new`] allocates (each part from the same
//! `*_lens` function its constructor allocates from), so the memory plan (`crate::memory`) is a sum
//! over the allocation itself rather than a formula beside it (llm.c's `act_sizes`).

use super::config::LmConfig;
use super::layers::LmLayers;
use vlmix_engine::layers::{AttentionActs, AttentionScratch, BufLen, NormActs, Role, SwiGluActs, SwiGluScratch};
use vlmix_engine::{Device, SavedAttention};

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

/// A block's own buffers: h, attention_norm_out, ffn_norm_out.
fn block_own_lens(rows: usize, d: usize) -> [BufLen; 3] {
    [BufLen::saved(rows * d); 3]
}

/// Every buffer [`BlockActs::new`] allocates.
fn block_lens(layers: &LmLayers, saved: SavedAttention, batch: usize, seq: usize, d: usize) -> Vec<BufLen> {
    let rows = batch * seq;
    let mut lens = block_own_lens(rows, d).to_vec();
    lens.extend(layers.norm.acts_lens(rows));
    lens.extend(layers.attention.acts_lens(saved, batch, seq));
    lens.extend(layers.norm.acts_lens(rows));
    lens.extend(layers.feed_forward.acts_lens(rows));
    lens
}

impl<D: Device> BlockActs<D> {
    fn new(dev: &D, layers: &LmLayers, batch: usize, seq: usize, d: usize) -> Self {
        let rows = batch * seq;
        let [h, attention_norm_out, ffn_norm_out] = block_own_lens(rows, d).map(|b| dev.zeros(b.len));
        BlockActs {
            h,
            attention_norm_out,
            attention_norm: layers.norm.acts(dev, rows),
            attention: layers.attention.acts(dev, batch, seq),
            ffn_norm_out,
            ffn_norm: layers.norm.acts(dev, rows),
            feed_forward: layers.feed_forward.acts(dev, rows),
        }
    }
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

/// Rows of the post-embedding norm: all of them with one, none without.
fn post_rows(config: &LmConfig, rows: usize) -> usize {
    if config.post_embed_norm {
        rows
    } else {
        0
    }
}

/// The workspace's own buffers: embedded, final_norm_out, logits, nll, d_residual, d_branch, d_norm,
/// then the `n_layers + 1` residual streams.
fn own_lens(config: &LmConfig, rows: usize) -> Vec<BufLen> {
    let rd = rows * config.d_model;
    let mut lens = vec![
        BufLen::saved(post_rows(config, rows) * config.d_model),
        BufLen::saved(rd),
        BufLen { role: Role::Logits, len: rows * config.vocab },
        BufLen::saved(rows),
        BufLen::scratch(rd),
        BufLen::scratch(rd),
        BufLen::scratch(rd),
    ];
    lens.extend((0..=config.n_layers).map(|_| BufLen::saved(rd)));
    lens
}

/// Every buffer of the workspace of `config` for `batch` sequences of `seq` on a device whose
/// attention saves `saved`: what [`Workspace::new`] allocates there.
pub fn activation_lens(config: &LmConfig, saved: SavedAttention, batch: usize, seq: usize) -> Vec<BufLen> {
    let layers = LmLayers::new(config);
    let rows = batch * seq;
    let mut lens = own_lens(config, rows);
    for _ in 0..config.n_layers {
        lens.extend(block_lens(&layers, saved, batch, seq, config.d_model));
    }
    lens.extend(layers.norm.acts_lens(post_rows(config, rows)));
    lens.extend(layers.norm.acts_lens(rows));
    lens.extend(layers.attention.scratch_lens(rows));
    lens.extend(layers.feed_forward.scratch_lens(rows));
    lens
}

impl<D: Device> Workspace<D> {
    pub fn new(dev: &D, config: &LmConfig, layers: &LmLayers, max_batch: usize, max_seq: usize) -> Self {
        let rows = max_batch * max_seq;
        let d = config.d_model;
        let mut blocks: Vec<BlockActs<D>> =
            (0..config.n_layers).map(|_| BlockActs::new(dev, layers, max_batch, max_seq, d)).collect();
        if let Some(freqs) = &config.rope_inv_freq {
            blocks.iter_mut().for_each(|b| b.attention.set_rope_inv_freq(dev, freqs));
        }
        let mut own = own_lens(config, rows).into_iter().map(|b| dev.zeros(b.len));
        let mut next = || own.next().expect("own_lens lists every own buffer");
        let (embedded, final_norm_out, logits, nll) = (next(), next(), next(), next());
        let (d_residual, d_branch, d_norm) = (next(), next(), next());
        let residual = (0..=config.n_layers).map(|_| next()).collect();
        Self {
            max_batch,
            max_seq,
            embedded,
            post_embed_norm: layers.norm.acts(dev, post_rows(config, rows)),
            residual,
            blocks,
            final_norm_out,
            final_norm: layers.norm.acts(dev, rows),
            logits,
            nll,
            d_residual,
            d_branch,
            d_norm,
            attention_scratch: layers.attention.scratch(dev, rows),
            ffn_scratch: layers.feed_forward.scratch(dev, rows),
        }
    }

    pub fn fits(&self, batch: usize, seq: usize) -> bool {
        batch <= self.max_batch && seq <= self.max_seq
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::heap_count::held;
    use crate::memory::{TrainShape, VisionShape};
    use vlmix_engine::{Cpu, DeviceMemory};

    /// Bytes `Workspace::new` keeps for `config` at `batch` x `seq`, less the two `Vec`s of
    /// per-layer structs (bookkeeping, not buffers).
    pub(crate) fn allocated(dev: &Cpu, config: &LmConfig, batch: usize, seq: usize) -> u64 {
        let layers = LmLayers::new(config);
        let before = held();
        let work = Workspace::new(dev, config, &layers, batch, seq);
        let held = held() - before;
        let bookkeeping = work.blocks.capacity() * std::mem::size_of::<BlockActs<Cpu>>()
            + work.residual.capacity() * std::mem::size_of::<Vec<f32>>();
        (held - bookkeeping as i64) as u64
    }

    /// The plan's LM activations without the CPU attention backward's per-thread buffers, which
    /// the kernel allocates per call rather than the workspace.
    pub(crate) fn planned(shape: &TrainShape, batch: usize, seq: usize) -> u64 {
        let shape = TrainShape { device: DeviceMemory { attention_workers: 0, ..shape.device }, ..shape.clone() };
        shape.lm_activation_parts(batch, seq).iter().map(|p| p.bytes).sum()
    }

    #[test]
    fn bytes_allocated_are_the_bytes_planned_for_text_and_vlm_shapes() {
        let dev = Cpu::new().unwrap();
        let tiny = LmConfig::preset("tiny").unwrap();
        let mut options = LmConfig { post_embed_norm: true, qk_norm: false, ..tiny.clone() };
        options.rope_inv_freq = Some(vlmix_engine::layers::rope_inv_freq(options.head_dim()));
        for config in [tiny.clone(), options] {
            let text = TrainShape::text(config.clone(), dev.memory());
            for (batch, seq) in [(1, 16), (3, 64)] {
                let bytes = allocated(&dev, &config, batch, seq);
                assert!(bytes > 0);
                assert_eq!(bytes, planned(&text, batch, seq), "{config:?} at {batch} x {seq}");
            }
        }
        // A VLM stage plans its LM at the stage's sequence (image slots included) the same way.
        let vision = VisionShape { image_tokens: 49, feature_width: 320, tail: None };
        let vlm = TrainShape::vlm(LmConfig { seq_len: 96, ..tiny }, vision, dev.memory());
        assert_eq!(allocated(&dev, &vlm.lm, 2, 96), planned(&vlm, 2, 96));
    }
}
