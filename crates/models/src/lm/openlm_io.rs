//! Interoperability with mlfoundations/open_lm checkpoints, both ways.
//!
//! Import reads the two layouts open_lm writes: a training checkpoint (`torch.save` of
//! `{"epoch", "state_dict", ...}`, keys prefixed `module.` under DDP) with the run's model config
//! JSON, and the Hugging Face layout DCLM-1B ships (`model.safetensors`, or shards with an index,
//! keys prefixed `model.`, beside a `config.json` of open_lm's `Params` names). Names map 1:1 onto
//! vlmix's (ARCHITECTURE.md); open_lm's per-layer `attention.pos_embed.inv_freq` buffers are
//! checked against the exact rotary frequencies, and a tied model's `output.weight` must equal
//! `tok_embeddings.weight`. Anything else is refused by name. Export writes the HF layout back.

use super::config::{LmConfig, NormKind, WeightDecayRule, ZLossRule, NORM_EPS};
use super::init::Initializer;
use super::weights::register;
use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::Dtype;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use vlmix_engine::layers::rope_inv_freq;
use vlmix_engine::params::ParamStore;
use vlmix_engine::safetensors_io::{float_bytes_to_f32, write_f32_tensors, F32View, SafetensorsFile};
use vlmix_engine::torch_file::{self, RawTensor};
use vlmix_engine::Cpu;

/// Largest difference from the exact rotary frequencies imported silently (bf16 rounds
/// frequencies near 1 by up to 2e-3, so a large model's bf16 buffers exceed it).
pub const INV_FREQ_TOLERANCE: f64 = 1e-3;

/// What to do with stored `inv_freq` buffers that differ from the exact frequencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvFreqPolicy {
    /// Use the exact frequencies; warn up to `INV_FREQ_TOLERANCE`, refuse beyond it.
    #[default]
    Check,
    /// Use the stored frequencies, as open_lm does (recorded as `rope_inv_freq` in model.toml).
    Keep,
    /// Use the exact frequencies whatever the difference (warn).
    Exact,
}

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// open_lm's model config JSON (`model_configs/*.json`) or an HF `config.json`; default: the
    /// `config.json` beside the weights.
    pub config: Option<PathBuf>,
    pub inv_freq: InvFreqPolicy,
}

pub struct Imported {
    pub config: LmConfig,
    pub params: ParamStore,
    /// "torch checkpoint" or "Hugging Face safetensors".
    pub layout: &'static str,
    /// What was inferred or adjusted, and warnings (largest `inv_freq` difference): for the user.
    pub notes: Vec<String>,
}

/// Tensors of either layout, by name (prefix stripped), read on demand.
struct Source {
    files: Vec<SafetensorsFile>,
    raw: HashMap<String, RawTensor>,
    /// Stripped name -> (file index or `None` for `raw`, stored name).
    names: BTreeMap<String, (Option<usize>, String)>,
    origin: PathBuf,
}

impl Source {
    /// Where `name` is stored: a file index (`None` for `raw`) and the stored name.
    fn entry(&self, name: &str) -> Result<(Option<usize>, &str)> {
        let (file, stored) =
            self.names.get(name).with_context(|| format!("{}: no tensor {name}", self.origin.display()))?;
        Ok((*file, stored))
    }

    fn raw(&self, stored: &str) -> Result<&RawTensor> {
        self.raw.get(stored).with_context(|| format!("{}: no tensor {stored}", self.origin.display()))
    }

    fn dtype_and_shape(&self, name: &str) -> Result<(Dtype, Vec<usize>)> {
        match self.entry(name)? {
            (Some(f), stored) => self.files[f].dtype_and_shape(stored),
            (None, stored) => self.raw(stored).map(|t| (t.dtype, t.shape.clone())),
        }
    }

    fn f32(&self, name: &str) -> Result<Vec<f32>> {
        let values = match self.entry(name)? {
            (Some(f), stored) => self.files[f].f32(stored)?.data,
            (None, stored) => {
                let t = self.raw(stored)?;
                float_bytes_to_f32(t.dtype, &t.data)
                    .with_context(|| format!("{}: tensor {stored}", self.origin.display()))?
            }
        };
        Ok(values)
    }
}

