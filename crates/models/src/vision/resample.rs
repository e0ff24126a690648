//! Image resizing that reproduces Pillow's `Image.resize` bit for bit on 8-bit RGB images.
//!
//! Why not the `image` crate's resize: Hugging Face image processors (and the PyTorch code that
//! made the reference features) resize with Pillow, whose separable filters, support scaling and
//! 22-bit fixed-point rounding differ from `image`'s float pipeline by a few levels per pixel.
//! Matching Pillow exactly makes preprocessing identical to the processor a checkpoint was
//! trained with, so features agree with Python's to float precision.

use anyhow::{bail, Result};
use image::RgbImage;

/// Pillow's resampling filters, numbered as in `PIL.Image.Resampling` (and HF `resample` fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    Nearest,
    Lanczos,
    Bilinear,
    Bicubic,
    Box,
    Hamming,
}

impl Resample {
    pub fn from_pil_code(code: i64) -> Result<Self> {
        Ok(match code {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            other => bail!("unknown PIL resampling filter {other} (expected 0-5)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Resample::Nearest => "nearest",
            Resample::Lanczos => "lanczos",
            Resample::Bilinear => "bilinear",
            Resample::Bicubic => "bicubic",
            Resample::Box => "box",
            Resample::Hamming => "hamming",
        }
    }

    fn support(self) -> f64 {
        match self {
            Resample::Nearest | Resample::Box => 0.5,
            Resample::Bilinear | Resample::Hamming => 1.0,
            Resample::Bicubic => 2.0,
            Resample::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let sinc = |x: f64| if x == 0.0 { 1.0 } else { (x * std::f64::consts::PI).sin() / (x * std::f64::consts::PI) };
        match self {
            Resample::Nearest | Resample::Box => f64::from(x > -0.5 && x <= 0.5),
            Resample::Bilinear => (1.0 - x.abs()).max(0.0),
            Resample::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let px = x * std::f64::consts::PI;
                    // Pillow mixes float constants into this double expression.
                    px.sin() / px * (0.54f32 as f64 + 0.46f32 as f64 * px.cos())
                }
            }
            Resample::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Resample::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index and fixed-point weights.
struct Coefficients {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn coefficients(in_size: usize, out_size: usize, filter: Resample) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let mut starts = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero; the clamp to 0 makes that equal to the floor here.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let raw: Vec<f64> = (xmin..xmax).map(|x| filter.weight((x as f64 - center + 0.5) / filter_scale)).collect();
        let total: f64 = raw.iter().sum();
        let fixed = raw
            .iter()
            .map(|&w| {
                let w = if total != 0.0 { w / total } else { w };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                (if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
            })
            .collect();
        starts.push(xmin);
        weights.push(fixed);
    }
    Coefficients { starts, weights }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

fn horizontal(src: &RgbImage, out_w: u32, c: &Coefficients) -> RgbImage {
    let (w, h) = src.dimensions();
    let raw = src.as_raw();
    let mut out = RgbImage::new(out_w, h);
    let dst = out.as_mut();
    for y in 0..h as usize {
        let row = &raw[y * w as usize * 3..(y + 1) * w as usize * 3];
        for xx in 0..out_w as usize {
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (i, &k) in c.weights[xx].iter().enumerate() {
                let p = (c.starts[xx] + i) * 3;
                for ch in 0..3 {
                    acc[ch] += i32::from(row[p + ch]) * k;
                }
            }
            for ch in 0..3 {
                dst[(y * out_w as usize + xx) * 3 + ch] = clip8(acc[ch]);
            }
        }
    }
    out
}

fn vertical(src: &RgbImage, out_h: u32, c: &Coefficients) -> RgbImage {
    let (w, _) = src.dimensions();
    let stride = w as usize * 3;
    let raw = src.as_raw();
    let mut out = RgbImage::new(w, out_h);
    let dst = out.as_mut();
    for yy in 0..out_h as usize {
        for x in 0..stride {
            let mut acc = 1i32 << (PRECISION_BITS - 1);
            for (i, &k) in c.weights[yy].iter().enumerate() {
                acc += i32::from(raw[(c.starts[yy] + i) * stride + x]) * k;
            }
            dst[yy * stride + x] = clip8(acc);
        }
    }
    out
}

/// Pillow's nearest neighbour: the source pixel under each output pixel's centre.
fn nearest(src: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = src.dimensions();
    let pick = |o: u32, out: u32, inp: u32| (((o as f64 + 0.5) * inp as f64 / out as f64) as u32).min(inp - 1);
    RgbImage::from_fn(out_w, out_h, |x, y| *src.get_pixel(pick(x, out_w, w), pick(y, out_h, h)))
}

/// `image.resize((width, height), filter)` exactly as Pillow computes it (no `reducing_gap`).
pub fn resize(src: &RgbImage, width: u32, height: u32, filter: Resample) -> Result<RgbImage> {
    let (w, h) = src.dimensions();
    if w == 0 || h == 0 || width == 0 || height == 0 {
        bail!("cannot resize a {w}x{h} image to {width}x{height}");
    }
    if (w, h) == (width, height) {
        return Ok(src.clone());
    }
    if filter == Resample::Nearest {
        return Ok(nearest(src, width, height));
    }
    let horizontal_pass = if w != width {
        horizontal(src, width, &coefficients(w as usize, width as usize, filter))
    } else {
        src.clone()
    };
    Ok(if h != height {
        vertical(&horizontal_pass, height, &coefficients(h as usize, height as usize, filter))
    } else {
        horizontal_pass
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for filter in [Resample::Bilinear, Resample::Bicubic, Resample::Lanczos, Resample::Box, Resample::Hamming] {
            for (inp, out) in [(48, 32), (32, 48), (640, 224), (7, 3)] {
                let c = coefficients(inp, out, filter);
                for w in &c.weights {
                    let sum: i64 = w.iter().map(|&k| k as i64).sum();
                    assert!((sum - (1 << PRECISION_BITS)).abs() <= w.len() as i64, "{filter:?} {inp}->{out}: {sum}");
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = RgbImage::from_pixel(37, 23, image::Rgb([10, 128, 250]));
        for filter in [Resample::Nearest, Resample::Bilinear, Resample::Bicubic, Resample::Lanczos] {
            let out = resize(&src, 16, 29, filter).unwrap();
            assert!(out.pixels().all(|p| p.0 == [10, 128, 250]), "{filter:?}");
        }
    }
}
