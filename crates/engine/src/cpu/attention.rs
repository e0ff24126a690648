//! Scaled dot-product attention, one rayon task per (batch, head).
//!
//! Each task runs single-threaded BLAS on its head's `[seq, head_dim]` column block (leading
//! dimension = the full row width, so no permute copies). Causal attention walks query blocks of
//! [`CAUSAL_BLOCK`] rows and only touches keys up to the block's last row, skipping ~3/8 of the
//! products at seq 256. Softmax probabilities are saved for the backward.

use rayon::prelude::*;

use super::gemm::call;
use super::math::{dot, exp_shifted_in_place, max};
use super::par::SendPtr;
use super::simd::multiversion;
use crate::device::{AttnShape, Gemm};

const CAUSAL_BLOCK: usize = 64;

fn check(shape: AttnShape, bufs: &[(&str, usize)]) {
    let len = shape.rows() * shape.width();
    for (name, got) in bufs {
        assert_eq!(*got, len, "attention: {name} is not [batch*seq, heads*head_dim] for {shape:?}");
    }
}

fn check_probs(shape: AttnShape, probs: usize) {
    assert!(probs >= shape.probs_len(), "attention: probs shorter than batch*heads*seq*seq for {shape:?}");
}

/// Query blocks `(first row, end row, keys used)` of one head.
fn blocks(shape: AttnShape) -> impl Iterator<Item = (usize, usize, usize)> {
    let t = shape.seq;
    let step = if shape.causal { CAUSAL_BLOCK } else { t.max(1) };
    (0..t).step_by(step).map(move |i0| {
        let i1 = (i0 + step).min(t);
        (i0, i1, if shape.causal { i1 } else { t })
    })
}

multiversion! {
    /// Each row of `rows` (rows of `stride` scores) becomes probabilities over its first
    /// `first_valid + i` entries (row `i`; at most `stride`); the masked rest becomes 0.
    fn softmax_rows(rows: &mut [f32], stride: usize, first_valid: usize) {
        for (i, row) in rows.chunks_exact_mut(stride).enumerate() {
            let valid = (first_valid + i).min(stride);
            let row_max = max(&row[..valid]);
            let inv = 1.0 / exp_shifted_in_place(&mut row[..valid], row_max);
            row[..valid].iter_mut().for_each(|x| *x *= inv);
            row[valid..].fill(0.0);
        }
    }
}

multiversion! {
    /// Turns `dP` (in `ds`, rows `i0..i1`, columns `..nk`) into the score gradient
    /// `dS = P * (dP - rowsum(P * dP)) * scale`.
    #[allow(clippy::too_many_arguments)]
    fn softmax_backward_rows(p: &[f32], ds: &mut [f32], t: usize, i0: usize, i1: usize, nk: usize, causal: bool, scale: f32) {
        for i in i0..i1 {
            let valid = if causal { i + 1 } else { t };
            let pr = &p[i * t..i * t + valid];
            let dr = &mut ds[i * t..i * t + nk];
            let row_dot = dot(pr, &dr[..valid]);
            for (g, p) in dr[..valid].iter_mut().zip(pr) {
                *g = p * (*g - row_dot) * scale;
            }
            dr[valid..].fill(0.0);
        }
    }
}

pub fn forward(shape: AttnShape, q: &[f32], k: &[f32], v: &[f32], probs: &mut [f32], out: &mut [f32]) {
    check(shape, &[("q", q.len()), ("k", k.len()), ("v", v.len()), ("out", out.len())]);
    check_probs(shape, probs.len());
    let (t, d, hd) = (shape.seq, shape.width(), shape.head_dim);
    let scale = 1.0 / (hd as f32).sqrt();
    let out_ptr = SendPtr(out.as_mut_ptr());
    probs[..shape.probs_len()].par_chunks_mut(t * t).enumerate().for_each(|(task, p)| {
        let (b, h) = (task / shape.heads, task % shape.heads);
        let base = b * t * d + h * hd;
        for (i0, i1, nk) in blocks(shape) {
            let rows = i1 - i0;
            // SAFETY: q/k/v/out extents checked in `check`; this task alone writes head h of
            // batch b in `out` and its own probs chunk.
            unsafe {
                let g = Gemm::new(false, true, rows, nk, hd).alpha(scale).strides(d, d, t);
                call(g, q.as_ptr().add(base + i0 * d), k.as_ptr().add(base), p.as_mut_ptr().add(i0 * t));
            }
            softmax_rows(&mut p[i0 * t..i1 * t], t, if shape.causal { i0 + 1 } else { t });
            unsafe {
                let g = Gemm::new(false, false, rows, hd, nk).strides(t, d, d);
                call(g, p.as_ptr().add(i0 * t), v.as_ptr().add(base), out_ptr.get().add(base + i0 * d));
            }
        }
    });
}

