//! The CUDA device: cuBLASLt for matrix products, NVRTC-compiled kernels for everything else, one
//! stream per device, every library dlopened at run time (cudarc with `dynamic-loading`), so this
//! crate builds, lints and unit-tests on machines without a toolkit or a GPU. The engine's
//! `Device` trait knows nothing of it; `vlmix-device` opens it beside the CPU.
//!
//! - Memory: [`CudaBuf`] / [`CudaVec`] (see `buf.rs` for why a zero-sized-element slice is a
//!   sound `&Device::Buf` for device memory). Allocations are stream-ordered (`cuMemAllocAsync`
//!   from the device's pool, which keeps freed memory), so the scratch a kernel call needs (uploaded
//!   ids, bf16 copies, the attention `dS`) is allocated and freed around it at pool cost. Where the
//!   pool is refused (sandboxed drivers such as gVisor's), plain `cuMemAlloc` / `cuMemFree`.
//! - Kernels: CUDA C per family (`<family>.rs`, mirroring `cpu/<kernel>.rs`), compiled by NVRTC
//!   at first use for the device's `sm_XY` and cached by source hash (`compile.rs`).
//! - Attention: FlashAttention-2 (`flash.rs`, saving per-row log-sum-exps) where its kernels take
//!   the head dimension, the plain path (`attention.rs`, saving probabilities) elsewhere.
//! - Products: cuBLASLt, fp32 compute, plans cached per shape (`gemm.rs`); [`Precision::Bf16`]
//!   rounds the inputs of every product to bf16 (fp32 accumulation, f32 everywhere else).
//! - Synchronisation: kernels queue on the stream; the host waits only where the trait hands
//!   a value back (`download`, `sum_squares`, `cross_entropy`); `VLMIX_CUDA_SYNC=1` waits after
//!   every launch, so an asynchronous fault names its kernel.
//! - Errors: [`Cuda::new`] probes the libraries and returns an error naming what is missing and
//!   the fix; later CUDA failures are bugs or lost devices and panic with the call named, as the
//!   CPU engine's shape checks do.

mod activation;
mod adamw;
mod attention;
mod buf;
pub mod compile;
mod cross_entropy;
mod elementwise;
mod embedding;
mod flash;
pub mod gemm;
mod launch;
mod norm;
pub mod probe;
mod rope;

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{result as cu, CudaContext, CudaFunction, CudaStream, DeviceRepr};

pub use buf::{CudaBuf, CudaVec, DevF32};
pub use gemm::Precision;

use compile::{Family, KernelCache};
use gemm::{Batch, Gemms};
use vlmix_engine::device::{
    AdamWStep, AttnShape, Device, DeviceMemory, GeluKind, Gemm, LossStats, SavedAttention, ZLossTerm,
};

/// A CUDA GPU. Cloning shares the context, stream, kernels and GEMM plans.
#[derive(Clone)]
pub struct Cuda {
    inner: Arc<Inner>,
}

/// The state behind a [`Cuda`]; owned buffers hold it alive.
pub struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// `sm_XY` of the device, the NVRTC target.
    arch: String,
    kernels: KernelCache,
    gemms: Gemms,
    precision: Precision,
    /// Why the stream-ordered pool is not used (then allocations are plain `cuMemAlloc`).
    no_pool: Option<String>,
    /// `VLMIX_CUDA_SYNC=1`: wait after every launch and product.
    sync_launches: bool,
}

fn driver<T>(r: Result<T, cu::DriverError>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("cuda: {what}: {e:?}"))
}

/// Stream-ordered scratch memory, freed (after the kernels queued before the drop) when dropped.
pub struct Temp<'a> {
    pub addr: u64,
    dev: &'a Inner,
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        self.dev.free_bytes(self.addr);
    }
}

impl Inner {
    fn bind(&self) {
        driver(self.ctx.bind_to_thread(), "binding the context to this thread");
    }

    fn function(&self, family: &Family, name: &'static str) -> CudaFunction {
        self.kernels.function(&self.ctx, &self.arch, family, name)
    }

