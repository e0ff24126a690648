//! SigLIP's vision tower (a ViT) on the engine's layers, loading Hugging Face weights.
//!
//! Patch embedding (a stride-`p` convolution, computed as one matrix product over flattened
//! patches), learned position embeddings, pre-norm blocks `h = x + attn(ln1(x)); x' = h + mlp(ln2(h))`
//! with LayerNorm (bias), non-causal multi-head attention with biases and a GELU-tanh MLP, then
//! `post_layernorm`. Sizes come from `config.json`, so any patch size, resolution, width, depth and
//! head count loads.
//!
//! Parameters are registered in the caller's `ParamStore` under Hugging Face's names, except that
//! `self_attn.{q,k,v}_proj` are fused into `self_attn.in_proj` (`[3d, d]`, rows q, k, v) as the
//! engine's attention takes them. Blocks that the chosen feature layer does not use are not loaded.
//! Those names keep the `vision_model.` prefix whatever the file's layout ([`TowerWeights`]), so VLM
//! checkpoints that hold a trained tail stay valid.
//! The last `trainable_blocks` used blocks (and `post_layernorm` with the last layer) are trainable:
//! [`SiglipVision::backward`] propagates through them only.
//!
//! A tower can also be cut in two at a block (the frozen-vs-unfrozen ablation): the frozen *trunk*
//! (embeddings and the first blocks; its outputs go to the feature cache) and the trainable *tail*
//! (the last blocks and `post_layernorm`, registered in the VLM's store and trained with it), so
//! training never recomputes the frozen part.

use super::encoder::FeatureLayer;
use super::patches::patchify;
use super::weights::Weights;
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::ops::Range;
use std::path::Path;
use vlmix_engine::layers::{
    Attention, AttentionGrads, AttentionParams, GeluMlp, GeluMlpGrads, GeluMlpParams, LinearGrads, LinearParams, Norm,
    NormGrads, NormKind, NormParams,
};
use vlmix_engine::params::{ParamFlags, ParamId, ParamStore, Values};
use vlmix_engine::{Cpu, Device, GeluKind, Gemm};

#[cfg(test)]
pub(crate) use super::siglip_tape::tape_bookkeeping;
use super::siglip_tape::{BlockActs, TapeBuffers};
pub use super::siglip_tape::{SiglipTape, TapeShape};

/// Prefix of the tower's parameter names in the `ParamStore` (and in VLM checkpoints).
const PREFIX: &str = "vision_model";

/// The vision tower's sizes, from a Hugging Face `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct SiglipConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f32,
    pub gelu: GeluKind,
}

