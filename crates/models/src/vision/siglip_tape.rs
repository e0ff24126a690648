//! What SigLIP's trainable blocks keep between their forward and backward (the tape), and the
//! list of its buffers that memory plans sum (llm.c's `act_sizes`): [`TapeShape::lens`] and the
//! constructors below are built from the same engine-layer `acts_lens` / `scratch_lens`, and a test
//! counts the heap bytes a step keeps against the plan (`vlm.rs`).

use vlmix_engine::layers::{
    Attention, AttentionActs, AttentionScratch, BufLen, GeluMlp, GeluMlpActs, GeluMlpScratch, Norm, NormActs, NormKind,
};
use vlmix_engine::{Cpu, Device, GeluKind, SavedAttention};

/// The layers of one block, as far as the size of a buffer goes (epsilon and GELU kind change none).
pub(super) struct BlockLayers {
    pub(super) norm: Norm,
    pub(super) attention: Attention,
    pub(super) mlp: GeluMlp,
}

/// What a [`SiglipTape`]'s buffers are sized by: shapes only, so a memory plan makes one from a
/// config without the weights ([`crate::memory::TailShape`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TapeShape {
    pub width: usize,
    /// MLP width.
    pub hidden: usize,
    pub heads: usize,
    /// Tokens per image.
    pub tokens: usize,
    /// Trainable blocks: the tape keeps the activations of each.
    pub blocks: usize,
    /// Whether `post_layernorm` follows them (last-layer features).
    pub post: bool,
}

impl TapeShape {
    pub(super) fn layers(&self) -> BlockLayers {
        BlockLayers {
            norm: Norm { kind: NormKind::LayerNormBias, width: self.width, eps: 0.0 },
            attention: Attention::vit(self.width, self.heads),
            mlp: GeluMlp { in_dim: self.width, hidden: self.hidden, out_dim: self.width, gelu: GeluKind::Tanh },
        }
    }

    /// Every buffer a tape of this shape holds for `images` images on a device whose attention
    /// saves `saved`: what [`SiglipVision::forward`](super::siglip::SiglipVision::forward) allocates into a tape (kept for later steps of
    /// as many images or fewer), and what memory plans sum.
    pub fn lens(&self, saved: SavedAttention, images: usize) -> Vec<BufLen> {
        let layers = self.layers();
        let rows = images * self.tokens;
        let mut lens = tape_own_lens(self, rows).to_vec();
        lens.extend(layers.norm.acts_lens(post_rows(self, rows)));
        for _ in 0..self.blocks {
            lens.extend(block_lens(&layers, saved, images, self.tokens, self.width));
        }
        lens.extend(layers.attention.scratch_lens(rows));
        lens.extend(layers.mlp.scratch_lens(rows));
        lens
    }
}

/// One block's input and what its forward saves for its backward.
pub(super) struct BlockActs<D: Device> {
    pub(super) x: D::Owned,
    pub(super) ln1_out: D::Owned,
    pub(super) h: D::Owned,
    pub(super) ln2_out: D::Owned,
    pub(super) ln1: NormActs<D>,
    pub(super) attention: AttentionActs<D>,
    pub(super) ln2: NormActs<D>,
    pub(super) mlp: GeluMlpActs<D>,
}

/// A block's own buffers for `rows` rows of `width`: x, ln1_out, h, ln2_out.
fn block_own_lens(rows: usize, width: usize) -> [BufLen; 4] {
    [BufLen::saved(rows * width); 4]
}

/// Every buffer [`BlockActs::new`] allocates.
fn block_lens(layers: &BlockLayers, saved: SavedAttention, batch: usize, seq: usize, width: usize) -> Vec<BufLen> {
    let rows = batch * seq;
    let mut lens = block_own_lens(rows, width).to_vec();
    lens.extend(layers.norm.acts_lens(rows));
    lens.extend(layers.attention.acts_lens(saved, batch, seq));
    lens.extend(layers.norm.acts_lens(rows));
    lens.extend(layers.mlp.acts_lens(rows));
    lens
}

