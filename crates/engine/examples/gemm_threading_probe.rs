use rayon::prelude::*;
use std::time::Instant;
use vlmix_engine::{blas, Cpu, Device, Gemm};
fn best(reps: usize, mut f: impl FnMut()) -> f64 { f(); (0..reps).map(|_| { let t = Instant::now(); f(); t.elapsed().as_secs_f64() }).fold(f64::INFINITY, f64::min) }
fn filled(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.2).collect()
}
#[derive(Clone, Copy)] struct P(*mut f32); unsafe impl Send for P {} unsafe impl Sync for P {}
fn split(g: Gemm, a: &[f32], b: &[f32], c: &mut [f32], along_m: bool, parts: usize) {
    let total = if along_m { g.m } else { g.n };
    let per = total.div_ceil(parts).div_ceil(16) * 16;
    let cp = P(c.as_mut_ptr());
    (0..total).step_by(per).collect::<Vec<_>>().into_par_iter().for_each(|s| {
        let len = per.min(total - s); let cp = cp;
        unsafe {
            if along_m {
                let ao = if g.trans_a { s } else { s * g.lda };
                blas::sgemm_raw(g.trans_a, g.trans_b, len, g.n, g.k, 1.0, a.as_ptr().add(ao), g.lda, b.as_ptr(), g.ldb, g.beta, cp.0.add(s * g.ldc), g.ldc);
            } else {
                let bo = if g.trans_b { s * g.ldb } else { s };
                blas::sgemm_raw(g.trans_a, g.trans_b, g.m, len, g.k, 1.0, a.as_ptr(), g.lda, b.as_ptr().add(bo), g.ldb, g.beta, cp.0.add(s), g.ldc);
            }
        }
    });
}
fn main() {
    let _dev = Cpu::new().unwrap();
    let shapes = [
        ("w12 fwd", Gemm::new(false, true, 2048, 1536, 256)),
        ("w3 fwd", Gemm::new(false, true, 2048, 256, 768)),
        ("w3 dx", Gemm::new(false, false, 2048, 768, 256)),
        ("w3 dW", Gemm::new(true, false, 256, 768, 2048).accumulate()),
        ("w12 dx", Gemm::new(false, false, 2048, 256, 1536)),
        ("w12 dW", Gemm::new(true, false, 1536, 256, 2048).accumulate()),
        ("qkv fwd (1/3)", Gemm::new(false, true, 2048, 256, 256)),
        ("head fwd", Gemm::new(false, true, 2048, 8192, 256)),
        ("head dx", Gemm::new(false, false, 2048, 256, 8192)),
        ("head dW", Gemm::new(true, false, 8192, 256, 2048).accumulate()),
    ];
    for (name, g) in shapes {
        let (ar, ac) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (br, bc) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        let a = filled(ar * ac, 1); let b = filled(br * bc, 2); let mut c = filled(g.m * g.n, 3);
        let f = 2.0 * (g.m * g.n * g.k) as f64 / 1e9;
        let sm = best(10, || split(g, &a, &b, &mut c, true, 2));
        let sn = best(10, || split(g, &a, &b, &mut c, false, 2));
        let s4m = best(10, || split(g, &a, &b, &mut c, true, 4));
        blas::set_num_threads(2);
        let o2 = best(10, || blas::sgemm(g.trans_a, g.trans_b, g.m, g.n, g.k, 1.0, &a, &b, g.beta, &mut c));
        blas::set_num_threads(1);
        let o1 = best(10, || blas::sgemm(g.trans_a, g.trans_b, g.m, g.n, g.k, 1.0, &a, &b, g.beta, &mut c));
        println!("{name:14} {:5}x{:5}x{:5}: split-m {:5.0} split-n {:5.0} split-m4 {:5.0} ob2 {:5.0} ob1 {:5.0} GF/s", g.m, g.n, g.k, f / sm, f / sn, f / s4m, f / o2, f / o1);
    }
}
