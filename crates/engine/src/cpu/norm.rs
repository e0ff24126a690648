//! LayerNorm (gain, optional bias) and RMSNorm over the last dimension, forward and backward.
//! Rows run in parallel; parameter gradients are summed per task and reduced at the end.

use rayon::prelude::*;

use super::math::{dot, sum, sum_sq_dev};
use super::par::{row_blocks, rows_per_task};
use super::simd::multiversion;

fn rows_of(x: &[f32], width: usize, what: &str) -> usize {
    assert!(width > 0 && x.len().is_multiple_of(width), "{what}: {} elements are not rows of {width}", x.len());
    x.len() / width
}

pub fn layernorm_forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    let width = weight.len();
    let rows = rows_of(x, width, "layernorm");
    assert!(out.len() == x.len() && mean.len() >= rows && rstd.len() >= rows, "layernorm: buffer sizes");
    let per = rows_per_task(rows, width);
    out.par_chunks_mut(per * width)
        .zip(x.par_chunks(per * width))
        .zip(mean[..rows].par_chunks_mut(per).zip(rstd[..rows].par_chunks_mut(per)))
        .for_each(|((out, x), (mean, rstd))| layernorm_rows(out, x, weight, bias, eps, mean, rstd));
}

multiversion! {
    fn layernorm_rows(out: &mut [f32], x: &[f32], weight: &[f32], bias: Option<&[f32]>, eps: f32, mean: &mut [f32], rstd: &mut [f32]) {
        let width = weight.len();
        for (((o, x), m), r) in out.chunks_exact_mut(width).zip(x.chunks_exact(width)).zip(mean).zip(rstd) {
            let mu = sum(x) / width as f32;
            let rs = 1.0 / (sum_sq_dev(x, mu) / width as f32 + eps).sqrt();
            match bias {
                Some(b) => {
                    for (((o, x), w), b) in o.iter_mut().zip(x).zip(weight).zip(b) {
                        *o = (x - mu) * rs * w + b;
                    }
                }
                None => {
                    for ((o, x), w) in o.iter_mut().zip(x).zip(weight) {
                        *o = (x - mu) * rs * w;
                    }
                }
            }
            *m = mu;
            *r = rs;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dout: &[f32],
    x: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    let width = weight.len();
    let rows = rows_of(x, width, "layernorm backward");
    assert!(dout.len() == x.len() && dx.len() == x.len(), "layernorm backward: buffer sizes");
    let blocks = row_blocks(rows, width);
    let dx_blocks: Vec<&mut [f32]> = split_rows(dx, &blocks, width);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = blocks
        .into_par_iter()
        .zip(dx_blocks)
        .map(|(range, dx)| {
            let mut dw = vec![0.0f32; width];
            let mut db = vec![0.0f32; width];
            let rows = range.start * width..range.end * width;
            layernorm_backward_rows(
                &dout[rows.clone()],
                &x[rows],
                weight,
                &mean[range.clone()],
                &rstd[range],
                dx,
                &mut dw,
                &mut db,
            );
            (dw, db)
        })
        .collect();
    for (dw, _) in &partials {
        for (acc, v) in dweight.iter_mut().zip(dw) {
            *acc += v;
        }
    }
    if let Some(dbias) = dbias {
        for (_, db) in &partials {
            for (acc, v) in dbias.iter_mut().zip(db) {
                *acc += v;
            }
        }
    }
}

multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward_rows(dout: &[f32], x: &[f32], weight: &[f32], mean: &[f32], rstd: &[f32], dx: &mut [f32], dw: &mut [f32], db: &mut [f32]) {
        let width = weight.len();
        let mut xhat = vec![0.0f32; width];
        let mut g = vec![0.0f32; width];
        for ((((xr, dy), dxr), &mu), &rs) in x.chunks_exact(width).zip(dout.chunks_exact(width)).zip(dx.chunks_exact_mut(width)).zip(mean).zip(rstd) {
            for j in 0..width {
                xhat[j] = (xr[j] - mu) * rs;
                g[j] = dy[j] * weight[j];
                dw[j] += dy[j] * xhat[j];
                db[j] += dy[j];
            }
            let mean_g = sum(&g) / width as f32;
            let mean_gx = dot(&g, &xhat) / width as f32;
            for j in 0..width {
                dxr[j] = rs * (g[j] - mean_g - xhat[j] * mean_gx);
            }
        }
    }
}

pub fn rmsnorm_forward(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32], rstd: &mut [f32]) {
    let width = weight.len();
    let rows = rows_of(x, width, "rmsnorm");
    assert!(out.len() == x.len() && rstd.len() >= rows, "rmsnorm: buffer sizes");
    let per = rows_per_task(rows, width);
    out.par_chunks_mut(per * width)
        .zip(x.par_chunks(per * width))
        .zip(rstd[..rows].par_chunks_mut(per))
        .for_each(|((out, x), rstd)| rmsnorm_rows(out, x, weight, eps, rstd));
}

