//! `--device cuda` (or a study's `device = "cuda"`) on a machine without a GPU (this one, CI's)
//! fails at once with an error that names the missing library and the fix, instead of a panic
//! inside the CUDA bindings or a failure halfway through a run.

use std::path::Path;
use std::process::{Command, Output};

use vlmix_cuda::probe;

/// True on a machine with the NVIDIA driver, where these commands would start on the GPU:
/// scripts/gpu-check.sh runs the CUDA commands there.
fn has_driver() -> bool {
    !probe::missing().iter().any(|m| m.starts_with("libcuda.so.1"))
}

fn vlmix(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vlmix")).args(args).env("RUST_BACKTRACE", "0").output().expect("vlmix runs")
}

fn assert_names_the_missing_driver(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "succeeded without a GPU: {stderr}");
    assert!(!stderr.contains("panicked"), "a panic instead of an error: {stderr}");
    assert!(stderr.contains("libcuda.so.1") && stderr.contains("LD_LIBRARY_PATH"), "{stderr}");
    stderr
}

fn smoke_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/study/smoke.toml").display().to_string()
}

#[test]
fn device_cuda_without_a_driver_names_what_is_missing() {
    if has_driver() {
        return;
    }
    assert_names_the_missing_driver(&vlmix(&["bench", "train", "--model", "tiny", "--steps", "1", "--device", "cuda"]));
}

#[test]
fn stage_commands_with_device_cuda_fail_before_reading_data() {
    if has_driver() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().join("pretrain");
    let config = smoke_config();
    let args = ["pretrain", "--config", &config, "--out", out_dir.to_str().unwrap(), "--device", "cuda"];
    assert_names_the_missing_driver(&vlmix(&args));
    assert!(!out_dir.exists(), "the stage started writing before the device opened");
}

#[test]
fn a_study_with_device_cuda_fails_at_start_naming_the_key() {
    if has_driver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cuda.toml");
    let smoke = std::fs::read_to_string(smoke_config()).unwrap();
    std::fs::write(&config, format!("device = \"cuda\"\n{smoke}")).unwrap();
    let run = dir.path().join("run");
    for extra in [&["--dry-run"][..], &[]] {
        let mut args = vec!["study", config.to_str().unwrap(), "--out", run.to_str().unwrap()];
        args.extend_from_slice(extra);
        let stderr = assert_names_the_missing_driver(&vlmix(&args));
        assert!(stderr.contains("device = \"cuda\"") && stderr.contains("cuda.toml"), "{stderr}");
        assert!(!run.exists(), "the study created its run directory before the device opened");
    }
}

#[test]
fn bf16_on_the_cpu_is_refused() {
    let out = vlmix(&["bench", "train", "--model", "tiny", "--steps", "1", "--precision", "bf16"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("precision bf16 needs device cuda"), "{stderr}");
}

#[test]
fn bad_device_names_are_refused_naming_the_flag() {
    let out = vlmix(&["eval", "--checkpoint", "nowhere", "--device", "tpu"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--device") && stderr.contains("'tpu'"), "{stderr}");
}
