//! Turning image files into an encoder's input: decode, resize (and crop or pad), rescale, normalise.
//!
//! Each encoder carries its own [`Preprocess`]; for a Hugging Face model directory it is read from
//! `preprocessor_config.json` so pixels match what the checkpoint was trained on. The output is
//! `[3, height, width]` f32 (channel-first, PyTorch's `pixel_values` layout).

use super::resample::{resize, Resample};
use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde_json::Value;
use std::path::Path;

/// How an image of any aspect ratio is brought to the encoder's input size.
#[derive(Clone, Debug, PartialEq)]
pub enum ResizeMode {
    /// Resize straight to `height x width`, ignoring aspect ratio (SigLIP's processor).
    Exact { height: u32, width: u32 },
    /// Resize so the shorter side is `shortest_edge`, then cut the central `height x width` (CLIP,
    /// ImageNet evaluation).
    ShortestEdgeCrop { shortest_edge: u32, height: u32, width: u32 },
    /// Pad to a square with the mean colour, then resize to `size x size` (LLaVA's "pad" mode).
    Letterbox { size: u32 },
    /// Cut the central square of `size / (size + crop_padding)` of the shorter side, then resize it
    /// to `size x size` (TensorFlow's EfficientNet evaluation, which the Lite0 weights come from).
    CenterCropResize { size: u32, crop_padding: u32 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    pub resize: ResizeMode,
    pub resample: Resample,
    /// Multiplier taking 0..255 to the model's range (usually 1/255).
    pub rescale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Keys of `preprocessor_config.json` that vlmix reads, or knows not to affect pixel values.
const KNOWN_HF_KEYS: &[&str] = &[
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
    "image_processor_type",
    "processor_class",
    "feature_extractor_type",
    "_valid_processor_keys",
];

impl Preprocess {
    /// Input size `(height, width)` the encoder receives.
    pub fn output_size(&self) -> (u32, u32) {
        match self.resize {
            ResizeMode::Exact { height, width } | ResizeMode::ShortestEdgeCrop { height, width, .. } => (height, width),
            ResizeMode::Letterbox { size } | ResizeMode::CenterCropResize { size, .. } => (size, size),
        }
    }

    /// A stable text naming every setting, part of the feature-cache key: two configurations that
    /// could produce different pixels never share cached features.
    pub fn descriptor(&self) -> String {
        let resize = match &self.resize {
            ResizeMode::Exact { height, width } => format!("exact{height}x{width}"),
            ResizeMode::ShortestEdgeCrop { shortest_edge, height, width } => {
                format!("short{shortest_edge}-crop{height}x{width}")
            }
            ResizeMode::Letterbox { size } => format!("letterbox{size}"),
            ResizeMode::CenterCropResize { size, crop_padding } => format!("centercrop{size}+{crop_padding}"),
        };
        format!("{resize};{};rescale{:e};mean{:?};std{:?}", self.resample.name(), self.rescale, self.mean, self.std)
    }

    /// Reads a Hugging Face `preprocessor_config.json` (CLIP/SigLIP image processors).
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let json: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
        Self::from_hf_json(&json).with_context(|| format!("{}", path.display()))
    }

    fn from_hf_json(json: &Value) -> Result<Self> {
        let obj = json.as_object().context("expected a JSON object")?;
        for key in obj.keys() {
            if !KNOWN_HF_KEYS.contains(&key.as_str()) {
                bail!("unsupported key {key:?} (vlmix understands {})", KNOWN_HF_KEYS.join(", "));
            }
        }
        let flag = |key: &str, default: bool| -> Result<bool> {
            match obj.get(key) {
                None => Ok(default),
                Some(v) => v.as_bool().with_context(|| format!("field {key}: expected true or false, got {v}")),
            }
        };
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            let Some(v) = obj.get(key) else { return Ok(default) };
            let values: Vec<f32> = v
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect())
                .with_context(|| format!("field {key}: expected a list of numbers, got {v}"))?;
            match values.as_slice() {
                [x] => Ok([*x; 3]),
                [r, g, b] => Ok([*r, *g, *b]),
                _ => bail!("field {key}: expected 1 or 3 values, got {}", values.len()),
            }
        };
        if !flag("do_resize", true)? {
            bail!("field do_resize: false is not supported (encoders need a fixed input size)");
        }
        let size = obj.get("size").context("missing field size")?;
        let dim = |v: &Value, key: &str| -> Result<u32> {
            let n = v.get(key).with_context(|| format!("field size: missing {key}"))?;
            n.as_u64()
                .filter(|&n| n > 0 && n <= 8192)
                .map(|n| n as u32)
                .with_context(|| format!("field size.{key}: expected a positive integer, got {n}"))
        };
        let crop = if flag("do_center_crop", false)? {
            let c = obj.get("crop_size").context("do_center_crop is true but crop_size is missing")?;
            Some((dim(c, "height")?, dim(c, "width")?))
        } else {
            None
        };
        let resize = if size.get("shortest_edge").is_some() {
            let edge = dim(size, "shortest_edge")?;
            let (height, width) =
                crop.context("size.shortest_edge without do_center_crop is not supported (variable input size)")?;
            ResizeMode::ShortestEdgeCrop { shortest_edge: edge, height, width }
        } else {
            let (height, width) = (dim(size, "height")?, dim(size, "width")?);
            match crop {
                Some((ch, cw)) if (ch, cw) != (height, width) => {
                    bail!("field crop_size {ch}x{cw} differs from size {height}x{width} without shortest_edge; not supported")
                }
                _ => ResizeMode::Exact { height, width },
            }
        };
        let resample = match obj.get("resample") {
            None => Resample::Bicubic,
            Some(v) => Resample::from_pil_code(
                v.as_i64().with_context(|| format!("field resample: expected an integer, got {v}"))?,
            )
            .context("field resample")?,
        };
        let rescale = if flag("do_rescale", true)? {
            match obj.get("rescale_factor") {
                None => 1.0 / 255.0,
                Some(v) => {
                    v.as_f64().with_context(|| format!("field rescale_factor: expected a number, got {v}"))? as f32
                }
            }
        } else {
            1.0
        };
        let (mean, std) = if flag("do_normalize", true)? {
            (triple("image_mean", [0.5; 3])?, triple("image_std", [0.5; 3])?)
        } else {
            ([0.0; 3], [1.0; 3])
        };
        if std.contains(&0.0) {
            bail!("field image_std contains 0");
        }
        Ok(Preprocess { resize, resample, rescale, mean, std })
    }

    /// Resizes (and crops or pads) to the encoder's input size, as 8-bit RGB.
    pub fn resize_image(&self, image: &RgbImage) -> Result<RgbImage> {
        match self.resize {
            ResizeMode::Exact { height, width } => resize(image, width, height, self.resample),
            ResizeMode::ShortestEdgeCrop { shortest_edge, height, width } => {
                let (w, h) = image.dimensions();
                // Hugging Face's get_resize_output_image_size: the long side is truncated, not rounded.
                let (new_w, new_h) = if w <= h {
                    (shortest_edge, (shortest_edge as u64 * h as u64 / w as u64) as u32)
                } else {
                    ((shortest_edge as u64 * w as u64 / h as u64) as u32, shortest_edge)
                };
                let resized = resize(image, new_w, new_h, self.resample)?;
                if new_w < width || new_h < height {
                    bail!("crop {height}x{width} is larger than the resized image {new_h}x{new_w}");
                }
                let (left, top) = ((new_w - width) / 2, (new_h - height) / 2);
                Ok(image::imageops::crop_imm(&resized, left, top, width, height).to_image())
            }
            ResizeMode::Letterbox { size } => {
                let (w, h) = image.dimensions();
                let side = w.max(h);
                // LLaVA's expand2square fills with `int(mean * 255)`: truncated, not rounded.
                let fill: [u8; 3] = std::array::from_fn(|c| (self.mean[c] / self.rescale).clamp(0.0, 255.0) as u8);
                let mut square = RgbImage::from_pixel(side, side, image::Rgb(fill));
                image::imageops::replace(&mut square, image, ((side - w) / 2) as i64, ((side - h) / 2) as i64);
                resize(&square, size, size, self.resample)
            }
            ResizeMode::CenterCropResize { size, crop_padding } => {
                let (w, h) = image.dimensions();
                let crop = (f64::from(size) / f64::from(size + crop_padding) * f64::from(w.min(h))) as u32;
                if crop == 0 {
                    bail!("a {w}x{h} image is too small to centre-crop");
                }
                let (left, top) = ((w - crop).div_ceil(2), (h - crop).div_ceil(2));
                let square = image::imageops::crop_imm(image, left, top, crop, crop).to_image();
                resize(&square, size, size, self.resample)
            }
        }
    }

    /// `[3, height, width]` normalised pixels, computed as Hugging Face does: rescale in f64, cast to
    /// f32, then `(x - mean) / std` in f32.
    pub fn pixels(&self, image: &RgbImage) -> Result<Vec<f32>> {
        let resized = self.resize_image(image)?;
        let (w, h) = resized.dimensions();
        let plane = (w * h) as usize;
        let mut out = vec![0.0f32; 3 * plane];
        for (i, p) in resized.pixels().enumerate() {
            for c in 0..3 {
                let scaled = (f64::from(p.0[c]) * f64::from(self.rescale)) as f32;
                out[c * plane + i] = (scaled - self.mean[c]) / self.std[c];
            }
        }
        Ok(out)
    }
}

