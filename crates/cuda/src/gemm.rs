//! Matrix products through cuBLASLt with fp32 compute (no TF32), row-major as the trait defines
//! them, with the algorithm choice cached per shape.
//!
//! cuBLASLt is column-major, so the row-major `C = op(A) op(B)` runs as the column-major
//! `C^T = op(B)^T op(A)^T`: the operands swap and keep their own transposes ([`col_major`]).
//! A plan (descriptors, layouts and the heuristic's algorithm) is made once per [`PlanKey`]:
//! shape, strides, batch, precision and the operands' address alignment (the heuristic only offers
//! algorithms that work at that alignment). Under [`Precision::Bf16`] A and B are cast to bf16 in
//! stream-ordered scratch before the product, which accumulates in fp32 into an f32 C: the
//! numerics of mixed precision (bf16 inputs, fp32 everything else) on the trait's f32 buffers.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard, PoisonError};

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;

use super::Inner;
use vlmix_engine::device::Gemm;

/// What the GEMM inputs are rounded to. f32 is exact (parity with the CPU engine); bf16 is the
/// mixed-precision training path. Spelled `f32` / `bf16` in flags and study configs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Precision> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => anyhow::bail!("precision '{other}': expected \"f32\" or \"bf16\""),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl Precision {
    fn input_type(self) -> sys::cudaDataType {
        match self {
            Precision::F32 => sys::cudaDataType::CUDA_R_32F,
            Precision::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        }
    }

    fn input_bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        }
    }
}

/// `count` products whose operands start `stride_*` elements after the previous one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Batch {
    pub count: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl Batch {
    pub const ONE: Batch = Batch { count: 1, stride_a: 0, stride_b: 0, stride_c: 0 };
}

/// Elements spanned by a row-major `rows x cols` matrix with leading dimension `ld`.
pub fn extent(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

/// Elements each operand spans over the whole batch: `(a, b, c)`.
pub fn extents(g: &Gemm, batch: Batch) -> (usize, usize, usize) {
    let (a_rows, a_cols) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
    let (b_rows, b_cols) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
    assert!(a_cols <= g.lda && b_cols <= g.ldb && g.n <= g.ldc, "gemm: leading dimension too small: {g:?}");
    let over = |one: usize, stride: usize| if one == 0 { 0 } else { (batch.count.max(1) - 1) * stride + one };
    (
        over(extent(a_rows, a_cols, g.lda), batch.stride_a),
        over(extent(b_rows, b_cols, g.ldb), batch.stride_b),
        over(extent(g.m, g.n, g.ldc), batch.stride_c),
    )
}

/// Checks operand lengths as the CPU engine does.
pub fn check(g: &Gemm, batch: Batch, a_len: usize, b_len: usize, c_len: usize) {
    let (a, b, c) = extents(g, batch);
    assert!(a_len >= a, "gemm: A has {a_len} elements for {g:?} x {batch:?}");
    assert!(b_len >= b, "gemm: B has {b_len} elements for {g:?} x {batch:?}");
    assert!(c_len >= c, "gemm: C has {c_len} elements for {g:?} x {batch:?}");
}

/// A column-major matrix: `(rows, cols, ld)`.
type Layout = (u64, u64, i64);

/// The row-major product as cuBLASLt's column-major one. `first` is cuBLASLt's A (the trait's
/// B), `second` its B (the trait's A); `c` is C viewed as `n x m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ColMajor {
    pub first: Layout,
    pub trans_first: bool,
    pub second: Layout,
    pub trans_second: bool,
    pub c: Layout,
}

pub fn col_major(g: &Gemm) -> ColMajor {
    let (m, n, k) = (g.m as u64, g.n as u64, g.k as u64);
    ColMajor {
        first: if g.trans_b { (k, n, g.ldb as i64) } else { (n, k, g.ldb as i64) },
        trans_first: g.trans_b,
        second: if g.trans_a { (m, k, g.lda as i64) } else { (k, m, g.lda as i64) },
        trans_second: g.trans_a,
        c: (n, m, g.ldc as i64),
    }
}

