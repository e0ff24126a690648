//! Finds the CUDA libraries before cudarc does: cudarc dlopens them by bare name on first use and
//! panics when one is missing, so [`probe`] checks each with cudarc's own candidate names first
//! and turns an absence into an error that names the library and the fix.

/// One library the CUDA device loads at run time.
struct Lib {
    /// The file a user looks for (`libcuda.so.1`).
    file: &'static str,
    /// What provides it.
    from: &'static str,
    present: unsafe fn() -> bool,
}

const LIBS: [Lib; 4] = [
    Lib {
        file: "libcuda.so.1",
        from: "the NVIDIA driver; without it this machine has no usable GPU",
        present: cudarc::driver::sys::is_culib_present,
    },
    Lib { file: "libnvrtc.so.13", from: "the nvidia-cuda-nvrtc wheel", present: cudarc::nvrtc::sys::is_culib_present },
    Lib { file: "libcublas.so.13", from: "the nvidia-cublas wheel", present: cudarc::cublas::sys::is_culib_present },
    Lib {
        file: "libcublasLt.so.13",
        from: "the nvidia-cublas wheel",
        present: cudarc::cublaslt::sys::is_culib_present,
    },
];

/// How to put pip's CUDA 13 wheels on the loader path (they share `nvidia/cu13/lib`). `nvidia` is a
/// namespace package in CUDA 13's wheels (no `__init__.py`): its `__file__` is None, `__path__` holds.
pub const LIBRARY_PATH_HINT: &str = "export LD_LIBRARY_PATH=\"$(python3 -c 'import nvidia; \
     print(list(nvidia.__path__)[0])')/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\" (pip's nvidia-* wheels, as \
     PyTorch installs them), or /usr/local/cuda/lib64 (the CUDA toolkit)";

/// The libraries that cannot be loaded, as `file (from)`.
pub fn missing() -> Vec<String> {
    // SAFETY: each probe only dlopens and closes a library by name.
    LIBS.iter().filter(|lib| !unsafe { (lib.present)() }).map(|lib| format!("{} ({})", lib.file, lib.from)).collect()
}

/// Ok when every library the CUDA device needs loads; else an error naming each missing one and
/// the fix.
pub fn probe() -> anyhow::Result<()> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "the CUDA device cannot start: {} not found on the loader path (LD_LIBRARY_PATH and ldconfig's cache); \
         fix: {LIBRARY_PATH_HINT}",
        missing.join(", ")
    )
}