/// Decodes an image file's bytes (PNG, JPEG, WebP, GIF, BMP) to 8-bit RGB; `name` is used in errors.
pub fn decode(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let image = image::load_from_memory(bytes).with_context(|| format!("{name}: not a decodable image"))?;
    Ok(image.to_rgb8())
}

/// Reads and decodes an image file.
pub fn load(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_clip_style_config() {
        let p = Preprocess::from_hf_json(&json!({
            "do_center_crop": true, "crop_size": {"height": 224, "width": 224},
            "size": {"shortest_edge": 224}, "resample": 3,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]
        }))
        .unwrap();
        assert_eq!(p.resize, ResizeMode::ShortestEdgeCrop { shortest_edge: 224, height: 224, width: 224 });
        assert_eq!(p.output_size(), (224, 224));
        assert_eq!(p.resample, Resample::Bicubic);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = Preprocess::from_hf_json(&json!({"size": {"height": 8, "width": 8}, "pad_size": 3})).unwrap_err();
        assert!(err.to_string().contains("pad_size"), "{err}");
        let err = Preprocess::from_hf_json(&json!({"size": {"height": 8, "width": 8}, "image_mean": [0.5, 0.5]}))
            .unwrap_err();
        assert!(err.to_string().contains("image_mean"), "{err}");
        let err = Preprocess::from_hf_json(&json!({"size": {"height": -1, "width": 8}})).unwrap_err();
        assert!(err.to_string().contains("size.height"), "{err}");
    }

    #[test]
    fn crop_and_letterbox_keep_the_centre() {
        let mut img = RgbImage::from_pixel(40, 20, image::Rgb([0, 0, 0]));
        img.put_pixel(20, 10, image::Rgb([255, 255, 255]));
        let crop = Preprocess {
            resize: ResizeMode::ShortestEdgeCrop { shortest_edge: 20, height: 10, width: 10 },
            resample: Resample::Nearest,
            rescale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let out = crop.resize_image(&img).unwrap();
        assert_eq!(out.dimensions(), (10, 10));
        assert_eq!(out.get_pixel(5, 5).0, [255, 255, 255]);
        let boxed = Preprocess { resize: ResizeMode::Letterbox { size: 40 }, mean: [0.5; 3], ..crop };
        let out = boxed.resize_image(&img).unwrap();
        assert_eq!(out.get_pixel(0, 0).0, [127, 127, 127], "padding is int(mean * 255), as LLaVA pads");
        assert_eq!(out.get_pixel(20, 20).0, [255, 255, 255]);
    }

    #[test]
    fn corrupt_bytes_name_the_image() {
        let err = decode(b"not an image", "cat.jpg").unwrap_err();
        assert!(err.to_string().contains("cat.jpg"), "{err}");
    }
}
