//! Scalar math written so the compiler vectorises it (libm calls would block vectorisation).

/// `e^x` to ~2 ulp (Cephes `expf` polynomial), clamped to the f32 normal range.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Lanes of the reductions below: independent accumulators let the compiler use vector registers
/// (a plain `iter().sum()` must add in order and stays scalar).
const LANES: usize = 16;

#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let split = n - n % LANES;
    for (ca, cb) in a[..split].chunks_exact(LANES).zip(b[..split].chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a[split..].iter().zip(&b[split..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `sum((x - mu)^2)`.
#[inline(always)]
pub fn sum_sq_dev(x: &[f32], mu: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - mu) * (v - mu)).sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += (c[i] - mu) * (c[i] - mu);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().fold(tail, |m, &v| if v > m { v } else { m })
}

/// `x = exp(x - shift)` in place; returns the sum of the results.
#[inline(always)]
pub fn exp_shifted_in_place(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp(c[i] - shift);
            acc[i] += c[i];
        }
    }
    let mut tail = 0.0;
    for v in chunks.into_remainder() {
        *v = exp(*v - shift);
        tail += *v;
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum(exp(x - shift))` without writing.
#[inline(always)]
pub fn exp_shifted_sum(x: &[f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| exp(v - shift)).sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += exp(c[i] - shift);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reductions_match_plain_loops() {
        let x: Vec<f32> = (0..37).map(|i| ((i * 7919) % 23) as f32 * 0.25 - 2.0).collect();
        let y: Vec<f32> = (0..37).map(|i| ((i * 104_729) % 19) as f32 * 0.5 - 4.0).collect();
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * (1.0 + b.abs());
        assert!(close(super::sum(&x), x.iter().sum()));
        assert!(close(super::dot(&x, &y), x.iter().zip(&y).map(|(a, b)| a * b).sum()));
        assert_eq!(super::max(&x), x.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
        let want: f32 = x.iter().map(|v| (v - 1.5).exp()).sum();
        assert!(close(super::exp_shifted_sum(&x, 1.5), want));
        let mut z = x.clone();
        assert!(close(super::exp_shifted_in_place(&mut z, 1.5), want));
        assert!(close(z[5], (x[5] - 1.5).exp()));
    }

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = super::exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.013;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert!(super::exp(-1e30) >= 0.0 && super::exp(-1e30) < 1e-37);
    }
}
