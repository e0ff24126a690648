//! Every CUDA kernel family compiles with NVRTC for sm_90 (the H200's architecture) on this
//! machine, which has no GPU: libnvrtc comes from PyPI's nvidia-cuda-nvrtc wheel, which
//! `scripts/fetch-data.sh` extracts under `$VLMIX_HOME/sources/` (scripts/prepare.sh runs it).

use std::path::PathBuf;

use vlmix_cuda::compile::{self, Output, FAMILIES};

/// The wheel's lib folder under `$VLMIX_HOME` (default `~/.cache/vlmix`).
fn nvrtc_lib_dir() -> PathBuf {
    let home = std::env::var_os("VLMIX_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is not set")).join(".cache/vlmix"));
    home.join("sources/nvidia-cuda-nvrtc/nvidia/cu13/lib")
}

/// cudarc dlopens `libnvrtc.so.13` by bare name; loading the wheel's files by full path first
/// (builtins, then the compiler) makes that bare name resolve to them by soname. They stay
/// loaded for the life of the test process.
fn load_wheel_nvrtc() {
    let dir = nvrtc_lib_dir();
    for file in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
        let path = dir.join(file);
        assert!(path.exists(), "{} is missing: run scripts/fetch-data.sh nvidia-cuda-nvrtc", path.display());
        // SAFETY: NVIDIA's compiler library; its initialisers only set up the library itself.
        let lib = unsafe { libloading::Library::new(&path) }.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::mem::forget(lib);
    }
}

#[test]
fn every_kernel_family_compiles_for_sm_90() {
    load_wheel_nvrtc();
    for family in FAMILIES {
        let ptx = compile::compile(family, "sm_90", Output::Ptx).unwrap_or_else(|e| panic!("{e}"));
        let ptx = String::from_utf8_lossy(&ptx);
        assert!(ptx.contains(".target sm_90"), "{}: PTX is not for sm_90", family.name);
        for kernel in family.kernels {
            assert!(ptx.contains(&format!(".entry {kernel}(")), "{}: no entry {kernel} in the PTX", family.name);
        }
        // What the device loads: machine code, which a driver older than NVRTC still runs.
        let cubin = compile::compile(family, "sm_90", Output::Cubin).unwrap_or_else(|e| panic!("{e}"));
        assert!(cubin.starts_with(b"\x7fELF"), "{}: the CUBIN is not an ELF image", family.name);
    }
    assert!(compile::versions().starts_with("NVRTC 13."), "{}", compile::versions());
}
