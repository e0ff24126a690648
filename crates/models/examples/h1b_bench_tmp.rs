use vlmix_models::lm::bench::{bench_train, BenchOptions};
use vlmix_models::lm::LmConfig;
fn main() {
    let steps = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(5);
    let r = bench_train(&BenchOptions { model: LmConfig::preset("reference").unwrap(), model_name: "reference".into(), batch: 8, steps, warmup: 1 }).unwrap();
    println!("{}", r.to_json().unwrap());
}
