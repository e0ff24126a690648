//! SwiGLU and GELU (exact erf and tanh approximation), forward and backward.

use rayon::prelude::*;

use super::math::{exp, sigmoid};
use super::par::rows_per_task;
use super::simd::multiversion;
use crate::device::GeluKind;

const CHUNK: usize = 16 * 1024;

pub fn swiglu_forward(hidden: usize, gate_up: &[f32], out: &mut [f32]) {
    assert!(hidden > 0 && out.len().is_multiple_of(hidden), "swiglu: output is not rows of {hidden}");
    assert_eq!(gate_up.len(), 2 * out.len(), "swiglu: gate_up must be twice the output");
    let per = rows_per_task(out.len() / hidden, 2 * hidden);
    out.par_chunks_mut(per * hidden)
        .zip(gate_up.par_chunks(per * 2 * hidden))
        .for_each(|(out, gu)| swiglu_rows(hidden, out, gu));
}

multiversion! {
    fn swiglu_rows(hidden: usize, out: &mut [f32], gate_up: &[f32]) {
        for (o, gu) in out.chunks_exact_mut(hidden).zip(gate_up.chunks_exact(2 * hidden)) {
            let (g, u) = gu.split_at(hidden);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        }
    }
}

pub fn swiglu_backward(hidden: usize, gate_up: &[f32], dout: &[f32], dgate_up: &mut [f32]) {
    assert!(hidden > 0 && dout.len().is_multiple_of(hidden), "swiglu backward: dout is not rows of {hidden}");
    assert!(gate_up.len() == 2 * dout.len() && dgate_up.len() == gate_up.len(), "swiglu backward: buffer sizes");
    let per = rows_per_task(dout.len() / hidden, 2 * hidden);
    dgate_up
        .par_chunks_mut(per * 2 * hidden)
        .zip(gate_up.par_chunks(per * 2 * hidden))
        .zip(dout.par_chunks(per * hidden))
        .for_each(|((dgu, gu), dout)| swiglu_backward_rows(hidden, dgu, gu, dout));
}

multiversion! {
    fn swiglu_backward_rows(hidden: usize, dgate_up: &mut [f32], gate_up: &[f32], dout: &[f32]) {
        for ((dgu, gu), dy) in dgate_up.chunks_exact_mut(2 * hidden).zip(gate_up.chunks_exact(2 * hidden)).zip(dout.chunks_exact(hidden)) {
            let (g, u) = gu.split_at(hidden);
            let (dg, du) = dgu.split_at_mut(hidden);
            for j in 0..hidden {
                let s = sigmoid(g[j]);
                du[j] = dy[j] * g[j] * s;
                dg[j] = dy[j] * u[j] * s * (1.0 + g[j] * (1.0 - s));
            }
        }
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_TANH_C: f32 = 0.044_715;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

pub fn gelu_forward(kind: GeluKind, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "gelu: length mismatch");
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(out, x)| match kind {
        GeluKind::Erf => {
            for (o, &x) in out.iter_mut().zip(x) {
                *o = 0.5 * x * (1.0 + libm::erff(x * FRAC_1_SQRT_2));
            }
        }
        GeluKind::Tanh => {
            for (o, &x) in out.iter_mut().zip(x) {
                let t = (SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x)).tanh();
                *o = 0.5 * x * (1.0 + t);
            }
        }
    });
}

pub fn gelu_backward(kind: GeluKind, x: &[f32], dout: &[f32], dx: &mut [f32]) {
    assert!(x.len() == dout.len() && dx.len() == x.len(), "gelu backward: length mismatch");
    dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).zip(dout.par_chunks(CHUNK)).for_each(
        |((dx, x), dy)| match kind {
            GeluKind::Erf => {
                for ((g, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                    let cdf = 0.5 * (1.0 + libm::erff(x * FRAC_1_SQRT_2));
                    let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
                    *g = dy * (cdf + x * pdf);
                }
            }
            GeluKind::Tanh => {
                for ((g, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                    let inner = SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x);
                    let t = inner.tanh();
                    let dinner = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * x * x);
                    *g = dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner);
                }
            }
        },
    );
}