    fn alloc_bytes(&self, bytes: usize) -> u64 {
        self.bind();
        let bytes = bytes.max(1);
        // SAFETY: a fresh allocation (on this device's stream when pooled).
        let r = unsafe {
            if self.no_pool.is_none() {
                cu::malloc_async(self.stream.cu_stream(), bytes)
            } else {
                cu::malloc_sync(bytes)
            }
        };
        driver(r, "allocating device memory")
    }

    fn free_bytes(&self, addr: u64) {
        // Called from Drop: a failure here (a lost device) must not turn into a double panic.
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `addr` came from `alloc_bytes` and is freed once, after queued work (a plain
            // free is not stream-ordered, hence the wait).
            let _ = unsafe {
                if self.no_pool.is_none() {
                    cu::free_async(addr, self.stream.cu_stream())
                } else {
                    self.stream.synchronize().and_then(|()| cu::free_sync(addr))
                }
            };
        }
    }

    /// Under `VLMIX_CUDA_SYNC=1`, waits for the stream and panics naming `what` if it failed.
    fn after_launch(&self, what: &str) {
        if self.sync_launches {
            if let Err(e) = self.stream.synchronize() {
                panic!("cuda: {what} failed on the device: {e:?}");
            }
        }
    }

    fn temp_bytes(&self, bytes: usize) -> Temp<'_> {
        Temp { addr: self.alloc_bytes(bytes), dev: self }
    }

    /// A device copy of a small host slice (ids, targets, row indices) for one kernel call.
    fn upload_temp<T: DeviceRepr>(&self, host: &[T]) -> Temp<'_> {
        let t = self.temp_bytes(std::mem::size_of_val(host));
        self.upload_raw(t.addr, host);
        t
    }

    fn upload_raw<T>(&self, addr: u64, host: &[T]) {
        if !host.is_empty() {
            self.bind();
            // SAFETY: the caller sized the destination; a pageable source is staged before return.
            driver(unsafe { cu::memcpy_htod_async(addr, host, self.stream.cu_stream()) }, "copying to the device");
        }
    }

    /// Waits for the stream, then copies `host.len()` elements from `addr`.
    fn download_raw<T>(&self, addr: u64, host: &mut [T]) {
        if host.is_empty() {
            return;
        }
        self.bind();
        // SAFETY: the caller sized the source; the stream is synchronised before `host` is read.
        unsafe {
            driver(cu::memcpy_dtoh_async(host, addr, self.stream.cu_stream()), "copying from the device");
        }
        driver(self.stream.synchronize(), "waiting for the device");
    }

    fn memset_zero(&self, addr: u64, bytes: usize) {
        if bytes > 0 {
            self.bind();
            // SAFETY: the caller owns `addr..addr + bytes`.
            driver(unsafe { cu::memset_d8_async(addr, 0, bytes, self.stream.cu_stream()) }, "zeroing device memory");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            let _ = self.stream.synchronize();
            self.gemms.destroy();
            // SAFETY: the workspace came from `malloc_sync` in `Cuda::new` and nothing runs anymore.
            let _ = unsafe { cu::free_sync(self.gemms.workspace) };
        }
    }
}

/// Makes the device's default pool (which `cuMemAllocAsync` draws from) keep freed memory instead of
/// returning it at every synchronisation, so per-call scratch costs a pool lookup, not a driver
/// allocation (the caching allocator PyTorch and llm.c rely on).
fn keep_freed_memory(ctx: &CudaContext) -> Result<(), cu::DriverError> {
    pool_attribute(ctx, PoolAttr::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, Some(u64::MAX)).map(drop)
}

use cudarc::driver::sys::CUmemPool_attribute as PoolAttr;

/// Sets (`Some`) or reads a u64 attribute of the device's default pool; returns its value.
fn pool_attribute(ctx: &CudaContext, attr: PoolAttr, set: Option<u64>) -> Result<u64, cu::DriverError> {
    let mut value = set.unwrap_or(0);
    let ptr = &mut value as *mut u64 as *mut std::ffi::c_void;
    // SAFETY: the device comes from a live context; these attributes take a u64.
    unsafe {
        let pool = cu::device::get_default_mem_pool(ctx.cu_device())?;
        match set {
            Some(_) => cu::mem_pool::set_attribute(pool, attr, ptr)?,
            None => cu::mem_pool::get_attribute(pool, attr, ptr)?,
        }
    }
    Ok(value)
}