impl SiglipConfig {
    /// Reads a `SiglipVisionModel` config, or the `vision_config` of a full `SiglipModel` config.
    ///
    /// Hugging Face configs carry many keys that do not affect the vision tower (dropout, dtype,
    /// label maps); only the ones read here matter, and each is checked.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let json: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
        Self::from_json(&json).with_context(|| format!("{}", path.display()))
    }

    pub fn from_json(json: &Value) -> Result<Self> {
        let vision = json.get("vision_config").unwrap_or(json);
        if let Some(kind) = vision.get("model_type").and_then(Value::as_str) {
            if !kind.starts_with("siglip") {
                bail!("field model_type is {kind:?}, expected a SigLIP vision model");
            }
        }
        let int = |key: &str, default: Option<usize>| -> Result<usize> {
            match vision.get(key) {
                None => default.with_context(|| format!("missing field {key}")),
                Some(v) => v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as usize)
                    .with_context(|| format!("field {key}: expected a positive integer, got {v}")),
            }
        };
        let gelu = match vision.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu_pytorch_tanh") {
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => GeluKind::Tanh,
            "gelu" => GeluKind::Erf,
            other => bail!("field hidden_act: {other:?} is not supported (gelu_pytorch_tanh or gelu)"),
        };
        let eps = match vision.get("layer_norm_eps") {
            None => 1e-6,
            Some(v) => v.as_f64().with_context(|| format!("field layer_norm_eps: expected a number, got {v}"))? as f32,
        };
        let config = SiglipConfig {
            hidden_size: int("hidden_size", Some(768))?,
            intermediate_size: int("intermediate_size", Some(3072))?,
            num_hidden_layers: int("num_hidden_layers", Some(12))?,
            num_attention_heads: int("num_attention_heads", Some(12))?,
            num_channels: int("num_channels", Some(3))?,
            image_size: int("image_size", Some(224))?,
            patch_size: int("patch_size", Some(16))?,
            layer_norm_eps: eps,
            gelu,
        };
        if !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                config.hidden_size,
                config.num_attention_heads
            );
        }
        if config.patch_size > config.image_size {
            bail!("patch_size {} is larger than image_size {}", config.patch_size, config.image_size);
        }
        if config.grid().checked_mul(config.grid()).is_none() {
            bail!("field image_size: {} gives more patches than this machine can count", config.image_size);
        }
        if config.num_channels != 3 {
            bail!("num_channels {} is not supported (RGB only)", config.num_channels);
        }
        Ok(config)
    }

    /// Patches per side (the convolution has no padding, so a partial patch is dropped).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn tokens(&self) -> usize {
        self.grid() * self.grid()
    }

    fn patch_dim(&self) -> usize {
        self.num_channels * self.patch_size * self.patch_size
    }

    /// Blocks run for `layer`: all of them, or all but the last.
    pub fn used_blocks(&self, layer: FeatureLayer) -> usize {
        match layer {
            FeatureLayer::Last => self.num_hidden_layers,
            FeatureLayer::Penultimate => self.num_hidden_layers - 1,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct BlockIds {
    ln1: (ParamId, ParamId),
    in_proj: (ParamId, ParamId),
    out_proj: (ParamId, ParamId),
    ln2: (ParamId, ParamId),
    fc1: (ParamId, ParamId),
    fc2: (ParamId, ParamId),
}

pub struct SiglipVision<D: Device = Cpu> {
    config: SiglipConfig,
    dev: D,
    norm: Norm,
    attention: Attention,
    mlp: GeluMlp,
    /// Patch embedding and positions; `None` in a tail, whose input is a trunk's hidden states.
    embedding: Option<Embedding>,
    blocks: Vec<BlockIds>,
    post: Option<(ParamId, ParamId)>,
    /// Index into `blocks` of the first trainable block (`blocks.len()` when frozen).
    first_trainable: usize,
}

#[derive(Clone, Copy, Debug)]
struct Embedding {
    patch: (ParamId, ParamId),
    position: ParamId,
}

/// Which piece of the tower to register.
struct Part {
    embed: bool,
    blocks: Range<usize>,
    post: bool,
    /// Absolute index of the first trainable block.
    first_trainable: usize,
}

fn norm_params<D: Device>(v: Values<'_, D>, ids: (ParamId, ParamId)) -> NormParams<'_, D> {
    NormParams { weight: v.get(ids.0), bias: Some(v.get(ids.1)) }
}

fn linear_params<D: Device>(v: Values<'_, D>, ids: (ParamId, ParamId)) -> LinearParams<'_, D> {
    LinearParams { weight: v.get(ids.0), bias: Some(v.get(ids.1)) }
}

/// A Hugging Face SigLIP weights file and where the vision tower's tensors sit in it. Three layouts
/// exist: a full `SiglipModel` (`vision_model.*` beside `text_model.*`, `logit_scale`, `logit_bias`),
/// a `SiglipVisionModel` as older transformers saved it (`vision_model.*`), and one as recent
/// transformers save it (no prefix: `embeddings.*`, `encoder.layers.*`, `post_layernorm.*`). Only the
/// tower's own tensors are read, so the text tower and any pooling head (`head.*`) are ignored.
struct TowerWeights {
    weights: Weights,
    /// `"vision_model."` or `""`, prepended to a tower-relative name to find it in the file.
    prefix: &'static str,
}

impl TowerWeights {
    fn open(path: &Path) -> Result<Self> {
        let weights = Weights::open(path)?;
        let prefix = if weights.names().any(|n| n.starts_with("vision_model.")) {
            "vision_model."
        } else if weights
            .names()
            .any(|n| ["embeddings.", "encoder.layers.", "post_layernorm."].iter().any(|p| n.starts_with(p)))
        {
            ""
        } else {
            let mut found: Vec<&str> = weights.names().collect();
            found.sort_unstable();
            let shown = found.iter().take(3).map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ");
            bail!(
                "{}: not a SigLIP vision checkpoint: no vision_model.* tensors (SiglipModel, or SiglipVisionModel from older transformers) \
                 nor unprefixed embeddings.* / encoder.layers.* / post_layernorm.* (SiglipVisionModel from recent transformers); \
                 found {} tensors, e.g. {shown}",
                path.display(),
                found.len()
            );
        };
        Ok(Self { weights, prefix })
    }

    /// The tensor `name` (tower-relative, e.g. `post_layernorm.weight`), which must have `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.weights.get(&format!("{}{name}", self.prefix), shape)
    }
}

/// Registers `vision_model.{name}` from the weights file, checking its shape.
fn load<D: Device>(
    params: &mut ParamStore<D>,
    weights: &TowerWeights,
    name: &str,
    shape: &[usize],
    flags: ParamFlags,
) -> Result<ParamId> {
    params.add(&format!("{PREFIX}.{name}"), shape, weights.get(name, shape)?, flags)
}

impl<D: Device> SiglipVision<D> {
    /// Loads the weights of the blocks `layer` needs from a safetensors file into `params`;
    /// the last `trainable_blocks` of them are registered as trainable, the rest frozen.
    pub fn register(
        config: &SiglipConfig,
        weights_path: &Path,
        layer: FeatureLayer,
        trainable_blocks: usize,
        params: &mut ParamStore<D>,
    ) -> Result<Self> {
        let used = Self::check_split(config, layer, trainable_blocks)?;
        let part = Part {
            embed: true,
            blocks: 0..used,
            post: layer == FeatureLayer::Last,
            first_trainable: used - trainable_blocks,
        };
        Self::register_part(config, weights_path, part, params)
    }

    /// The frozen trunk before the last `tail_blocks` used blocks: its output is the hidden state the
    /// tail ([`register_tail`](Self::register_tail)) takes.
    pub fn register_trunk(
        config: &SiglipConfig,
        weights_path: &Path,
        layer: FeatureLayer,
        tail_blocks: usize,
        params: &mut ParamStore<D>,
    ) -> Result<Self> {
        let cut = Self::check_split(config, layer, tail_blocks)? - tail_blocks;
        Self::register_part(
            config,
            weights_path,
            Part { embed: true, blocks: 0..cut, post: false, first_trainable: cut },
            params,
        )
    }

    /// The last `tail_blocks` used blocks (and `post_layernorm` with the last layer), all trainable,
    /// initialised from the pretrained weights.
    pub fn register_tail(
        config: &SiglipConfig,
        weights_path: &Path,
        layer: FeatureLayer,
        tail_blocks: usize,
        params: &mut ParamStore<D>,
    ) -> Result<Self> {
        let used = Self::check_split(config, layer, tail_blocks)?;
        if tail_blocks == 0 {
            bail!("a SigLIP tail needs at least one block");
        }
        let part = Part {
            embed: false,
            blocks: used - tail_blocks..used,
            post: layer == FeatureLayer::Last,
            first_trainable: used - tail_blocks,
        };
        Self::register_part(config, weights_path, part, params)
    }

    /// Checks that `n` blocks can be unfrozen under `layer`; returns the number of used blocks.
    fn check_split(config: &SiglipConfig, layer: FeatureLayer, n: usize) -> Result<usize> {
        let used = config.used_blocks(layer);
        if n > used {
            bail!("cannot unfreeze {n} blocks: the {} feature layer uses {used}", layer.name());
        }
        Ok(used)
    }

    fn register_part(
        config: &SiglipConfig,
        weights_path: &Path,
        part: Part,
        params: &mut ParamStore<D>,
    ) -> Result<Self> {
        let weights = TowerWeights::open(weights_path)?;
        let (d, hidden) = (config.hidden_size, config.intermediate_size);
        let frozen = ParamFlags::FROZEN;
        let embedding = if part.embed {
            let p = config.patch_size;
            Some(Embedding {
                patch: (
                    load(
                        params,
                        &weights,
                        "embeddings.patch_embedding.weight",
                        &[d, config.num_channels, p, p],
                        frozen,
                    )?,
                    load(params, &weights, "embeddings.patch_embedding.bias", &[d], frozen)?,
                ),
                position: load(
                    params,
                    &weights,
                    "embeddings.position_embedding.weight",
                    &[config.tokens(), d],
                    frozen,
                )?,
            })
        } else {
            None
        };
        // Not pre-sized from the config: its counts are only trusted once the weights match them.
        let mut blocks = Vec::new();
        for i in part.blocks.clone() {
            let trainable = i >= part.first_trainable;
            let (matrix, vector) =
                if trainable { (ParamFlags::MATRIX, ParamFlags::NO_DECAY) } else { (frozen, frozen) };
            let b = format!("encoder.layers.{i}");
            let pair = |name: &str, shape: &[usize], params: &mut ParamStore<D>| -> Result<(ParamId, ParamId)> {
                let flags = if shape.len() == 2 { matrix } else { vector };
                Ok((
                    load(params, &weights, &format!("{b}.{name}.weight"), shape, flags)?,
                    load(params, &weights, &format!("{b}.{name}.bias"), &shape[..1], vector)?,
                ))
            };
            let ln1 = pair("layer_norm1", &[d], params)?;
            let out_proj = pair("self_attn.out_proj", &[d, d], params)?;
            let ln2 = pair("layer_norm2", &[d], params)?;
            let fc1 = pair("mlp.fc1", &[hidden, d], params)?;
            let fc2 = pair("mlp.fc2", &[d, hidden], params)?;
            let (mut fused_weight, mut fused_bias) = (Vec::new(), Vec::new());
            for proj in ["q_proj", "k_proj", "v_proj"] {
                fused_weight.extend(weights.get(&format!("{b}.self_attn.{proj}.weight"), &[d, d])?);
                fused_bias.extend(weights.get(&format!("{b}.self_attn.{proj}.bias"), &[d])?);
            }
            let in_proj = (
                params.add(&format!("{PREFIX}.{b}.self_attn.in_proj.weight"), &[3 * d, d], fused_weight, matrix)?,
                params.add(&format!("{PREFIX}.{b}.self_attn.in_proj.bias"), &[3 * d], fused_bias, vector)?,
            );
            blocks.push(BlockIds { ln1, in_proj, out_proj, ln2, fc1, fc2 });
        }
        let any_trainable = part.first_trainable < part.blocks.end;
        let post = if part.post {
            let flags = if any_trainable { ParamFlags::NO_DECAY } else { frozen };
            Some((
                load(params, &weights, "post_layernorm.weight", &[d], flags)?,
                load(params, &weights, "post_layernorm.bias", &[d], flags)?,
            ))
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            dev: params.device().clone(),
            norm: Norm { kind: NormKind::LayerNormBias, width: d, eps: config.layer_norm_eps },
            attention: Attention::vit(d, config.num_attention_heads),
            mlp: GeluMlp { in_dim: d, hidden, out_dim: d, gelu: config.gelu },
            embedding,
            first_trainable: part.first_trainable.max(part.blocks.start) - part.blocks.start,
            blocks,
            post,
        })
    }

    pub fn config(&self) -> &SiglipConfig {
        &self.config
    }

    /// Patch embedding plus positions: `[batch * tokens, d]`.
    fn embed(&self, v: Values<'_, D>, embedding: Embedding, pixels: &D::Buf, batch: usize) -> D::Owned {
        let (c, s, p, d) =
            (self.config.num_channels, self.config.image_size, self.config.patch_size, self.config.hidden_size);
        let (tokens, dim) = (self.config.tokens(), self.config.patch_dim());
        let dev = &self.dev;
        // Patch extraction is a host-side reshuffle of the pixels (done once per image, frozen).
        let patches = dev.upload_vec(patchify(&dev.to_host(pixels), batch, c, s, p));
        let mut x = dev.zeros(batch * tokens * d);
        dev.gemm(Gemm::new(false, true, batch * tokens, d, dim), &patches, v.get(embedding.patch.0), &mut x);
        dev.add_bias(&mut x, v.get(embedding.patch.1));
        let position = v.get(embedding.position);
        for i in 0..batch {
            dev.add_assign(dev.slice_mut(&mut x, i * tokens * d..(i + 1) * tokens * d), position);
        }
        x
    }

    /// A device copy of `x`.
    fn duplicate(&self, x: &D::Buf) -> D::Owned {
        let mut copy = self.dev.zeros(self.dev.len(x));
        self.dev.copy(x, &mut copy);
        copy
    }

    /// The shape of this part's tape: its trainable blocks (and `post_layernorm`).
    pub fn tape_shape(&self) -> TapeShape {
        let c = &self.config;
        TapeShape {
            width: c.hidden_size,
            hidden: c.intermediate_size,
            heads: c.num_attention_heads,
            tokens: c.tokens(),
            blocks: self.blocks.len() - self.first_trainable,
            post: self.post.is_some(),
        }
    }

    /// Checks the input (`[batch, 3, image_size, image_size]` pixels, or for a tail the trunk's
    /// hidden states `[batch, tokens, d]`).
    fn check_input(&self, input: &D::Buf, batch: usize) -> Result<()> {
        let (dev, c) = (&self.dev, &self.config);
        let (seq, got) = (c.tokens(), dev.len(input));
        match self.embedding {
            Some(_) => {
                let s = c.image_size;
                ensure!(
                    got == batch * c.num_channels * s * s,
                    "SigLIP input has {got} values, expected [{batch}, {}, {s}, {s}]",
                    c.num_channels
                );
            }
            None => ensure!(
                got == batch * seq * c.hidden_size,
                "SigLIP tail input has {got} values, expected [{batch}, {seq}, {}]",
                c.hidden_size
            ),
        }
        Ok(())
    }

    /// One block: `out = h + mlp(ln2(h))` with `h = x + attn(ln1(x))`, `x` being `acts.x`; fills
    /// `acts` with what the backward needs. `out` is `[batch * tokens, d]`; `acts` and `branch`
    /// may be sized for more images.
    fn run_block(
        &self,
        v: Values<'_, D>,
        b: &BlockIds,
        acts: &mut BlockActs<D>,
        branch: &mut D::Buf,
        out: &mut D::Buf,
        batch: usize,
    ) {
        let dev = &self.dev;
        let (seq, n) = (self.config.tokens(), dev.len(out));
        let BlockActs { x, ln1_out, h, ln2_out, ln1, attention, ln2, mlp } = acts;
        let (x, branch) = (dev.slice(x, 0..n), dev.slice_mut(branch, 0..n));
        let (ln1_out, h, ln2_out) =
            (dev.slice_mut(ln1_out, 0..n), dev.slice_mut(h, 0..n), dev.slice_mut(ln2_out, 0..n));
        self.norm.forward(dev, &norm_params(v, b.ln1), x, ln1, ln1_out);
        let attn = AttentionParams {
            in_proj: linear_params(v, b.in_proj),
            q_norm: None,
            k_norm: None,
            out_proj: linear_params(v, b.out_proj),
        };
        self.attention.forward(dev, &attn, ln1_out, batch, seq, attention, branch);
        dev.add(x, branch, h);
        self.norm.forward(dev, &norm_params(v, b.ln2), h, ln2, ln2_out);
        let mlp_params = GeluMlpParams { fc1: linear_params(v, b.fc1), fc2: linear_params(v, b.fc2) };
        self.mlp.forward(dev, &mlp_params, ln2_out, mlp, branch);
        dev.add(h, branch, out);
    }

    /// The hidden states after the embedding (if any) and the first `blocks` blocks, which keep
    /// nothing: one block's buffers serve them all.
    fn run_frozen(&self, v: Values<'_, D>, input: &D::Buf, batch: usize, blocks: usize) -> D::Owned {
        let dev = &self.dev;
        let mut x = match self.embedding {
            Some(embedding) => self.embed(v, embedding, input, batch),
            None => self.duplicate(input),
        };
        if blocks == 0 {
            return x;
        }
        let (seq, d) = (self.config.tokens(), self.config.hidden_size);
        let mut acts = BlockActs::new(dev, &self.tape_shape().layers(), batch, seq, d);
        let mut branch = dev.zeros(batch * seq * d);
        // `acts.x` holds the stream; `x` (the spare) takes each block's output.
        std::mem::swap(&mut acts.x, &mut x);
        for b in &self.blocks[..blocks] {
            self.run_block(v, b, &mut acts, &mut branch, &mut x, batch);
            std::mem::swap(&mut acts.x, &mut x);
        }
        acts.x
    }

    /// Features `[batch, tokens, d]` at this part's output. The input is `[batch, 3, image_size,
    /// image_size]` pixels, or for a tail the trunk's hidden states `[batch, tokens, d]`. With
    /// `tape`, saves what [`backward`](Self::backward) needs.
    pub fn forward(
        &self,
        params: &ParamStore<D>,
        input: &D::Buf,
        batch: usize,
        tape: Option<&mut SiglipTape<D>>,
    ) -> Result<D::Owned> {
        self.check_input(input, batch)?;
        let v = params.values();
        match tape {
            Some(tape) if self.first_trainable < self.blocks.len() => {
                let mut out = self.dev.zeros(batch * self.config.tokens() * self.config.hidden_size);
                self.forward_taped(v, input, batch, tape, &mut out);
                Ok(out)
            }
            _ => Ok(self.infer(v, input, batch)),
        }
    }

    /// As [`forward`](Self::forward), into `out` (`[batch, tokens, d]`).
    pub fn forward_into(
        &self,
        params: &ParamStore<D>,
        input: &D::Buf,
        batch: usize,
        tape: Option<&mut SiglipTape<D>>,
        out: &mut D::Buf,
    ) -> Result<()> {
        self.check_input(input, batch)?;
        let n = batch * self.config.tokens() * self.config.hidden_size;
        ensure!(self.dev.len(out) == n, "SigLIP output buffer has {} values, expected {n}", self.dev.len(out));
        let v = params.values();
        match tape {
            Some(tape) if self.first_trainable < self.blocks.len() => self.forward_taped(v, input, batch, tape, out),
            _ => self.dev.copy(&self.infer(v, input, batch), out),
        }
        Ok(())
    }

    /// A forward that keeps nothing.
    fn infer(&self, v: Values<'_, D>, input: &D::Buf, batch: usize) -> D::Owned {
        let x = self.run_frozen(v, input, batch, self.blocks.len());
        let Some(post) = self.post else { return x };
        let dev = &self.dev;
        let mut acts = self.norm.acts(dev, batch * self.config.tokens());
        let mut out = dev.zeros(dev.len(&x));
        self.norm.forward(dev, &norm_params(v, post), &x, &mut acts, &mut out);
        out
    }

    /// A forward whose trainable blocks keep their activations in `tape` (its buffers are made, or
    /// grown, from [`TapeShape::lens`] first).
    fn forward_taped(
        &self,
        v: Values<'_, D>,
        input: &D::Buf,
        batch: usize,
        tape: &mut SiglipTape<D>,
        out: &mut D::Buf,
    ) {
        let dev = &self.dev;
        let n = dev.len(out);
        let shape = self.tape_shape();
        if tape.buffers.as_ref().is_none_or(|t| t.shape != shape || t.images < batch) {
            tape.buffers = None;
            tape.buffers = Some(TapeBuffers::new(dev, shape, batch));
        }
        tape.batch = batch;
        let TapeBuffers { blocks, post_in, post, branch, .. } = tape.buffers.as_mut().expect("made above");
        // The first trainable block's input.
        let first = dev.slice_mut(&mut blocks[0].x, 0..n);
        if self.embedding.is_none() && self.first_trainable == 0 {
            dev.copy(input, first);
        } else {
            dev.copy(&self.run_frozen(v, input, batch, self.first_trainable), first);
        }
        for (i, b) in self.blocks[self.first_trainable..].iter().enumerate() {
            let (done, rest) = blocks.split_at_mut(i + 1);
            // Each block's output is the next one's input, or post_layernorm's, or the features.
            let next = match rest.first_mut() {
                Some(next) => dev.slice_mut(&mut next.x, 0..n),
                None if self.post.is_some() => dev.slice_mut(post_in, 0..n),
                None => &mut *out,
            };
            self.run_block(v, b, &mut done[i], branch, next, batch);
        }
        if let Some(ids) = self.post {
            self.norm.forward(dev, &norm_params(v, ids), dev.slice(post_in, 0..n), post, out);
        }
    }

    /// Backward of a [`forward`](Self::forward) that filled `tape`: accumulates the gradients of the
    /// trainable blocks (and `post_layernorm` when trainable) from `dfeatures` (`[batch, tokens, d]`).
    pub fn backward(&self, params: &mut ParamStore<D>, tape: &mut SiglipTape<D>, dfeatures: &D::Buf) -> Result<()> {
        let dev = &self.dev;
        let seq = self.config.tokens();
        let (batch, rows) = (tape.batch, tape.batch * seq);
        let n = rows * self.config.hidden_size;
        let got = dev.len(dfeatures);
        ensure!(got == n, "SigLIP feature gradient has {got} values, expected {n}");
        if self.first_trainable == self.blocks.len() {
            bail!("SigLIP backward called on a frozen tower (0 trainable blocks)");
        }
        let Some(buffers) = tape.buffers.as_mut().filter(|t| batch > 0 && t.shape == self.tape_shape()) else {
            bail!("tape does not come from a forward of this tower with a tape");
        };
        let TapeBuffers {
            blocks, post_in, post: post_acts, dx, dbranch, dh, dln, attention_scratch, mlp_scratch, ..
        } = buffers;
        let (dx, dbranch) = (dev.slice_mut(dx, 0..n), dev.slice_mut(dbranch, 0..n));
        let (dh, dln) = (dev.slice_mut(dh, 0..n), dev.slice_mut(dln, 0..n));
        let (values, mut grads) = params.split();
        match self.post {
            Some(post) => {
                let [w, b] = grads.get_many_mut([post.0, post.1]);
                let mut g = NormGrads { weight: w, bias: Some(b) };
                let input = dev.slice(post_in, 0..n);
                self.norm.backward(dev, &norm_params(values, post), input, post_acts, dfeatures, dx, &mut g);
            }
            None => dev.copy(dfeatures, dx),
        }
        for (b, t) in self.blocks[self.first_trainable..].iter().zip(blocks.iter()).rev() {
            let ids = [
                b.ln1.0,
                b.ln1.1,
                b.in_proj.0,
                b.in_proj.1,
                b.out_proj.0,
                b.out_proj.1,
                b.ln2.0,
                b.ln2.1,
                b.fc1.0,
                b.fc1.1,
                b.fc2.0,
                b.fc2.1,
            ];
            let [ln1w, ln1b, inw, inb, outw, outb, ln2w, ln2b, fc1w, fc1b, fc2w, fc2b] = grads.get_many_mut(ids);
            let (x, h) = (dev.slice(&t.x, 0..n), dev.slice(&t.h, 0..n));
            let (ln1_out, ln2_out) = (dev.slice(&t.ln1_out, 0..n), dev.slice(&t.ln2_out, 0..n));
            // x' = h + mlp(ln2(h))
            let mlp_params = GeluMlpParams { fc1: linear_params(values, b.fc1), fc2: linear_params(values, b.fc2) };
            let mut mlp_grads = GeluMlpGrads {
                fc1: LinearGrads { weight: fc1w, bias: Some(fc1b) },
                fc2: LinearGrads { weight: fc2w, bias: Some(fc2b) },
            };
            self.mlp.backward(dev, &mlp_params, ln2_out, &t.mlp, dx, Some(&mut *dln), &mut mlp_grads, mlp_scratch);
            self.norm.backward(
                dev,
                &norm_params(values, b.ln2),
                h,
                &t.ln2,
                dln,
                dbranch,
                &mut NormGrads { weight: ln2w, bias: Some(ln2b) },
            );
            dev.add(dx, dbranch, dh);
            // h = x + attn(ln1(x))
            let attn = AttentionParams {
                in_proj: linear_params(values, b.in_proj),
                q_norm: None,
                k_norm: None,
                out_proj: linear_params(values, b.out_proj),
            };
            let mut attn_grads = AttentionGrads {
                in_proj: LinearGrads { weight: inw, bias: Some(inb) },
                q_norm: None,
                k_norm: None,
                out_proj: LinearGrads { weight: outw, bias: Some(outb) },
            };
            self.attention.backward(
                dev,
                &attn,
                ln1_out,
                batch,
                seq,
                &t.attention,
                dh,
                dln,
                &mut attn_grads,
                attention_scratch,
            );
            self.norm.backward(
                dev,
                &norm_params(values, b.ln1),
                x,
                &t.ln1,
                dln,
                dbranch,
                &mut NormGrads { weight: ln1w, bias: Some(ln1b) },
            );
            dev.add(dh, dbranch, dx);
        }
        Ok(())
    }
}