/// Strips a prefix every name carries (`module.` from DDP, `model.` from HF, `_orig_mod.` from
/// torch.compile), repeatedly.
fn strip_prefixes(
    stored: Vec<(Option<usize>, String)>,
    origin: &Path,
) -> Result<BTreeMap<String, (Option<usize>, String)>> {
    let mut names: Vec<(String, (Option<usize>, String))> =
        stored.into_iter().map(|(f, s)| (s.clone(), (f, s))).collect();
    ensure!(!names.is_empty(), "{}: holds no tensors", origin.display());
    while let Some(prefix) =
        ["module.", "model.", "_orig_mod."].into_iter().find(|p| names.iter().all(|(n, _)| n.starts_with(p)))
    {
        names.iter_mut().for_each(|(n, _)| *n = n[prefix.len()..].to_string());
    }
    let mut out = BTreeMap::new();
    for (name, entry) in names {
        if let Some(previous) = out.insert(name.clone(), entry) {
            bail!("{}: two tensors map to {name:?} ({})", origin.display(), previous.1);
        }
    }
    Ok(out)
}

fn open_source(src: &Path) -> Result<(Source, &'static str, Option<PathBuf>)> {
    let hf = "Hugging Face safetensors";
    if src.is_dir() {
        let index = src.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?;
            let json: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
            let map = json["weight_map"].as_object().with_context(|| format!("{}: no weight_map", index.display()))?;
            let shards: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
            shards.into_iter().map(|s| src.join(s)).collect()
        } else if src.join("model.safetensors").is_file() {
            vec![src.join("model.safetensors")]
        } else {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json (expected an open_lm Hugging Face directory)",
                src.display()
            );
        };
        let files = files.iter().map(|f| SafetensorsFile::open(f)).collect::<Result<Vec<_>>>()?;
        let stored =
            files.iter().enumerate().flat_map(|(i, f)| f.names().into_iter().map(move |n| (Some(i), n))).collect();
        let names = strip_prefixes(stored, src)?;
        let config = Some(src.join("config.json")).filter(|c| c.is_file());
        return Ok((Source { files, raw: HashMap::new(), names, origin: src.to_path_buf() }, hf, config));
    }
    if !src.is_file() {
        bail!(
            "{}: no such open_lm checkpoint (a torch .pt file, a .safetensors file or a Hugging Face directory)",
            src.display()
        );
    }
    let sibling = src.parent().map(|p| p.join("config.json")).filter(|c| c.is_file());
    if src.extension().is_some_and(|e| e == "safetensors") {
        let file = SafetensorsFile::open(src)?;
        let stored = file.names().into_iter().map(|n| (Some(0), n)).collect();
        let names = strip_prefixes(stored, src)?;
        return Ok((Source { files: vec![file], raw: HashMap::new(), names, origin: src.to_path_buf() }, hf, sibling));
    }
    let raw: HashMap<String, RawTensor> = torch_file::read_state_dict(src)?.into_iter().collect();
    let names = strip_prefixes(raw.keys().map(|k| (None, k.clone())).collect(), src)?;
    Ok((Source { files: Vec::new(), raw, names, origin: src.to_path_buf() }, "torch checkpoint", sibling))
}

/// open_lm's config, whichever file it came from: HF `config.json` (`Params` names: `dim`,
/// `norm_type`, `apply_qk_norm`, ...; older ones nest open_lm's arguments in `params_args_dict`) or a
/// `model_configs/*.json` (`hidden_dim`, `model_norm`, `qk_norm`, ...).
struct OpenLmConfig {
    fields: Map<String, Value>,
    origin: String,
}

