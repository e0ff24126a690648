//! Flash-style attention (FlashAttention-2's algorithm, f32 on CUDA cores): the forward keeps only
//! the per-row log-sum-exp (`[batch, heads, seq]`) instead of `[batch, heads, seq, seq]`
//! probabilities, and the backward recomputes them tile by tile.
//!
//! `Cuda`'s trait attention for every shape these kernels take ([`supports`]; `SavedAttention::Flash`
//! sizes the saved buffer), the plain path (`attention.rs`) for the others; `vlmix-cuda-check
//! attention` checks one against the other on a GPU. Tiles: 32 query rows x 32 keys; four threads
//! share one row (or key), each owning a quarter of the head dimension, so `head_dim` must be a
//! multiple of 4 and at most 128.

use super::buf::CudaBuf;
use super::compile::Family;
use super::launch::launch;
use super::Inner;
use cudarc::driver::LaunchConfig;
use vlmix_engine::device::{AttnShape, FlashHeadDims};

pub const FAMILY: Family = Family {
    name: "flash",
    src: SRC,
    kernels: &["flash_forward", "flash_delta", "flash_backward_dkdv", "flash_backward_dq"],
};

/// Rows (or keys) per tile, threads per row, and the largest head dimension.
pub const TILE: usize = 32;
pub const THREADS_PER_ROW: usize = 4;
pub const MAX_HEAD_DIM: usize = 128;

const SRC: &str = r#"
#define TILE 32
#define TPR 4
#define MAX_HD 128
#define MAX_PART (MAX_HD / TPR)

/* Sum over the TPR threads that share a row (consecutive lanes). */
__device__ __forceinline__ float row_sum(float s) {
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    s += __shfl_xor_sync(0xffffffffu, s, 2);
    return s;
}

/* q, k, v, out: [batch*seq, heads*hd]; lse: [batch, heads, seq]. Grid (ceil(seq/TILE), batch*heads),
   block TILE*TPR threads. */
