//! Inference-only convolutions on NHWC activations (`[batch, height, width, channels]`).
//!
//! NHWC keeps each pixel's channels contiguous, so a 1x1 convolution is one matrix product over all
//! pixels of the batch and the final feature map is already the `[tokens, width]` layout the
//! projector consumes. Batch norm is folded into each convolution's weight and bias beforehand.

use rayon::prelude::*;
use vlmix_engine::{multiversion, Cpu, Device, Gemm};

/// Spatial size of a feature map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spatial {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
}

impl Spatial {
    pub fn pixels(&self) -> usize {
        self.batch * self.height * self.width
    }
}

/// TensorFlow "SAME" padding of one dimension: `(output size, padding before)`.
///
/// Total padding is `max((out - 1) * stride + kernel - in, 0)` with the extra pixel after, exactly
/// as the EfficientNet-Lite port computes it (`Conv2dStaticSamePadding`) at its native 224 px.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let output = input.div_ceil(stride);
    let total = ((output - 1) * stride + kernel).saturating_sub(input);
    (output, total / 2)
}

/// Output shape and `(top, left)` padding of a SAME convolution of `shape` images.
fn same_output(shape: Spatial, kernel: usize, stride: usize) -> (Spatial, usize, usize) {
    let (height, pad_top) = same_padding(shape.height, kernel, stride);
    let (width, pad_left) = same_padding(shape.width, kernel, stride);
    (Spatial { batch: shape.batch, height, width }, pad_top, pad_left)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu6,
}

impl Activation {
    #[inline(always)]
    fn apply(self, v: f32) -> f32 {
        match self {
            Activation::None => v,
            Activation::Relu6 => v.clamp(0.0, 6.0),
        }
    }
}

/// Applies `act` to every element of `y`, in parallel.
fn activate(y: &mut [f32], act: Activation) {
    if act != Activation::None {
        y.par_chunks_mut(64 * 1024).for_each(|chunk| activate_chunk(chunk, act));
    }
}

multiversion! {
    fn activate_chunk(y: &mut [f32], act: Activation) {
        for v in y.iter_mut() {
            *v = act.apply(*v);
        }
    }
}

/// 1x1 convolution: `y = act(x W^T + b)` with `x: [pixels, in]`, `weight: [out, in]`.
///
/// The product goes through the engine's CPU device, which splits it across the rayon pool (the
/// engine keeps OpenBLAS single-threaded so only one thread pool competes for the cores). `y` starts
/// as the bias and the product is added to it: zeroing it first would cost a pass over memory.
pub fn pointwise(dev: &Cpu, x: &[f32], pixels: usize, weight: &[f32], bias: &[f32], act: Activation) -> Vec<f32> {
    let out = bias.len();
    let inp = weight.len() / out;
    let mut y: Vec<f32> = Vec::with_capacity(pixels * out);
    y.spare_capacity_mut()[..pixels * out].par_chunks_mut(out * 64).for_each(|block| {
        for row in block.chunks_exact_mut(out) {
            for (d, &b) in row.iter_mut().zip(bias) {
                d.write(b);
            }
        }
    });
    // SAFETY: the loop above wrote all `pixels * out` elements (every row of every block).
    unsafe { y.set_len(pixels * out) };
    dev.gemm(Gemm::new(false, true, pixels, out, inp).accumulate(), x, weight, &mut y);
    activate(&mut y, act);
    y
}

/// Depthwise `k x k` convolution with stride and SAME padding.
///
/// `weight` is `[k, k, channels]` (channel innermost, so the inner loop runs over contiguous
/// channels of one input pixel and vectorises).
#[allow(clippy::too_many_arguments)]
pub fn depthwise(
    x: &[f32],
    shape: Spatial,
    channels: usize,
    kernel: usize,
    stride: usize,
    weight: &[f32],
    bias: &[f32],
    act: Activation,
) -> (Vec<f32>, Spatial) {
    let (out_shape, pad_top, pad_left) = same_output(shape, kernel, stride);
    let (out_h, out_w) = (out_shape.height, out_shape.width);
    let mut y = vec![0.0; out_shape.pixels() * channels];
    let geometry = Window { in_h: shape.height, in_w: shape.width, channels, kernel, stride, pad_top, pad_left };
    let image_len = shape.height * shape.width * channels;
    y.par_chunks_mut(out_w * channels).enumerate().for_each(|(row_index, out_row)| {
        let b = row_index / out_h;
        let image = &x[b * image_len..(b + 1) * image_len];
        depthwise_row(out_row, image, row_index % out_h, geometry, weight, bias, act);
    });
    (y, out_shape)
}