/// Whether stream-ordered allocation works here: `Err` with the reason when the pool or a first
/// allocation is refused.
fn try_pool(ctx: &CudaContext, stream: &CudaStream) -> Result<(), String> {
    keep_freed_memory(ctx).map_err(|e| format!("memory pool: {e:?}"))?;
    // SAFETY: one byte, freed on the same stream, waited for.
    unsafe {
        let addr = cu::malloc_async(stream.cu_stream(), 1).map_err(|e| format!("cuMemAllocAsync: {e:?}"))?;
        cu::free_async(addr, stream.cu_stream()).map_err(|e| format!("cuMemFreeAsync: {e:?}"))?;
    }
    stream.synchronize().map_err(|e| format!("after cuMemAllocAsync: {e:?}"))
}

impl Cuda {
    /// GPU 0 with f32 products (exact parity with the CPU engine).
    pub fn new() -> anyhow::Result<Cuda> {
        Cuda::with(0, Precision::F32)
    }

    /// GPU `ordinal` with products in `precision`. Fails, naming the missing library and the fix,
    /// when the driver, NVRTC, cuBLAS or cuBLASLt cannot be loaded, and when there is no GPU.
    pub fn with(ordinal: usize, precision: Precision) -> anyhow::Result<Cuda> {
        probe::probe()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow::anyhow!("CUDA device {ordinal}: {e:?}"))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| anyhow::anyhow!("CUDA device {ordinal}: {e:?}"))?;
        let stream = ctx.new_stream().map_err(|e| anyhow::anyhow!("CUDA stream: {e:?}"))?;
        let no_pool = try_pool(&ctx, &stream).err();
        // SAFETY: a plain allocation, freed in `Inner::drop`.
        let workspace = unsafe { cu::malloc_sync(gemm::WORKSPACE_BYTES) }
            .map_err(|e| anyhow::anyhow!("cuBLASLt workspace: {e:?}"))?;
        let gemms = Gemms::new(workspace)?;
        let inner = Inner {
            ctx,
            stream,
            arch: format!("sm_{major}{minor}"),
            kernels: KernelCache::default(),
            gemms,
            precision,
            no_pool,
            sync_launches: std::env::var_os("VLMIX_CUDA_SYNC").is_some_and(|v| v == "1"),
        };
        Ok(Cuda { inner: Arc::new(inner) })
    }

    /// Name, compute capability and memory of the device, for logs and benchmark records.
    pub fn describe(&self) -> String {
        let ctx = &self.inner.ctx;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let mem = ctx.total_mem().map(|b| b as f64 / (1u64 << 30) as f64).unwrap_or(0.0);
        let alloc = match &self.inner.no_pool {
            None => "pooled allocation".to_string(),
            Some(why) => format!("plain allocation ({why})"),
        };
        format!(
            "{name} ({}, {mem:.0} GiB), {:?} products, {alloc}, {}",
            self.inner.arch,
            self.inner.precision,
            compile::versions()
        )
    }

    pub fn precision(&self) -> Precision {
        self.inner.precision
    }

    /// GEMM plans cached so far.
    pub fn cached_gemm_plans(&self) -> usize {
        self.inner.gemms.cached_plans()
    }

    /// Attention through the plain path whatever the shape: strided-batched products and a softmax
    /// kernel, saving `[batch, heads, seq, seq]` probabilities in `probs`. The trait's attention
    /// runs flash attention where it can; `vlmix-cuda-check attention` compares the two.
    pub fn plain_attention_forward(
        &self,
        shape: AttnShape,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        probs: &mut CudaBuf,
        out: &mut CudaBuf,
    ) {
        attention::forward(&self.inner, shape, q, k, v, probs, out);
    }

    /// The backward of [`Cuda::plain_attention_forward`].
    #[allow(clippy::too_many_arguments)]
    pub fn plain_attention_backward(
        &self,
        shape: AttnShape,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        probs: &CudaBuf,
        dout: &CudaBuf,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
    ) {
        attention::backward(&self.inner, shape, q, k, v, probs, dout, dq, dk, dv);
    }

    /// The most bytes this process held at once since the last [`Cuda::reset_peak_memory`] (the
    /// pool's high-water mark, what PyTorch's `max_memory_allocated` measures), plus the cuBLASLt
    /// workspace. `None` under plain allocation (no pool to ask).
    pub fn peak_memory(&self) -> Option<u64> {
        self.inner.no_pool.is_none().then_some(())?;
        let high = pool_attribute(&self.inner.ctx, PoolAttr::CU_MEMPOOL_ATTR_USED_MEM_HIGH, None).ok()?;
        Some(high + gemm::WORKSPACE_BYTES as u64)
    }

    pub fn reset_peak_memory(&self) {
        if self.inner.no_pool.is_none() {
            // Only zero is accepted: it resets the mark to the current use.
            let _ = pool_attribute(&self.inner.ctx, PoolAttr::CU_MEMPOOL_ATTR_USED_MEM_HIGH, Some(0));
        }
    }

    /// TFLOP/s of `n x n x n` products of the `[n, n]` operands `a`, `b` (the caller's values: the
    /// check kit's seeded ones) already in the product precision (bf16 copies made once, untimed: the
    /// ceiling the models' products approach), after one untimed call.
    pub fn gemm_rate(&self, a: &[f32], b: &[f32], n: usize, reps: usize) -> f64 {
        assert!(a.len() == n * n && b.len() == n * n, "gemm rate: operands are not [{n}, {n}]");
        let dev = &*self.inner;
        let (a, b, c) = (self.upload(a), self.upload(b), self.zeros(n * n));
        let operand = |x: &CudaVec| match dev.precision {
            Precision::F32 => None,
            Precision::Bf16 => {
                let t = dev.temp_bytes(2 * n * n);
                elementwise::cast_bf16(dev, x.addr(), t.addr, n * n);
                Some(t)
            }
        };
        let (ta, tb) = (operand(&a), operand(&b));
        let (pa, pb) = (ta.as_ref().map_or(a.addr(), |t| t.addr), tb.as_ref().map_or(b.addr(), |t| t.addr));
        let g = Gemm::new(false, false, n, n, n);
        dev.gemms.product(dev, &g, Batch::ONE, pa, pb, c.addr());
        self.synchronize();
        let start = Instant::now();
        for _ in 0..reps {
            dev.gemms.product(dev, &g, Batch::ONE, pa, pb, c.addr());
        }
        self.synchronize();
        2.0 * (n as f64).powi(3) * reps as f64 / start.elapsed().as_secs_f64() / 1e12
    }

    /// Bytes of device memory in use and in total, as the driver reports them.
    pub fn memory_used(&self) -> (usize, usize) {
        self.inner.bind();
        let (free, total) = driver(self.inner.ctx.mem_get_info(), "memory info");
        (total - free, total)
    }
}

