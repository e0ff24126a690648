//! Residual adds, bias adds and their backward, copies.

use rayon::prelude::*;

use super::par::{row_blocks, rows_per_task};
use super::simd::multiversion;

const CHUNK: usize = 64 * 1024;

pub fn fill(buf: &mut [f32], value: f32) {
    buf.par_chunks_mut(CHUNK).for_each(|c| c.fill(value));
}

pub fn copy(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "copy: length mismatch");
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| d.copy_from_slice(s));
}

pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(a.len() == out.len() && b.len() == out.len(), "add: length mismatch");
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((o, a), b)| sum(o, a, b));
}

multiversion! {
    fn sum(out: &mut [f32], a: &[f32], b: &[f32]) {
        for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    }
}

pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add_assign: length mismatch");
    acc.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(acc, x)| accumulate(acc, x));
}

multiversion! {
    fn accumulate(acc: &mut [f32], x: &[f32]) {
        for (a, x) in acc.iter_mut().zip(x) {
            *a += x;
        }
    }
}

pub fn add_bias(y: &mut [f32], bias: &[f32]) {
    let width = bias.len();
    assert!(width > 0 && y.len().is_multiple_of(width), "add_bias: {} elements are not rows of {width}", y.len());
    let rows_per = rows_per_task(y.len() / width, width);
    y.par_chunks_mut(rows_per * width).for_each(|block| {
        for row in block.chunks_exact_mut(width) {
            accumulate(row, bias);
        }
    });
}

pub fn bias_backward(dy: &[f32], dbias: &mut [f32]) {
    let width = dbias.len();
    assert!(
        width > 0 && dy.len().is_multiple_of(width),
        "bias_backward: {} elements are not rows of {width}",
        dy.len()
    );
    let partials: Vec<Vec<f32>> = row_blocks(dy.len() / width, width)
        .into_par_iter()
        .map(|rows| {
            let mut sum = vec![0.0f32; width];
            for row in dy[rows.start * width..rows.end * width].chunks_exact(width) {
                accumulate(&mut sum, row);
            }
            sum
        })
        .collect();
    for partial in partials {
        for (db, s) in dbias.iter_mut().zip(partial) {
            *db += s;
        }
    }
}

pub fn scale(x: &mut [f32], s: f32) {
    x.par_chunks_mut(CHUNK).for_each(|c| scale_chunk(c, s));
}

multiversion! {
    fn scale_chunk(x: &mut [f32], s: f32) {
        x.iter_mut().for_each(|v| *v *= s);
    }
}

/// Elements per partial sum of `sum_squares`; part of the result's rounding, so fixed.
const SUM_CHUNK: usize = 1 << 15;

pub fn sum_squares(bufs: &[&[f32]]) -> f64 {
    bufs.iter()
        .map(|x| x.par_chunks(SUM_CHUNK).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).sum::<f64>())
        .sum()
}

pub fn gather_rows(src: &[f32], rows: &[usize], dst: &mut [f32]) {
    if rows.is_empty() {
        return;
    }
    let width = dst.len() / rows.len();
    assert_eq!(dst.len(), rows.len() * width, "gather_rows: dst is not [rows, width]");
    for (d, &r) in dst.chunks_exact_mut(width).zip(rows) {
        d.copy_from_slice(&src[r * width..(r + 1) * width]);
    }
}

pub fn scatter_rows(src: &[f32], rows: &[usize], dst: &mut [f32]) {
    if rows.is_empty() {
        return;
    }
    let width = src.len() / rows.len();
    assert_eq!(src.len(), rows.len() * width, "scatter_rows: src is not [rows, width]");
    for (s, &r) in src.chunks_exact(width).zip(rows) {
        dst[r * width..(r + 1) * width].copy_from_slice(s);
    }
}

pub fn zero_rows(buf: &mut [f32], rows: &[usize], width: usize) {
    for &r in rows {
        buf[r * width..(r + 1) * width].fill(0.0);
    }
}
