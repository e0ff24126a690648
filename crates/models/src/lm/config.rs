//! The OpenLM decoder's shape and options, from named presets or TOML files.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
/// Which positions the z-loss averages over: `masked` (default) or open_lm's `openlm`.
pub use vlmix_engine::layers::ZLossRule;

/// Normalisation used everywhere in the model (blocks, QK-norm and the final norm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// LayerNorm with a gain and no bias: OpenLM's `gain_only_layer_norm`, used by the paper.
    GainOnlyLayerNorm,
    /// RMSNorm with a gain: OpenLM's `rms_norm`.
    RmsNorm,
    /// LayerNorm with a gain and a bias (`.bias` beside every `.weight`): OpenLM's default
    /// `default_layer_norm` (`torch.nn.LayerNorm`) and `lp_layer_norm`.
    LayerNorm,
}

/// Which parameters AdamW's decoupled weight decay applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightDecayRule {
    /// Every LM parameter, embeddings, norm gains and biases included: what open_lm's `main.py` does
    /// (its `no_decay_params` list is empty).
    #[serde(rename = "openlm")]
    OpenLm,
    /// Weight matrices only, not the token embedding (tied: the shared matrix is not decayed), norm
    /// gains or biases: the GPT-2/LLaMA habit, and what vlmix did before it offered the choice.
    #[default]
    Matrices,
}

/// Everything that fixes the model's parameters and computation. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmConfig {
    pub vocab: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Longest sequence trained on; also the rotary table's length.
    pub seq_len: usize,
    pub norm: NormKind,
    /// Output projection shares the token-embedding matrix (no `output.weight`).
    pub tied_embeddings: bool,
    /// Coefficient of OpenLM's z-loss `z * logsumexp^2` (0 disables it).
    pub z_loss: f32,
    /// LayerNorm/RMSNorm over queries and keys (full width, before the head split).
    pub qk_norm: bool,
    /// A norm (`post_embed_norm.weight`) right after the token embedding: OpenLM's `post_embed_norm`.
    #[serde(default)]
    pub post_embed_norm: bool,
    #[serde(default)]
    pub weight_decay_rule: WeightDecayRule,
    #[serde(default)]
    pub z_loss_rule: ZLossRule,
    /// Rotary inverse frequencies to use instead of `ROPE_BASE^(-2j/head_dim)` (`head_dim / 2` of
    /// them): an imported checkpoint whose stored `inv_freq` buffers differ (e.g. rounded to bf16 by
    /// FSDP mixed precision, which open_lm then trains with) and that was imported keeping them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_inv_freq: Option<Vec<f32>>,
}

/// Epsilon of every norm (OpenLM's default).
pub const NORM_EPS: f32 = 1e-5;
/// Rotary base frequency.
pub const ROPE_BASE: f64 = 10000.0;

/// Built-in presets: name, one-line purpose.
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", "unit tests: 2 layers, d 64"),
    ("cpu-small", "CPU study runs: 4 layers, d 128"),
    ("reference", "engine benchmark: 4 layers, d 256, vocab 8192, seq 256"),
    ("openlm-79m", "the paper's 79M model: 8 layers, d 512"),
    ("openlm-1b", "the paper's 1.4B model: 24 layers, d 2048"),
];

/// GPT-NeoX vocabulary padded to a multiple of 64, as OpenLM uses.
const NEOX_VOCAB: usize = 50432;

impl LmConfig {
    fn openlm(vocab: usize, d_model: usize, n_layers: usize, n_heads: usize, seq_len: usize) -> Self {
        Self {
            vocab,
            d_model,
            n_layers,
            n_heads,
            seq_len,
            norm: NormKind::GainOnlyLayerNorm,
            tied_embeddings: false,
            z_loss: 1e-4,
            qk_norm: true,
            post_embed_norm: false,
            weight_decay_rule: WeightDecayRule::Matrices,
            z_loss_rule: ZLossRule::Masked,
            rope_inv_freq: None,
        }
    }

    /// The paper's OpenLM shapes, trained by open_lm's rules (decay every parameter).
    fn openlm_paper(d_model: usize, n_layers: usize, n_heads: usize) -> Self {
        Self {
            weight_decay_rule: WeightDecayRule::OpenLm,
            ..Self::openlm(NEOX_VOCAB, d_model, n_layers, n_heads, 2048)
        }
    }

