//! The image-encoder benchmark: EfficientNet-Lite0's forward on synthetic, already normalised
//! inputs, as the feature cache runs it (preprocessing is not timed). `reference/bench_encode.py` is
//! the PyTorch twin on the same weights; both print the same JSON fields so `scripts/bench.sh` can
//! compare them.

use super::encoder::{EfficientNetEncoder, EncoderSpec, ImageEncoder, EFFICIENTNET_NAME};
use crate::lm::bench::peak_rss_mb;
use anyhow::{ensure, Result};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

pub struct EncodeOptions {
    /// Images per forward pass.
    pub batch: usize,
    /// Timed images, rounded up to whole batches.
    pub images: usize,
    /// Untimed batches first.
    pub warmup: usize,
}

/// One encoder-benchmark result (field names shared with `reference/bench_encode.py`).
#[derive(Debug, Serialize)]
pub struct EncodeReport {
    pub engine: String,
    pub encoder: String,
    pub resolution: usize,
    pub layer: String,
    pub tokens: usize,
    pub width: usize,
    pub batch: usize,
    pub images: usize,
    pub warmup: usize,
    pub images_per_s: f64,
    pub batch_ms: f64,
    /// Forward FLOPs of one image ([`EfficientNetEncoder::flops_per_image`]).
    pub flops_per_image: f64,
    pub gflops: f64,
    pub peak_rss_mb: f64,
    pub threads: usize,
    pub cpu: String,
    pub blas_core: String,
}

/// Loads the EfficientNet-Lite0 `weights` as vlmix's default encoder (224 px, penultimate
/// features) and times it on one batch of pseudo-random pixels in [-1, 1), encoded again and again
/// (the network's speed does not depend on what the image shows).
pub fn bench_encode(weights: &Path, opts: &EncodeOptions) -> Result<EncodeReport> {
    ensure!(opts.batch > 0 && opts.images > 0, "the batch and the number of images must be at least 1");
    let spec = EncoderSpec::frozen(EFFICIENTNET_NAME);
    let encoder = EfficientNetEncoder::load(weights, &spec)?;
    let (h, w) = encoder.preprocess().output_size();
    let pixels: Vec<f32> = (0..opts.batch * 3 * h as usize * w as usize)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) % 256) as f32 / 128.0 - 1.0)
        .collect();
    for _ in 0..opts.warmup {
        encoder.encode(&pixels, opts.batch)?;
    }
    let batches = opts.images.div_ceil(opts.batch);
    let start = Instant::now();
    for _ in 0..batches {
        encoder.encode(&pixels, opts.batch)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let images = batches * opts.batch;
    let flops_per_image = encoder.flops_per_image();
    Ok(EncodeReport {
        engine: "vlmix".into(),
        encoder: EFFICIENTNET_NAME.into(),
        resolution: h as usize,
        layer: spec.layer.name().into(),
        tokens: encoder.tokens(),
        width: encoder.width(),
        batch: opts.batch,
        images,
        warmup: opts.warmup,
        images_per_s: images as f64 / elapsed,
        batch_ms: 1000.0 * elapsed / batches as f64,
        flops_per_image,
        gflops: images as f64 * flops_per_image / elapsed / 1e9,
        peak_rss_mb: peak_rss_mb()?,
        threads: rayon::current_num_threads(),
        cpu: vlmix_engine::machine::cpu_model(),
        blas_core: vlmix_engine::blas::init().map_or_else(|_| "not loaded".into(), |()| vlmix_engine::blas::corename()),
    })
}
