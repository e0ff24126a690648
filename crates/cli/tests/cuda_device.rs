//! `--device cuda` on a machine without a GPU (this one, CI's) fails at once with an error that
//! names the missing library and the fix, instead of a panic inside the CUDA bindings.

use std::process::Command;

use vlmix_engine::cuda::probe;

#[test]
fn device_cuda_without_a_driver_names_what_is_missing() {
    if !probe::missing().iter().any(|m| m.starts_with("libcuda.so.1")) {
        return; // a GPU machine: scripts/gpu-check.sh runs the CUDA commands there
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vlmix"))
        .args(["bench", "train", "--model", "tiny", "--steps", "1", "--device", "cuda"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("vlmix runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded without a GPU: {stderr}");
    assert!(!stderr.contains("panicked"), "a panic instead of an error: {stderr}");
    assert!(stderr.contains("libcuda.so.1") && stderr.contains("LD_LIBRARY_PATH"), "{stderr}");
}

#[test]
fn bf16_on_the_cpu_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_vlmix"))
        .args(["bench", "train", "--model", "tiny", "--steps", "1", "--precision", "bf16"])
        .output()
        .expect("vlmix runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--precision bf16 needs --device cuda"), "{stderr}");
}
