//! The device abstraction: memory plus every kernel the layers call.
//!
//! Layers (in [`crate::layers`]) only orchestrate: they compute shapes and call these methods, so a
//! CUDA backend implements this trait and every layer runs on it unchanged. On the CPU ([`crate::Cpu`])
//! a buffer is a plain `[f32]`; a GPU backend would use a slice-like handle to device memory.
//!
//! Conventions shared by all kernels:
//! - f32, row-major; activations are `[rows, width]` with `rows = batch * seq`.
//! - Kernels that produce parameter gradients *accumulate* into them (gradient accumulation);
//!   kernels that produce input gradients *overwrite* them, unless the name says `accumulate`.
//! - Token ids, targets, loss masks and row indices are host slices: they are small and come from
//!   the data loader.
//! - Parameters, gradients and optimizer state are device buffers too ([`crate::params::ParamStore`],
//!   [`crate::adamw::AdamW`]); the host sees them only at checkpoint save/load, through
//!   [`Device::to_host`] / [`Device::upload_vec`].

use std::borrow::Cow;
use std::ops::{Deref, DerefMut, Range};

/// Shape and scaling of one matrix product `C = alpha * op(A) op(B) + beta * C`.
///
/// `op(A)` is `m x k`, `op(B)` is `k x n`, C is `m x n`. Leading dimensions are the stored row
/// lengths, which lets a kernel address a column block of a wider matrix (e.g. one head).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
}

impl Gemm {
    /// Contiguous operands, `alpha = 1`, `beta = 0` (overwrite C).
    pub fn new(trans_a: bool, trans_b: bool, m: usize, n: usize, k: usize) -> Self {
        let lda = if trans_a { m } else { k };
        let ldb = if trans_b { k } else { n };
        Gemm { trans_a, trans_b, m, n, k, alpha: 1.0, beta: 0.0, lda, ldb, ldc: n }
    }

    /// `beta = 1`: add the product to C (used for gradient accumulation).
    pub fn accumulate(mut self) -> Self {
        self.beta = 1.0;
        self
    }

    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }

    pub fn strides(mut self, lda: usize, ldb: usize, ldc: usize) -> Self {
        self.lda = lda;
        self.ldb = ldb;
        self.ldc = ldc;
        self
    }
}

/// Shape of a multi-head attention call: q, k, v and the output are `[batch * seq, heads * head_dim]`
/// (heads side by side in each row, as PyTorch's `view(b, t, h, hd)` lays them out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
}

impl AttnShape {
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn rows(&self) -> usize {
        self.batch * self.seq
    }

    /// Length of the attention-probability buffer `[batch, heads, seq, seq]`.
    pub fn probs_len(&self) -> usize {
        self.batch * self.heads * self.seq * self.seq
    }

    /// Indices into the `batch * seq` rows of the `cont` positions that continue row `b` from
    /// `starts[b]` on, row by row: where [`Device::attention_continuing`]'s queries sit.
    pub fn continuation_rows(&self, starts: &[usize], cont: usize) -> Vec<usize> {
        starts.iter().enumerate().flat_map(|(b, &start)| (0..cont).map(move |j| b * self.seq + start + j)).collect()
    }
}

/// What a device's attention forward saves for its backward ([`DeviceMemory::saved_attention`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SavedAttention {
    /// The softmax probabilities, `[batch, heads, seq, seq]` (the CPU).
    Probabilities,
    /// FlashAttention-2: only the per-row log-sum-exp, `[batch, heads, seq]`, for the head
    /// dimensions its kernels take; probabilities for the others.
    Flash(FlashHeadDims),
}

/// The head dimensions a device's flash-attention kernels take, reported by the device itself so
/// that planning (and this trait) need not know which backend it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashHeadDims {
    /// `head_dim` must be a multiple of this (the threads sharing one row).
    pub multiple_of: usize,
    pub max: usize,
}

impl FlashHeadDims {
    /// Whether the kernels take `shape`'s head dimension.
    pub fn take(self, shape: AttnShape) -> bool {
        shape.head_dim.is_multiple_of(self.multiple_of) && shape.head_dim <= self.max
    }
}

impl SavedAttention {
    /// Whether attention at `shape` runs the flash kernels.
    pub fn is_flash(self, shape: AttnShape) -> bool {
        matches!(self, SavedAttention::Flash(dims) if dims.take(shape))
    }

    /// Length of the `saved` buffer of attention at `shape`.
    pub fn len(self, shape: AttnShape) -> usize {
        if self.is_flash(shape) {
            shape.batch * shape.heads * shape.seq
        } else {
            shape.probs_len()
        }
    }
}

