//! One AdamW update of one parameter tensor, as `torch.optim.AdamW` (single-tensor path); the
//! step's scalars come from the host ([`vlmix_engine::device::AdamWStep`]).

use super::buf::CudaBuf;
use super::compile::Family;
use super::launch::{self, launch};
use super::Inner;
use vlmix_engine::device::AdamWStep;

pub const FAMILY: Family = Family { name: "adamw", src: SRC, kernels: &["adamw_step"] };

const SRC: &str = r#"
extern "C" __global__ void adamw_step(float* p, const float* g, float* m, float* v, i64 n, float neg_step_size,
                                      float bias_correction2_sqrt, float one_minus_beta1, float beta2,
                                      float one_minus_beta2, float eps, int has_decay, float decay) {
    GRID_STRIDE(i, n) {
        float grad = g[i];
        float param = has_decay ? p[i] * decay : p[i];
        float exp_avg = m[i] + one_minus_beta1 * (grad - m[i]);
        float exp_avg_sq = v[i] * beta2 + one_minus_beta2 * grad * grad;
        float denom = sqrtf(exp_avg_sq) / bias_correction2_sqrt + eps;
        p[i] = param + neg_step_size * exp_avg / denom;
        m[i] = exp_avg;
        v[i] = exp_avg_sq;
    }
}
"#;

pub fn step(
    dev: &Inner,
    s: &AdamWStep,
    param: &mut CudaBuf,
    grad: &CudaBuf,
    exp_avg: &mut CudaBuf,
    exp_avg_sq: &mut CudaBuf,
) {
    let n = param.len();
    assert!(grad.len() == n && exp_avg.len() == n && exp_avg_sq.len() == n, "adamw_step: length mismatch");
    if n == 0 {
        return;
    }
    let (p, g, m, v, len) = (param.addr(), grad.addr(), exp_avg.addr(), exp_avg_sq.addr(), n as i64);
    let (nss, bc2, omb1, b2, omb2, eps) =
        (s.neg_step_size, s.bias_correction2_sqrt, s.one_minus_beta1, s.beta2, s.one_minus_beta2, s.eps);
    let (has_decay, decay) = (s.decay.is_some() as i32, s.decay.unwrap_or(1.0));
    let cfg = launch::elementwise(n);
    launch!(dev, FAMILY, "adamw_step", cfg, p, g, m, v, len, nss, bc2, omb1, b2, omb2, eps, has_decay, decay);
}