impl<D: Device> BlockActs<D> {
    pub(super) fn new(dev: &D, layers: &BlockLayers, batch: usize, seq: usize, width: usize) -> Self {
        let rows = batch * seq;
        let [x, ln1_out, h, ln2_out] = block_own_lens(rows, width).map(|b| dev.zeros(b.len));
        BlockActs {
            x,
            ln1_out,
            h,
            ln2_out,
            ln1: layers.norm.acts(dev, rows),
            attention: layers.attention.acts(dev, batch, seq),
            ln2: layers.norm.acts(dev, rows),
            mlp: layers.mlp.acts(dev, rows),
        }
    }
}

/// Rows of `post_layernorm`'s buffers: all of them with it, none without.
fn post_rows(shape: &TapeShape, rows: usize) -> usize {
    if shape.post {
        rows
    } else {
        0
    }
}

/// The tape's own buffers: post_layernorm's input, a block's branch output (forward), then the
/// backward's dx, dbranch, dh, dln.
fn tape_own_lens(shape: &TapeShape, rows: usize) -> [BufLen; 6] {
    let n = rows * shape.width;
    [
        BufLen::saved(post_rows(shape, rows) * shape.width),
        BufLen::scratch(n),
        BufLen::scratch(n),
        BufLen::scratch(n),
        BufLen::scratch(n),
        BufLen::scratch(n),
    ]
}

/// A tape's buffers, sized for `images` images.
pub(super) struct TapeBuffers<D: Device> {
    pub(super) shape: TapeShape,
    pub(super) images: usize,
    /// The trainable blocks', in forward order.
    pub(super) blocks: Vec<BlockActs<D>>,
    pub(super) post_in: D::Owned,
    pub(super) post: NormActs<D>,
    pub(super) branch: D::Owned,
    pub(super) dx: D::Owned,
    pub(super) dbranch: D::Owned,
    pub(super) dh: D::Owned,
    pub(super) dln: D::Owned,
    pub(super) attention_scratch: AttentionScratch<D>,
    pub(super) mlp_scratch: GeluMlpScratch<D>,
}

impl<D: Device> TapeBuffers<D> {
    /// Everything [`TapeShape::lens`] lists.
    pub(super) fn new(dev: &D, shape: TapeShape, images: usize) -> Self {
        let layers = shape.layers();
        let rows = images * shape.tokens;
        let [post_in, branch, dx, dbranch, dh, dln] = tape_own_lens(&shape, rows).map(|b| dev.zeros(b.len));
        TapeBuffers {
            shape,
            images,
            post: layers.norm.acts(dev, post_rows(&shape, rows)),
            blocks: (0..shape.blocks)
                .map(|_| BlockActs::new(dev, &layers, images, shape.tokens, shape.width))
                .collect(),
            post_in,
            branch,
            dx,
            dbranch,
            dh,
            dln,
            attention_scratch: layers.attention.scratch(dev, rows),
            mlp_scratch: layers.mlp.scratch(dev, rows),
        }
    }
}

/// Heap bytes of a tape's per-block structs for `blocks` trainable blocks: bookkeeping beside the
/// buffers its shape lists.
#[cfg(test)]
pub(crate) fn tape_bookkeeping(blocks: usize) -> usize {
    blocks * std::mem::size_of::<BlockActs<Cpu>>()
}

/// What [`SiglipVision::forward`](super::siglip::SiglipVision::forward) keeps for [`SiglipVision::backward`](super::siglip::SiglipVision::backward): the buffers of
/// [`TapeShape::lens`], allocated by the first forward and kept at their largest size.
pub struct SiglipTape<D: Device = Cpu> {
    /// Images of the last forward.
    pub(super) batch: usize,
    pub(super) buffers: Option<TapeBuffers<D>>,
}

impl<D: Device> SiglipTape<D> {
    /// An empty tape for [`SiglipVision::forward`](super::siglip::SiglipVision::forward) to fill.
    pub fn new() -> Self {
        SiglipTape { batch: 0, buffers: None }
    }
}

impl<D: Device> Default for SiglipTape<D> {
    fn default() -> Self {
        Self::new()
    }
}