/// What memory planning (`vlmix_models::memory`) needs to know of a device beyond its free
/// memory. Plain data rather than device calls, so plans can be made, and tested, without the
/// device (a GPU plan on a machine without one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// What attention saves between forward and backward.
    pub saved_attention: SavedAttention,
    /// Workers whose attention backward each keeps its own `[seq, seq]` f32 buffer (the CPU's
    /// threads; 0 on a GPU, whose scratch is per call and freed stream-ordered).
    pub attention_workers: usize,
    /// What [`Device::available_memory`] measures, for messages ("MemAvailable").
    pub available_from: &'static str,
}

/// Which GELU: exact (`erf`) or PyTorch's `approximate="tanh"` (SigLIP's `gelu_pytorch_tanh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluKind {
    Erf,
    Tanh,
}

/// How the z-loss enters one cross-entropy pass over `rows` rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ZLossTerm {
    /// `z * lse_t^2` on each row, weighted by the mask like the cross-entropy.
    Masked(f32),
    /// open_lm's `z * mean(lse)^2`, the mean over all rows (masked ones included), known from a
    /// first pass.
    SquaredMean { z: f32, mean_lse: f32 },
}

/// Result of a cross-entropy call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossStats {
    /// `sum_t mask_t * (CE_t + z * lse_t^2) / sum_t mask_t` (0 when the mask sums to 0).
    pub loss: f32,
    /// `sum_t mask_t * CE_t` without z-loss, for perplexity / bits-per-byte.
    pub nll_sum: f64,
    /// `sum_t mask_t`.
    pub mask_sum: f64,
}

/// Host data seen as a device buffer ([`Device::on_device`]).
pub enum OnDevice<'a, D: Device> {
    Borrowed(&'a D::Buf),
    Owned(D::Owned),
}

impl<D: Device> Deref for OnDevice<'_, D> {
    type Target = D::Buf;

    fn deref(&self) -> &D::Buf {
        match self {
            OnDevice::Borrowed(buf) => buf,
            OnDevice::Owned(owned) => owned,
        }
    }
}

/// The per-step scalars of one AdamW update, computed on the host in PyTorch's float order
/// (f64 Python floats, used as f32) so every device applies the same numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// `-lr / (1 - beta1^t)`.
    pub neg_step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bias_correction2_sqrt: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    /// `1 - lr * weight_decay` for parameters that decay, `None` for the others.
    pub decay: Option<f32>,
}

/// Memory and kernels of one compute device. See the module docs for conventions.
///
/// `Clone` hands a model, its parameter store and its optimizer the same device (on the CPU a
/// zero-sized value; a GPU backend would share a handle to its context and stream).
pub trait Device: Clone + Send + Sync {
    /// Borrowed device memory (`[f32]` on the CPU).
    type Buf: ?Sized + Send + Sync;
    /// Owned device memory (`Vec<f32>` on the CPU).
    type Owned: Deref<Target = Self::Buf> + DerefMut + Send + Sync;