/// Largest power of two (up to 256, cuBLASLt's default assumption) that divides `addr`.
pub fn alignment(addr: u64) -> u32 {
    1 << addr.trailing_zeros().min(8)
}

/// Everything a cached plan depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlanKey {
    pub layout: ColMajor,
    pub batch: Batch,
    pub precision: Precision,
    /// Alignment in bytes of cuBLASLt's A, B and C (= D).
    pub align: [u32; 3],
}

/// Descriptors and algorithm of one [`PlanKey`], made once.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    first: sys::cublasLtMatrixLayout_t,
    second: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

/// The cuBLASLt handle, its workspace and the plan cache of one device.
pub struct Gemms {
    handle: sys::cublasLtHandle_t,
    pub workspace: u64,
    plans: Mutex<HashMap<PlanKey, Plan>>,
}

// SAFETY: cuBLASLt handles and descriptors may be used from any thread; the plan map is locked.
unsafe impl Send for Gemms {}
unsafe impl Sync for Gemms {}

/// Workspace offered to cuBLASLt (llm.c uses the same 32 MiB).
pub const WORKSPACE_BYTES: usize = 32 << 20;

fn lt_check<T>(r: Result<T, cudarc::cublaslt::result::CublasError>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("cuda: cuBLASLt {what}: {e:?}"))
}

impl Gemms {
    /// Needs the device's context current on this thread.
    pub fn new(workspace: u64) -> anyhow::Result<Gemms> {
        let handle = lt::create_handle().map_err(|e| anyhow::anyhow!("cuBLASLt handle: {e:?}"))?;
        Ok(Gemms { handle, workspace, plans: Mutex::new(HashMap::new()) })
    }

    /// Plans made so far (the cache's size).
    pub fn cached_plans(&self) -> usize {
        self.plans().len()
    }

