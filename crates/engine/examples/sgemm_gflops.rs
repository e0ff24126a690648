//! Prints the sgemm rate OpenBLAS reaches here: `cargo run --release --example sgemm_gflops`.
use std::time::Instant;
use vlmix_engine::blas;

fn main() {
    blas::init().unwrap_or_else(|e| panic!("{e}"));
    println!("OpenBLAS core: {}, threads: {}", blas::corename(), blas::num_threads());
    for n in [256usize, 512, 1024, 2048] {
        let a = vec![0.5f32; n * n];
        let b = vec![0.25f32; n * n];
        let mut c = vec![0.0f32; n * n];
        blas::sgemm(false, false, n, n, n, 1.0, &a, &b, 0.0, &mut c);
        let reps = (4096 / n).pow(2).clamp(2, 200);
        let t = Instant::now();
        for _ in 0..reps {
            blas::sgemm(false, false, n, n, n, 1.0, &a, &b, 0.0, &mut c);
        }
        let secs = t.elapsed().as_secs_f64();
        println!("n={n:5}  {:7.1} GFLOP/s", 2.0 * (n * n * n) as f64 * reps as f64 / secs / 1e9);
    }
}