impl OpenLmConfig {
    fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading open_lm config {}", path.display()))?;
        let json: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing open_lm config {}", path.display()))?;
        let Value::Object(mut fields) = json else { bail!("{}: not a JSON object", path.display()) };
        if let Some(Value::Object(nested)) = fields.get("params_args_dict").cloned() {
            for (k, v) in nested {
                fields.entry(k).or_insert(v);
            }
        }
        Ok(Self { fields, origin: path.display().to_string() })
    }

    /// The first of `keys` present (and not null).
    fn get<'k>(&self, keys: &[&'k str]) -> Option<(&'k str, &Value)> {
        keys.iter().find_map(|k| self.fields.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)))
    }

    fn usize(&self, keys: &[&str]) -> Result<Option<usize>> {
        self.get(keys)
            .map(|(k, v)| {
                v.as_u64().map(|n| n as usize).with_context(|| format!("{}: {k} = {v} is not a count", self.origin))
            })
            .transpose()
    }

    fn bool(&self, keys: &[&str]) -> Result<Option<bool>> {
        self.get(keys)
            .map(|(k, v)| v.as_bool().with_context(|| format!("{}: {k} = {v} is not true/false", self.origin)))
            .transpose()
    }

    fn str(&self, keys: &[&str]) -> Result<Option<String>> {
        self.get(keys)
            .map(|(k, v)| {
                v.as_str().map(str::to_owned).with_context(|| format!("{}: {k} = {v} is not a string", self.origin))
            })
            .transpose()
    }

    /// Refuses open_lm options vlmix's LM does not implement, naming them.
    fn check_supported(&self) -> Result<()> {
        if let Some(eps) = self.get(&["norm_eps"]).and_then(|(_, v)| v.as_f64()) {
            ensure!(
                (eps - NORM_EPS as f64).abs() < 1e-12,
                "{}: norm_eps = {eps}, vlmix's norms use {NORM_EPS}",
                self.origin
            );
        }
        let allowed: [(&str, &[&str]); 3] = [
            ("positional_embedding_type", &["rotary"]),
            ("ffn_type", &["swiglu", "swiglu_torch"]),
            ("attn_name", &["torch_attn", "xformers_attn", "auto"]),
        ];
        for (key, ok) in allowed {
            if let Some(v) = self.str(&[key])? {
                ensure!(
                    ok.contains(&v.as_str()),
                    "{}: {key} = {v:?} is not supported (vlmix implements {ok:?})",
                    self.origin
                );
            }
        }
        for key in ["attn_activation", "attn_seq_scalar", "attn_seq_scalar_alpha"] {
            ensure!(
                self.get(&[key]).is_none(),
                "{}: {key} is set; vlmix implements plain softmax attention only",
                self.origin
            );
        }
        if let Some(moe) = self.usize(&["moe_freq"])? {
            ensure!(moe == 0, "{}: moe_freq = {moe}: mixture-of-experts layers are not supported", self.origin);
        }
        Ok(())
    }
}

/// open_lm's `get_norm_class` names onto vlmix's norms.
fn norm_of(name: &str, origin: &str) -> Result<NormKind> {
    Ok(match name {
        "default_layer_norm" | "lp_layer_norm" => NormKind::LayerNorm,
        "gain_only_layer_norm" | "gain_only_lp_layer_norm" => NormKind::GainOnlyLayerNorm,
        "rms_norm" => NormKind::RmsNorm,
        other => bail!("{origin}: norm {other:?} is not supported (default_layer_norm, lp_layer_norm, gain_only_layer_norm, gain_only_lp_layer_norm, rms_norm)"),
    })
}

/// The open_lm name vlmix exports each norm as.
fn openlm_norm_name(norm: NormKind) -> &'static str {
    match norm {
        NormKind::LayerNorm => "default_layer_norm",
        NormKind::GainOnlyLayerNorm => "gain_only_layer_norm",
        NormKind::RmsNorm => "rms_norm",
    }
}

fn inv_freq_name(layer: usize) -> String {
    format!("layers.{layer}.attention.pos_embed.inv_freq")
}

