//! Shared helpers for the engine tests: a deterministic generator and a finite-difference checker.
#![allow(dead_code)]

use vlmix_engine::Cpu;

/// Named tensors a finite-difference check perturbs.
pub type Tensors<'a> = [(&'a str, Vec<f32>)];

pub fn cpu() -> Cpu {
    Cpu::new().expect("OpenBLAS must be installed for the engine tests")
}

/// Deterministic uniform values in `[-scale, scale]` (xorshift; tests must not depend on a seed
/// that changes between runs).
pub fn rand_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// `sum_i y_i * r_i` in f64: a scalar whose gradient w.r.t. `y` is `r`.
pub fn project(y: &[f32], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Central finite differences of `loss` w.r.t. up to `max_coords` coordinates of every tensor in
/// `tensors`, compared against `analytic` (same layout). Panics with the tensor name and index on
/// the first mismatch. `loss` must read the current `tensors`.
pub fn check_grads(
    what: &str,
    tensors: &mut Tensors,
    analytic: &[Vec<f32>],
    max_coords: usize,
    loss: &dyn Fn(&Tensors) -> f64,
) {
    const EPS: f32 = 1e-2;
    assert_eq!(tensors.len(), analytic.len(), "{what}: one analytic gradient per tensor");
    for t in 0..tensors.len() {
        let len = tensors[t].1.len();
        assert_eq!(len, analytic[t].len(), "{what}: analytic gradient of {} has the wrong length", tensors[t].0);
        let stride = len.div_ceil(max_coords).max(1);
        let (mut num_sq, mut diff_sq) = (0.0f64, 0.0f64);
        for i in (0..len).step_by(stride).chain(std::iter::once(len - 1)) {
            let orig = tensors[t].1[i];
            tensors[t].1[i] = orig + EPS;
            let plus = loss(tensors);
            tensors[t].1[i] = orig - EPS;
            let minus = loss(tensors);
            tensors[t].1[i] = orig;
            let numeric = (plus - minus) / (2.0 * EPS as f64);
            let got = analytic[t][i] as f64;
            let tol = 2e-3 + 2e-2 * numeric.abs().max(got.abs());
            assert!(
                (numeric - got).abs() <= tol,
                "{what}: d/d{}[{i}] analytic {got:.6} vs numeric {numeric:.6}",
                tensors[t].0
            );
            num_sq += numeric * numeric;
            diff_sq += (numeric - got) * (numeric - got);
        }
        assert!(num_sq > 0.0, "{what}: gradient of {} is identically zero at the checked points", tensors[t].0);
        assert!(
            diff_sq.sqrt() <= 1e-2 * num_sq.sqrt() + 1e-4,
            "{what}: gradient of {} off by {:.3e} relative",
            tensors[t].0,
            diff_sq.sqrt() / num_sq.sqrt()
        );
    }
}
