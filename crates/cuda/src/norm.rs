//! LayerNorm (gain, optional bias) and RMSNorm: one block per row for the forward and for `dx`,
//! column blocks with one atomic per column and block for the parameter gradients.

use super::buf::CudaBuf;
use super::compile::Family;
use super::launch::{self, launch};
use super::Inner;

pub const FAMILY: Family = Family {
    name: "norm",
    src: SRC,
    kernels: &[
        "layernorm_forward",
        "layernorm_backward_dx",
        "layernorm_backward_dw",
        "rmsnorm_forward",
        "rmsnorm_backward_dx",
        "rmsnorm_backward_dw",
    ],
};

const SRC: &str = r#"
#define ROW_LOOP(j) for (int j = threadIdx.x; j < width; j += blockDim.x)

extern "C" __global__ void layernorm_forward(const float* x, const float* w, const float* b, float eps,
                                             float* out, float* mean, float* rstd, int width) {
    i64 row = blockIdx.x;
    const float* xr = x + row * width;
    float* o = out + row * width;
    float s = 0.0f;
    ROW_LOOP(j) s += xr[j];
    float mu = block_sum(s) / width;
    float v = 0.0f;
    ROW_LOOP(j) { float d = xr[j] - mu; v += d * d; }
    float rs = 1.0f / sqrtf(block_sum(v) / width + eps);
    ROW_LOOP(j) {
        float y = (xr[j] - mu) * rs * w[j];
        o[j] = b ? y + b[j] : y;
    }
    if (threadIdx.x == 0) { mean[row] = mu; rstd[row] = rs; }
}

extern "C" __global__ void layernorm_backward_dx(const float* dout, const float* x, const float* w, const float* mean,
                                                 const float* rstd, float* dx, int width) {
    i64 row = blockIdx.x;
    const float* xr = x + row * width;
    const float* dy = dout + row * width;
    float mu = mean[row], rs = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    ROW_LOOP(j) {
        float g = dy[j] * w[j];
        sg += g;
        sgx += g * (xr[j] - mu) * rs;
    }
    float mean_g = block_sum(sg) / width;
    float mean_gx = block_sum(sgx) / width;
    ROW_LOOP(j) {
        float g = dy[j] * w[j], xh = (xr[j] - mu) * rs;
        dx[row * width + j] = rs * (g - mean_g - xh * mean_gx);
    }
}

/* dw += sum_r dy * xhat; db += sum_r dy (db may be null). */
extern "C" __global__ void layernorm_backward_dw(const float* dout, const float* x, const float* mean, const float* rstd,
                                                 float* dw, float* db, int rows, int width) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    float sw = 0.0f, sb = 0.0f;
    if (col < width) COLUMN_ROWS(r, rows) {
        i64 at = (i64)r * width + col;
        float dy = dout[at];
        sw += dy * (x[at] - mean[r]) * rstd[r];
        sb += dy;
    }
    column_accumulate(sw, dw, col, width);
    if (db) column_accumulate(sb, db, col, width);
}

extern "C" __global__ void rmsnorm_forward(const float* x, const float* w, float eps, float* out, float* rstd, int width) {
    i64 row = blockIdx.x;
    const float* xr = x + row * width;
    float s = 0.0f;
    ROW_LOOP(j) s += xr[j] * xr[j];
    float rs = 1.0f / sqrtf(block_sum(s) / width + eps);
    ROW_LOOP(j) out[row * width + j] = xr[j] * rs * w[j];
    if (threadIdx.x == 0) rstd[row] = rs;
}

extern "C" __global__ void rmsnorm_backward_dx(const float* dout, const float* x, const float* w, const float* rstd,
                                               float* dx, int width) {
    i64 row = blockIdx.x;
    const float* xr = x + row * width;
    const float* dy = dout + row * width;
    float rs = rstd[row];
    float s = 0.0f;
    ROW_LOOP(j) s += dy[j] * w[j] * xr[j];
    float coef = block_sum(s) * rs * rs * rs / width;
    ROW_LOOP(j) dx[row * width + j] = dy[j] * w[j] * rs - xr[j] * coef;
}

extern "C" __global__ void rmsnorm_backward_dw(const float* dout, const float* x, const float* rstd, float* dw,
                                               int rows, int width) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    float sw = 0.0f;
    if (col < width) COLUMN_ROWS(r, rows) {
        i64 at = (i64)r * width + col;
        sw += dout[at] * x[at] * rstd[r];
    }
    column_accumulate(sw, dw, col, width);
}
"#;

