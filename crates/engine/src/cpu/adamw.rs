//! The AdamW update of one tensor (the optimizer's state and files live in `crate::adamw`).

use rayon::prelude::*;

use super::simd::multiversion;
use crate::device::AdamWStep;

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 15;

pub fn step(s: &AdamWStep, param: &mut [f32], grad: &[f32], exp_avg: &mut [f32], exp_avg_sq: &mut [f32]) {
    let n = param.len();
    assert!(grad.len() == n && exp_avg.len() == n && exp_avg_sq.len() == n, "adamw_step: length mismatch");
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(exp_avg.par_chunks_mut(CHUNK))
        .zip(exp_avg_sq.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| update(s, p, g, m, v));
}

multiversion! {
    fn update(s: &AdamWStep, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        // Equal lengths up front let the compiler drop the bounds checks and vectorise.
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        for j in 0..n {
            let grad = g[j];
            let mut param = p[j];
            if let Some(decay) = s.decay {
                param *= decay;
            }
            let exp_avg = m[j] + s.one_minus_beta1 * (grad - m[j]);
            let exp_avg_sq = v[j] * s.beta2 + s.one_minus_beta2 * grad * grad;
            let denom = exp_avg_sq.sqrt() / s.bias_correction2_sqrt + s.eps;
            p[j] = param + s.neg_step_size * exp_avg / denom;
            m[j] = exp_avg;
            v[j] = exp_avg_sq;
        }
    }
}