    // ---- memory ----
    /// What memory plans count for this device.
    fn memory(&self) -> DeviceMemory;
    /// Bytes this process may still allocate where the buffers live: the machine's MemAvailable
    /// (or a lower cgroup limit) on the CPU, the driver's free memory on a GPU. What memory plans
    /// are made against.
    fn available_memory(&self) -> anyhow::Result<u64>;
    fn zeros(&self, len: usize) -> Self::Owned;
    fn upload(&self, host: &[f32]) -> Self::Owned;
    fn download(&self, buf: &Self::Buf, host: &mut [f32]);
    fn len(&self, buf: &Self::Buf) -> usize;
    fn slice<'a>(&self, buf: &'a Self::Buf, range: Range<usize>) -> &'a Self::Buf;
    fn slice_mut<'a>(&self, buf: &'a mut Self::Buf, range: Range<usize>) -> &'a mut Self::Buf;
    fn split_at_mut<'a>(&self, buf: &'a mut Self::Buf, mid: usize) -> (&'a mut Self::Buf, &'a mut Self::Buf);
    fn fill(&self, buf: &mut Self::Buf, value: f32);
    fn copy(&self, src: &Self::Buf, dst: &mut Self::Buf);
    /// Waits until every queued kernel has finished (a no-op where kernels run synchronously, as on
    /// the CPU); for timing.
    fn synchronize(&self) {}
    /// Overwrites `buf` with `host` (same length).
    fn upload_into(&self, host: &[f32], buf: &mut Self::Buf) {
        self.copy(&self.upload(host), buf);
    }
    /// Device memory holding `host`, which is consumed (the CPU keeps the vector: no copy).
    fn upload_vec(&self, host: Vec<f32>) -> Self::Owned {
        self.upload(&host)
    }
    /// The contents of `buf` on the host: borrowed where device memory is host memory (CPU),
    /// downloaded otherwise. For checkpoints and other reads outside the hot path.
    fn to_host<'a>(&self, buf: &'a Self::Buf) -> Cow<'a, [f32]> {
        let mut host = vec![0.0; self.len(buf)];
        self.download(buf, &mut host);
        Cow::Owned(host)
    }
    /// `host` as a device buffer: borrowed where device memory is host memory (CPU: no copy),
    /// uploaded otherwise. For inputs that arrive on the host each step (a VLM's cached features).
    fn on_device<'a>(&self, host: &'a [f32]) -> OnDevice<'a, Self> {
        OnDevice::Owned(self.upload(host))
    }

    // ---- rows (width = len(dst) / rows.len() resp. len(src) / rows.len(); no `rows`: no-op) ----
    /// `dst[i, :] = src[rows[i], :]`; `dst` is `[rows.len(), width]`, `src` any number of rows of
    /// `width`. Overwrites `dst`.
    fn gather_rows(&self, src: &Self::Buf, rows: &[usize], dst: &mut Self::Buf);
    /// `dst[rows[i], :] = src[i, :]`; `src` is `[rows.len(), width]`. Other rows of `dst` keep
    /// their values.
    fn scatter_rows(&self, src: &Self::Buf, rows: &[usize], dst: &mut Self::Buf);
    /// `buf[rows[i], :] = 0` for rows of `width`.
    fn zero_rows(&self, buf: &mut Self::Buf, rows: &[usize], width: usize);

    // ---- matrix products ----
    fn gemm(&self, g: Gemm, a: &Self::Buf, b: &Self::Buf, c: &mut Self::Buf);

    // ---- elementwise ----
    /// `out = a + b`.
    fn add(&self, a: &Self::Buf, b: &Self::Buf, out: &mut Self::Buf);
    /// `acc += x`.
    fn add_assign(&self, acc: &mut Self::Buf, x: &Self::Buf);
    /// `y[r, :] += bias` for every row of `y` (`[rows, bias.len()]`).
    fn add_bias(&self, y: &mut Self::Buf, bias: &Self::Buf);
    /// `dbias += sum_r dy[r, :]`.
    fn bias_backward(&self, dy: &Self::Buf, dbias: &mut Self::Buf);
    /// `x *= s` (gradient clipping).
    fn scale(&self, x: &mut Self::Buf, s: f32);
    /// `sum_i x_i^2` over all elements of all `bufs`, accumulated in f64 and returned to the host
    /// (the global gradient norm; one call so a GPU synchronises once). CPU order: each buffer's
    /// sum, then the buffers' sums in order.
    fn sum_squares(&self, bufs: &[&Self::Buf]) -> f64;

    // ---- optimizer ----
    /// One AdamW update of one parameter tensor, as `torch.optim.AdamW` (single-tensor path):
    /// `p *= decay` (when set); `m += (1 - beta1) * (g - m)`; `v = beta2 * v + (1 - beta2) * g^2`;
    /// `p += neg_step_size * m / (sqrt(v) / bias_correction2_sqrt + eps)`. Updates `param`,
    /// `exp_avg` (`m`) and `exp_avg_sq` (`v`) in place; all four buffers have the same length.
    fn adamw_step(
        &self,
        step: &AdamWStep,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        exp_avg: &mut Self::Buf,
        exp_avg_sq: &mut Self::Buf,
    );

    // ---- embedding ----
    /// `out[r, :] = table[ids[r], :]`. Ids must be `< vocab` (layers check this on the host).
    fn embedding_forward(&self, ids: &[u32], table: &Self::Buf, out: &mut Self::Buf);
    /// `dtable[ids[r], :] += dout[r, :]`.
    fn embedding_backward(&self, ids: &[u32], dout: &Self::Buf, dtable: &mut Self::Buf);

    // ---- normalisation (over the last dimension, width = weight.len()) ----
    /// LayerNorm with gain and optional bias. Saves per-row `mean` and `rstd` for the backward.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(
        &self,
        x: &Self::Buf,
        weight: &Self::Buf,
        bias: Option<&Self::Buf>,
        eps: f32,
        out: &mut Self::Buf,
        mean: &mut Self::Buf,
        rstd: &mut Self::Buf,
    );
    /// Writes `dx`; accumulates `dweight` and `dbias`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        dout: &Self::Buf,
        x: &Self::Buf,
        weight: &Self::Buf,
        mean: &Self::Buf,
        rstd: &Self::Buf,
        dx: &mut Self::Buf,
        dweight: &mut Self::Buf,
        dbias: Option<&mut Self::Buf>,
    );
    /// RMSNorm `x * rsqrt(mean(x^2) + eps) * weight`. Saves per-row `rstd`.
    fn rmsnorm_forward(&self, x: &Self::Buf, weight: &Self::Buf, eps: f32, out: &mut Self::Buf, rstd: &mut Self::Buf);
    fn rmsnorm_backward(
        &self,
        dout: &Self::Buf,
        x: &Self::Buf,
        weight: &Self::Buf,
        rstd: &Self::Buf,
        dx: &mut Self::Buf,
        dweight: &mut Self::Buf,
    );

    // ---- attention ----
    /// Rotary embedding in place on `x` (`[batch*seq, heads*head_dim]`), GPT-NeoX rotate-half layout.
    /// `cos_sin` is the table `[seq, head_dim]`: cos of the `head_dim/2` frequencies, then their sin.
    /// `inverse` rotates by the negative angle, which is exactly the backward of the forward rotation.
    fn rope(&self, x: &mut Self::Buf, cos_sin: &Self::Buf, shape: AttnShape, inverse: bool);
    /// Length of the `saved` buffer attention at `shape` needs: `[batch, heads, seq, seq]`
    /// probabilities on the CPU, `[batch, heads, seq]` log-sum-exps where flash attention runs.
    /// What a layer allocates and a memory plan counts ([`DeviceMemory::saved_attention`]).
    fn attention_saved_len(&self, shape: AttnShape) -> usize {
        self.memory().saved_attention.len(shape)
    }
    /// Scaled dot-product attention (scale `1/sqrt(head_dim)`), writing `out` and keeping in
    /// `saved` (at least [`Device::attention_saved_len`] long) what the backward needs.
    fn attention_forward(
        &self,
        shape: AttnShape,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        saved: &mut Self::Buf,
        out: &mut Self::Buf,
    );
    /// Causal attention for rows that continue cached prefixes: row `b` of `q`, `k`, `v`
    /// (`[shape.batch * shape.seq, width]`, keys and values of the prefix included) is scored only
    /// at its `cont` queries from position `starts[b]` on; `out` (`[shape.batch * cont, width]`) gets
    /// their outputs, each what [`attention_forward`](Device::attention_forward) gives that
    /// position. This general path runs whole rows and keeps those positions; the CPU computes
    /// only the continuation's queries (scoring answers after a long prompt).
    #[allow(clippy::too_many_arguments)]
    fn attention_continuing(
        &self,
        shape: AttnShape,
        starts: &[usize],
        cont: usize,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &mut Self::Buf,
    ) {
        let mut saved = self.zeros(self.attention_saved_len(shape));
        let mut whole = self.zeros(shape.rows() * shape.width());
        self.attention_forward(shape, q, k, v, &mut saved, &mut whole);
        self.gather_rows(&whole, &shape.continuation_rows(starts, cont), out);
    }
    /// Writes `dq`, `dk`, `dv` from the forward's inputs, its `saved` buffer and its output `out`
    /// (flash attention recomputes the probabilities from the log-sum-exp and needs `out` for the
    /// softmax gradient's row sums; the CPU's saved probabilities make it unused there).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        shape: AttnShape,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &Self::Buf,
        saved: &Self::Buf,
        dout: &Self::Buf,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
    );

    // ---- activations ----
    /// `out = silu(gate) * up` where `gate_up` rows are `[gate (hidden) | up (hidden)]`.
    fn swiglu_forward(&self, hidden: usize, gate_up: &Self::Buf, out: &mut Self::Buf);
    /// Writes `dgate_up`.
    fn swiglu_backward(&self, hidden: usize, gate_up: &Self::Buf, dout: &Self::Buf, dgate_up: &mut Self::Buf);
    fn gelu_forward(&self, kind: GeluKind, x: &Self::Buf, out: &mut Self::Buf);
    /// Writes `dx`.
    fn gelu_backward(&self, kind: GeluKind, x: &Self::Buf, dout: &Self::Buf, dx: &mut Self::Buf);

    // ---- loss ----
    /// Masked softmax cross-entropy with optional z-loss (`ZLossTerm`) over `logits` (`[rows, vocab]`).
    ///
    /// Writes per-row plain NLL (`CE_t`, no z-loss, regardless of the mask) into `nll`. When
    /// `grad_scale` is `Some(s)`, overwrites `logits` in place with `s * dloss/dlogits`
    /// (saving a `[rows, vocab]` buffer); with `None` the logits are left untouched.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        logits: &mut Self::Buf,
        vocab: usize,
        targets: &[u32],
        mask: &[f32],
        z_loss: ZLossTerm,
        grad_scale: Option<f32>,
        nll: &mut Self::Buf,
    ) -> LossStats;
}

/// Bytes of `bytes` as GiB with two decimals, the unit of every memory message.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Refuses to allocate `bytes` on `dev` for `what` when the device does not have them: an error
/// with the numbers instead of an allocation abort.
pub fn ensure_available<D: Device>(dev: &D, what: &str, bytes: u64) -> anyhow::Result<()> {
    let available = dev.available_memory()?;
    if bytes > available {
        anyhow::bail!("{what} needs {}, {} available ({})", gib(bytes), gib(available), dev.memory().available_from);
    }
    Ok(())
}