/// Rows of `x` for a norm of `width`, with the buffer sizes the CPU engine checks.
fn rows_of(what: &str, x: &CudaBuf, width: usize) -> usize {
    assert!(width > 0 && x.len().is_multiple_of(width), "{what}: {} elements are not rows of {width}", x.len());
    x.len() / width
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    dev: &Inner,
    x: &CudaBuf,
    weight: &CudaBuf,
    bias: Option<&CudaBuf>,
    eps: f32,
    out: &mut CudaBuf,
    mean: &mut CudaBuf,
    rstd: &mut CudaBuf,
) {
    let width = weight.len();
    let rows = rows_of("layernorm", x, width);
    assert!(out.len() == x.len() && mean.len() >= rows && rstd.len() >= rows, "layernorm: buffer sizes");
    if let Some(b) = bias {
        assert_eq!(b.len(), width, "layernorm: bias length");
    }
    if rows == 0 {
        return;
    }
    let (xp, w, b, o, m, r, wd) =
        (x.addr(), weight.addr(), bias.map_or(0, |b| b.addr()), out.addr(), mean.addr(), rstd.addr(), width as i32);
    launch!(dev, FAMILY, "layernorm_forward", launch::rows(rows, width), xp, w, b, eps, o, m, r, wd);
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dev: &Inner,
    dout: &CudaBuf,
    x: &CudaBuf,
    weight: &CudaBuf,
    mean: &CudaBuf,
    rstd: &CudaBuf,
    dx: &mut CudaBuf,
    dweight: &mut CudaBuf,
    dbias: Option<&mut CudaBuf>,
) {
    let width = weight.len();
    let rows = rows_of("layernorm backward", x, width);
    assert!(dout.len() == x.len() && dx.len() == x.len(), "layernorm backward: buffer sizes");
    assert!(mean.len() >= rows && rstd.len() >= rows && dweight.len() == width, "layernorm backward: buffer sizes");
    if rows == 0 {
        return;
    }
    let (d, xp, w, m, r, g, wd) =
        (dout.addr(), x.addr(), weight.addr(), mean.addr(), rstd.addr(), dx.addr(), width as i32);
    launch!(dev, FAMILY, "layernorm_backward_dx", launch::rows(rows, width), d, xp, w, m, r, g, wd);
    let (dw, db, rw) = (dweight.addr(), dbias.map_or(0, |b| b.addr()), rows as i32);
    launch!(dev, FAMILY, "layernorm_backward_dw", launch::columns(rows, width), d, xp, m, r, dw, db, rw, wd);
}

pub fn rmsnorm_forward(dev: &Inner, x: &CudaBuf, weight: &CudaBuf, eps: f32, out: &mut CudaBuf, rstd: &mut CudaBuf) {
    let width = weight.len();
    let rows = rows_of("rmsnorm", x, width);
    assert!(out.len() == x.len() && rstd.len() >= rows, "rmsnorm: buffer sizes");
    if rows == 0 {
        return;
    }
    let (xp, w, o, r, wd) = (x.addr(), weight.addr(), out.addr(), rstd.addr(), width as i32);
    launch!(dev, FAMILY, "rmsnorm_forward", launch::rows(rows, width), xp, w, eps, o, r, wd);
}

pub fn rmsnorm_backward(
    dev: &Inner,
    dout: &CudaBuf,
    x: &CudaBuf,
    weight: &CudaBuf,
    rstd: &CudaBuf,
    dx: &mut CudaBuf,
    dweight: &mut CudaBuf,
) {
    let width = weight.len();
    let rows = rows_of("rmsnorm backward", x, width);
    assert!(dout.len() == x.len() && dx.len() == x.len(), "rmsnorm backward: buffer sizes");
    assert!(rstd.len() >= rows && dweight.len() == width, "rmsnorm backward: buffer sizes");
    if rows == 0 {
        return;
    }
    let (d, xp, w, r, g, wd) = (dout.addr(), x.addr(), weight.addr(), rstd.addr(), dx.addr(), width as i32);
    launch!(dev, FAMILY, "rmsnorm_backward_dx", launch::rows(rows, width), d, xp, w, r, g, wd);
    let (dw, rw) = (dweight.addr(), rows as i32);
    launch!(dev, FAMILY, "rmsnorm_backward_dw", launch::columns(rows, width), d, xp, r, dw, rw, wd);
}