/// Where a depthwise kernel reads its input.
#[derive(Clone, Copy)]
struct Window {
    in_h: usize,
    in_w: usize,
    channels: usize,
    kernel: usize,
    stride: usize,
    pad_top: usize,
    pad_left: usize,
}

/// Channels summed at once in registers: every tap is added to the register block, not to memory.
const LANES: usize = 16;

multiversion! {
    /// Output row `oy` of one image. Each channel sums the bias and then the taps in `(ky, kx)`
    /// order, the same order whatever the block size, so every SIMD level gives the same values.
    fn depthwise_row(out_row: &mut [f32], image: &[f32], oy: usize, g: Window, weight: &[f32], bias: &[f32], act: Activation) {
        let c = g.channels;
        let mut taps: Vec<(usize, usize)> = Vec::with_capacity(g.kernel * g.kernel);
        for (ox, acc) in out_row.chunks_exact_mut(c).enumerate() {
            // (input offset, weight offset) of the taps inside the image.
            taps.clear();
            for ky in 0..g.kernel {
                let iy = (oy * g.stride + ky) as isize - g.pad_top as isize;
                if iy < 0 || iy >= g.in_h as isize {
                    continue;
                }
                for kx in 0..g.kernel {
                    let ix = (ox * g.stride + kx) as isize - g.pad_left as isize;
                    if ix >= 0 && ix < g.in_w as isize {
                        taps.push(((iy as usize * g.in_w + ix as usize) * c, (ky * g.kernel + kx) * c));
                    }
                }
            }
            let blocked = c - c % LANES;
            for c0 in (0..blocked).step_by(LANES) {
                let mut sum: [f32; LANES] = bias[c0..c0 + LANES].try_into().unwrap();
                for &(i, w) in &taps {
                    let input: &[f32; LANES] = image[i + c0..i + c0 + LANES].try_into().unwrap();
                    let wt: &[f32; LANES] = weight[w + c0..w + c0 + LANES].try_into().unwrap();
                    for l in 0..LANES {
                        sum[l] += input[l] * wt[l];
                    }
                }
                for l in 0..LANES {
                    acc[c0 + l] = act.apply(sum[l]);
                }
            }
            for ch in blocked..c {
                let mut sum = bias[ch];
                for &(i, w) in &taps {
                    sum += image[i + ch] * weight[w + ch];
                }
                acc[ch] = act.apply(sum);
            }
        }
    }
}