impl Device for Cuda {
    type Buf = CudaBuf;
    type Owned = CudaVec;

    fn memory(&self) -> DeviceMemory {
        DeviceMemory {
            saved_attention: SavedAttention::Flash(flash::HEAD_DIMS),
            attention_workers: 0,
            available_from: "free GPU memory",
        }
    }

    fn available_memory(&self) -> anyhow::Result<u64> {
        self.inner.bind();
        let (free, _) = self.inner.ctx.mem_get_info().map_err(|e| anyhow::anyhow!("CUDA free memory: {e:?}"))?;
        Ok(free as u64)
    }

    fn zeros(&self, len: usize) -> CudaVec {
        let v = CudaVec::alloc(&self.inner, len);
        self.inner.memset_zero(v.addr(), 4 * len);
        v
    }

    fn upload(&self, host: &[f32]) -> CudaVec {
        let v = CudaVec::alloc(&self.inner, host.len());
        self.inner.upload_raw(v.addr(), host);
        v
    }

    fn upload_into(&self, host: &[f32], buf: &mut CudaBuf) {
        assert_eq!(buf.len(), host.len(), "upload_into: length mismatch");
        self.inner.upload_raw(buf.addr(), host);
    }

    fn synchronize(&self) {
        self.inner.bind();
        driver(self.inner.stream.synchronize(), "waiting for the device");
    }

