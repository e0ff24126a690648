//! The engine layers one LM is built from (shapes only; weights live in the `ParamStore`).

use super::config::{LmConfig, NormKind, NORM_EPS};
use vlmix_engine::layers::{self, Attention, CrossEntropy, Embedding, Linear, Norm, SwiGlu};

pub struct LmLayers {
    pub embedding: Embedding,
    /// Shape of every norm (block norms and the final norm share it).
    pub norm: Norm,
    pub attention: Attention,
    pub feed_forward: SwiGlu,
    pub output: Linear,
    pub loss: CrossEntropy,
}

impl LmLayers {
    pub fn new(config: &LmConfig) -> Self {
        let kind = match config.norm {
            NormKind::GainOnlyLayerNorm => layers::NormKind::LayerNorm,
            NormKind::RmsNorm => layers::NormKind::RmsNorm,
            NormKind::LayerNorm => layers::NormKind::LayerNormBias,
        };
        let mut attention = Attention::openlm(config.d_model, config.n_heads, kind, NORM_EPS);
        if !config.qk_norm {
            attention.qk_norm = None;
        }
        Self {
            embedding: Embedding { vocab: config.vocab, width: config.d_model },
            norm: Norm { kind, width: config.d_model, eps: NORM_EPS },
            attention,
            feed_forward: SwiGlu { width: config.d_model, hidden: config.ffn_hidden() },
            output: Linear { in_dim: config.d_model, out_dim: config.vocab, bias: false },
            loss: CrossEntropy { vocab: config.vocab, z_loss: config.z_loss, z_rule: config.z_loss_rule },
        }
    }
}