    /// The plan cache, even after a panic while it was held (a finished plan is never half
    /// inserted), so one failed product does not fail every later one.
    fn plans(&self) -> MutexGuard<'_, HashMap<PlanKey, Plan>> {
        self.plans.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn plan(&self, key: PlanKey) -> Plan {
        let l = key.layout;
        let input = key.precision.input_type();
        // SAFETY: every descriptor is created here and used only with this handle.
        unsafe {
            let desc = lt_check(
                lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F),
                "matmul descriptor",
            );
            for (attr, trans) in [
                (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, l.trans_first),
                (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, l.trans_second),
            ] {
                let op: i32 = trans as i32; // CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
                lt_check(
                    lt::set_matmul_desc_attribute(desc, attr, &op as *const i32 as *const c_void, 4),
                    "transpose attribute",
                );
            }
            let layout = |(rows, cols, ld): Layout, ty: sys::cudaDataType, stride: usize| {
                let h = lt_check(lt::create_matrix_layout(ty, rows, cols, ld), "matrix layout");
                if key.batch.count > 1 {
                    let count = key.batch.count as i32;
                    let stride = stride as i64;
                    lt_check(
                        lt::set_matrix_layout_attribute(
                            h,
                            sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                            &count as *const i32 as *const c_void,
                            4,
                        ),
                        "batch count",
                    );
                    lt_check(
                        lt::set_matrix_layout_attribute(
                            h,
                            sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                            &stride as *const i64 as *const c_void,
                            8,
                        ),
                        "batch stride",
                    );
                }
                h
            };
            // cuBLASLt's A is the trait's B and vice versa.
            let first = layout(l.first, input, key.batch.stride_b);
            let second = layout(l.second, input, key.batch.stride_a);
            let c = layout(l.c, sys::cudaDataType::CUDA_R_32F, key.batch.stride_c);
            let pref = lt_check(lt::create_matmul_pref(), "preference");
            let ws = WORKSPACE_BYTES as u64;
            lt_check(
                lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &ws as *const u64 as *const c_void,
                    8,
                ),
                "workspace preference",
            );
            use sys::cublasLtMatmulPreferenceAttributes_t as P;
            for (attr, align) in [
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align[0]),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align[1]),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align[2]),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align[2]),
            ] {
                lt_check(
                    lt::set_matmul_pref_attribute(pref, attr, &align as *const u32 as *const c_void, 4),
                    "alignment preference",
                );
            }
            let heuristic = lt::get_matmul_algo_heuristic(self.handle, desc, first, second, c, c, pref);
            lt_check(lt::destroy_matmul_pref(pref), "destroying a preference");
            let heuristic = heuristic.unwrap_or_else(|e| panic!("cuda: cuBLASLt has no algorithm for {key:?}: {e:?}"));
            Plan { desc, first, second, c, algo: heuristic.algo }
        }
    }

    /// `C = alpha op(A) op(B) + beta C` for each of `batch`, at device addresses `a`, `b`, `c`
    /// whose extents the caller checked ([`check`]).
    pub fn run(&self, dev: &Inner, g: &Gemm, batch: Batch, a: u64, b: u64, c: u64) {
        if g.m == 0 || g.n == 0 || batch.count == 0 {
            return;
        }
        if g.k == 0 {
            // No product: C = beta C (cuBLASLt rejects k = 0).
            assert!(g.beta == 0.0 || g.beta == 1.0, "gemm: k = 0 with beta {}", g.beta);
            if g.beta == 0.0 {
                for i in 0..batch.count {
                    for row in 0..g.m {
                        dev.memset_zero(c + 4 * (i * batch.stride_c + row * g.ldc) as u64, 4 * g.n);
                    }
                }
            }
            return;
        }
        let precision = dev.precision;
        let (a_ext, b_ext, _) = extents(g, batch);
        // Scratch for the bf16 copies; dropped (stream-ordered) after the product.
        let cast = |addr: u64, n: usize| {
            let t = dev.temp_bytes(n * precision.input_bytes());
            super::elementwise::cast_bf16(dev, addr, t.addr, n);
            t
        };
        let (a_tmp, b_tmp) = match precision {
            Precision::F32 => (None, None),
            Precision::Bf16 => (Some(cast(a, a_ext)), Some(cast(b, b_ext))),
        };
        let a = a_tmp.as_ref().map_or(a, |t| t.addr);
        let b = b_tmp.as_ref().map_or(b, |t| t.addr);
        self.product(dev, g, batch, a, b, c);
    }

    /// [`Gemms::run`] on operands already in the device's input precision (bf16 copies under
    /// [`Precision::Bf16`]), for timing the products alone.
    pub fn product(&self, dev: &Inner, g: &Gemm, batch: Batch, a: u64, b: u64, c: u64) {
        let key = PlanKey {
            layout: col_major(g),
            batch,
            precision: dev.precision,
            align: [alignment(b), alignment(a), alignment(c)],
        };
        let mut plans = self.plans();
        let plan = plans.entry(key).or_insert_with(|| self.plan(key));
        let (alpha, beta) = (g.alpha, g.beta);
        // SAFETY: the plan matches these operands (its key holds their shapes and alignment);
        // extents were checked by the caller; the workspace is WORKSPACE_BYTES long.
        unsafe {
            lt_check(
                lt::matmul(
                    self.handle,
                    plan.desc,
                    &alpha as *const f32 as *const c_void,
                    &beta as *const f32 as *const c_void,
                    b as *const c_void,
                    plan.first,
                    a as *const c_void,
                    plan.second,
                    c as *const c_void,
                    plan.c,
                    c as *mut c_void,
                    plan.c,
                    &plan.algo,
                    self.workspace as *mut c_void,
                    WORKSPACE_BYTES,
                    dev.stream.cu_stream() as sys::cudaStream_t,
                ),
                "matmul",
            );
        }
        dev.after_launch("cuBLASLt matmul");
    }

    /// Frees the plans and the handle (the workspace belongs to the device).
    pub fn destroy(&mut self) {
        // SAFETY: nothing uses the plans or the handle after this (the device is being dropped).
        unsafe {
            for (_, p) in self.plans().drain() {
                let _ = lt::destroy_matrix_layout(p.first);
                let _ = lt::destroy_matrix_layout(p.second);
                let _ = lt::destroy_matrix_layout(p.c);
                let _ = lt::destroy_matmul_desc(p.desc);
            }
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_major_maps_to_swapped_column_major_operands() {
        // C[2x3] = A[2x4] B[4x3]: cuBLASLt computes C^T[3x2] = B^T[3x4] A^T[4x2].
        let l = col_major(&Gemm::new(false, false, 2, 3, 4));
        assert_eq!((l.first, l.trans_first), ((3, 4, 3), false));
        assert_eq!((l.second, l.trans_second), ((4, 2, 4), false));
        assert_eq!(l.c, (3, 2, 3));
        // C[2x3] = A^T B^T with A stored [4x2], B stored [3x4].
        let l = col_major(&Gemm::new(true, true, 2, 3, 4));
        assert_eq!((l.first, l.trans_first), ((4, 3, 4), true));
        assert_eq!((l.second, l.trans_second), ((2, 4, 2), true));
        // A head's column block of a wider matrix keeps the full row length as its ld.
        let l = col_major(&Gemm::new(false, true, 5, 5, 8).strides(32, 32, 5));
        assert_eq!((l.first, l.second, l.c), ((8, 5, 32), (8, 5, 32), (5, 5, 5)));
    }

    #[test]
    fn extents_match_the_cpu_rule_and_span_batches() {
        let g = Gemm::new(false, true, 5, 5, 8).strides(32, 32, 5);
        assert_eq!(extents(&g, Batch::ONE), (4 * 32 + 8, 4 * 32 + 8, 25));
        let batch = Batch { count: 4, stride_a: 8, stride_b: 8, stride_c: 25 };
        assert_eq!(extents(&g, batch), (3 * 8 + 136, 3 * 8 + 136, 3 * 25 + 25));
        assert_eq!(extents(&Gemm::new(false, false, 0, 3, 4), Batch::ONE).2, 0);
    }

    #[test]
    #[should_panic(expected = "gemm: B has 11 elements")]
    fn short_operands_are_named() {
        check(&Gemm::new(false, false, 2, 3, 4), Batch::ONE, 8, 11, 6);
    }

    #[test]
    #[should_panic(expected = "leading dimension too small")]
    fn narrow_leading_dimensions_are_refused() {
        check(&Gemm::new(false, false, 2, 3, 4).strides(3, 3, 3), Batch::ONE, 100, 100, 100);
    }

    #[test]
    fn alignment_is_capped_at_256_bytes() {
        assert_eq!(alignment(0x7000_0000), 256);
        assert_eq!(alignment(0x7000_0004), 4);
        assert_eq!(alignment(0x7000_0040), 64);
    }

    #[test]
    fn plan_keys_separate_what_changes_the_algorithm() {
        let g = Gemm::new(false, false, 64, 64, 64);
        let key = |precision, align| PlanKey { layout: col_major(&g), batch: Batch::ONE, precision, align };
        let mut cache = std::collections::HashSet::new();
        cache.insert(key(Precision::F32, [256; 3]));
        assert!(cache.contains(&key(Precision::F32, [256; 3])), "the same shape hits the cache");
        assert!(!cache.contains(&key(Precision::Bf16, [256; 3])));
        assert!(!cache.contains(&key(Precision::F32, [4, 256, 256])));
    }

    #[test]
    fn precision_parses_the_config_names() {
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
        assert!("fp16".parse::<Precision>().unwrap_err().to_string().contains("\"bf16\""));
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
    }
}