    fn download(&self, buf: &CudaBuf, host: &mut [f32]) {
        assert_eq!(buf.len(), host.len(), "download: length mismatch");
        self.inner.download_raw(buf.addr(), host);
    }

    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len()
    }

    fn slice<'a>(&self, buf: &'a CudaBuf, range: Range<usize>) -> &'a CudaBuf {
        buf.slice(range)
    }

    fn slice_mut<'a>(&self, buf: &'a mut CudaBuf, range: Range<usize>) -> &'a mut CudaBuf {
        buf.slice_mut(range)
    }

    fn split_at_mut<'a>(&self, buf: &'a mut CudaBuf, mid: usize) -> (&'a mut CudaBuf, &'a mut CudaBuf) {
        buf.split_at_mut(mid)
    }

    fn fill(&self, buf: &mut CudaBuf, value: f32) {
        elementwise::fill(&self.inner, buf, value);
    }

    fn copy(&self, src: &CudaBuf, dst: &mut CudaBuf) {
        assert_eq!(src.len(), dst.len(), "copy: length mismatch");
        if !src.is_empty() {
            self.inner.bind();
            let (d, s, bytes, stream) = (dst.addr(), src.addr(), 4 * src.len(), self.inner.stream.cu_stream());
            // SAFETY: both ranges are live buffers of `bytes`; the borrow rules keep them disjoint.
            driver(unsafe { cu::memcpy_dtod_async(d, s, bytes, stream) }, "device copy");
        }
    }

    fn gather_rows(&self, src: &CudaBuf, rows: &[usize], dst: &mut CudaBuf) {
        elementwise::gather_rows(&self.inner, src, rows, dst);
    }

    fn scatter_rows(&self, src: &CudaBuf, rows: &[usize], dst: &mut CudaBuf) {
        elementwise::scatter_rows(&self.inner, src, rows, dst);
    }

    fn zero_rows(&self, buf: &mut CudaBuf, rows: &[usize], width: usize) {
        elementwise::zero_rows(&self.inner, buf, rows, width);
    }

    fn gemm(&self, g: Gemm, a: &CudaBuf, b: &CudaBuf, c: &mut CudaBuf) {
        gemm::check(&g, Batch::ONE, a.len(), b.len(), c.len());
        self.inner.gemms.run(&self.inner, &g, Batch::ONE, a.addr(), b.addr(), c.addr());
    }

    fn add(&self, a: &CudaBuf, b: &CudaBuf, out: &mut CudaBuf) {
        elementwise::add(&self.inner, a, b, out);
    }

    fn add_assign(&self, acc: &mut CudaBuf, x: &CudaBuf) {
        elementwise::add_assign(&self.inner, acc, x);
    }

    fn add_bias(&self, y: &mut CudaBuf, bias: &CudaBuf) {
        elementwise::add_bias(&self.inner, y, bias);
    }

    fn bias_backward(&self, dy: &CudaBuf, dbias: &mut CudaBuf) {
        elementwise::bias_backward(&self.inner, dy, dbias);
    }

    fn scale(&self, x: &mut CudaBuf, s: f32) {
        elementwise::scale(&self.inner, x, s);
    }

    fn sum_squares(&self, bufs: &[&CudaBuf]) -> f64 {
        elementwise::sum_squares(&self.inner, bufs)
    }

    fn adamw_step(
        &self,
        step: &AdamWStep,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        exp_avg: &mut CudaBuf,
        exp_avg_sq: &mut CudaBuf,
    ) {
        adamw::step(&self.inner, step, param, grad, exp_avg, exp_avg_sq);
    }

    fn embedding_forward(&self, ids: &[u32], table: &CudaBuf, out: &mut CudaBuf) {
        embedding::forward(&self.inner, ids, table, out);
    }

    fn embedding_backward(&self, ids: &[u32], dout: &CudaBuf, dtable: &mut CudaBuf) {
        embedding::backward(&self.inner, ids, dout, dtable);
    }

    fn layernorm_forward(
        &self,
        x: &CudaBuf,
        weight: &CudaBuf,
        bias: Option<&CudaBuf>,
        eps: f32,
        out: &mut CudaBuf,
        mean: &mut CudaBuf,
        rstd: &mut CudaBuf,
    ) {
        norm::layernorm_forward(&self.inner, x, weight, bias, eps, out, mean, rstd);
    }

    fn layernorm_backward(
        &self,
        dout: &CudaBuf,
        x: &CudaBuf,
        weight: &CudaBuf,
        mean: &CudaBuf,
        rstd: &CudaBuf,
        dx: &mut CudaBuf,
        dweight: &mut CudaBuf,
        dbias: Option<&mut CudaBuf>,
    ) {
        norm::layernorm_backward(&self.inner, dout, x, weight, mean, rstd, dx, dweight, dbias);
    }

    fn rmsnorm_forward(&self, x: &CudaBuf, weight: &CudaBuf, eps: f32, out: &mut CudaBuf, rstd: &mut CudaBuf) {
        norm::rmsnorm_forward(&self.inner, x, weight, eps, out, rstd);
    }

    fn rmsnorm_backward(
        &self,
        dout: &CudaBuf,
        x: &CudaBuf,
        weight: &CudaBuf,
        rstd: &CudaBuf,
        dx: &mut CudaBuf,
        dweight: &mut CudaBuf,
    ) {
        norm::rmsnorm_backward(&self.inner, dout, x, weight, rstd, dx, dweight);
    }

    fn rope(&self, x: &mut CudaBuf, cos_sin: &CudaBuf, shape: AttnShape, inverse: bool) {
        rope::rope(&self.inner, x, cos_sin, shape, inverse);
    }

    fn attention_forward(
        &self,
        shape: AttnShape,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        saved: &mut CudaBuf,
        out: &mut CudaBuf,
    ) {
        if self.memory().saved_attention.is_flash(shape) {
            flash::forward(&self.inner, shape, q, k, v, saved, out);
        } else {
            attention::forward(&self.inner, shape, q, k, v, saved, out);
        }
    }

    fn attention_backward(
        &self,
        shape: AttnShape,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        out: &CudaBuf,
        saved: &CudaBuf,
        dout: &CudaBuf,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
    ) {
        if self.memory().saved_attention.is_flash(shape) {
            flash::backward(&self.inner, shape, q, k, v, out, saved, dout, dq, dk, dv);
        } else {
            attention::backward(&self.inner, shape, q, k, v, saved, dout, dq, dk, dv);
        }
    }

    fn swiglu_forward(&self, hidden: usize, gate_up: &CudaBuf, out: &mut CudaBuf) {
        activation::swiglu_forward(&self.inner, hidden, gate_up, out);
    }

    fn swiglu_backward(&self, hidden: usize, gate_up: &CudaBuf, dout: &CudaBuf, dgate_up: &mut CudaBuf) {
        activation::swiglu_backward(&self.inner, hidden, gate_up, dout, dgate_up);
    }

    fn gelu_forward(&self, kind: GeluKind, x: &CudaBuf, out: &mut CudaBuf) {
        activation::gelu_forward(&self.inner, kind, x, out);
    }

    fn gelu_backward(&self, kind: GeluKind, x: &CudaBuf, dout: &CudaBuf, dx: &mut CudaBuf) {
        activation::gelu_backward(&self.inner, kind, x, dout, dx);
    }

    fn cross_entropy(
        &self,
        logits: &mut CudaBuf,
        vocab: usize,
        targets: &[u32],
        mask: &[f32],
        z_loss: ZLossTerm,
        grad_scale: Option<f32>,
        nll: &mut CudaBuf,
    ) -> LossStats {
        cross_entropy::cross_entropy(&self.inner, logits, vocab, targets, mask, z_loss, grad_scale, nll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_new_names_what_is_missing_and_the_fix() {
        if !probe::missing().iter().any(|m| m.starts_with("libcuda.so.1")) {
            return; // a machine with a driver: the GPU check script covers it
        }
        let err = Cuda::new().err().expect("no driver, yet Cuda::new succeeded").to_string();
        assert!(err.contains("libcuda.so.1 (the NVIDIA driver"), "{err}");
        assert!(err.contains("LD_LIBRARY_PATH") && err.contains("nvidia.__path__"), "{err}");
    }
}
