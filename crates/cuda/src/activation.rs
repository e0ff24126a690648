//! SwiGLU and GELU (exact and tanh), forward and backward.

use super::buf::CudaBuf;
use super::compile::Family;
use super::launch::{self, launch};
use super::Inner;
use vlmix_engine::device::GeluKind;

pub const FAMILY: Family = Family {
    name: "activation",
    src: SRC,
    kernels: &["swiglu_forward", "swiglu_backward", "gelu_forward", "gelu_backward"],
};

const SRC: &str = r#"
#define SQRT_2_OVER_PI 0.7978846f
#define GELU_TANH_C 0.044715f
#define FRAC_1_SQRT_2 0.70710678f
#define FRAC_1_SQRT_2PI 0.3989423f

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* gate_up rows are [gate (hidden) | up (hidden)]. */
extern "C" __global__ void swiglu_forward(const float* gu, float* out, i64 n, int hidden) {
    GRID_STRIDE(i, n) {
        i64 base = (i / hidden) * 2 * hidden + i % hidden;
        float g = gu[base], u = gu[base + hidden];
        out[i] = g * sigmoid(g) * u;
    }
}

extern "C" __global__ void swiglu_backward(const float* gu, const float* dout, float* dgu, i64 n, int hidden) {
    GRID_STRIDE(i, n) {
        i64 base = (i / hidden) * 2 * hidden + i % hidden;
        float g = gu[base], u = gu[base + hidden], dy = dout[i];
        float s = sigmoid(g);
        dgu[base + hidden] = dy * g * s;
        dgu[base] = dy * u * s * (1.0f + g * (1.0f - s));
    }
}

/* kind: 0 = exact (erf), 1 = tanh approximation. */
extern "C" __global__ void gelu_forward(int kind, const float* x, float* out, i64 n) {
    GRID_STRIDE(i, n) {
        float v = x[i];
        if (kind == 0) {
            out[i] = 0.5f * v * (1.0f + erff(v * FRAC_1_SQRT_2));
        } else {
            float t = tanhf(SQRT_2_OVER_PI * (v + GELU_TANH_C * v * v * v));
            out[i] = 0.5f * v * (1.0f + t);
        }
    }
}

extern "C" __global__ void gelu_backward(int kind, const float* x, const float* dout, float* dx, i64 n) {
    GRID_STRIDE(i, n) {
        float v = x[i], dy = dout[i];
        if (kind == 0) {
            float cdf = 0.5f * (1.0f + erff(v * FRAC_1_SQRT_2));
            float pdf = FRAC_1_SQRT_2PI * expf(-0.5f * v * v);
            dx[i] = dy * (cdf + v * pdf);
        } else {
            float t = tanhf(SQRT_2_OVER_PI * (v + GELU_TANH_C * v * v * v));
            float dinner = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_TANH_C * v * v);
            dx[i] = dy * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * dinner);
        }
    }
}
"#;

fn gelu_kind(kind: GeluKind) -> i32 {
    match kind {
        GeluKind::Erf => 0,
        GeluKind::Tanh => 1,
    }
}

pub fn swiglu_forward(dev: &Inner, hidden: usize, gate_up: &CudaBuf, out: &mut CudaBuf) {
    assert!(hidden > 0 && out.len().is_multiple_of(hidden), "swiglu: output is not rows of {hidden}");
    assert_eq!(gate_up.len(), 2 * out.len(), "swiglu: gate_up must be twice the output");
    let (gu, o, n, h) = (gate_up.addr(), out.addr(), out.len() as i64, hidden as i32);
    if n > 0 {
        launch!(dev, FAMILY, "swiglu_forward", launch::elementwise(n as usize), gu, o, n, h);
    }
}

pub fn swiglu_backward(dev: &Inner, hidden: usize, gate_up: &CudaBuf, dout: &CudaBuf, dgate_up: &mut CudaBuf) {
    assert!(hidden > 0 && dout.len().is_multiple_of(hidden), "swiglu backward: dout is not rows of {hidden}");
    assert!(gate_up.len() == 2 * dout.len() && dgate_up.len() == gate_up.len(), "swiglu backward: buffer sizes");
    let (gu, d, dgu, n, h) = (gate_up.addr(), dout.addr(), dgate_up.addr(), dout.len() as i64, hidden as i32);
    if n > 0 {
        launch!(dev, FAMILY, "swiglu_backward", launch::elementwise(n as usize), gu, d, dgu, n, h);
    }
}

pub fn gelu_forward(dev: &Inner, kind: GeluKind, x: &CudaBuf, out: &mut CudaBuf) {
    assert_eq!(x.len(), out.len(), "gelu: length mismatch");
    let (k, xp, o, n) = (gelu_kind(kind), x.addr(), out.addr(), x.len() as i64);
    if n > 0 {
        launch!(dev, FAMILY, "gelu_forward", launch::elementwise(n as usize), k, xp, o, n);
    }
}

pub fn gelu_backward(dev: &Inner, kind: GeluKind, x: &CudaBuf, dout: &CudaBuf, dx: &mut CudaBuf) {
    assert!(x.len() == dout.len() && dx.len() == x.len(), "gelu backward: length mismatch");
    let (k, xp, d, g, n) = (gelu_kind(kind), x.addr(), dout.addr(), dx.addr(), x.len() as i64);
    if n > 0 {
        launch!(dev, FAMILY, "gelu_backward", launch::elementwise(n as usize), k, xp, d, g, n);
    }
}