/// Dense `k x k` convolution with stride and SAME padding, as im2col + one matrix product.
///
/// Used for the stem, whose 3 input channels are too few for a depthwise-style loop to pay.
/// `x` is NCHW (the layout preprocessing produces); `weight` is `[out, k, k, in]`.
#[allow(clippy::too_many_arguments)]
pub fn dense_nchw(
    dev: &Cpu,
    x: &[f32],
    shape: Spatial,
    in_channels: usize,
    kernel: usize,
    stride: usize,
    weight: &[f32],
    bias: &[f32],
    act: Activation,
) -> (Vec<f32>, Spatial) {
    let (out_shape, pad_top, pad_left) = same_output(shape, kernel, stride);
    let (out_h, out_w) = (out_shape.height, out_shape.width);
    let patch = kernel * kernel * in_channels;
    let plane = shape.height * shape.width;
    let mut columns = vec![0.0f32; out_shape.pixels() * patch];
    columns.par_chunks_mut(out_w * patch).enumerate().for_each(|(row_index, rows)| {
        let b = row_index / out_h;
        let oy = row_index % out_h;
        let image = &x[b * in_channels * plane..(b + 1) * in_channels * plane];
        for ox in 0..out_w {
            let col = &mut rows[ox * patch..(ox + 1) * patch];
            for ky in 0..kernel {
                let iy = (oy * stride + ky) as isize - pad_top as isize;
                for kx in 0..kernel {
                    let ix = (ox * stride + kx) as isize - pad_left as isize;
                    let inside = iy >= 0 && iy < shape.height as isize && ix >= 0 && ix < shape.width as isize;
                    for c in 0..in_channels {
                        col[(ky * kernel + kx) * in_channels + c] =
                            if inside { image[c * plane + iy as usize * shape.width + ix as usize] } else { 0.0 };
                    }
                }
            }
        }
    });
    (pointwise(dev, &columns, out_shape.pixels(), weight, bias, act), out_shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct NCHW convolution with explicit padding, the textbook definition.
    #[allow(clippy::too_many_arguments)]
    fn reference_conv(
        x: &[f32],
        (h, w): (usize, usize),
        cin: usize,
        cout: usize,
        groups: usize,
        k: usize,
        stride: usize,
        weight_oihw: &[f32],
    ) -> (Vec<f32>, usize, usize) {
        let (oh, pt) = same_padding(h, k, stride);
        let (ow, pl) = same_padding(w, k, stride);
        let cin_g = cin / groups;
        let cout_g = cout / groups;
        let mut y = vec![0.0; cout * oh * ow];
        for o in 0..cout {
            let g = o / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = 0.0f64;
                    for ci in 0..cin_g {
                        let c = g * cin_g + ci;
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky) as isize - pt as isize;
                                let ix = (ox * stride + kx) as isize - pl as isize;
                                if iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize {
                                    s += x[c * h * w + iy as usize * w + ix as usize] as f64
                                        * weight_oihw[((o * cin_g + ci) * k + ky) * k + kx] as f64;
                                }
                            }
                        }
                    }
                    y[(o * oh + oy) * ow + ox] = s as f32;
                }
            }
        }
        (y, oh, ow)
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104729) % 211) as f32 - 105.0) / 53.0).collect()
    }

    fn nchw_to_nhwc(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
        let mut y = vec![0.0; x.len()];
        for ch in 0..c {
            for p in 0..h * w {
                y[p * c + ch] = x[ch * h * w + p];
            }
        }
        y
    }

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(224, 3, 2), (112, 0));
        assert_eq!(same_padding(112, 5, 2), (56, 1));
        assert_eq!(same_padding(7, 3, 2), (4, 1));
        assert_eq!(same_padding(14, 5, 1), (14, 2));
    }

    #[test]
    fn depthwise_matches_reference_for_odd_and_even_sizes() {
        for &(h, w, k, stride) in &[(9, 8, 3, 2), (7, 7, 5, 2), (6, 5, 5, 1), (4, 4, 3, 1)] {
            // 21 channels: one register block of `LANES` and a remainder.
            let c = 21;
            let x = values(c * h * w, 1);
            let weight = values(c * k * k, 2);
            let (want, oh, ow) = reference_conv(&x, (h, w), c, c, c, k, stride, &weight);
            // [c, 1, k, k] -> [k, k, c]
            let mut w_kkc = vec![0.0; k * k * c];
            for ch in 0..c {
                for t in 0..k * k {
                    w_kkc[t * c + ch] = weight[ch * k * k + t];
                }
            }
            let bias = vec![0.0; c];
            let (got, shape) = depthwise(
                &nchw_to_nhwc(&x, c, h, w),
                Spatial { batch: 1, height: h, width: w },
                c,
                k,
                stride,
                &w_kkc,
                &bias,
                Activation::None,
            );
            assert_eq!((shape.height, shape.width), (oh, ow));
            let want = nchw_to_nhwc(&want, c, oh, ow);
            for (g, r) in got.iter().zip(&want) {
                assert!((g - r).abs() < 1e-4, "h={h} w={w} k={k} s={stride}: {g} vs {r}");
            }
        }
    }

    #[test]
    fn dense_matches_reference_and_applies_bias_and_relu6() {
        let (h, w, cin, cout, k, stride) = (9, 10, 3, 4, 3, 2);
        let x = values(cin * h * w, 3);
        let weight = values(cout * cin * k * k, 4);
        let (want, oh, ow) = reference_conv(&x, (h, w), cin, cout, 1, k, stride, &weight);
        let mut w_okki = vec![0.0; weight.len()];
        for o in 0..cout {
            for ci in 0..cin {
                for t in 0..k * k {
                    w_okki[(o * k * k + t) * cin + ci] = weight[(o * cin + ci) * k * k + t];
                }
            }
        }
        let bias = vec![0.5, -0.5, 3.0, 0.0];
        let dev = Cpu::new().unwrap();
        let (got, shape) = dense_nchw(
            &dev,
            &x,
            Spatial { batch: 1, height: h, width: w },
            cin,
            k,
            stride,
            &w_okki,
            &bias,
            Activation::Relu6,
        );
        assert_eq!((shape.height, shape.width), (oh, ow));
        let want = nchw_to_nhwc(&want, cout, oh, ow);
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            let r = (r + bias[i % cout]).clamp(0.0, 6.0);
            assert!((g - r).abs() < 1e-4, "{g} vs {r}");
        }
    }
}