multiversion! {
    fn rmsnorm_rows(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32, rstd: &mut [f32]) {
        let width = weight.len();
        for ((o, x), r) in out.chunks_exact_mut(width).zip(x.chunks_exact(width)).zip(rstd) {
            let ms = dot(x, x) / width as f32;
            let rs = 1.0 / (ms + eps).sqrt();
            for ((o, x), w) in o.iter_mut().zip(x).zip(weight) {
                *o = x * rs * w;
            }
            *r = rs;
        }
    }
}

pub fn rmsnorm_backward(dout: &[f32], x: &[f32], weight: &[f32], rstd: &[f32], dx: &mut [f32], dweight: &mut [f32]) {
    let width = weight.len();
    let rows = rows_of(x, width, "rmsnorm backward");
    assert!(dout.len() == x.len() && dx.len() == x.len(), "rmsnorm backward: buffer sizes");
    let blocks = row_blocks(rows, width);
    let dx_blocks = split_rows(dx, &blocks, width);
    let partials: Vec<Vec<f32>> = blocks
        .into_par_iter()
        .zip(dx_blocks)
        .map(|(range, dx)| {
            let mut dw = vec![0.0f32; width];
            rmsnorm_backward_rows(range.start, dout, x, weight, rstd, dx, &mut dw);
            dw
        })
        .collect();
    for dw in partials {
        for (acc, v) in dweight.iter_mut().zip(dw) {
            *acc += v;
        }
    }
}

multiversion! {
    /// The rows of `dx` (rows `first..` of the batch); adds their weight gradient to `dw`.
    fn rmsnorm_backward_rows(first: usize, dout: &[f32], x: &[f32], weight: &[f32], rstd: &[f32], dx: &mut [f32], dw: &mut [f32]) {
        let width = weight.len();
        for (i, dxr) in dx.chunks_exact_mut(width).enumerate() {
            let r = first + i;
            let xr = &x[r * width..(r + 1) * width];
            let dy = &dout[r * width..(r + 1) * width];
            let rs = rstd[r];
            let mut sum_gx = 0.0f32;
            for j in 0..width {
                sum_gx += dy[j] * weight[j] * xr[j];
                dw[j] += dy[j] * xr[j] * rs;
            }
            let coef = sum_gx * rs * rs * rs / width as f32;
            for j in 0..width {
                dxr[j] = dy[j] * weight[j] * rs - xr[j] * coef;
            }
        }
    }
}

/// Splits `buf` into the row blocks (consecutive, covering `buf`) as disjoint mutable slices.
fn split_rows<'a>(mut buf: &'a mut [f32], blocks: &[std::ops::Range<usize>], width: usize) -> Vec<&'a mut [f32]> {
    let mut parts = Vec::with_capacity(blocks.len());
    for range in blocks {
        let (head, tail) = buf.split_at_mut(range.len() * width);
        parts.push(head);
        buf = tail;
    }
    parts
}
