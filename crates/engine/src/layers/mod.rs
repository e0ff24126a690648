//! Layers with forward and backward side by side, written against [`Device`] only.
//!
//! Pattern (same for every layer):
//! - The layer struct holds shapes and options only; it owns no memory.
//! - Parameters arrive as `XParams` (borrowed buffers) and gradients as `XGrads` (mutable buffers), so
//!   a model can keep all parameters in one flat buffer and hand out slices of it.
//! - `forward` fills an `XActs` (allocated once with `X::acts(dev, max_rows)`), which `backward` reads.
//!   `backward` takes the same input `x` forward saw (the caller keeps it) and may use an `XScratch`
//!   that all layers of one shape can share.
//! - `X::acts_lens` / `X::scratch_lens` list the buffers `acts` / `scratch` allocate ([`BufLen`]);
//!   the constructors allocate from those lists and memory plans sum them (llm.c's `act_sizes`), so
//!   a plan cannot drift from the allocation.
//! - `backward` *accumulates* parameter gradients and *overwrites* input gradients.
//! - Row counts come from the input length, so one `XActs` sized for the largest batch serves
//!   smaller ones too.

pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod gelu_mlp;
pub mod linear;
pub mod lm_head;
pub mod norm;
pub mod swiglu;

pub use attention::{
    rope_inv_freq, Attention, AttentionActs, AttentionGrads, AttentionParams, AttentionScratch, CachedKv,
};
pub use cross_entropy::{CrossEntropy, ZLossRule};
pub use embedding::Embedding;
pub use gelu_mlp::{GeluMlp, GeluMlpActs, GeluMlpGrads, GeluMlpParams, GeluMlpScratch};
pub use linear::{Linear, LinearGrads, LinearParams};
pub use lm_head::{LmHead, LmHeadScratch};
pub use norm::{Norm, NormActs, NormGrads, NormKind, NormParams};
pub use swiglu::{SwiGlu, SwiGluActs, SwiGluGrads, SwiGluParams, SwiGluScratch};

use crate::Device;

/// What a buffer of activations or scratch holds, as memory plans group them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Attention's saved buffer: probabilities, or log-sum-exps under flash attention.
    SavedAttention,
    /// The `[rows, vocab]` logits of a whole batch.
    Logits,
    /// Any other value a forward keeps for its backward.
    Saved,
    /// Backward temporaries.
    Scratch,
}

/// One buffer an `acts` or `scratch` constructor allocates: what it holds and its length in values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufLen {
    pub role: Role,
    pub len: usize,
}

impl BufLen {
    pub fn saved(len: usize) -> Self {
        BufLen { role: Role::Saved, len }
    }

    pub fn scratch(len: usize) -> Self {
        BufLen { role: Role::Scratch, len }
    }
}

/// Rows of `x` when it holds whole rows of `width`; shapes are programmer contracts, so a mismatch
/// panics with the layer's name.
pub(crate) fn rows_of<D: Device>(dev: &D, x: &D::Buf, width: usize, layer: &str) -> usize {
    let len = dev.len(x);
    assert!(width > 0 && len.is_multiple_of(width), "{layer}: input of {len} elements is not rows of width {width}");
    len / width
}
