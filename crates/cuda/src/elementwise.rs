//! Elementwise kernels, bias, row gather/scatter, the global squared norm and the f32 -> bf16 cast
//! of the bf16 GEMM path.

use super::buf::CudaBuf;
use super::compile::Family;
use super::launch::{self, launch};
use super::Inner;

pub const FAMILY: Family = Family {
    name: "elementwise",
    src: SRC,
    kernels: &[
        "fill",
        "add",
        "add_assign",
        "scale",
        "add_bias",
        "bias_backward",
        "sum_squares",
        "gather_rows",
        "scatter_rows",
        "zero_rows",
        "cast_bf16",
    ],
};

const SRC: &str = r#"
extern "C" __global__ void fill(float* x, i64 n, float v) {
    GRID_STRIDE(i, n) x[i] = v;
}

extern "C" __global__ void add(const float* a, const float* b, float* out, i64 n) {
    GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

extern "C" __global__ void add_assign(float* acc, const float* x, i64 n) {
    GRID_STRIDE(i, n) acc[i] += x[i];
}

extern "C" __global__ void scale(float* x, i64 n, float s) {
    GRID_STRIDE(i, n) x[i] *= s;
}

extern "C" __global__ void add_bias(float* y, const float* bias, i64 n, int width) {
    GRID_STRIDE(i, n) y[i] += bias[i % width];
}

extern "C" __global__ void bias_backward(const float* dy, float* dbias, int rows, int width) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    float s = 0.0f;
    if (col < width) COLUMN_ROWS(r, rows) s += dy[(i64)r * width + col];
    column_accumulate(s, dbias, col, width);
}

/* out[0] += sum x^2 in f64 (one atomic per block). */
extern "C" __global__ void sum_squares(const float* x, i64 n, double* out) {
    __shared__ double part[32];
    double s = 0.0;
    GRID_STRIDE(i, n) { double v = x[i]; s += v * v; }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = s;
    __syncthreads();
    if (warp == 0) {
        s = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) atomicAdd(out, s);
    }
}

extern "C" __global__ void gather_rows(const float* src, const i64* rows, float* dst, i64 n, int width) {
    GRID_STRIDE(i, n) dst[i] = src[rows[i / width] * width + i % width];
}

extern "C" __global__ void scatter_rows(const float* src, const i64* rows, float* dst, i64 n, int width) {
    GRID_STRIDE(i, n) dst[rows[i / width] * width + i % width] = src[i];
}

extern "C" __global__ void zero_rows(float* buf, const i64* rows, i64 n, int width) {
    GRID_STRIDE(i, n) buf[rows[i / width] * width + i % width] = 0.0f;
}

extern "C" __global__ void cast_bf16(const float* x, u16* y, i64 n) {
    GRID_STRIDE(i, n) y[i] = f32_to_bf16(x[i]);
}
"#;

fn same_len(what: &str, a: &CudaBuf, b: &CudaBuf) {
    assert_eq!(a.len(), b.len(), "{what}: length mismatch");
}

/// `width` of a `[rows, width]` buffer of `len` elements, checked.
pub fn width_of(what: &str, len: usize, rows: usize) -> usize {
    let width = len / rows.max(1);
    assert_eq!(len, rows * width, "{what}: {len} elements are not {rows} rows");
    width
}

pub fn fill(dev: &Inner, buf: &mut CudaBuf, v: f32) {
    let (x, n) = (buf.addr(), buf.len() as i64);
    if n > 0 {
        launch!(dev, FAMILY, "fill", launch::elementwise(n as usize), x, n, v);
    }
}

pub fn add(dev: &Inner, a: &CudaBuf, b: &CudaBuf, out: &mut CudaBuf) {
    same_len("add", a, out);
    same_len("add", b, out);
    let (a, b, o, n) = (a.addr(), b.addr(), out.addr(), out.len() as i64);
    if n > 0 {
        launch!(dev, FAMILY, "add", launch::elementwise(n as usize), a, b, o, n);
    }
}

pub fn add_assign(dev: &Inner, acc: &mut CudaBuf, x: &CudaBuf) {
    same_len("add_assign", acc, x);
    let (a, x, n) = (acc.addr(), x.addr(), acc.len() as i64);
    if n > 0 {
        launch!(dev, FAMILY, "add_assign", launch::elementwise(n as usize), a, x, n);
    }
}