/// Reads an open_lm checkpoint into a vlmix LM's parameters (see the module docs).
pub fn import_openlm(src: &Path, options: &ImportOptions) -> Result<Imported> {
    let (source, layout, sibling_config) = open_source(src)?;
    let origin = source.origin.display().to_string();
    let mut notes = Vec::new();
    let config_path = options.config.clone().or(sibling_config);
    let cfg = config_path.as_deref().map(OpenLmConfig::load).transpose()?;
    if let Some(cfg) = &cfg {
        cfg.check_supported()?;
    }
    let has = |name: &str| source.names.contains_key(name);

    // Shapes from the tensors; the config, when given, must agree (checked by the shapes below).
    let (emb_dtype, emb) = source
        .dtype_and_shape("tok_embeddings.weight")
        .with_context(|| format!("{origin}: no tok_embeddings.weight"))?;
    ensure!(emb.len() == 2, "{origin}: tok_embeddings.weight has shape {emb:?}, expected [vocab, d_model]");
    ensure!(
        matches!(emb_dtype, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16),
        "{origin}: tok_embeddings.weight has dtype {emb_dtype:?}"
    );
    let layers_in_file = source
        .names
        .keys()
        .filter_map(|n| n.strip_prefix("layers.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |l| l + 1);
    let c = |keys: &[&str]| -> Result<Option<usize>> { cfg.as_ref().map_or(Ok(None), |c| c.usize(keys)) };
    let cb = |keys: &[&str]| -> Result<Option<bool>> { cfg.as_ref().map_or(Ok(None), |c| c.bool(keys)) };
    let d_model = c(&["dim", "hidden_dim"])?.unwrap_or(emb[1]);
    let vocab = c(&["vocab_size"])?.unwrap_or(emb[0]);
    let n_layers = c(&["n_layers"])?.unwrap_or(layers_in_file);
    let n_heads = match c(&["n_heads"])? {
        Some(h) => h,
        None => {
            // Any layer's buffer gives head_dim; a checkpoint may lack some of them.
            let buffer = (0..n_layers).map(inv_freq_name).find(|b| has(b)).with_context(|| {
                format!(
                    "{origin}: no config gives n_heads and there is no inv_freq buffer to infer it from; pass --config"
                )
            })?;
            let (_, shape) = source.dtype_and_shape(&buffer)?;
            let head_dim = 2 * shape.first().copied().unwrap_or(0);
            ensure!(
                head_dim > 0 && d_model.is_multiple_of(head_dim),
                "{origin}: inv_freq of shape {shape:?} does not divide d_model {d_model}"
            );
            notes.push(format!(
                "n_heads = {} inferred from the inv_freq buffers (head_dim {head_dim})",
                d_model / head_dim
            ));
            d_model / head_dim
        }
    };
    let seq_len = match c(&["seq_len"])? {
        Some(s) => s,
        None => {
            notes.push("seq_len not given: 2048 (open_lm's default)".into());
            2048
        }
    };
    let has_bias = has("layers.0.attention_norm.bias");
    let norm = match cfg.as_ref().map(|c| c.str(&["norm_type", "model_norm"])).transpose()?.flatten() {
        Some(name) => norm_of(&name, cfg.as_ref().map_or(&origin, |c| &c.origin))?,
        None if has_bias => {
            notes.push("norm not given: layer_norm (the norms carry biases; open_lm's default_layer_norm)".into());
            NormKind::LayerNorm
        }
        None => bail!("{origin}: the norms have no bias, so they are gain_only_layer_norm or rms_norm; pass --config with open_lm's model_norm"),
    };
    let qk_norm = cb(&["apply_qk_norm", "qk_norm"])?.unwrap_or_else(|| has("layers.0.attention.q_norm.weight"));
    let post_embed_norm = cb(&["post_embed_norm"])?.unwrap_or_else(|| has("post_embed_norm.weight"));
    let tied = match cb(&["weight_tying"])? {
        Some(t) => t,
        None => !has("output.weight") || source.f32("output.weight")? == source.f32("tok_embeddings.weight")?,
    };
    let mut config = LmConfig {
        vocab,
        d_model,
        n_layers,
        n_heads,
        seq_len,
        norm,
        tied_embeddings: tied,
        z_loss: 1e-4,
        qk_norm,
        post_embed_norm,
        weight_decay_rule: WeightDecayRule::OpenLm,
        z_loss_rule: ZLossRule::OpenLm,
        rope_inv_freq: None,
    };
    config.validate().with_context(|| format!("{origin}: the open_lm model maps onto no valid vlmix LM"))?;
    // Checked before any allocation: the parameters below are sized from the config.
    ensure!(
        emb == [vocab, d_model],
        "{origin}: tok_embeddings.weight has shape {emb:?}, the config needs [vocab {vocab}, dim {d_model}]"
    );
    ensure!(
        n_layers <= layers_in_file,
        "{origin}: the config has n_layers = {n_layers} but the file holds {layers_in_file} layers"
    );
    notes.push("training rules set to open_lm's: z_loss 1e-4 over all positions (z_loss_rule = \"openlm\"), weight decay on every parameter (weight_decay_rule = \"openlm\"); edit model.toml to change them".into());

    // Names: the LM's parameters, open_lm's rotary buffers, and a tied model's second name.
    let mut params = ParamStore::new(Cpu::new()?);
    register(&config, &mut params, &mut Initializer::new(0))?;
    let mut expected: BTreeSet<String> = params.ids().map(|id| params.info(id).name.clone()).collect();
    let buffers: Vec<String> = (0..n_layers).map(inv_freq_name).collect();
    expected.extend(buffers.iter().cloned());
    if tied {
        expected.insert("output.weight".into());
    }
    let present: BTreeSet<String> = source.names.keys().cloned().collect();
    let unknown: Vec<&String> = present.difference(&expected).collect();
    ensure!(unknown.is_empty(), "{origin}: unexpected tensors for a {n_layers}-layer {norm:?} LM (qk_norm {qk_norm}, post_embed_norm {post_embed_norm}, tied {tied}): {}", list(&unknown));
    let missing: Vec<&String> = expected
        .iter()
        .filter(|n| !(present.contains(*n) || buffers.contains(n) || tied && *n == "output.weight"))
        .collect();
    ensure!(missing.is_empty(), "{origin}: missing tensors: {}", list(&missing));

    for id in params.ids().collect::<Vec<_>>() {
        let name = params.info(id).name.clone();
        let (dtype, shape) = source.dtype_and_shape(&name)?;
        ensure!(
            shape == params.info(id).shape,
            "{origin}: tensor {name} has shape {shape:?}, the model needs {:?}",
            params.info(id).shape
        );
        let values = source.f32(&name).with_context(|| format!("{origin}: tensor {name} ({dtype:?})"))?;
        params.value_mut(id).copy_from_slice(&values);
    }
    if tied && has("output.weight") {
        let (_, shape) = source.dtype_and_shape("output.weight")?;
        let emb = params.value(params.id("tok_embeddings.weight").expect("registered"));
        ensure!(
            shape == [vocab, d_model] && source.f32("output.weight")? == emb,
            "{origin}: weight_tying is set but output.weight differs from tok_embeddings.weight"
        );
    }
    config.rope_inv_freq = check_inv_freq(&source, &config, &buffers, options.inv_freq, &mut notes)?;
    Ok(Imported { config, params, layout, notes })
}

fn list(names: &[&String]) -> String {
    let shown: Vec<&str> = names.iter().take(8).map(|s| s.as_str()).collect();
    if names.len() > shown.len() {
        format!("{} (and {} more)", shown.join(", "), names.len() - shown.len())
    } else {
        shown.join(", ")
    }
}

/// Compares every stored `inv_freq` with the exact frequencies; returns the frequencies to keep.
fn check_inv_freq(
    source: &Source,
    config: &LmConfig,
    buffers: &[String],
    policy: InvFreqPolicy,
    notes: &mut Vec<String>,
) -> Result<Option<Vec<f32>>> {
    let origin = source.origin.display();
    let exact = rope_inv_freq(config.head_dim());
    let stored: Vec<&String> = buffers.iter().filter(|b| source.names.contains_key(*b)).collect();
    if stored.is_empty() {
        notes.push("no inv_freq buffers stored: exact rotary frequencies".into());
        return Ok(None);
    }
    let mut worst = (0.0f64, String::new(), Dtype::F32);
    let mut first: Option<Vec<f32>> = None;
    for name in &stored {
        let (dtype, shape) = source.dtype_and_shape(name)?;
        ensure!(
            shape == [exact.len()],
            "{origin}: {name} has shape {shape:?}, expected [{}] (head_dim / 2)",
            exact.len()
        );
        let values = source.f32(name)?;
        let diff = values.iter().zip(&exact).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max);
        if diff > worst.0 {
            worst = (diff, name.to_string(), dtype);
        }
        match &first {
            None => first = Some(values),
            Some(f) if policy == InvFreqPolicy::Keep && *f != values => {
                bail!("{origin}: {name} differs from {}; vlmix keeps one set of rotary frequencies", stored[0])
            }
            _ => {}
        }
    }
    let (diff, name, dtype) = worst;
    if diff == 0.0 {
        return Ok(None);
    }
    let what = format!("{name} ({dtype:?}) differs from the exact rotary frequencies by up to {diff:.3e}");
    match policy {
        InvFreqPolicy::Keep => {
            notes.push(format!(
                "warning: {what}; keeping the stored frequencies (model.toml rope_inv_freq), as open_lm uses them"
            ));
            Ok(first)
        }
        InvFreqPolicy::Exact => {
            notes.push(format!("warning: {what}; using the exact frequencies (--inv-freq exact)"));
            Ok(None)
        }
        InvFreqPolicy::Check if diff <= INV_FREQ_TOLERANCE => {
            notes.push(format!("warning: {what}; using the exact frequencies (--inv-freq keep uses the stored ones)"));
            Ok(None)
        }
        InvFreqPolicy::Check => bail!(
            "{origin}: {what}, more than {INV_FREQ_TOLERANCE:e}: the model was trained with rounded frequencies \
             (FSDP bf16 buffers); pass --inv-freq keep to use them as open_lm does, or --inv-freq exact"
        ),
    }
}

/// open_lm's HF `config.json` for `config` (what `open_lm/hf` reads back into `Params`).
pub fn openlm_hf_config(config: &LmConfig) -> Value {
    json!({
        "architectures": ["OpenLMForCausalLM"],
        "model_type": "openlm",
        "dim": config.d_model,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "vocab_size": config.vocab,
        "seq_len": config.seq_len,
        // The decimal open_lm writes (1e-5), not the f32 constant widened to f64.
        "norm_eps": NORM_EPS.to_string().parse::<f64>().expect("a float prints as a float"),
        "norm_type": openlm_norm_name(config.norm),
        "apply_qk_norm": config.qk_norm,
        "post_embed_norm": config.post_embed_norm,
        "weight_tying": config.tied_embeddings,
        "tie_word_embeddings": config.tied_embeddings,
        "positional_embedding_type": "rotary",
        "ffn_type": "swiglu_torch",
        "attn_name": "torch_attn",
        "moe_freq": 0,
        "torch_dtype": "float32",
    })
}

/// Writes the LM in `params` (other tensors, e.g. a VLM's projector, are left out) as an open_lm
/// Hugging Face directory: `model.safetensors` with `model.` keys (a tied model's matrix under both
/// names, and each layer's `inv_freq` buffer, as open_lm's state dict has them) and `config.json`.
pub fn export_openlm(config: &LmConfig, params: &ParamStore, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut lm = ParamStore::new(Cpu::new()?);
    register(config, &mut lm, &mut Initializer::new(0))?;
    let inv_freq = config.rope_inv_freq.clone().unwrap_or_else(|| rope_inv_freq(config.head_dim()));
    let mut tensors: Vec<(String, F32View<'_>)> = Vec::new();
    for id in lm.ids() {
        let info = lm.info(id);
        let ours = params.id(&info.name).with_context(|| format!("the checkpoint has no {}", info.name))?;
        ensure!(
            params.info(ours).shape == info.shape,
            "{}: shape {:?}, the config needs {:?}",
            info.name,
            params.info(ours).shape,
            info.shape
        );
        tensors.push((format!("model.{}", info.name), F32View { shape: info.shape.clone(), data: params.value(ours) }));
        if config.tied_embeddings && info.name == "tok_embeddings.weight" {
            tensors
                .push(("model.output.weight".into(), F32View { shape: info.shape.clone(), data: params.value(ours) }));
        }
    }
    for layer in 0..config.n_layers {
        tensors.push((
            format!("model.{}", inv_freq_name(layer)),
            F32View { shape: vec![inv_freq.len()], data: &inv_freq },
        ));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_f32_tensors(&out.join("model.safetensors"), tensors, Some(metadata))?;
    let text = serde_json::to_string_pretty(&openlm_hf_config(config))? + "\n";
    vlmix_atomic_file::write_atomic(&out.join("config.json"), text.as_bytes())
}