/// Causal attention of only the queries that continue cached prefixes: in row `b`, the `cont`
/// positions from `starts[b]` on (see `Device::attention_continuing`). Each query's scores and
/// probabilities are those of [`forward`]; the prefix's own queries are never computed.
pub fn continuing(shape: AttnShape, starts: &[usize], cont: usize, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
    check(shape, &[("q", q.len()), ("k", k.len()), ("v", v.len())]);
    let (t, d, hd) = (shape.seq, shape.width(), shape.head_dim);
    assert!(shape.causal, "attention: only causal rows continue a prefix");
    assert_eq!(starts.len(), shape.batch, "attention: {} starts for {} rows", starts.len(), shape.batch);
    assert!(starts.iter().all(|&s| s + cont <= t), "attention: continuations past the rows' {t} positions");
    assert_eq!(out.len(), shape.batch * cont * d, "attention: out is not [batch*cont, heads*head_dim]");
    let scale = 1.0 / (hd as f32).sqrt();
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..shape.batch * shape.heads).into_par_iter().for_each_init(
        || vec![0.0f32; cont * t],
        |p, task| {
            let (b, h) = (task / shape.heads, task % shape.heads);
            let (start, base) = (starts[b], b * t * d + h * hd);
            // Keys up to the last query's own position.
            let nk = start + cont;
            // SAFETY: q/k/v extents checked above, starts + cont within the rows; this task alone
            // writes head h of row b's `cont` output rows.
            unsafe {
                let g = Gemm::new(false, true, cont, nk, hd).alpha(scale).strides(d, d, nk);
                call(g, q.as_ptr().add(base + start * d), k.as_ptr().add(base), p.as_mut_ptr());
            }
            softmax_rows(&mut p[..cont * nk], nk, start + 1);
            unsafe {
                let g = Gemm::new(false, false, cont, hd, nk).strides(nk, d, d);
                call(g, p.as_ptr(), v.as_ptr().add(base), out_ptr.get().add(b * cont * d + h * hd));
            }
        },
    );
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    shape: AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let lens = [("q", q.len()), ("k", k.len()), ("v", v.len()), ("dout", dout.len())];
    check(shape, &lens);
    check(shape, &[("dq", dq.len()), ("dk", dk.len()), ("dv", dv.len())]);
    check_probs(shape, probs.len());
    let (t, d, hd) = (shape.seq, shape.width(), shape.head_dim);
    let scale = 1.0 / (hd as f32).sqrt();
    let (dq_ptr, dk_ptr, dv_ptr) = (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
    (0..shape.batch * shape.heads).into_par_iter().for_each_init(
        || vec![0.0f32; t * t],
        |ds, task| {
            let (b, h) = (task / shape.heads, task % shape.heads);
            let base = b * t * d + h * hd;
            let p = &probs[task * t * t..(task + 1) * t * t];
            // SAFETY (all blocks below): extents checked above; this task alone touches head h
            // of batch b in dq/dk/dv.
            unsafe {
                for r in 0..t {
                    std::slice::from_raw_parts_mut(dk_ptr.get().add(base + r * d), hd).fill(0.0);
                    std::slice::from_raw_parts_mut(dv_ptr.get().add(base + r * d), hd).fill(0.0);
                }
            }
            for (i0, i1, nk) in blocks(shape) {
                let rows = i1 - i0;
                unsafe {
                    // dP = dO V^T
                    let g = Gemm::new(false, true, rows, nk, hd).strides(d, d, t);
                    call(g, dout.as_ptr().add(base + i0 * d), v.as_ptr().add(base), ds.as_mut_ptr().add(i0 * t));
                }
                softmax_backward_rows(p, ds, t, i0, i1, nk, shape.causal, scale);
                unsafe {
                    // dQ = dS K ; dK += dS^T Q ; dV += P^T dO
                    let g = Gemm::new(false, false, rows, hd, nk).strides(t, d, d);
                    call(g, ds.as_ptr().add(i0 * t), k.as_ptr().add(base), dq_ptr.get().add(base + i0 * d));
                    let g = Gemm::new(true, false, nk, hd, rows).strides(t, d, d).accumulate();
                    call(g, ds.as_ptr().add(i0 * t), q.as_ptr().add(base + i0 * d), dk_ptr.get().add(base));
                    let g = Gemm::new(true, false, nk, hd, rows).strides(t, d, d).accumulate();
                    call(g, p.as_ptr().add(i0 * t), dout.as_ptr().add(base + i0 * d), dv_ptr.get().add(base));
                }
            }
        },
    );
}
