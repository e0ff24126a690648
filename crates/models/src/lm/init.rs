//! OpenLM's initialisation: truncated normal (+-3 std) with std 1/sqrt(fan_in), output
//! projections of each block (attention out_proj, SwiGLU w3) further scaled by 1/sqrt(2(i+1))
//! for block i; norm gains start at 1.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Seeded source of OpenLM-style initial values.
pub struct Initializer {
    rng: ChaCha8Rng,
}

impl Initializer {
    pub fn new(seed: u64) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// `len` samples of N(0, std^2) truncated to [-3 std, 3 std] by rejection.
    pub fn trunc_normal(&mut self, len: usize, std: f32) -> Vec<f32> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            // Box-Muller: two independent standard normals per pair of uniforms.
            let u1: f64 = 1.0 - self.rng.gen::<f64>();
            let u2: f64 = self.rng.gen::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = std::f64::consts::TAU * u2;
            for z in [r * theta.cos(), r * theta.sin()] {
                if z.abs() <= 3.0 && out.len() < len {
                    out.push((z * std as f64) as f32);
                }
            }
        }
        out
    }
}

/// Std of block `layer`'s output projection with fan-in `fan_in` (depth-scaled, arXiv:1908.11365).
pub fn depth_scaled_std(fan_in: usize, layer: usize) -> f32 {
    (1.0 / (fan_in as f64).sqrt() / (2.0 * (layer + 1) as f64).sqrt()) as f32
}

/// Std 1/sqrt(fan_in).
pub fn fan_in_std(fan_in: usize) -> f32 {
    (1.0 / (fan_in as f64).sqrt()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_with_the_right_spread() {
        let std = 0.05;
        let x = Initializer::new(3).trunc_normal(200_000, std);
        assert!(x.iter().all(|v| v.abs() <= 3.0 * std));
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
        // A normal truncated at 3 sigma keeps 97.3% of its variance.
        let want = 0.9733 * (std as f64).powi(2);
        assert!(mean.abs() < 1e-3 && (var / want - 1.0).abs() < 0.02, "mean {mean} var {var} want {want}");
        assert_eq!(Initializer::new(3).trunc_normal(10, std), x[..10]);
    }

    #[test]
    fn depth_scaling() {
        assert!((depth_scaled_std(256, 0) - 1.0 / 16.0 / 2f32.sqrt()).abs() < 1e-7);
        assert!((depth_scaled_std(256, 3) - 1.0 / 16.0 / 8f32.sqrt()).abs() < 1e-7);
    }
}