pub fn scale(dev: &Inner, buf: &mut CudaBuf, s: f32) {
    let (x, n) = (buf.addr(), buf.len() as i64);
    if n > 0 {
        launch!(dev, FAMILY, "scale", launch::elementwise(n as usize), x, n, s);
    }
}

pub fn add_bias(dev: &Inner, y: &mut CudaBuf, bias: &CudaBuf) {
    let width = bias.len();
    assert!(width > 0 && y.len().is_multiple_of(width), "add_bias: {} elements are not rows of {width}", y.len());
    let (yp, b, n, w) = (y.addr(), bias.addr(), y.len() as i64, width as i32);
    if n > 0 {
        launch!(dev, FAMILY, "add_bias", launch::elementwise(n as usize), yp, b, n, w);
    }
}

pub fn bias_backward(dev: &Inner, dy: &CudaBuf, dbias: &mut CudaBuf) {
    let width = dbias.len();
    assert!(
        width > 0 && dy.len().is_multiple_of(width),
        "bias_backward: {} elements are not rows of {width}",
        dy.len()
    );
    let rows = dy.len() / width;
    let (d, db, r, w) = (dy.addr(), dbias.addr(), rows as i32, width as i32);
    launch!(dev, FAMILY, "bias_backward", launch::columns(rows, width), d, db, r, w);
}

pub fn sum_squares(dev: &Inner, bufs: &[&CudaBuf]) -> f64 {
    let acc = dev.temp_bytes(8);
    dev.memset_zero(acc.addr, 8);
    let out = acc.addr;
    for buf in bufs {
        let (x, n) = (buf.addr(), buf.len() as i64);
        if n > 0 {
            launch!(dev, FAMILY, "sum_squares", launch::elementwise(n as usize), x, n, out);
        }
    }
    let mut host = [0.0f64];
    dev.download_raw(acc.addr, &mut host);
    host[0]
}

/// Row indices as the kernels' `i64`, checked against the `capacity` rows of the other buffer.
fn row_indices(what: &str, rows: &[usize], capacity: usize) -> Vec<i64> {
    rows.iter()
        .map(|&r| {
            assert!(r < capacity, "{what}: row {r} out of {capacity}");
            r as i64
        })
        .collect()
}

pub fn gather_rows(dev: &Inner, src: &CudaBuf, rows: &[usize], dst: &mut CudaBuf) {
    let width = width_of("gather_rows: dst", dst.len(), rows.len());
    if width == 0 || rows.is_empty() {
        return;
    }
    let idx = dev.upload_temp(&row_indices("gather_rows", rows, src.len() / width));
    let (s, i, d, n, w) = (src.addr(), idx.addr, dst.addr(), dst.len() as i64, width as i32);
    launch!(dev, FAMILY, "gather_rows", launch::elementwise(n as usize), s, i, d, n, w);
}

pub fn scatter_rows(dev: &Inner, src: &CudaBuf, rows: &[usize], dst: &mut CudaBuf) {
    let width = width_of("scatter_rows: src", src.len(), rows.len());
    if width == 0 || rows.is_empty() {
        return;
    }
    let idx = dev.upload_temp(&row_indices("scatter_rows", rows, dst.len() / width));
    let (s, i, d, n, w) = (src.addr(), idx.addr, dst.addr(), src.len() as i64, width as i32);
    launch!(dev, FAMILY, "scatter_rows", launch::elementwise(n as usize), s, i, d, n, w);
}

pub fn zero_rows(dev: &Inner, buf: &mut CudaBuf, rows: &[usize], width: usize) {
    if width == 0 || rows.is_empty() {
        return;
    }
    let idx = dev.upload_temp(&row_indices("zero_rows", rows, buf.len() / width));
    let (b, i, n, w) = (buf.addr(), idx.addr, (rows.len() * width) as i64, width as i32);
    launch!(dev, FAMILY, "zero_rows", launch::elementwise(n as usize), b, i, n, w);
}

/// `n` f32 at `src` as bf16 at `dst` (2 bytes each).
pub fn cast_bf16(dev: &Inner, src: u64, dst: u64, n: usize) {
    let n = n as i64;
    if n > 0 {
        launch!(dev, FAMILY, "cast_bf16", launch::elementwise(n as usize), src, dst, n);
    }
}