extern "C" __global__ void flash_forward(const float* q, const float* k, const float* v, float* out, float* lse,
                                         int seq, int heads, int hd, int causal, float scale) {
    __shared__ float ks[TILE][MAX_HD];
    __shared__ float vs[TILE][MAX_HD];
    int bh = blockIdx.y, b = bh / heads, h = bh % heads, width = heads * hd;
    i64 base = (i64)b * seq * width + h * hd;
    int r = blockIdx.x * TILE + threadIdx.x / TPR;
    int np = hd / TPR, d0 = (threadIdx.x % TPR) * np;
    bool live = r < seq;
    float qr[MAX_PART], acc[MAX_PART];
    for (int i = 0; i < MAX_PART; i++) {
        qr[i] = (live && i < np) ? q[base + (i64)r * width + d0 + i] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    int last = min((int)(blockIdx.x + 1) * TILE, seq) - 1;
    int kend = causal ? last + 1 : seq;
    for (int c0 = 0; c0 < kend; c0 += TILE) {
        __syncthreads();
        for (int i = threadIdx.x; i < TILE * hd; i += blockDim.x) {
            int c = i / hd, d = i % hd;
            bool ok = c0 + c < seq;
            ks[c][d] = ok ? k[base + (i64)(c0 + c) * width + d] : 0.0f;
            vs[c][d] = ok ? v[base + (i64)(c0 + c) * width + d] : 0.0f;
        }
        __syncthreads();
        float sv[TILE];
        float tmax = NEG_INF;
        for (int c = 0; c < TILE; c++) {
            float s = 0.0f;
            for (int i = 0; i < MAX_PART; i++) if (i < np) s += qr[i] * ks[c][d0 + i];
            s = row_sum(s) * scale;
            bool visible = live && c0 + c < kend && (!causal || c0 + c <= r);
            sv[c] = visible ? s : NEG_INF;
            tmax = fmaxf(tmax, sv[c]);
        }
        if (tmax > NEG_INF) {
            float m_new = fmaxf(m, tmax), corr = expf(m - m_new);
            l *= corr;
            for (int i = 0; i < MAX_PART; i++) acc[i] *= corr;
            for (int c = 0; c < TILE; c++) {
                float p = expf(sv[c] - m_new);
                l += p;
                for (int i = 0; i < MAX_PART; i++) if (i < np) acc[i] += p * vs[c][d0 + i];
            }
            m = m_new;
        }
    }
    if (live) {
        for (int i = 0; i < MAX_PART; i++) if (i < np) out[base + (i64)r * width + d0 + i] = acc[i] / l;
        if (threadIdx.x % TPR == 0) lse[(i64)bh * seq + r] = m + logf(l);
    }
}

/* delta[bh, r] = dO_r . O_r over the head's dimensions (the softmax backward's row sum). */
extern "C" __global__ void flash_delta(const float* dout, const float* out, float* delta, int batch, int seq, int heads, int hd) {
    i64 n = (i64)batch * heads * seq;
    int width = heads * hd;
    GRID_STRIDE(i, n) {
        int r = (int)(i % seq);
        i64 bh = i / seq;
        int b = (int)(bh / heads), h = (int)(bh % heads);
        i64 at = ((i64)b * seq + r) * width + h * hd;
        float s = 0.0f;
        for (int d = 0; d < hd; d++) s += dout[at + d] * out[at + d];
        delta[i] = s;
    }
}

/* dK, dV for one tile of keys, looping over query tiles (overwrites dk, dv). */
extern "C" __global__ void flash_backward_dkdv(const float* q, const float* k, const float* v, const float* dout,
                                               const float* lse, const float* delta, float* dk, float* dv,
                                               int seq, int heads, int hd, int causal, float scale) {
    __shared__ float qs[TILE][MAX_HD];
    __shared__ float dos[TILE][MAX_HD];
    __shared__ float lse_s[TILE], delta_s[TILE];
    int bh = blockIdx.y, b = bh / heads, h = bh % heads, width = heads * hd;
    i64 base = (i64)b * seq * width + h * hd;
    int c = blockIdx.x * TILE + threadIdx.x / TPR;
    int np = hd / TPR, d0 = (threadIdx.x % TPR) * np;
    bool live = c < seq;
    float kc[MAX_PART], vc[MAX_PART], dk_acc[MAX_PART], dv_acc[MAX_PART];
    for (int i = 0; i < MAX_PART; i++) {
        kc[i] = (live && i < np) ? k[base + (i64)c * width + d0 + i] : 0.0f;
        vc[i] = (live && i < np) ? v[base + (i64)c * width + d0 + i] : 0.0f;
        dk_acc[i] = 0.0f;
        dv_acc[i] = 0.0f;
    }
    int rstart = causal ? blockIdx.x * TILE : 0;
    for (int r0 = rstart; r0 < seq; r0 += TILE) {
        __syncthreads();
        for (int i = threadIdx.x; i < TILE * hd; i += blockDim.x) {
            int r = i / hd, d = i % hd;
            bool ok = r0 + r < seq;
            qs[r][d] = ok ? q[base + (i64)(r0 + r) * width + d] : 0.0f;
            dos[r][d] = ok ? dout[base + (i64)(r0 + r) * width + d] : 0.0f;
        }
        if (threadIdx.x < TILE) {
            bool ok = r0 + threadIdx.x < seq;
            lse_s[threadIdx.x] = ok ? lse[(i64)bh * seq + r0 + threadIdx.x] : 0.0f;
            delta_s[threadIdx.x] = ok ? delta[(i64)bh * seq + r0 + threadIdx.x] : 0.0f;
        }
        __syncthreads();
        for (int r = 0; r < TILE; r++) {
            float s = 0.0f, dp = 0.0f;
            for (int i = 0; i < MAX_PART; i++) if (i < np) { s += qs[r][d0 + i] * kc[i]; dp += dos[r][d0 + i] * vc[i]; }
            s = row_sum(s) * scale;
            dp = row_sum(dp);
            bool visible = live && r0 + r < seq && (!causal || c <= r0 + r);
            float p = visible ? expf(s - lse_s[r]) : 0.0f;
            float ds = p * (dp - delta_s[r]) * scale;
            for (int i = 0; i < MAX_PART; i++) if (i < np) { dv_acc[i] += p * dos[r][d0 + i]; dk_acc[i] += ds * qs[r][d0 + i]; }
        }
    }
    if (live) {
        for (int i = 0; i < MAX_PART; i++) if (i < np) {
            dk[base + (i64)c * width + d0 + i] = dk_acc[i];
            dv[base + (i64)c * width + d0 + i] = dv_acc[i];
        }
    }
}

/* dQ for one tile of query rows, looping over key tiles (overwrites dq). */
extern "C" __global__ void flash_backward_dq(const float* q, const float* k, const float* v, const float* dout,
                                             const float* lse, const float* delta, float* dq,
                                             int seq, int heads, int hd, int causal, float scale) {
    __shared__ float ks[TILE][MAX_HD];
    __shared__ float vs[TILE][MAX_HD];
    int bh = blockIdx.y, b = bh / heads, h = bh % heads, width = heads * hd;
    i64 base = (i64)b * seq * width + h * hd;
    int r = blockIdx.x * TILE + threadIdx.x / TPR;
    int np = hd / TPR, d0 = (threadIdx.x % TPR) * np;
    bool live = r < seq;
    float qr[MAX_PART], dor[MAX_PART], acc[MAX_PART];
    for (int i = 0; i < MAX_PART; i++) {
        qr[i] = (live && i < np) ? q[base + (i64)r * width + d0 + i] : 0.0f;
        dor[i] = (live && i < np) ? dout[base + (i64)r * width + d0 + i] : 0.0f;
        acc[i] = 0.0f;
    }
    float lse_r = live ? lse[(i64)bh * seq + r] : 0.0f;
    float delta_r = live ? delta[(i64)bh * seq + r] : 0.0f;
    int last = min((int)(blockIdx.x + 1) * TILE, seq) - 1;
    int kend = causal ? last + 1 : seq;
    for (int c0 = 0; c0 < kend; c0 += TILE) {
        __syncthreads();
        for (int i = threadIdx.x; i < TILE * hd; i += blockDim.x) {
            int c = i / hd, d = i % hd;
            bool ok = c0 + c < seq;
            ks[c][d] = ok ? k[base + (i64)(c0 + c) * width + d] : 0.0f;
            vs[c][d] = ok ? v[base + (i64)(c0 + c) * width + d] : 0.0f;
        }
        __syncthreads();
        for (int c = 0; c < TILE; c++) {
            float s = 0.0f, dp = 0.0f;
            for (int i = 0; i < MAX_PART; i++) if (i < np) { s += qr[i] * ks[c][d0 + i]; dp += dor[i] * vs[c][d0 + i]; }
            s = row_sum(s) * scale;
            dp = row_sum(dp);
            bool visible = live && c0 + c < kend && (!causal || c0 + c <= r);
            float p = visible ? expf(s - lse_r) : 0.0f;
            float ds = p * (dp - delta_r) * scale;
            for (int i = 0; i < MAX_PART; i++) if (i < np) acc[i] += ds * ks[c][d0 + i];
        }
    }
    if (live) {
        for (int i = 0; i < MAX_PART; i++) if (i < np) dq[base + (i64)r * width + d0 + i] = acc[i];
    }
}
"#;

/// Length of the saved log-sum-exp buffer: `[batch, heads, seq]`.
pub fn lse_len(shape: AttnShape) -> usize {
    shape.batch * shape.heads * shape.seq
}

/// The head dimensions the kernels take: a multiple of [`THREADS_PER_ROW`], at most
/// [`MAX_HEAD_DIM`] (what `Cuda::memory` reports).
pub const HEAD_DIMS: FlashHeadDims = FlashHeadDims { multiple_of: THREADS_PER_ROW, max: MAX_HEAD_DIM };

/// Whether the kernels take `shape`.
pub fn supports(shape: AttnShape) -> bool {
    HEAD_DIMS.take(shape)
}

/// Checks the shapes the kernels support and the buffers' lengths.
pub fn check(shape: AttnShape, bufs: &[(&str, &CudaBuf)], lse: &CudaBuf) {
    let hd = shape.head_dim;
    assert!(
        supports(shape),
        "flash attention: head_dim {hd} must be a multiple of {THREADS_PER_ROW} and at most {MAX_HEAD_DIM}"
    );
    let len = shape.rows() * shape.width();
    for (name, buf) in bufs {
        assert_eq!(buf.len(), len, "flash attention: {name} is not [batch*seq, heads*head_dim] for {shape:?}");
    }
    assert!(lse.len() >= lse_len(shape), "flash attention: lse shorter than batch*heads*seq for {shape:?}");
}

/// One block per (tile of rows, batch x head).
pub fn tiles(shape: AttnShape) -> LaunchConfig {
    let blocks = shape.seq.div_ceil(TILE) as u32;
    let bh = (shape.batch * shape.heads) as u32;
    LaunchConfig { grid_dim: (blocks, bh, 1), block_dim: ((TILE * THREADS_PER_ROW) as u32, 1, 1), shared_mem_bytes: 0 }
}

fn scalars(shape: AttnShape) -> (i32, i32, i32, i32, f32) {
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    (shape.seq as i32, shape.heads as i32, shape.head_dim as i32, shape.causal as i32, scale)
}

pub fn forward(
    dev: &Inner,
    shape: AttnShape,
    q: &CudaBuf,
    k: &CudaBuf,
    v: &CudaBuf,
    lse: &mut CudaBuf,
    out: &mut CudaBuf,
) {
    check(shape, &[("q", q), ("k", k), ("v", v), ("out", out)], lse);
    if shape.rows() == 0 || shape.heads == 0 {
        return;
    }
    let (qp, kp, vp, o, l) = (q.addr(), k.addr(), v.addr(), out.addr(), lse.addr());
    let (seq, heads, hd, causal, scale) = scalars(shape);
    launch!(dev, FAMILY, "flash_forward", tiles(shape), qp, kp, vp, o, l, seq, heads, hd, causal, scale);
}

/// Writes `dq`, `dk`, `dv`; needs the forward's output `out` and log-sum-exp `lse`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dev: &Inner,
    shape: AttnShape,
    q: &CudaBuf,
    k: &CudaBuf,
    v: &CudaBuf,
    out: &CudaBuf,
    lse: &CudaBuf,
    dout: &CudaBuf,
    dq: &mut CudaBuf,
    dk: &mut CudaBuf,
    dv: &mut CudaBuf,
) {
    let bufs = [("q", q), ("k", k), ("v", v), ("out", out), ("dout", dout), ("dq", &*dq), ("dk", &*dk), ("dv", &*dv)];
    check(shape, &bufs, lse);
    if shape.rows() == 0 || shape.heads == 0 {
        return;
    }
    let delta = dev.temp_bytes(4 * lse_len(shape));
    let (d, o, dl, batch) = (dout.addr(), out.addr(), delta.addr, shape.batch as i32);
    let (seq, heads, hd, causal, scale) = scalars(shape);
    let cfg = super::launch::elementwise(lse_len(shape));
    launch!(dev, FAMILY, "flash_delta", cfg, d, o, dl, batch, seq, heads, hd);
    let (qp, kp, vp, l, dkp, dvp, dqp) = (q.addr(), k.addr(), v.addr(), lse.addr(), dk.addr(), dv.addr(), dq.addr());
    let cfg = tiles(shape);
    launch!(dev, FAMILY, "flash_backward_dkdv", cfg, qp, kp, vp, d, l, dl, dkp, dvp, seq, heads, hd, causal, scale);
    launch!(dev, FAMILY, "flash_backward_dq", cfg, qp, kp, vp, d, l, dl, dqp, seq, heads, hd, causal, scale);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_sequence_for_every_head() {
        let shape = AttnShape { batch: 2, seq: 2048, heads: 16, head_dim: 128, causal: true };
        let t = tiles(shape);
        assert_eq!(t.grid_dim, (64, 32, 1));
        assert_eq!(t.block_dim.0, 128);
        assert_eq!(tiles(AttnShape { seq: 33, ..shape }).grid_dim.0, 2);
        assert_eq!(lse_len(shape), 2 * 16 * 2048);
    }

    #[test]
    fn head_dims_the_tiles_cannot_split_take_the_plain_path() {
        let shape = AttnShape { batch: 2, seq: 64, heads: 6, head_dim: 64, causal: true };
        assert!(supports(shape) && supports(AttnShape { head_dim: 128, ..shape }));
        for head_dim in [7, 130, 256] {
            let odd = AttnShape { head_dim, ..shape };
            assert!(!supports(odd));
            assert_eq!(vlmix_engine::SavedAttention::Flash(HEAD_DIMS).len(odd), odd.probs_len());
        }
        assert_eq!(vlmix_engine::SavedAttention::Flash(HEAD_DIMS).len(shape), lse_len(shape));
        assert_eq!(vlmix_engine::SavedAttention::Probabilities.len(shape), shape.probs_len());
    }

    #[test]
    fn the_static_shared_memory_fits_48_kib() {
        // flash_backward_dkdv: two [TILE][MAX_HD] tiles and two [TILE] rows.
        let bytes = 4 * (2 * TILE * MAX_HEAD_DIM + 2 * TILE);
        assert!(bytes <= 48 << 10, "{bytes} bytes");
    }
}
