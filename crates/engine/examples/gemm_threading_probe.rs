use std::time::Instant;
use vlmix_engine::{blas, Cpu, Device, Gemm};
fn best(reps: usize, mut f: impl FnMut()) -> f64 { f(); (0..reps).map(|_| { let t = Instant::now(); f(); t.elapsed().as_secs_f64() }).fold(f64::INFINITY, f64::min) }
fn main() {
    let dev = Cpu::new().unwrap();
    for &(ta, tb, m, n, k) in &[(false, true, 2048usize, 768usize, 256usize), (false, true, 2048, 1536, 256), (false, false, 2048, 256, 768), (true, false, 768, 256, 2048), (false, true, 2048, 8192, 256), (false, false, 2048, 256, 8192), (true, false, 8192, 256, 2048)] {
        let a = vec![0.5f32; m * k]; let b = vec![0.25f32; k * n]; let mut c = vec![0.0f32; m * n];
        let g = Gemm::new(ta, tb, m, n, k);
        let split = best(8, || dev.gemm(g, &a, &b, &mut c));
        blas::set_num_threads(2);
        let ob2 = best(8, || blas::sgemm(ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut c));
        blas::set_num_threads(1);
        let ob1 = best(8, || blas::sgemm(ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut c));
        let f = 2.0 * (m * n * k) as f64 / 1e9;
        println!("gemm {ta:5} {tb:5} {m:5}x{n:5}x{k:5}: rayon-split {:6.1}  openblas-2thr {:6.1}  openblas-1thr {:6.1} GFLOP/s", f / split, f / ob2, f / ob1);
    }
}
