//! Registers the LM's parameters in a `ParamStore` under ARCHITECTURE.md's names (OpenLM's own),
//! with OpenLM's initial values and the config's weight-decay rule.

use super::config::{LmConfig, NormKind, WeightDecayRule};
use super::init::{depth_scaled_std, fan_in_std, Initializer};
use anyhow::Result;
use vlmix_engine::params::{ParamFlags, ParamId, ParamStore};
use vlmix_engine::Device;

/// Ids of one norm's gain and, for `layer_norm`, its bias.
#[derive(Debug, Clone, Copy)]
pub struct NormIds {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
}

impl NormIds {
    fn ids(&self) -> impl Iterator<Item = ParamId> {
        std::iter::once(self.weight).chain(self.bias)
    }
}

/// Ids of one block's parameters.
#[derive(Debug, Clone)]
pub struct BlockIds {
    pub attention_norm: NormIds,
    pub in_proj: ParamId,
    pub q_norm: Option<NormIds>,
    pub k_norm: Option<NormIds>,
    pub out_proj: ParamId,
    pub ffn_norm: NormIds,
    pub w12: ParamId,
    pub w3: ParamId,
}

/// Ids of every LM parameter.
#[derive(Debug, Clone)]
pub struct LmParamIds {
    pub tok_embeddings: ParamId,
    pub post_embed_norm: Option<NormIds>,
    pub blocks: Vec<BlockIds>,
    pub norm: NormIds,
    /// `None` when the output projection is tied to `tok_embeddings`.
    pub output: Option<ParamId>,
}

impl LmParamIds {
    /// Every LM parameter, in registration order (e.g. to freeze the LM inside a VLM).
    pub fn all(&self) -> Vec<ParamId> {
        let mut ids = vec![self.tok_embeddings];
        ids.extend(self.post_embed_norm.iter().flat_map(NormIds::ids));
        for b in &self.blocks {
            ids.extend(b.attention_norm.ids());
            ids.push(b.in_proj);
            ids.extend(b.q_norm.iter().chain(&b.k_norm).flat_map(NormIds::ids));
            ids.push(b.out_proj);
            ids.extend(b.ffn_norm.ids());
            ids.extend([b.w12, b.w3]);
        }
        ids.extend(self.norm.ids());
        ids.extend(self.output);
        ids
    }

    /// The matrix the output projection multiplies by.
    pub fn output_weight(&self) -> ParamId {
        self.output.unwrap_or(self.tok_embeddings)
    }
}

/// Adds every parameter of `config`'s LM to `store`, initialised as OpenLM does (norm gains 1,
/// biases 0).
///
/// Weight decay follows `config.weight_decay_rule`: open_lm's decays everything; `matrices` decays
/// the weight matrices except the token embedding (when tied, the shared matrix is the embedding
/// and is not decayed).
pub fn register<D: Device>(config: &LmConfig, store: &mut ParamStore<D>, init: &mut Initializer) -> Result<LmParamIds> {
    let (d, h, v) = (config.d_model, config.ffn_hidden(), config.vocab);
    let (matrix, other) = match config.weight_decay_rule {
        WeightDecayRule::OpenLm => (ParamFlags::MATRIX, ParamFlags::MATRIX),
        WeightDecayRule::Matrices => (ParamFlags::MATRIX, ParamFlags::NO_DECAY),
    };
    let norm = |store: &mut ParamStore<D>, name: &str| -> Result<NormIds> {
        let weight = store.add(&format!("{name}.weight"), &[d], vec![1.0; d], other)?;
        let bias = match config.norm {
            NormKind::LayerNorm => Some(store.add(&format!("{name}.bias"), &[d], vec![0.0; d], other)?),
            NormKind::GainOnlyLayerNorm | NormKind::RmsNorm => None,
        };
        Ok(NormIds { weight, bias })
    };
    let tok_embeddings = store.add("tok_embeddings.weight", &[v, d], init.trunc_normal(v * d, fan_in_std(d)), other)?;
    let post_embed_norm = if config.post_embed_norm { Some(norm(store, "post_embed_norm")?) } else { None };
    let mut blocks = Vec::with_capacity(config.n_layers);
    for i in 0..config.n_layers {
        let p = |s: &str| format!("layers.{i}.{s}");
        let attention_norm = norm(store, &p("attention_norm"))?;
        let in_proj = store.add(
            &p("attention.in_proj.weight"),
            &[3 * d, d],
            init.trunc_normal(3 * d * d, fan_in_std(d)),
            matrix,
        )?;
        let (q_norm, k_norm) = if config.qk_norm {
            (Some(norm(store, &p("attention.q_norm"))?), Some(norm(store, &p("attention.k_norm"))?))
        } else {
            (None, None)
        };
        let out_proj = store.add(
            &p("attention.out_proj.weight"),
            &[d, d],
            init.trunc_normal(d * d, depth_scaled_std(d, i)),
            matrix,
        )?;
        let ffn_norm = norm(store, &p("ffn_norm"))?;
        let w12 = store.add(
            &p("feed_forward.w12.weight"),
            &[2 * h, d],
            init.trunc_normal(2 * h * d, fan_in_std(d)),
            matrix,
        )?;
        let w3 = store.add(
            &p("feed_forward.w3.weight"),
            &[d, h],
            init.trunc_normal(d * h, depth_scaled_std(h, i)),
            matrix,
        )?;
        blocks.push(BlockIds { attention_norm, in_proj, q_norm, k_norm, out_proj, ffn_norm, w12, w3 });
    }
    let norm = norm(store, "norm")?;
    let output = if config.tied_embeddings {
        None
    } else {
        Some(store.add("output.weight", &[v, d], init.trunc_normal(v * d, fan_in_std(d)), matrix)?)
    };
    Ok(LmParamIds { tok_embeddings, post_embed_norm, blocks, norm, output })
}
