//! Registers the LM's parameters in a `ParamStore` under ARCHITECTURE.md's names (OpenLM's own),
//! with OpenLM's initial values and weight-decay flags.

use super::config::LmConfig;
use super::init::{depth_scaled_std, fan_in_std, Initializer};
use anyhow::Result;
use vlmix_engine::params::{ParamFlags, ParamId, ParamStore};

/// Ids of one block's parameters.
#[derive(Debug, Clone)]
pub struct BlockIds {
    pub attention_norm: ParamId,
    pub in_proj: ParamId,
    pub q_norm: Option<ParamId>,
    pub k_norm: Option<ParamId>,
    pub out_proj: ParamId,
    pub ffn_norm: ParamId,
    pub w12: ParamId,
    pub w3: ParamId,
}

/// Ids of every LM parameter.
#[derive(Debug, Clone)]
pub struct LmParamIds {
    pub tok_embeddings: ParamId,
    pub blocks: Vec<BlockIds>,
    pub norm: ParamId,
    /// `None` when the output projection is tied to `tok_embeddings`.
    pub output: Option<ParamId>,
}

impl LmParamIds {
    /// Every LM parameter (e.g. to freeze the LM inside a VLM).
    pub fn all(&self) -> Vec<ParamId> {
        let mut ids = vec![self.tok_embeddings];
        for b in &self.blocks {
            ids.extend([b.attention_norm, b.in_proj]);
            ids.extend(b.q_norm.into_iter().chain(b.k_norm));
            ids.extend([b.out_proj, b.ffn_norm, b.w12, b.w3]);
        }
        ids.push(self.norm);
        ids.extend(self.output);
        ids
    }

    /// The matrix the output projection multiplies by.
    pub fn output_weight(&self) -> ParamId {
        self.output.unwrap_or(self.tok_embeddings)
    }
}

/// Adds every parameter of `config`'s LM to `store`, initialised as OpenLM does.
///
/// Weight decay applies to matrices except the token embedding (OpenLM's rule; when tied, the
/// shared matrix is the embedding and is not decayed).
pub fn register(config: &LmConfig, store: &mut ParamStore, init: &mut Initializer) -> Result<LmParamIds> {
    let (d, h, v) = (config.d_model, config.ffn_hidden(), config.vocab);
    let ones = |n: usize| vec![1.0f32; n];
    let tok_embeddings = store.add("tok_embeddings.weight", &[v, d], init.trunc_normal(v * d, fan_in_std(d)), ParamFlags::NO_DECAY)?;
    let mut blocks = Vec::with_capacity(config.n_layers);
    for i in 0..config.n_layers {
        let p = |s: &str| format!("layers.{i}.{s}");
        let attention_norm = store.add(&p("attention_norm.weight"), &[d], ones(d), ParamFlags::NO_DECAY)?;
        let in_proj = store.add(&p("attention.in_proj.weight"), &[3 * d, d], init.trunc_normal(3 * d * d, fan_in_std(d)), ParamFlags::MATRIX)?;
        let (q_norm, k_norm) = if config.qk_norm {
            (
                Some(store.add(&p("attention.q_norm.weight"), &[d], ones(d), ParamFlags::NO_DECAY)?),
                Some(store.add(&p("attention.k_norm.weight"), &[d], ones(d), ParamFlags::NO_DECAY)?),
            )
        } else {
            (None, None)
        };
        let out_proj = store.add(&p("attention.out_proj.weight"), &[d, d], init.trunc_normal(d * d, depth_scaled_std(d, i)), ParamFlags::MATRIX)?;
        let ffn_norm = store.add(&p("ffn_norm.weight"), &[d], ones(d), ParamFlags::NO_DECAY)?;
        let w12 = store.add(&p("feed_forward.w12.weight"), &[2 * h, d], init.trunc_normal(2 * h * d, fan_in_std(d)), ParamFlags::MATRIX)?;
        let w3 = store.add(&p("feed_forward.w3.weight"), &[d, h], init.trunc_normal(d * h, depth_scaled_std(h, i)), ParamFlags::MATRIX)?;
        blocks.push(BlockIds { attention_norm, in_proj, q_norm, k_norm, out_proj, ffn_norm, w12, w3 });
    }
    let norm = store.add("norm.weight", &[d], ones(d), ParamFlags::NO_DECAY)?;
    let output = if config.tied_embeddings {
        None
    } else {
        Some(store.add("output.weight", &[v, d], init.trunc_normal(v * d, fan_in_std(d)), ParamFlags::MATRIX)?)
    };
    Ok(LmParamIds { tok_embeddings, blocks, norm, output })
}