    /// A built-in preset by name (see `PRESETS`).
    pub fn preset(name: &str) -> Result<Self> {
        let config = match name {
            "tiny" => Self::openlm(512, 64, 2, 2, 64),
            "cpu-small" => Self::openlm(8192, 128, 4, 2, 256),
            "reference" => Self::openlm(8192, 256, 4, 4, 256),
            "openlm-79m" => Self::openlm_paper(512, 8, 4),
            "openlm-1b" => Self::openlm_paper(2048, 24, 16),
            _ => {
                let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
                bail!("unknown model preset {name:?}; presets: {}", names.join(", "))
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text; `origin` names the source in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).with_context(|| format!("model config {origin}"))?;
        config.validate().with_context(|| format!("model config {origin}"))?;
        Ok(config)
    }

    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading model config {}", path.display()))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// A preset name, or a path to a TOML file (anything ending in `.toml`).
    pub fn load(name_or_path: &str) -> Result<Self> {
        if name_or_path.ends_with(".toml") {
            Self::from_toml_file(Path::new(name_or_path))
        } else {
            Self::preset(name_or_path)
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises")
    }

    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab", self.vocab),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("seq_len", self.seq_len),
        ];
        for (field, value) in positive {
            if value == 0 {
                bail!("{field} must be positive");
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            bail!("d_model {} is not divisible by n_heads {}", self.d_model, self.n_heads);
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!("head dimension {} must be even for rotary embeddings", self.head_dim());
        }
        if self.vocab > u32::MAX as usize {
            bail!("vocab {} does not fit token ids of 32 bits", self.vocab);
        }
        if !(self.z_loss >= 0.0 && self.z_loss.is_finite()) {
            bail!("z_loss must be a finite non-negative number, got {}", self.z_loss);
        }
        if let Some(freqs) = &self.rope_inv_freq {
            if freqs.len() != self.head_dim() / 2 || freqs.iter().any(|f| !f.is_finite()) {
                bail!("rope_inv_freq needs head_dim / 2 = {} finite values, got {}", self.head_dim() / 2, freqs.len());
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// SwiGLU hidden width: 8d/3 rounded up to a multiple of 256 (OpenLM's rule).
    pub fn ffn_hidden(&self) -> usize {
        256 * (8 * self.d_model / 3).div_ceil(256)
    }

    /// Parameter count, from the shapes alone (matches `Lm::params` exactly).
    pub fn param_count(&self) -> ParamCount {
        let (d, h, v) = (self.d_model, self.ffn_hidden(), self.vocab);
        // A norm holds a gain, and a bias for `layer_norm`.
        let norm = if self.norm == NormKind::LayerNorm { 2 * d } else { d };
        let qk = if self.qk_norm { 2 * norm } else { 0 };
        let per_layer = norm + 3 * d * d + qk + d * d + norm + 2 * h * d + h * d;
        let embedding = v * d + if self.post_embed_norm { norm } else { 0 };
        let output = if self.tied_embeddings { 0 } else { v * d };
        let blocks = self.n_layers * per_layer + norm;
        ParamCount { embedding, output, blocks, total: embedding + output + blocks }
    }

    /// Training FLOPs per token by PaLM's formula (Chowdhery et al. 2022, appendix B):
    /// `6 N + 12 L T d`, N = all parameters except the input embedding (the output layer counts,
    /// also when tied), T = the sequence length trained on.
    pub fn train_flops_per_token(&self, seq: usize) -> f64 {
        let c = self.param_count();
        let n = c.blocks + self.vocab * self.d_model;
        6.0 * n as f64 + 12.0 * (self.n_layers * seq * self.d_model) as f64
    }
}

/// Parameter counts by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCount {
    /// Token-embedding table (and the post-embedding norm, when present).
    pub embedding: usize,
    /// Output projection (0 when tied).
    pub output: usize,
    /// Transformer blocks plus the final norm.
    pub blocks: usize,
    pub total: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_match_the_paper() {
        for (name, _) in PRESETS {
            LmConfig::preset(name).unwrap();
        }
        let small = LmConfig::preset("openlm-79m").unwrap();
        assert_eq!((small.n_layers, small.d_model, small.n_heads, small.seq_len), (8, 512, 4, 2048));
        assert_eq!(small.ffn_hidden(), 1536);
        // The paper's sizes (79M, 1.4B) count every parameter, both vocabulary matrices included.
        let n = small.param_count().total;
        assert!((78_000_000..80_000_000).contains(&n), "{n}");
        let big = LmConfig::preset("openlm-1b").unwrap();
        assert_eq!((big.n_layers, big.d_model, big.n_heads), (24, 2048, 16));
        assert_eq!(big.ffn_hidden(), 5632);
        let total = big.param_count().total;
        assert!((1_400_000_000..1_500_000_000).contains(&total), "{total}");
        assert_eq!(LmConfig::preset("reference").unwrap().ffn_hidden(), 768);
    }

    #[test]
    fn unknown_key_is_named() {
        let mut text = LmConfig::preset("tiny").unwrap().to_toml();
        text.push_str("n_experts = 4\n");
        let err = format!("{:#}", LmConfig::from_toml_str(&text, "my.toml").unwrap_err());
        assert!(err.contains("n_experts") && err.contains("my.toml"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let mut c = LmConfig::preset("tiny").unwrap();
        c.n_heads = 3;
        assert!(c.validate().unwrap_err().to_string().contains("not divisible by n_heads 3"));
        let err = LmConfig::preset("huge").unwrap_err().to_string();
        assert!(err.contains("huge") && err.contains("openlm-79m"), "{err}");
        let text = LmConfig::preset("tiny").unwrap().to_toml().replace("gain_only_layer_norm", "batch_norm");
        let err = format!("{:#}", LmConfig::from_toml_str(&text, "x.toml").unwrap_err());
        assert!(err.contains("batch_norm"), "{err}");
    }

    #[test]
    fn shipped_toml_files_equal_the_presets() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/model");
        for (name, _) in PRESETS {
            let path = dir.join(format!("{name}.toml"));
            assert_eq!(LmConfig::from_toml_file(&path).unwrap(), LmConfig::preset(name).unwrap(), "{}", path.display());
        }
    }
}
