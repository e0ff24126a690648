//! Matrix products: single-threaded OpenBLAS calls on disjoint blocks of C, one per rayon thread.

use rayon::prelude::*;

use super::par::SendPtr;
use crate::blas;
use crate::device::Gemm;

/// Below this many multiply-adds one call is faster than splitting.
const SPLIT_MIN_MACS: usize = 1 << 21;
/// C at least this wide is split by columns, narrower C by rows.
const SPLIT_N_MIN_COLS: usize = 512;

/// Elements an operand spans given rows, row length and leading dimension.
fn extent(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

pub fn gemm(g: Gemm, a: &[f32], b: &[f32], c: &mut [f32]) {
    let (a_rows, a_cols) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
    let (b_rows, b_cols) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
    assert!(a_cols <= g.lda && b_cols <= g.ldb && g.n <= g.ldc, "gemm: leading dimension too small: {g:?}");
    assert!(a.len() >= extent(a_rows, a_cols, g.lda), "gemm: A has {} elements for {g:?}", a.len());
    assert!(b.len() >= extent(b_rows, b_cols, g.ldb), "gemm: B has {} elements for {g:?}", b.len());
    assert!(c.len() >= extent(g.m, g.n, g.ldc), "gemm: C has {} elements for {g:?}", c.len());
    if g.m == 0 || g.n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let macs = g.m * g.n * g.k;
    let c_ptr = SendPtr(c.as_mut_ptr());
    if threads == 1 || macs < SPLIT_MIN_MACS {
        // SAFETY: extents checked above.
        unsafe { call(g, a.as_ptr(), b.as_ptr(), c_ptr.get()) };
        return;
    }
    // Measured on 2 AVX-512 cores: splitting C's columns is faster once rows of C are long
    // (e.g. 2048x1536x256: 219 vs 142 GFLOP/s), splitting rows is faster for narrow C.
    let split_m = g.n < SPLIT_N_MIN_COLS;
    let total = if split_m { g.m } else { g.n };
    // Blocks are multiples of 16 so BLAS kernels keep full register tiles.
    let per = total.div_ceil(threads).div_ceil(16) * 16;
    let starts: Vec<usize> = (0..total).step_by(per).collect();
    starts.into_par_iter().for_each(|start| {
        let len = per.min(total - start);
        // SAFETY: each task writes its own rows (or columns) of C; A and B are only read; all
        // offsets stay inside the extents checked above.
        unsafe {
            if split_m {
                let a_off = if g.trans_a { start } else { start * g.lda };
                call(Gemm { m: len, ..g }, a.as_ptr().add(a_off), b.as_ptr(), c_ptr.get().add(start * g.ldc));
            } else {
                let b_off = if g.trans_b { start * g.ldb } else { start };
                call(Gemm { n: len, ..g }, a.as_ptr(), b.as_ptr().add(b_off), c_ptr.get().add(start));
            }
        }
    });
}

/// One OpenBLAS call. `beta = 0` becomes a memset of C and `beta = 1`: OpenBLAS's own beta pass
/// zeroes C with scalar stores (7-12 % of a scoring pass, ~5 % of a training step at K = 128), and
/// its kernel then adds the product to C either way, so the results are the same bits.
///
/// # Safety
/// Operands must be valid for the extents `g` implies.
pub unsafe fn call(g: Gemm, a: *const f32, b: *const f32, c: *mut f32) {
    let beta = if g.beta == 0.0 && g.k > 0 {
        for row in 0..g.m {
            std::slice::from_raw_parts_mut(c.add(row * g.ldc), g.n).fill(0.0);
        }
        1.0
    } else {
        g.beta
    };
    blas::sgemm_raw(g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, a, g.lda, b, g.ldb, beta, c, g.ldc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwriting_ignores_what_c_held_and_leaves_the_rest_of_its_rows() {
        // beta = 0 must not read C (NaN stays out) and must write only the m x n block of rows
        // `ldc` apart: the memset that replaces OpenBLAS's beta pass covers exactly that block.
        let (m, n, k, ldc) = (3, 2, 4, 5);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 - 5.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| 0.5 * i as f32 - 1.0).collect();
        let mut c = vec![f32::NAN; m * ldc];
        gemm(Gemm { ldc, ..Gemm::new(false, false, m, n, k) }, &a, &b, &mut c);
        for i in 0..m {
            for j in 0..ldc {
                let got = c[i * ldc + j];
                if j < n {
                    let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                    assert_eq!(got, want, "C[{i}][{j}]");
                } else {
                    assert!(got.is_nan(), "C[{i}][{j}] outside the block was written");
                }
            }
        }
    }
}
