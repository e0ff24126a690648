//! Single-precision matrix products through the system OpenBLAS, loaded at run time.
//!
//! Why dlopen instead of linking: OpenBLAS picks its kernels in a library constructor that reads
//! `OPENBLAS_CORETYPE`. Debian's 0.3.21 mis-detects AVX-512 AMD CPUs (Zen 4) and falls back to a
//! kernel that runs sgemm ~5x slower on some AVX-512 CPUs it does not know (measured ~63 vs ~300
//! GFLOP/s on a 2-core Xeon). Loading the library ourselves lets us set the core type *before* that
//! constructor runs, without asking the user to export anything. The override applies only when the
//! user has not set the variable and the CPU has the AVX-512 subset the SkylakeX kernels need; every
//! AVX-512 core OpenBLAS knows (SkylakeX, Cooperlake, SapphireRapids, Zen 4) runs the same SkylakeX
//! sgemm kernel, so machines where detection works lose nothing (BENCHMARKS.md has both numbers).

use std::ffi::{c_char, c_int, CStr};
use std::sync::OnceLock;

const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_NO_TRANS: c_int = 111;
const CBLAS_TRANS: c_int = 112;

type SgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);
type CorenameFn = unsafe extern "C" fn() -> *const c_char;
type SetThreadsFn = unsafe extern "C" fn(c_int);
type GetThreadsFn = unsafe extern "C" fn() -> c_int;

struct OpenBlas {
    sgemm: SgemmFn,
    corename: CorenameFn,
    set_threads: SetThreadsFn,
    get_threads: GetThreadsFn,
    // Keeps the library mapped for the life of the process.
    _lib: libloading::Library,
}

static OPENBLAS: OnceLock<Result<OpenBlas, String>> = OnceLock::new();

/// Library names tried in order; Debian's `libopenblas0-pthread` provides the first.
const LIBRARY_NAMES: &[&str] = &["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"];

fn cpu_needs_forced_coretype() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512cd")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn load() -> Result<OpenBlas, String> {
    if std::env::var_os("OPENBLAS_CORETYPE").is_none() && cpu_needs_forced_coretype() {
        // SAFETY: runs once, inside OnceLock initialisation, before OpenBLAS (the only reader we
        // care about) is loaded. Other threads reading the environment concurrently is the hazard
        // `set_var` warns about; vlmix reads no environment variables from worker threads.
        unsafe { std::env::set_var("OPENBLAS_CORETYPE", "SkylakeX") };
    }
    let mut errors = Vec::new();
    for name in LIBRARY_NAMES {
        // SAFETY: loading OpenBLAS runs its constructor, which only initialises its own state.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => unsafe {
                let sgemm = *lib.get::<SgemmFn>(b"cblas_sgemm\0").map_err(|e| e.to_string())?;
                let corename = *lib.get::<CorenameFn>(b"openblas_get_corename\0").map_err(|e| e.to_string())?;
                let set_threads = *lib.get::<SetThreadsFn>(b"openblas_set_num_threads\0").map_err(|e| e.to_string())?;
                let get_threads = *lib.get::<GetThreadsFn>(b"openblas_get_num_threads\0").map_err(|e| e.to_string())?;
                return Ok(OpenBlas { sgemm, corename, set_threads, get_threads, _lib: lib });
            },
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    Err(format!(
        "could not load OpenBLAS ({}). Install it with `apt-get install libopenblas0-pthread` \
         (scripts/setup.sh does this)",
        errors.join("; ")
    ))
}

fn lib() -> &'static OpenBlas {
    match OPENBLAS.get_or_init(load) {
        Ok(lib) => lib,
        Err(message) => panic!("{message}"),
    }
}

/// Loads OpenBLAS now, returning a readable error instead of panicking later in a kernel.
pub fn init() -> Result<(), String> {
    OPENBLAS.get_or_init(load).as_ref().map(|_| ()).map_err(Clone::clone)
}

/// The kernel family OpenBLAS selected, e.g. "SkylakeX" or "Haswell".
pub fn corename() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr((lib().corename)()).to_string_lossy().into_owned() }
}

pub fn num_threads() -> usize {
    // SAFETY: plain getter.
    unsafe { (lib().get_threads)() as usize }
}

pub fn set_num_threads(n: usize) {
    // SAFETY: plain setter.
    unsafe { (lib().set_threads)(n as c_int) }
}

/// Row-major `C = alpha * op(A) * op(B) + beta * C` where `op(A)` is `m x k`, `op(B)` is `k x n`.
///
/// `a` holds A as stored: `m x k` (or `k x m` when `trans_a`); likewise `b`. Leading dimensions
/// are the stored row lengths, so every operand must be contiguous.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    assert!(a.len() >= m * k, "sgemm: A has {} elements, needs {}", a.len(), m * k);
    assert!(b.len() >= k * n, "sgemm: B has {} elements, needs {}", b.len(), k * n);
    assert!(c.len() >= m * n, "sgemm: C has {} elements, needs {}", c.len(), m * n);
    let lda = if trans_a { m } else { k };
    let ldb = if trans_b { k } else { n };
    // SAFETY: bounds checked above for contiguous operands.
    unsafe { sgemm_raw(trans_a, trans_b, m, n, k, alpha, a.as_ptr(), lda, b.as_ptr(), ldb, beta, c.as_mut_ptr(), n) }
}

/// [`sgemm`] over raw pointers with explicit leading dimensions, so callers can address column
/// blocks of wider matrices and hand disjoint blocks of one C to several threads.
///
/// # Safety
/// Every operand must be valid for the extents its shape and leading dimension imply, and no
/// other thread may touch the part of C written here.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_raw(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let ta = if trans_a { CBLAS_TRANS } else { CBLAS_NO_TRANS };
    let tb = if trans_b { CBLAS_TRANS } else { CBLAS_NO_TRANS };
    (lib().sgemm)(
        CBLAS_ROW_MAJOR,
        ta,
        tb,
        m as c_int,
        n as c_int,
        k as c_int,
        alpha,
        a,
        lda.max(1) as c_int,
        b,
        ldb.max(1) as c_int,
        beta,
        c,
        ldc.max(1) as c_int,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(trans_a: bool, trans_b: bool, m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    let x = if trans_a { a[p * m + i] } else { a[i * k + p] };
                    let y = if trans_b { b[j * k + p] } else { b[p * n + j] };
                    s += x as f64 * y as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn sgemm_matches_naive_for_all_transposes() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 17) as f32 - 8.0) / 7.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 29 % 13) as f32 - 6.0) / 5.0).collect();
        for ta in [false, true] {
            for tb in [false, true] {
                let want = naive(ta, tb, m, n, k, &a, &b);
                let mut got = vec![1.0; m * n];
                sgemm(ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-4, "ta={ta} tb={tb}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn beta_accumulates() {
        let a = [1.0, 2.0];
        let b = [3.0, 4.0];
        let mut c = [10.0];
        sgemm(false, false, 1, 1, 2, 1.0, &a, &b, 1.0, &mut c);
        assert_eq!(c[0], 21.0);
    }
}
